import t from 'tap'
import { makeSide, migrate } from './harness.js'

// The largest size the issue asks for: 1 GiB of device state, generated from a
// seed on the source and hashed region by region on the destination, so no
// side holds it in memory.
t.test('1 GiB of device state arrives byte-exact through pre-copy and stop-copy', async t => {
  const size = 1 << 30
  const src = await makeSide('source', [{ flags: 7, stateSize: size, seed: 11, regionSize: 1 << 20 }])
  const dst = await makeSide('dest', [{ flags: 7, stateSize: size, seed: 12, regionSize: 1 << 20 }])
  const rss0 = process.memoryUsage().rss
  const r = await migrate(src, dst, { threshold: 64 << 20 })
  t.ok(r.ok, r.error?.message)
  t.equal(await dst.emus[0].digest(), r.sourceDigests[0])
  t.ok(src.set.stats()['source0'].bytesSaved >= size)
  // Two 1 MiB buffers on the source, native transfer on the destination: the
  // process grows by far less than the state it moved.
  t.ok(process.memoryUsage().rss - rss0 < 256 << 20, `RSS grew ${(process.memoryUsage().rss - rss0) >> 20} MiB`)
})
