// The handover of a kernel VFIO device in a local migration (KernelVfioHandover),
// in one process so that /proc/self/fd counts both sides. No kernel VFIO
// object can exist on this host, so the kernel is a stand-in here: its
// "container", "group" and "device" are files of a temporary directory
// (real descriptors, passed with SCM_RIGHTS like any), and its IOMMU keeps
// the one rule the handover relies on: a mapping's vaddr is given only when
// it was forgotten, forgotten only when it was given. The ioctls themselves
// are unit-tested in vfio-core, and the real thing runs in the kernel lane
// (tests/kernel/local.mjs).
import t, { type Test } from 'tap'
import { close as closeCb, mkdtempSync, openSync, closeSync, rmSync, writeFileSync } from 'node:fs'
import { readdir, readlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MicroVm } from '../../vmm/microvm/index.js'
import { IncomingMigration, OutgoingMigration, localRefusal, migrate, type IncomingResult } from '../../vmm/migration/index.js'
import { connect } from '../../vmm/channel/connect.js'
import { analyzeFile } from '../../vmm/cli/analyze.js'
import { HANDOVER_FRAME_LEN, HANDOVER_MAGIC, HandoverFrame } from '../../vmm/channel/handover.js'
import { KernelVfioHandover, type HandoverContainer, type HandoverKernel, type PassedSet } from '../../vmm/vfio/index.js'
import { fdsSettle, kvmSkip, steadyFds } from './gate.js'

