// Socket channels read into one buffer of their own and lend it to the
// stream; records cut at a view's end, reads mixed with in-place parsing,
// and the end of stream must come out byte-exact.
import t from 'tap'
import { connect, listen } from '../../vmm/channel/connect.js'
import { MigStream } from '../../vmm/stream/stream.js'

t.test('tcp: odd-sized writes parsed in place, big reads between, then the end', async t => {
  const l = await listen('tcp:127.0.0.1:0')
  const [src, dst] = await Promise.all([connect(l.address), l.accept()])
  t.teardown(async () => { await src.close(); await dst.close(); await l.close() })
  t.equal(typeof dst.lend, 'function', 'a TCP socket lends its buffer')
  const words = 1 << 20
  const data = Buffer.alloc(words * 4)
  for (let i = 0; i < words; i++) data.writeUInt32BE(i, i * 4)
  const writer = (async () => {
    // Odd sizes so words are cut at every possible place across reads.
    for (let off = 0, k = 0; off < data.length; k++) {
      const n = Math.min(data.length - off, 1 + ((k * 7919) % 300000))
      await src.writev([data.subarray(off, off + n)])
      off += n
    }
    await src.endWrites()
  })()
  const r = new MigStream(dst)
  let bad = -1
  for (let i = 0; i < words && bad < 0;) {
    if (i % 100000 === 50000) {
      // A large read straight into a destination, between in-place parsing.
      const n = Math.min(words - i, 70001)
      const b = await r.getBuffer(n * 4)
      for (let j = 0; j < n; j++) if (b.readUInt32BE(j * 4) !== i + j) { bad = i + j; break }
      i += n
      continue
    }
    if (r.available < 4 && !(await r.fill(4))) break
    if (r.be32() !== i) bad = i
    i++
  }
  await writer
  t.equal(bad, -1, 'every word in order')
  t.equal(r.error, null)
  t.equal(r.bytesRead, data.length)
  t.ok(await r.atEnd(), 'end of stream after the last byte')
})
