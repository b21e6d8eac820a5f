// Under TLS the guest's RAM and the device state still take the native data
// paths (ramSendPages/ramLoadPages, pumpFrames/loadFrames, fdTransfer), encrypted and
// decrypted through the channel's TLS session on worker threads, not the
// buffered path through JavaScript: the addon counts the bytes it moved
// that way, and those counts must cover most of what the migration moved.
// The guest arrives intact (RAM and device digests).
import t from 'tap'
import { MicroVm } from '../../vmm/microvm/index.js'
import { migrate, incoming, OutgoingMigration } from '../../vmm/migration/index.js'
import { CANCEL_GRACE_MS } from '../../vmm/migration/outgoing.js'
import { listen } from '../../vmm/channel/connect.js'
import { loadTlsCreds } from '../../vmm/channel/tls.js'
import { native } from '../../vmm/native/addon.js'
import { creds, noOpenssl, until } from './helpers.js'

t.setTimeout(180_000)
const skip = noOpenssl()

type Counters = ReturnType<typeof native.tlsDataCounters>

function since(a: Counters, b: Counters): Counters {
  return { ramSent: b.ramSent - a.ramSent, ramReceived: b.ramReceived - a.ramReceived, deviceSent: b.deviceSent - a.deviceSent, deviceReceived: b.deviceReceived - a.deviceReceived }
}

t.test('RAM and device state cross a TLS migration through the native paths, intact', { skip }, async (t) => {
  const dir = await creds()
  const opts = { ramSize: 32 << 20, vcpu: 'soft' as const, workingSet: 2 << 20, vfio: { stateSize: 4 << 20, dirtyRate: 256 << 10 } }
  const src = await MicroVm.create({ role: 'source', ...opts })
  const dst = await MicroVm.create({ role: 'dest', ...opts, verifyBeforeStart: true })
  t.teardown(async () => { await src.destroy(); await dst.destroy() })
  await until('the guest to run', () => src.vcpuCounter() > 100n)
  const before = native.tlsDataCounters()
  let address = ''
  const parameters = { tlsCreds: dir }
  const inc = incoming(dst, 'tcp:127.0.0.1:0', { parameters, onListening: (a) => { address = a } })
  await until('listening', () => address !== '')
  const stats = await migrate(src, address, { parameters: { maxBandwidth: 0, ...parameters } })
  const res = await inc
  const moved = since(before, native.tlsDataCounters())
  t.equal(stats.status, 'completed')
  t.equal(res.status, 'completed')
  const s = await src.verify()
  const d = (await dst.verificationBeforeStart())!
  t.equal(d.ramDigest, s.ramDigest, 'RAM digest')
  t.equal(d.deviceDigest, s.deviceDigest, 'device digest')
  t.ok(s.checksumConsistent && d.checksumConsistent, 'guest checksum')

  const device = Object.values(stats.vfio ?? {}).reduce((n, v) => n + v.bytesSaved, 0)
  t.comment(`migration moved ${stats.transferred} bytes (device state ${device}); native TLS paths: ${JSON.stringify(moved)}`)
  t.ok(device >= 4 << 20, 'the device saved its state')
  // Frame headers (16 bytes per block) count on the wire, not in bytesSaved.
  t.ok(moved.deviceSent >= device, `the device state was encrypted by pumpFrames (${moved.deviceSent} of ${device})`)
  // loadFrames takes the frames after the first of each run, whose payload
  // the stream moves with fdTransfer, through the session too (but for what
  // the stream had read ahead with the frame's header).
  t.ok(moved.deviceReceived >= device * 0.8, `and decrypted by loadFrames and fdTransfer (${moved.deviceReceived})`)
  const ram = stats.transferred - device
  t.ok(moved.ramSent >= ram * 0.8, `most RAM records were encrypted by ramSendPages (${moved.ramSent} of about ${ram})`)
  t.ok(moved.ramReceived >= moved.ramSent * 0.8, `and decrypted by ramLoadPages (${moved.ramReceived})`)
})

t.test('a cancel while a TLS destination does not read ends the native send within the grace period', { skip }, async (t) => {
  const dir = await creds()
  const src = await MicroVm.create({ role: 'source', ramSize: 64 << 20, vcpu: 'soft', workingSet: 2 << 20, vfio: { stateSize: 4 << 20, dirtyRate: 256 << 10 } })
  t.teardown(() => src.destroy())
  const l = await listen('tcp:127.0.0.1:0', { tls: { creds: await loadTlsCreds(dir, 'server') } })
  t.teardown(() => l.close())
  const before = native.tlsDataCounters()
  const out = new OutgoingMigration(src, { parameters: { maxBandwidth: 0, downtimeLimitMs: 1, tlsCreds: dir } })
  const result = out.start(l.address)
  result.catch(() => undefined)
  // Handshaken, never read: the source's native send waits once the socket is full.
  const stuck = await l.accept()
  t.teardown(() => stuck.close())
  await until('the native send to fill the socket', () => native.tlsDataCounters().ramSent > before.ramSent, 30_000)
  await new Promise(r => setTimeout(r, 300))
  const t0 = performance.now()
  out.cancel()
  await t.rejects(result, { code: 'ECANCELED' })
  const took = performance.now() - t0
  t.ok(took < CANCEL_GRACE_MS + 2000, `cancelled in ${took.toFixed(0)} ms (grace ${CANCEL_GRACE_MS} ms)`)
})

t.test('a data path refuses what is neither an fd nor a TLS channel, naming the argument', async (t) => {
  const blocks = [{ memory: new Uint8Array(4096), name: Buffer.from('pc.ram'), firstPage: 0, pages: 1 }]
  const opts = { cursorBlock: 0, cursorPage: 0, lastSent: -1, maxPages: 1, roundPages: 0 }
  t.throws(() => native.ramSendPages({} as never, blocks, new Uint32Array(1), opts), { code: 'EINVAL', message: /fd must be an fd number or a TLS NativeChannel, got an object that is no NativeChannel/ })
  await t.rejects(native.fdTransfer(1.5, 1, 10), { code: 'EINVAL', message: /fromFd must be an fd number or a TLS NativeChannel, got 1\.5/ })
  await t.rejects(native.fdTransfer(0, 'x' as never, 10), { code: 'EINVAL', message: /toFd must be an fd number or a TLS NativeChannel, got String/ })
})
