// The native framed pump (DataFd.pumpFrames) against the JS path: over a
// UNIX socket the source must take the native path, and the bytes on the
// wire must be exactly what the JS path writes for the same device.
import t from 'tap'
import { createServer } from 'node:net'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { native } from '../../vmm/native/addon.js'
import type { EmulatedDevice, EmulatedDeviceOptions, LoadFramesResult, PumpFramesResult } from '../../native/index.js'
import { connect } from '../../vmm/channel/connect.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { SaveVM } from '../../vmm/savevm/save.js'
import { makeSide, migrate, socketPair } from './harness.js'

// Count native calls, and keep what they report, by wrapping the prototype
// methods the device code reaches.
type Fn = (...a: unknown[]) => Promise<unknown>
const proto = native.DataFd.prototype as unknown as { pumpFrames: Fn; loadFrames: Fn }
const realPump = proto.pumpFrames
const realLoad = proto.loadFrames
let nativeCalls = 0
let loadCalls = 0
const pumped: PumpFramesResult[] = []
const loaded: LoadFramesResult[] = []
proto.pumpFrames = async function (this: unknown, ...a: unknown[]) {
  nativeCalls++
  const r = (await realPump.apply(this, a)) as PumpFramesResult
  pumped.push(r)
  return r
}
proto.loadFrames = async function (this: unknown, ...a: unknown[]) {
  loadCalls++
  const r = (await realLoad.apply(this, a)) as LoadFramesResult
  loaded.push(r)
  return r
}
t.teardown(() => { proto.pumpFrames = realPump; proto.loadFrames = realLoad })

/** Save one device's VM to a UNIX socket and return every byte the peer received. */
async function capture(o: EmulatedDeviceOptions, direct: boolean, arm?: (e: EmulatedDevice) => void): Promise<{ bytes: Buffer; calls: number; stats: unknown }> {
  const src = await makeSide('source', [o])
  arm?.(src.emus[0])
  const path = join(mkdtempSync(join(tmpdir(), 'vfio-pump-')), 's')
  const chunks: Buffer[] = []
  let listening!: () => void
  const ready = new Promise<void>(r => { listening = r })
  const received = new Promise<void>((resolve, reject) => {
    const server = createServer(sock => {
      sock.on('data', c => chunks.push(c))
      sock.on('error', reject)
      sock.on('end', () => { server.close(); resolve() })
    })
    server.on('error', reject)
    server.listen(path, listening)
  })
  await Promise.race([ready, received])
  // fdTransfer null turns off every fd-to-fd path of the stream, direct writes included.
  const f = new MigStream(await connect(`unix:${path}`), direct ? {} : { fdTransfer: null })
  const save = new SaveVM(f, src.reg, { machine: 'microvm' })
  const before = nativeCalls
  await save.prepare()
  await save.header()
  await save.setup()
  for (let i = 0; i < 1000 && !(await save.iterate()); i++);
  await src.vm.vmStop('finish-migrate')
  await save.complete()
  await save.nonIterable()
  await save.finish()
  const err = await f.close()
  if (err) throw err
  await received
  const { bytesSaved, precopyBytes, stopCopyBytes } = src.set.stats()['source0']
  await save.cleanup()
  return { bytes: Buffer.concat(chunks), calls: nativeCalls - before, stats: { bytesSaved, precopyBytes, stopCopyBytes } }
}

const DATA_STATE = Buffer.from('ffffffffef100004', 'hex')

/**
 * Each frame's size, and the stream with every run of back-to-back
 * DATA_STATE frames merged into one: equal for two streams that carry the
 * same device data in the same place, however it was cut into blocks.
 */
function frames(b: Buffer): { sizes: number[]; merged: Buffer } {
  const sizes: number[] = []
  const out: Buffer[] = []
  let pos = 0
  for (;;) {
    let i = b.indexOf(DATA_STATE, pos)
    if (i < 0) break
    out.push(b.subarray(pos, i))
    const payload: Buffer[] = []
    while (i + 16 <= b.length && b.subarray(i, i + 8).equals(DATA_STATE)) {
      const n = Number(b.readBigUInt64BE(i + 8))
      if (i + 16 + n > b.length) throw new Error(`frame at ${i} of ${n} bytes runs past the end (${b.length})`)
      sizes.push(n)
      payload.push(b.subarray(i + 16, i + 16 + n))
      i += 16 + n
    }
    const head = Buffer.alloc(16)
    DATA_STATE.copy(head)
    head.writeBigUInt64BE(BigInt(payload.reduce((s, p) => s + p.length, 0)), 8)
    out.push(head, ...payload)
    pos = i
  }
  out.push(b.subarray(pos))
  return { sizes, merged: Buffer.concat(out) }
}

