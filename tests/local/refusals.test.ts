// A local migration's bad inputs, in one process so that /proc/self/fd
// counts both sides: each is refused with an error that says what was
// wrong, the source guest keeps running, and no descriptor stays open.
// And the handover's rule before GO: a destination that took the source's
// RAM and then failed lets go of it, so it can never write those pages.
import t, { type Test } from 'tap'
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MicroVm } from '../../vmm/microvm/index.js'
import { migrate, incoming, IncomingMigration, OutgoingMigration, localRefusal, type IncomingResult } from '../../vmm/migration/index.js'
import { connect } from '../../vmm/channel/connect.js'
import type { Channel } from '../../vmm/channel/types.js'
import type { VcpuKind } from '../../vmm/machine/index.js'
import { analyzeFile } from '../../vmm/cli/analyze.js'
import { fdsSettle, kvmSkip, steadyFds } from './gate.js'

t.setTimeout(240_000)
const RAM = 16 << 20
const dir = mkdtempSync(join(tmpdir(), 'vmm-local-ref-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const noKvm = await kvmSkip(t)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
let n = 0
const sock = () => `unix:${join(dir, `m${n++}.sock`)}`

async function vms(t: Test, kind: VcpuKind, dstRam = RAM): Promise<[MicroVm, MicroVm]> {
  const src = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: kind, workingSet: 1 << 20, vfio: { stateSize: 64 << 10 } })
  const dst = await MicroVm.create({ role: 'dest', ramSize: dstRam, vcpu: kind, workingSet: 1 << 20, vfio: { stateSize: 64 << 10 }, verifyBeforeStart: true })
  t.teardown(async () => {
    await src.destroy()
    await dst.destroy()
  })
  const deadline = Date.now() + 20_000
  while (src.vcpuCounter() < 100n && Date.now() < deadline) await sleep(5)
  return [src, dst]
}

/** The source still runs its guest: running state and a counter that moves. */
async function stillRunning(t: Test, src: MicroVm): Promise<void> {
  t.equal(src.vm.state, 'running', 'the source guest runs')
  const c = src.vcpuCounter()
  const deadline = Date.now() + 10_000
  while (src.vcpuCounter() === c && Date.now() < deadline) await sleep(5)
  t.ok(src.vcpuCounter() > c, 'and its vCPU counts on')
}

/** A destination listening on a fresh unix socket: its address and its outcome. */
async function destination(
  dst: MicroVm, opts: { local?: boolean; signal?: AbortSignal; onReady?: () => void } = {},
): Promise<{ address: string; done: Promise<IncomingResult> }> {
  let listening!: (a: string) => void
  const address = new Promise<string>((r) => (listening = r))
  const m = new IncomingMigration(dst, { local: opts.local, signal: opts.signal, onListening: (a) => listening(a) })
  m.on('status', (s) => { if (s === 'ready') opts.onReady?.() })
  const done = m.start(sock())
  done.catch(() => undefined)
  return { address: await address, done }
}

/** A unix: channel to `address` whose first write carries `fds` too (a peer passing descriptors with its stream). */
async function injecting(address: string, fds: number[][]): Promise<Channel> {
  const ch = await connect(address)
  const writev = ch.writev.bind(ch)
  ch.writev = (bufs) => {
    const next = fds.shift()
    if (!next) return writev(bufs)
    const one = Buffer.concat(bufs.map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)))
    return ch.sendFds!(next, one)
  }
  return ch
}

function devNulls(k: number): number[] {
  return Array.from({ length: k }, () => openSync('/dev/null', 'r'))
}

t.test('a local migration over tcp: is refused before anything is sent', async (t) => {
  const [src] = await vms(t, noKvm ? 'soft' : 'kvm')
  const base = await steadyFds()
  t.match(localRefusal('tcp:127.0.0.1:4444', src.registry), /only a unix: channel carries .*got tcp:127\.0\.0\.1:4444/)
  const m = new OutgoingMigration(src, { local: true })
  await t.rejects(m.start('tcp:127.0.0.1:1'), { code: 'EINVAL', message: /local migration refused: a local migration passes file descriptors, which only a unix: channel carries/ })
  t.equal(m.status, 'failed')
  await stillRunning(t, src)
  t.equal(await fdsSettle(base), base, 'no descriptor left open')
})

