// The microVM with the software vCPU always and KVM where it works: it runs,
// its notifiers stop and start it at a consistent point, its sections are
// registered, a migration carries RAM, vCPU, timer and device intact, and the
// device's DMA into guest RAM reaches the RAM migration through the tracker.
import t, { type Test } from 'tap'
import { MicroVm, VFIO_IDSTR } from '../../vmm/microvm/index.js'
import { kvmAvailable, PAGE_SIZE, type VcpuKind } from '../../vmm/machine/index.js'
import { DirtyBitmap } from '../../vmm/core/dirty-bitmap.js'
import { migrate, incoming } from '../../vmm/migration/index.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const RAM = 16 << 20

async function until(what: string, fn: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

async function scenario(t: Test, kind: VcpuKind): Promise<void> {
  t.test('runs, stops at a consistent point, starts again', async (t) => {
    const m = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: kind, workingSet: 1 << 20 })
    t.teardown(() => m.destroy())
    t.equal(m.vm.state, 'running')
    t.equal(m.vcpu.kind, kind)
    t.equal(m.machine, 'microvm-1')
    const ids = m.registry.entries().map((e) => e.idstr)
    for (const id of ['ram', 'cpu', 'microvm-timer', VFIO_IDSTR]) t.ok(ids.includes(id), `section ${id} registered`)
    t.equal(m.registry.entries()[0]!.idstr, 'ram', 'RAM is saved first')
    await until('the guest to run', () => m.vcpuCounter() > 100n)
    await t.rejects(m.ramDigest(), { errno: 16, message: /only with the vCPU stopped/ }, 'no digest of RAM the guest is writing')
    await m.vm.vmStop('paused')
    const c = m.vcpuCounter()
    const ticks = m.timerState().ticks
    const v = await m.verify()
    t.ok(v.checksumConsistent, 'checksum equals the sum over the region after the stop')
    await sleep(50)
    t.equal(m.vcpuCounter(), c, 'counter frozen while stopped')
    t.equal(m.timerState().ticks, ticks, 'timer frozen while stopped')
    t.equal(await m.ramDigest(), v.ramDigest, 'RAM unchanged while stopped (no DMA either)')
    await m.vm.vmStart()
    await until('the counter to move again', () => m.vcpuCounter() > c)
    t.ok(BigInt(m.timerState().ticks) >= BigInt(ticks))
  })

  t.test('live migration carries RAM, vCPU, timer and device state', async (t) => {
    const src = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: kind, workingSet: 1 << 20, dmaPagesPerSec: 2000, vfio: { stateSize: 1 << 20, dirtyRate: 256 << 10 } })
    const dst = await MicroVm.create({ role: 'dest', ramSize: RAM, vcpu: kind, workingSet: 1 << 20, dmaPagesPerSec: 2000, vfio: { stateSize: 1 << 20, dirtyRate: 256 << 10 }, verifyBeforeStart: true })
    t.teardown(async () => {
      await src.destroy()
      await dst.destroy()
    })
    t.equal(dst.vm.state, 'inmigrate')
    await until('the guest to run', () => src.vcpuCounter() > 100n)
    let address = ''
    let listening!: () => void
    const ready = new Promise<void>((r) => (listening = r))
    const inc = incoming(dst, 'tcp:127.0.0.1:0', { onListening: (a) => { address = a; listening() } })
    await ready
    const stats = await migrate(src, address, { parameters: { maxBandwidth: 0 } })
    const res = await inc
    t.equal(stats.status, 'completed')
    t.equal(res.status, 'completed')
    t.equal(src.vm.state, 'postmigrate')
    t.equal(stats.dirtyTracker, 'device-dma-logging')
    const s = await src.verify()
    const d = await dst.verificationBeforeStart()!
    // The verification's share of the downtime, as the destination measured it and the source received it.
    t.ok(dst.verificationMs()! >= d.hashMs, 'the start waited for the whole verification')
    t.equal(res.verificationMs, dst.verificationMs())
    t.equal(stats.downtimeVerification, Math.round(dst.verificationMs()! * 1000) / 1000, 'reported to the source (µs precision)')
    t.ok(stats.downtimeVerification! <= stats.downtime!, 'a part of the downtime')
    t.ok(s.checksumConsistent && d.checksumConsistent)
    t.equal(d.ramDigest, s.ramDigest, 'RAM digest')
    t.equal(d.deviceDigest, s.deviceDigest, 'device digest')
    t.not(s.deviceDigest, '', 'there is a device')
    t.equal(d.counter, s.counter, 'vCPU counter')
    t.same(d.timer, s.timer, 'timer state')
    t.equal(dst.vm.state, 'running')
    await until('the destination guest to run', () => dst.vcpuCounter() > BigInt(d.counter))
  })
}

t.test('soft vCPU', (t) => scenario(t, 'soft'))
t.test('KVM vCPU', async (t) => {
  const p = await kvmAvailable()
  if (!p.available) {
    t.skip(`KVM not usable here: ${p.reason}`)
    return
  }
  await scenario(t, 'kvm')
})