const cases: { name: string; o: EmulatedDeviceOptions; arm?: (e: EmulatedDevice) => void }[] = [
  { name: 'stop-copy only, 3 MiB + 5', o: { flags: 1, stateSize: (3 << 20) + 5, seed: 11 } },
  { name: 'pre-copy, 12 MiB (several rounds)', o: { flags: 5, stateSize: 12 << 20, seed: 12 } },
  { name: 'pre-copy with EAGAIN and short reads', o: { flags: 7, stateSize: 2 << 20, seed: 13 }, arm: e => { e.eagain(3); e.shortIo(5, 777) } },
  { name: 'empty state', o: { flags: 5, stateSize: 0, seed: 14 } },
]

for (const c of cases) {
  t.test(`${c.name}: native frames carry the JS path's bytes`, async t => {
    const js = await capture(c.o, false, c.arm)
    const nat = await capture(c.o, true, c.arm)
    t.equal(js.calls, 0, 'the JS path did not call pumpFrames')
    t.ok(nat.calls > 0, `the socket stream took the native path (${nat.calls} calls)`)
    t.ok(js.bytes.length > 0)
    const a = frames(js.bytes)
    const b = frames(nat.bytes)
    t.ok(b.sizes.every(n => n > 0 && n <= (1 << 20)), 'native frames are whole blocks of at most 1 MiB')
    t.ok(b.merged.equals(a.merged), 'same stream with each run of frames merged')
    // The emulated device returns what its producer thread has queued, so
    // the block sizes depend on timing; when they agree, so must every byte.
    if (a.sizes.join() === b.sizes.join()) t.ok(nat.bytes.equals(js.bytes), 'same frames: same bytes')
    else t.comment(`block sizes differ by timing: ${a.sizes.length} vs ${b.sizes.length} frames`)
    t.same(nat.stats, js.stats, 'same device statistics')
  })
}

t.test('a full migration over the native path arrives exact and counts every byte', async t => {
  const size = (5 << 20) + 123
  const src = await makeSide('source', [{ flags: 5, stateSize: size, seed: 21 }])
  const dst = await makeSide('dest', [{ flags: 5, stateSize: size, seed: 22 }])
  const before = nativeCalls
  const r = await migrate(src, dst)
  t.ok(r.ok, r.error?.message ?? 'migrated')
  t.ok(nativeCalls > before, 'native path used')
  t.equal(await dst.emus[0].digest(), r.sourceDigests[0])
  const s = src.set.stats()['source0']
  t.ok(s.bytesSaved >= size, 'every byte counted')
  t.equal(s.precopyBytes + s.stopCopyBytes, s.bytesSaved, 'each byte counted in one phase')
  t.ok(s.precopyBytes > 0)
})