t.setTimeout(240_000)
const RAM = 16 << 20
const dir = mkdtempSync(join(tmpdir(), 'vmm-local-vfio-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const noKvm = await kvmSkip(t)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
let n = 0
const sock = () => `unix:${join(dir, `m${n++}.sock`)}`
const closeFd = (fd: number) => new Promise<void>((r) => closeCb(fd, () => r()))
const errno = (code: string, message: string) => Object.assign(new Error(`${code}: ${message}`), { code })

/** The IOMMU both processes share: who gives each mapping its vaddr now. */
class Iommu {
  owner = new Map<bigint, 'src' | 'dst' | null>()
  srcCalls: string[] = []
  fail: { invalidate?: boolean; revalidate?: boolean; adopt?: boolean; update?: boolean } = {}
  forget(iova: bigint, who: 'src' | 'dst') {
    if (this.owner.get(iova) !== who) throw errno('EINVAL', `iova 0x${iova.toString(16)}: vaddr is not ${who}'s`)
    this.owner.set(iova, null)
  }
  give(iova: bigint, who: 'src' | 'dst') {
    if (this.owner.get(iova) !== null) throw errno('EINVAL', `iova 0x${iova.toString(16)}: vaddr not forgotten (${this.owner.get(iova)} has it)`)
    this.owner.set(iova, who)
  }
}

/**
 * Descriptors of this process open on the stand-in kernel's files, once
 * their number is `want` (closes of passed descriptors happen off the
 * JavaScript thread, a little later), or the last count after 3 s.
 * Counted by what they are, not in all: under load an earlier test's
 * sockets and VMs close during this one, which moves the total.
 */
async function ours(want: number): Promise<number> {
  const deadline = Date.now() + 3000
  for (;;) {
    let k = 0
    for (const fd of await readdir('/proc/self/fd')) {
      const l = await readlink(`/proc/self/fd/${fd}`).catch(() => '')
      if (l.startsWith(`${dir}/`)) k++
    }
    if (k === want || Date.now() > deadline) return k
    await sleep(20)
  }
}
/** The source's own four: container, group, device, interrupt eventfd. */
const SOURCE_FDS = 4

/** No descriptor of the stand-in kernel's open beyond the source's own, and none more in all than before. */
async function noneLeft(t: Test, fdBase: number, what = 'no descriptor left open', own = SOURCE_FDS): Promise<void> {
  t.equal(await ours(own), own, `${what}: only the source's own VFIO stand-ins are open`)
  const n = await fdsSettle(fdBase)
  t.ok(n <= fdBase, `${what}: ${n} descriptors, ${fdBase} before`)
}

function file(name: string): number {
  const p = join(dir, name)
  writeFileSync(p, name)
  return openSync(p, 'r')
}

/** The source's objects: a container with `mappings`, its group, a device, an interrupt eventfd. */
function sourceObjects(t: Test, iommu: Iommu, mappings: { iova: bigint; size: bigint }[], opts: { vaddr?: boolean; name?: string } = {}) {
  for (const m of mappings) iommu.owner.set(m.iova, 'src')
  const fds = { container: file('container'), group: file('group'), device: file('device'), irq: file('irq') }
  t.teardown(() => Object.values(fds).forEach((fd) => closeSync(fd)))
  const container: HandoverContainer = {
    fd: fds.container,
    mappings,
    supportsUpdateVaddr: async () => (iommu.srcCalls.push('supportsUpdateVaddr'), opts.vaddr ?? true),
    invalidateVaddr: async () => {
      iommu.srcCalls.push('invalidateVaddr')
      if (iommu.fail.invalidate) throw errno('EIO', 'invalidate refused by the test')
      for (const m of mappings) iommu.forget(m.iova, 'src')
      return mappings.reduce((a, m) => a + m.size, 0n)
    },
    revalidateVaddr: async () => {
      iommu.srcCalls.push('revalidateVaddr')
      if (iommu.fail.revalidate) throw errno('EIO', 'revalidate refused by the test')
      for (const m of mappings) iommu.give(m.iova, 'src')
      return mappings.length
    },
  }
  return {
    fds,
    device: { device: { fd: fds.device, name: opts.name ?? '0000:65:00.1' }, group: { fd: fds.group }, container, irqFds: [fds.irq] },
  }
}

/** The destination's kernel: checks each passed fd is the file it claims to be, and keeps the IOMMU's rule. */
function destinationKernel(iommu: Iommu, got: { adopted?: string[]; closed?: boolean }): HandoverKernel {
  return {
    async adopt(containers, groups, devices) {
      const all = [...containers, ...groups, ...devices.map((d) => d.fd)]
      const what = await Promise.all(all.map((fd) => readlink(`/proc/self/fd/${fd}`).then((p) => p.slice(dir.length + 1))))
      if (iommu.fail.adopt || what.join() !== 'container,group,device') {
        await Promise.all(all.map(closeFd))
        throw errno('ENOTTY', `passed container 1/1: VFIO_GET_API_VERSION (refused by the test: ${what.join()})`)
      }
      got.adopted = what
      const mine = new Set<bigint>()
      const set: PassedSet = {
        async updateVaddr(_c, buffer, iova) {
          if (iommu.fail.update) throw errno('EFAULT', 'update refused by the test')
          if (buffer.length === 0) throw errno('EINVAL', 'empty')
          iommu.give(iova, 'dst')
          mine.add(iova)
        },
        async invalidateVaddr() {
          for (const iova of mine) iommu.forget(iova, 'dst')
          mine.clear()
          return 0n
        },
        container: () => null,
        group: () => null,
        device: () => null,
        async close() {
          if (got.closed) return false
          got.closed = true
          await Promise.all(all.map(closeFd))
          return true
        },
      }
      return set
    },
  }
}

async function vms(t: Test): Promise<[MicroVm, MicroVm]> {
  const src = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: 'kvm', workingSet: 1 << 20, vfio: false })
  const dst = await MicroVm.create({ role: 'dest', ramSize: RAM, vcpu: 'kvm', workingSet: 1 << 20, vfio: false })
  t.teardown(async () => {
    await src.destroy()
    await dst.destroy()
  })
  const deadline = Date.now() + 20_000
  while (src.vcpuCounter() < 100n && Date.now() < deadline) await sleep(5)
  return [src, dst]
}

async function stillRunning(t: Test, src: MicroVm): Promise<void> {
  t.equal(src.vm.state, 'running', 'the source guest runs')
  const c = src.vcpuCounter()
  const deadline = Date.now() + 10_000
  while (src.vcpuCounter() === c && Date.now() < deadline) await sleep(5)
  t.ok(src.vcpuCounter() > c, 'and its vCPU counts on')
}