// The VFIO set's dirty log, driven here as the RAM migration drives it.
t.test('device DMA reaches the RAM dirty bitmap through the tracker', async (t) => {
  const m = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: 'soft', workingSet: 1 << 20, dmaPagesPerSec: 5000 })
  t.teardown(() => m.destroy())
  const win = { first: m.layout.dmaBase / PAGE_SIZE, end: (m.layout.dmaBase + m.layout.dmaSize) / PAGE_SIZE }
  await m.vfio.logStart([])
  t.equal(m.dirtyTrackerKind(), 'device-dma-logging')
  const before = m.vcpu.memory.snapshot()
  const mem = m.vcpu.memory.bytes
  const changedSince = (p: number) => Buffer.compare(mem.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), before.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)) !== 0
  // The engine runs on the device's ticker thread: on a loaded machine its
  // first writes come late, and a late tick writes the pages it owes in one
  // batch, possibly before the snapshot above (logged, yet unchanged since).
  // So sync (each sync adds to the bitmap) until a logged page changed after
  // the snapshot, bounded, instead of a fixed wait.
  const bm = new DirtyBitmap(0, RAM)
  const deadline = Date.now() + 10_000
  let changed: number[] = []
  while (changed.length === 0 && Date.now() < deadline) {
    await sleep(25)
    await m.vfio.logSync(bm)
    changed = [...bm.dirtyPages()].filter(changedSince)
  }
  const pages = [...bm.dirtyPages()]
  t.ok(pages.length > 0, `DMA dirtied ${pages.length} pages`)
  t.ok(pages.every((p) => p >= win.first && p < win.end), 'only pages of the DMA window')
  t.ok(changed.length > 0, `logged pages really changed (${changed.length})`)
  // Every changed page of the window must be in the log (a missed page would be stale on the destination).
  const bm2 = new DirtyBitmap(0, RAM)
  await m.vm.vmStop('paused')
  await m.vfio.logSync(bm2)
  for (let p = win.first; p < win.end; p++) {
    const a = mem.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)
    const b = before.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)
    if (Buffer.compare(a, b) !== 0 && !bm.isDirty(p) && !bm2.isDirty(p)) {
      t.fail(`page ${p} changed by DMA but was never reported`)
      break
    }
  }
  const vb = new DirtyBitmap(0, RAM)
  await m.syncVcpuDirty(vb)
  t.ok([...vb.dirtyPages()].every((p) => p < win.first), 'the vCPU log never covers the DMA window')
  await m.vfio.logStop()
})

t.test('without device DMA logging every DMA page is dirty on every sync', async (t) => {
  const m = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: 'soft', dmaPagesPerSec: 100, vfio: { dmaLogging: false } })
  t.teardown(() => m.destroy())
  await m.vfio.logStart([])
  t.equal(m.dirtyTrackerKind(), 'none')
  t.match(m.dirtyTracker!.reason, /no device DMA logging/)
  for (let i = 0; i < 2; i++) {
    const bm = new DirtyBitmap(0, RAM)
    await m.vfio.logSync(bm)
    t.equal(bm.count(), m.layout.dmaSize / PAGE_SIZE, `sync ${i}: the whole window`)
  }
})

t.test('no VFIO device: no DMA window, the workload gets the room', async (t) => {
  const m = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: 'soft', vfio: false, autostart: false })
  t.teardown(() => m.destroy())
  t.equal(m.vm.state, 'prelaunch')
  t.equal(m.layout.dmaSize, 0)
  t.equal(m.emu, undefined)
  t.equal(await m.deviceDigest(), '')
  t.notOk(m.registry.entries().some((e) => e.idstr.endsWith('/vfio')))
})

t.test('the switchover work each side announces: hashing RAM, only where it is done', async (t) => {
  const src = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: 'soft', vfio: false, autostart: false })
  t.teardown(() => src.destroy())
  t.ok((await src.expectedSaveMs()) > 0, 'a source with the RAM proof hashes RAM in the downtime')
  t.equal(await src.expectedCheckMs(), 0, 'a source checks nothing before a start')
  const bare = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: 'soft', vfio: false, autostart: false, ramProof: false })
  t.teardown(() => bare.destroy())
  t.equal(await bare.expectedSaveMs(), 0, 'without it, nothing')
  const dst = await MicroVm.create({ role: 'dest', ramSize: RAM, vcpu: 'soft', vfio: false, verifyBeforeStart: true })
  t.teardown(() => dst.destroy())
  t.ok((await dst.expectedCheckMs()) > 0, 'a verifying destination hashes RAM before it starts')
})

t.test('bad options are refused with the option named', async (t) => {
  await t.rejects(MicroVm.create({ role: 'x' as 'source', ramSize: RAM }), /role/)
  await t.rejects(MicroVm.create({ role: 'source', ramSize: 3 << 20, vcpu: 'soft' }), /multiple of 2 MiB/)
  await t.rejects(MicroVm.create({ role: 'source', ramSize: RAM, vcpu: 'soft', dmaPagesPerSec: -1 }), /dmaPagesPerSec/)
  await t.rejects(MicroVm.create({ role: 'source', ramSize: RAM, vcpu: 'soft', workingSet: 1 }), /working set/)
})