for (const allowSplice of [true, false]) {
  t.test(`the destination takes runs of frames natively (allowSplice ${allowSplice})`, async t => {
    const size = (20 << 20) + 7
    const src = await makeSide('source', [{ flags: 1, stateSize: size, seed: 31 }], false, { allowSplice })
    const dst = await makeSide('dest', [{ flags: 1, stateSize: size, seed: 32 }], false, { allowSplice })
    pumped.length = 0
    loaded.length = 0
    const before = loadCalls
    const r = await migrate(src, dst)
    t.ok(r.ok, r.error?.message ?? 'migrated')
    t.equal(await dst.emus[0].digest(), r.sourceDigests[0], 'byte-exact')
    t.ok(loadCalls > before, `loadFrames used (${loadCalls - before} calls)`)
    const frames = pumped.reduce((n, p) => n + p.frames, 0)
    const spliced = pumped.reduce((n, p) => n + p.spliced, 0)
    t.ok(frames > 1)
    if (allowSplice) t.equal(spliced, frames, 'every source frame spliced (the emulated fd is a pipe)')
    else t.equal(spliced, 0, 'no frame spliced when splice is not allowed')
    t.ok(loaded.every(l => l.end !== 'eof'), 'every run ends at a marker or a step limit')
    t.ok(loaded.some(l => l.end === 'marker' && l.next === 0xffffffffef100001n), 'the run ends at END_OF_STATE')
    t.ok(loaded.some(l => l.end === 'limit'), 'long runs come in steps, so progress moves between them')
    // The device's stream is its state plus its own framing (a header, one
    // per region, an end record), so bytesSaved, not stateSize, is the whole;
    // and the first frame is as short as what the producer had queued when it
    // was read (as little as the 64-byte header on a loaded machine).
    const saved = src.set.stats()['source0'].bytesSaved
    t.equal(dst.set.stats()['dest0'].bytesLoaded, saved, 'every byte loaded is counted once')
    // The frame that opens the section is read by the stream; the stream
    // hands the fd over once it holds nothing read ahead, which can take a
    // further frame when the first was short, so only "some but not all".
    const natBytes = loaded.reduce((n, l) => n + l.bytes, 0)
    const natFrames = loaded.reduce((n, l) => n + l.frames, 0)
    t.ok(natFrames > 0 && natFrames < frames, `the section's first frame through the stream, later ones natively (${natFrames} of ${frames} frames, ${natBytes} of ${saved} bytes)`)
  })
}

t.test('bad arguments are refused with a clear error', async t => {
  const e = new native.EmulatedDevice({ name: 'args', flags: 1, stateSize: 4096, seed: 1 })
  const fd = await e.device().setState('STOP_COPY')
  t.ok(fd)
  const marker = 0xffffffffef100004n
  await t.rejects(fd!.pumpFrames(-1, { blockSize: 4096, maxBytes: 10, marker }), { code: 'EBADF' })
  await t.rejects(fd!.pumpFrames(1, { blockSize: 0, maxBytes: 10, marker }), { code: 'EINVAL', message: /blockSize/ })
  await t.rejects(fd!.pumpFrames(1, { blockSize: 4096, maxBytes: -1, marker }), { code: 'EINVAL', message: /maxBytes/ })
  await t.rejects(fd!.pumpFrames(1, { blockSize: 4096, maxBytes: 10, marker: -1n }), { code: 'EINVAL', message: /marker/ })
  await t.rejects(fd!.loadFrames(-1, { marker }), { code: 'EBADF' })
  await t.rejects(fd!.loadFrames(1, { marker, maxBytes: 1.5 }), { code: 'EINVAL', message: /maxBytes/ })
  await t.rejects(fd!.loadFrames(1, { marker: 1n << 64n }), { code: 'EINVAL', message: /marker/ })
  await t.rejects(fd!.loadFrames(1, { marker, idleTimeoutMs: -5 }), { code: 'EINVAL', message: /idleTimeoutMs/ })
  await fd!.close()
})

t.test('a shutdown wakes a pump blocked on a peer that stopped reading', async t => {
  const e = new native.EmulatedDevice({ name: 'stall', flags: 1, stateSize: 64 << 20, seed: 3 })
  const fd = await e.device().setState('STOP_COPY')
  const [out, inc] = await socketPair() // nothing reads `inc`: the socket fills and the pump waits
  const marker = 0xffffffffef100004n
  let failure: unknown = null
  const pumping = out.writeDirect(sock => fd!.pumpFrames(sock, { blockSize: 1 << 20, maxBytes: Number.MAX_SAFE_INTEGER, marker, idleTimeoutMs: 60_000 })
    .then(r => r.bytes, err => { failure = err; throw err }))
  await new Promise(r => setTimeout(r, 300))
  const t0 = Date.now()
  out.shutdown('cancelled by the test')
  t.ok(await pumping, 'the direct write ran')
  const waited = Date.now() - t0
  t.ok(waited < 5000, `the pump returned ${waited} ms after the shutdown, not at its 60 s idle timeout`)
  t.match((failure as { code?: string })?.code, /^(EPIPE|ECONNRESET|EBADF)$/, String(failure))
  t.ok(out.error, 'the stream failed')
  await fd!.close()
  await inc.close()
})