async function destination(dst: MicroVm, opts: { signal?: AbortSignal; onReady?: () => void } = {}): Promise<{ address: string; done: Promise<IncomingResult> }> {
  let listening!: (a: string) => void
  const address = new Promise<string>((r) => (listening = r))
  const m = new IncomingMigration(dst, { local: true, signal: opts.signal, onListening: (a) => listening(a) })
  m.on('status', (s) => { if (s === 'ready') opts.onReady?.() })
  const done = m.start(sock())
  done.catch(() => undefined)
  return { address: await address, done }
}

/** Source and destination with their handovers; the source's device added, its container mapping all of guest RAM. */
async function pair(t: Test, o: { mdev?: boolean; mappings?: 'ram' | 'none' | 'outside'; vaddr?: boolean } = {}) {
  const [src, dst] = await vms(t)
  const iommu = new Iommu()
  const base = BigInt(src.ram.blocks[0]!.base)
  const mappings = o.mappings === 'none' ? [] : o.mappings === 'outside' ? [{ iova: base + BigInt(RAM), size: 4096n }] : [{ iova: base, size: BigInt(RAM) }]
  const s = sourceObjects(t, iommu, mappings, { vaddr: o.vaddr, name: o.mdev ? '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001' : undefined })
  const skv = new KernelVfioHandover(src.vm, src.registry, { ram: src.ram })
  await skv.add(s.device)
  const got: { adopted?: string[]; closed?: boolean } = {}
  const dkv = new KernelVfioHandover(dst.vm, dst.registry, { ram: dst.ram, kernel: destinationKernel(iommu, got) })
  const fdBase = await steadyFds()
  return { src, dst, iommu, skv, dkv, got, fdBase, s }
}