t.test('a local destination refuses a channel that cannot pass descriptors', async (t) => {
  const [, dst] = await vms(t, 'soft')
  await t.rejects(incoming(dst, 'tcp:127.0.0.1:0', { local: true }), { code: 'EINVAL', message: /only a unix: channel passes file descriptors.*got tcp:127\.0\.0\.1:0/ })
})

t.test('the soft vCPU\'s RAM is refused by name', async (t) => {
  const [src, dst] = await vms(t, 'soft')
  const base = await steadyFds()
  const give = new AbortController()
  const d = await destination(dst, { local: true, signal: give.signal })
  await t.rejects(migrate(src, d.address, { local: true }), {
    code: 'EINVAL',
    message: /RAM block 'pc\.ram' is not fd-backed \(a SharedArrayBuffer of the soft vCPU, which no other process can map\)/,
  })
  await stillRunning(t, src)
  // Refused before connecting: the destination still waits; it is given up here.
  t.equal(dst.vm.state, 'inmigrate')
  give.abort()
  await t.rejects(d.done, { code: 'ECANCELED' })
  t.equal(await fdsSettle(base), base, 'no descriptor left open')
})

t.test('KVM', { skip: noKvm }, async (t) => {
  t.test('a memfd whose size is not the destination block\'s', async (t) => {
    const [src, dst] = await vms(t, 'kvm')
    // A source whose block list says 16 MiB but whose descriptor is another
    // VM's 32 MiB: the destination checks the file itself.
    const other = await MicroVm.create({ role: 'dest', ramSize: 32 << 20, vcpu: 'kvm', vfio: false })
    t.teardown(() => other.destroy())
    const shared = src.vcpu.sharedRam!
    const own = shared.fd
    shared.fd = () => other.vcpu.sharedRam!.fd()
    t.teardown(() => { shared.fd = own })
    const base = await steadyFds()
    const d = await destination(dst, { local: true })
    await t.rejects(migrate(src, d.address, { local: true }), { message: /the passed RAM fd is 33554432 bytes, this guest RAM 16777216 bytes/ })
    await t.rejects(d.done, { message: /passed block 'pc\.ram': .*the passed RAM fd is 33554432 bytes, this guest RAM 16777216 bytes/ })
    await stillRunning(t, src)
    t.equal(await fdsSettle(base), base, 'the passed descriptor was closed')
  })

  t.test('a destination not started for a local migration refuses the descriptors', async (t) => {
    const [src, dst] = await vms(t, 'kvm')
    const base = await steadyFds()
    const d = await destination(dst)
    // It closes the descriptors at once; the record that came with them says
    // what the source meant, and the destination answers that it is not one.
    const notLocal = /ERR_RAM_LOCAL: the source passed RAM as file descriptors \(a local migration\), but this destination was not started for one \(--local\)/
    // The source hears that answer on the return path, unless its next write
    // meets the closed link first: then its error says what such a close means.
    const closed = /(EPIPE|ECONNRESET).*one not taking a local migration, started without --local, refuses the passed RAM descriptors/
    const e = await migrate(src, d.address, { local: true }).then(() => undefined, (err: Error) => err)
    t.ok(e && (notLocal.test(e.message) || closed.test(e.message)), `the source is refused, saying why: ${e?.message}`)
    await t.rejects(d.done, { message: notLocal })
    await stillRunning(t, src)
    t.equal(await fdsSettle(base), base, 'no descriptor left open')
  })

  t.test('descriptors without the section that claims them', async (t) => {
    const [src, dst] = await vms(t, 'kvm')
    const base = await steadyFds()
    const d = await destination(dst, { local: true })
    const extra = devNulls(2)
    // A plain (copying) migration whose stream header carries two descriptors.
    const ch = await injecting(d.address, [extra])
    await t.rejects(migrate(src, ch), /./)
    await t.rejects(d.done, { code: 'EPROTO', message: /2 file descriptor\(s\) arrived without a section that claims them; closed them/ })
    await stillRunning(t, src)
    for (const fd of extra) closeSync(fd)
    t.equal(await fdsSettle(base), base, 'no descriptor left open')
  })

  t.test('too many descriptors', async (t) => {
    const [src, dst] = await vms(t, 'kvm')
    const base = await steadyFds()
    const d = await destination(dst, { local: true })
    const extra = devNulls(16)
    // 16 with the header, 16 more with the next write: past the bound of 16 in all.
    const ch = await injecting(d.address, [extra, extra])
    await t.rejects(migrate(src, ch), /./)
    await t.rejects(d.done, { message: /recvmsg: EPROTO \(the peer passed 16 file descriptor\(s\), 0 more were expected; closed them\)/ })
    await stillRunning(t, src)
    for (const fd of extra) closeSync(fd)
    t.equal(await fdsSettle(base), base, 'no descriptor left open')
  })

  t.test('a destination that fails after mapping the source\'s RAM lets go of it before GO', async (t) => {
    const [src, dst] = await vms(t, 'kvm')
    const base = await steadyFds()
    // The verification runs after RAM was mapped, before READY.
    dst.checkIncoming = async () => {
      throw new Error('refused by the test after the RAM was mapped')
    }
    const d = await destination(dst, { local: true })
    await t.rejects(migrate(src, d.address, { local: true }), { message: /refused by the test/ })
    await t.rejects(d.done, { message: /refused by the test/ })
    await stillRunning(t, src)
    // The source's cold pages hold its fill pattern; the destination's RAM is fresh again.
    const s = src.vcpu.memory.bytes
    const off = src.layout.coldFirst * 4096
    t.not(s[off] | s[off + 1] | s[off + 2] | s[off + 3], 0, 'the source has data there')
    t.ok(dst.vcpu.memory.bytes.subarray(off, off + 4096).every((b) => b === 0), 'the destination no longer maps it')
    dst.vcpu.memory.bytes[off] = s[off]! ^ 0xff
    t.not(s[off], dst.vcpu.memory.bytes[off], 'a write there does not reach the source')
    t.equal(await fdsSettle(base), base, 'the source\'s descriptor was closed')
  })

  t.test('a local migration in one process: arrives intact, no page copied, analyze names the passed block', async (t) => {
    const [src, dst] = await vms(t, 'kvm')
    // Every byte of the stream the source sends, descriptors' bytes
    // included, for analyze: up to READY, after which only GO follows.
    let recording = true
    const d = await destination(dst, { local: true, onReady: () => (recording = false) })
    const ch = await connect(d.address)
    const sent: Buffer[] = []
    const copy = (b: Uint8Array) => recording && sent.push(Buffer.from(b))
    const writev = ch.writev.bind(ch)
    const sendFds = ch.sendFds!.bind(ch)
    ch.writev = (bufs) => (bufs.forEach(copy), writev(bufs))
    ch.sendFds = (fds, data) => (copy(data), sendFds(fds, data))
    const stats = await migrate(src, ch, { local: true })
    const res = await d.done
    t.equal(stats.status, 'completed')
    t.equal(res.status, 'completed')
    t.ok(stats.downtime! >= 0, `downtime ${stats.downtime} ms reported`)
    const rs = src.ram.stats()
    t.equal(rs.normalPages + rs.zeroPages, 0, 'no page sent')
    t.ok(rs.bytes < 4096, `RAM section: ${rs.bytes} bytes on the wire`)
    t.equal(dst.ram.stats().load.passedBlocks, 1, 'one block passed')
    const s = src.switchoverVerification()!
    const v = await dst.verificationBeforeStart()!
    t.equal(v.ramDigest, s.ramDigest, 'RAM digest')
    t.equal(v.counter, s.counter, 'vCPU counter')
    t.equal(v.deviceDigest, s.deviceDigest, 'device digest')
    const file = join(dir, 'local.stream')
    writeFileSync(file, Buffer.concat(sent))
    const a = await analyzeFile(file)
    t.same(a.ram?.passed, [{ name: 'pc.ram', length: RAM }], 'analyze: pc.ram passed as a descriptor')
    t.equal(a.ram?.pages, 0, 'analyze: no page in the stream')
    t.same(a.sections.find((x) => x.idstr === 'ram' && x.ram?.passed)?.ram?.passed, [{ name: 'pc.ram', length: RAM }])
  })
})