t.test('KVM', { skip: noKvm }, async (t) => {
  t.test('the device is handed over: fds passed, vaddrs forgotten there and given here, no state moved', async (t) => {
    const { src, dst, iommu, dkv, got, fdBase, s } = await pair(t)
    // Every byte the source sends up to READY, for analyze.
    let recording = true
    const d = await destination(dst, { onReady: () => (recording = false) })
    const ch = await connect(d.address)
    const sent: Buffer[] = []
    const copy = (b: Uint8Array) => recording && sent.push(Buffer.from(b))
    const writev = ch.writev.bind(ch)
    const sendFds = ch.sendFds!.bind(ch)
    ch.writev = (bufs) => (bufs.forEach(copy), writev(bufs))
    ch.sendFds = (fds, data) => (copy(data), sendFds(fds, data))
    const stats = await migrate(src, ch, { local: true })
    const res = await d.done
    const file = join(dir, 'vfio-local.stream')
    writeFileSync(file, Buffer.concat(sent))
    const a = await analyzeFile(file)
    const sec = a.sections.find((x) => x.idstr === 'vfio-kernel-local')
    t.same(sec?.vfioLocal, {
      containers: [{ mappings: [{ iova: BigInt(src.ram.blocks[0]!.base), size: BigInt(RAM), block: 'pc.ram', offset: 0n }] }],
      groups: [{ container: 0 }],
      devices: [{ name: '0000:65:00.1', group: 0, mdev: false, irqFds: 1 }],
    }, 'analyze: what the passed descriptors are')
    t.equal(stats.status, 'completed')
    t.equal(res.status, 'completed')
    t.same(got.adopted, ['container', 'group', 'device'], 'the container, group and device fds arrived, in order')
    t.same([...iommu.owner.values()], ['dst'], 'the mapping now reads the destination\'s vaddr')
    t.same(iommu.srcCalls, ['supportsUpdateVaddr', 'invalidateVaddr'], 'the source forgot its vaddr, and did nothing after')
    t.equal(dkv.received.length, 1)
    t.match(dkv.received[0], { name: '0000:65:00.1', mdev: false, container: 0, group: 0, device: 0 })
    const irq = dkv.received[0]!.irqFds
    t.equal(irq.length, 1, 'its interrupt eventfd came too')
    t.equal(await readlink(`/proc/self/fd/${irq[0]}`), await readlink(`/proc/self/fd/${s.fds.irq}`), 'the same file as the source\'s')
    t.ok(dkv.passed, 'the destination holds the set')
    t.equal(dst.vm.state, 'running')
    // The destination is the device's owner now: what it passed on is its to close.
    t.equal(await dkv.passed!.close(), true)
    await closeFd(irq[0]!)
    await noneLeft(t, fdBase, 'no descriptor left open once the destination lets go')
  })

  t.test('an mdev that pins no guest pages (no mappings) goes with its fds alone: no vaddr call', async (t) => {
    const { src, dst, iommu, dkv, got, fdBase } = await pair(t, { mdev: true, mappings: 'none' })
    t.equal(localRefusal('unix:/x', src.registry), null)
    const d = await destination(dst)
    await migrate(src, d.address, { local: true })
    await d.done
    t.same(got.adopted, ['container', 'group', 'device'])
    t.same(iommu.srcCalls, ['supportsUpdateVaddr'], 'nothing to forget')
    t.equal(dkv.received[0]!.mdev, true, 'known as an mdev by its UUID name')
    await dkv.passed!.close()
    await Promise.all(dkv.received[0]!.irqFds.map(closeFd))
    await noneLeft(t, fdBase)
  })

  t.test('refused by name before connecting', async (t) => {
    const cases: [Parameters<typeof pair>[1], RegExp][] = [
      [{ mdev: true }, /VFIO device 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 is a mediated device whose container has 1 DMA mapping\(s\): on a type1 container an mdev pins guest pages on demand/],
      [{ vaddr: false }, /VFIO device 0000:65:00\.1: its IOMMU lacks VFIO_UPDATE_VADDR/],
      [{ mappings: 'outside' }, /DMA mapping at iova 0x[0-9a-f]+ \(4096 bytes\) is not inside one guest RAM block \('pc\.ram'\)/],
    ]
    for (const [k, [o, why]] of cases.entries()) {
      const { src, iommu, fdBase } = await pair(t, o)
      t.match(localRefusal('unix:/x', src.registry), why)
      await t.rejects(migrate(src, sock(), { local: true }), { code: 'EINVAL', message: why })
      await stillRunning(t, src)
      t.same(iommu.srcCalls, ['supportsUpdateVaddr'], 'no vaddr was forgotten')
      // Each case's source objects stay open until the test ends.
      await noneLeft(t, fdBase, 'no descriptor left open', SOURCE_FDS * (k + 1))
    }
  })

  t.test('the source cannot forget its vaddrs: it runs on, nothing was passed', async (t) => {
    const { src, dst, iommu, got, fdBase } = await pair(t)
    iommu.fail.invalidate = true
    const d = await destination(dst)
    await t.rejects(migrate(src, d.address, { local: true }), { message: /invalidate refused by the test/ })
    await t.rejects(d.done)
    await stillRunning(t, src)
    t.equal(got.adopted, undefined, 'the destination took nothing')
    t.same([...iommu.owner.values()], ['src'])
    await noneLeft(t, fdBase, 'no descriptor left open')
  })

  t.test('the destination refuses the passed objects: all closed, the source takes its vaddrs back', async (t) => {
    const { src, dst, iommu, fdBase } = await pair(t)
    iommu.fail.adopt = true
    const d = await destination(dst)
    await t.rejects(migrate(src, d.address, { local: true }), { message: /the passed VFIO objects were refused \(all closed\)/ })
    await t.rejects(d.done, { message: /vfio-kernel-local: the passed VFIO objects were refused \(all closed\): ENOTTY/ })
    await stillRunning(t, src)
    t.same(iommu.srcCalls, ['supportsUpdateVaddr', 'invalidateVaddr', 'revalidateVaddr'])
    t.same([...iommu.owner.values()], ['src'], 'the source gives the vaddr again')
    await noneLeft(t, fdBase, 'every passed descriptor was closed')
  })

  t.test('the destination fails after taking them, before READY: it closes them', async (t) => {
    const { src, dst, iommu, got, fdBase } = await pair(t)
    dst.checkIncoming = async () => { throw new Error('refused by the test after the devices were adopted') }
    const d = await destination(dst)
    await t.rejects(migrate(src, d.address, { local: true }), { message: /refused by the test/ })
    await t.rejects(d.done, { message: /refused by the test/ })
    await stillRunning(t, src)
    t.same(got.adopted, ['container', 'group', 'device'])
    t.equal(got.closed, true, 'the destination closed the set')
    t.same([...iommu.owner.values()], ['src'])
    await noneLeft(t, fdBase, 'no descriptor left open')
  })

  t.test('the source withdraws after READY (ABORT): the destination closes them, the source runs on', async (t) => {
    const { src, dst, iommu, got, fdBase } = await pair(t)
    const cancel = new AbortController()
    // Cancelled as the destination is about to send READY (once READY is
    // out, the source may read it and send GO before any callback of the
    // destination's runs: both are in this process), and READY written only
    // after the source sent ABORT and closed: the write fails (EPIPE), and
    // that must not hide the ABORT already received (it once did, and the
    // destination went to handover-unknown).
    let sourceDone!: Promise<unknown>
    const check = dst.checkIncoming.bind(dst)
    dst.checkIncoming = async () => {
      await check()
      cancel.abort()
      await sourceDone.catch(() => undefined)
    }
    const d = await destination(dst)
    sourceDone = migrate(src, d.address, { local: true, signal: cancel.signal })
    await t.rejects(sourceDone, /cancel/i)
    await t.rejects(d.done, { message: /ABORT/ })
    await stillRunning(t, src)
    t.equal(got.closed, true)
    t.same([...iommu.owner.values()], ['src'])
    await noneLeft(t, fdBase, 'no descriptor left open')
  })

  t.test('after GO the destination cannot give its vaddr: it rolls back, says so, and the source resumes on them', async (t) => {
    const { src, dst, iommu, got, fdBase } = await pair(t)
    iommu.fail.update = true
    const d = await destination(dst)
    await t.rejects(migrate(src, d.address, { local: true }), { message: /could not take this process's vaddr/ })
    await t.rejects(d.done, { message: /update refused by the test/ })
    await stillRunning(t, src)
    t.equal(got.closed, true)
    t.same([...iommu.owner.values()], ['src'])
    await noneLeft(t, fdBase, 'no descriptor left open')
  })

  t.test('after GO another start notifier fails: the vaddrs given are rolled back, the source resumes on them', async (t) => {
    const { src, dst, iommu, got, fdBase } = await pair(t)
    dst.vm.addChangeStateHandler({ name: 'test-failing-start', cb: (running) => { if (running) throw new Error('start refused by the test') } })
    const d = await destination(dst)
    await t.rejects(migrate(src, d.address, { local: true }), { message: /start refused by the test/ })
    await t.rejects(d.done, { message: /start refused by the test/ })
    await stillRunning(t, src)
    t.equal(got.closed, true)
    t.same([...iommu.owner.values()], ['src'], 'given back by the destination, taken back by the source')
    t.same(iommu.srcCalls, ['supportsUpdateVaddr', 'invalidateVaddr', 'revalidateVaddr'])
    await noneLeft(t, fdBase, 'no descriptor left open')
  })

  t.test('handover-unknown, resumed on both sides by mistake: the kernel lets only one own the DMA mappings', async (t) => {
    const { src, dst, iommu, got, fdBase } = await pair(t)
    // The destination waits 1 s for GO; the source's GO is held back 3 s on its way out.
    let listening!: (a: string) => void
    const address = new Promise<string>((r) => (listening = r))
    const dm = new IncomingMigration(dst, { local: true, parameters: { handoverTimeoutMs: 1000 }, onListening: (a) => listening(a) })
    const dstDone = dm.start(sock())
    dstDone.catch(() => undefined)
    const ch = await connect(await address)
    const writev = ch.writev.bind(ch)
    ch.writev = async (bufs) => {
      const all = Buffer.concat(bufs.map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)))
      if (all.length === HANDOVER_FRAME_LEN && all.readUInt32BE(0) === HANDOVER_MAGIC && all.readUInt16BE(4) === HandoverFrame.GO) await sleep(3000)
      return writev(bufs)
    }
    const sm = new OutgoingMigration(src, { local: true })
    const srcDone = sm.start(ch)
    srcDone.catch(() => undefined)
    const until = async (what: () => boolean) => {
      const deadline = Date.now() + 30_000
      while (!what() && Date.now() < deadline) await sleep(20)
    }
    await until(() => dm.status === 'handover-unknown' && sm.status === 'handover-unknown')
    t.equal(dm.status, 'handover-unknown', 'the destination cannot know whether GO was sent')
    t.equal(sm.status, 'handover-unknown', 'the source cannot know whether GO arrived')
    t.same([...iommu.owner.values()], [null], 'nobody gives the mappings a vaddr meanwhile')
    // The operator resumes the source...
    await sm.resolve('resume')
    await stillRunning(t, src)
    t.same([...iommu.owner.values()], ['src'])
    // ...and, wrongly, the destination too: the kernel refuses it the vaddrs, so it does not start.
    await t.rejects(dm.resolve('resume'), /could not take this process's vaddr: EINVAL: .*vaddr not forgotten \(src has it\)/)
    t.equal(dm.status, 'handover-unknown', 'a failed start leaves it as it was')
    t.not(dst.vm.state, 'running')
    t.same([...iommu.owner.values()], ['src'], 'the source keeps them')
    await dm.resolve('discard')
    await t.rejects(dstDone, /discarding this copy/)
    t.equal(got.closed, true, 'the discarded copy closed what it was passed')
    await srcDone.catch(() => undefined)
    await noneLeft(t, fdBase, 'no descriptor left open')
  })

  t.test('the destination checks the whole record before it takes a descriptor', async (t) => {
    // A source whose RAM has a block the destination lacks, with the DMA mapping in it.
    const [src, dst] = await vms(t)
    const iommu = new Iommu()
    const extra = { ...src.ram.blocks[0]!, name: 'extra.ram', base: 1 << 30 }
    const s = sourceObjects(t, iommu, [{ iova: BigInt(extra.base), size: 4096n }])
    const skv = new KernelVfioHandover(src.vm, src.registry, { ram: { blocks: [...src.ram.blocks, extra] } })
    await skv.add(s.device)
    const got: { adopted?: string[]; closed?: boolean } = {}
    new KernelVfioHandover(dst.vm, dst.registry, { ram: dst.ram, kernel: destinationKernel(iommu, got) })
    const fdBase = await steadyFds()
    const d = await destination(dst)
    await t.rejects(migrate(src, d.address, { local: true }), /./)
    await t.rejects(d.done, { message: /vfio-kernel-local: DMA mapping at iova 0x40000000 lies in RAM block 'extra\.ram', which this side does not have/ })
    await stillRunning(t, src)
    t.equal(got.adopted, undefined, 'no descriptor was adopted')
    t.same([...iommu.owner.values()], ['src'], 'the source took its vaddr back')
    await noneLeft(t, fdBase, 'the queued descriptors were closed')
  })

  t.test('a VM with a handover but no device sends no section: a destination without one takes the stream', async (t) => {
    const [src, dst] = await vms(t)
    new KernelVfioHandover(src.vm, src.registry, { ram: src.ram })
    const d = await destination(dst)
    const stats = await migrate(src, d.address, { local: true })
    t.equal(stats.status, 'completed')
    t.equal((await d.done).status, 'completed')
  })

  t.test('a copying migration refuses a device registered for the handover', async (t) => {
    const { src, dst, fdBase } = await pair(t)
    const d = await destination(dst)
    const e = await migrate(src, d.address).then(() => undefined, (x: Error) => x)
    t.match(e?.message, /registered for a local handover \(KernelVfioHandover\), which moves no device state: a copying migration cannot take them/)
    await t.rejects(d.done)
    await stillRunning(t, src)
    await noneLeft(t, fdBase)
  })
})
