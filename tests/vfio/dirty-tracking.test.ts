import t, { type Test } from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { native } from '../../vmm/native/addon.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { VfioMigrationSet, type VfioSetOptions } from '../../vmm/vfio/vfio-set.js'
import { DirtyBitmap } from '../../vmm/core/dirty-bitmap.js'
import { startDirtyTracker } from '../../vmm/vfio/dirty-tracking.js'
import { registerRam } from '../../vmm/ram/index.js'
import { listen } from '../../vmm/channel/index.js'
import { incoming, OutgoingMigration, type migrate, type MigratableVm } from '../../vmm/migration/index.js'

const RAM = 4 << 20
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms))

async function setWith(opts: { dmaLogging: boolean }[]) {
  const vm = new Vm('running')
  const set = new VfioMigrationSet(vm, new SaveVMRegistry())
  const emus = []
  for (const [i, o] of opts.entries()) {
    const emu = new native.EmulatedDevice({ name: `d${i}`, flags: 7, stateSize: 4096, ...o })
    emus.push(emu)
    await set.add(emu.device(), { idstr: `d${i}/vfio` })
  }
  return { set, emus }
}

t.test('device DMA logging when every device has it: exactly the pages the DMA engine wrote', async t => {
  const { set, emus } = await setWith([{ dmaLogging: true }])
  const ram = Buffer.alloc(RAM)
  emus[0].attachGuestMemory(ram, 0)
  const tracker = await startDirtyTracker(set.devices, [{ iova: 0, size: RAM }])
  t.equal(tracker.kind, 'device-dma-logging')
  emus[0].startDma(2000)
  // The engine runs on the device's ticker thread: on a loaded machine its
  // first writes can come late, so wait for them (bounded) instead of a
  // fixed 100 ms.
  for (let i = 0; i < 200 && !emus[0].loggedPages()?.length; i++) await sleep(25)
  await sleep(50)
  emus[0].stopDma()
  const logged = emus[0].loggedPages()!.map(Number)
  t.ok(logged.length > 0, 'the engine wrote pages')
  const bm = new DirtyBitmap(0, RAM)
  await tracker.sync(bm)
  t.same([...bm.dirtyPages()], [...new Set(logged.map(a => a / 4096))].sort((a, b) => a - b), 'bitmap = the device log')
  const again = new DirtyBitmap(0, RAM)
  await tracker.sync(again)
  t.equal(again.count(), 0, 'report cleared the log')
  await tracker.stop()
  t.equal(emus[0].loggedPages(), null, 'logging stopped')
})

t.test('one device without DMA logging: no tracker, every mapped page is dirty on every sync', async t => {
  const { set } = await setWith([{ dmaLogging: true }, { dmaLogging: false }])
  const tracker = await startDirtyTracker(set.devices, [{ iova: 0, size: 1 << 20 }, { iova: 2 << 20, size: 4096 }])
  t.equal(tracker.kind, 'none')
  t.match(tracker.reason, /no device DMA logging on d1.*every DMA-mapped page counts as dirty/)
  for (let i = 0; i < 2; i++) {
    const bm = new DirtyBitmap(0, RAM)
    await tracker.sync(bm)
    t.equal(bm.count(), 256 + 1, `sync ${i}: all mapped pages, nothing else`)
    t.notOk(bm.isDirty(300))
  }
  await tracker.stop()
})

t.test('the container tracker is next in line, and a failing one falls back to all-dirty', async t => {
  const { set } = await setWith([{ dmaLogging: false }])
  const calls: string[] = []
  const container = {
    dirtyStart: async () => { calls.push('start') },
    dirtyStop: async () => { calls.push('stop') },
    dirtyBitmap: async (iova: bigint, size: bigint) => {
      calls.push(`bitmap ${iova}+${size}`)
      const b = Buffer.alloc(Number(size / 4096n / 8n))
      b[0] = 0b101
      return b
    },
  }
  const tracker = await startDirtyTracker(set.devices, [{ iova: 0, size: 1 << 20 }], container as never)
  t.equal(tracker.kind, 'container')
  const bm = new DirtyBitmap(0, RAM)
  await tracker.sync(bm)
  t.same([...bm.dirtyPages()], [0, 2])
  await tracker.stop()
  t.same(calls, ['start', 'bitmap 0+1048576', 'stop'])

  const broken = { ...container, dirtyStart: async () => { throw new Error('ENOTTY: no dirty tracking') } }
  const t2 = await startDirtyTracker(set.devices, [{ iova: 0, size: 8192 }], broken as never)
  t.equal(t2.kind, 'none')
  t.match(t2.reason, /container dirty tracking unavailable: ENOTTY/)

  const flaky = { ...container, dirtyBitmap: async () => { throw new Error('EIO') } }
  const t3 = await startDirtyTracker(set.devices, [{ iova: 0, size: 8192 }], flaky as never)
  const bm3 = new DirtyBitmap(0, RAM)
  await t3.sync(bm3)
  t.equal(bm3.count(), 2, 'a failed bitmap read marks the whole mapping dirty')
})

t.test('no VFIO device: nothing to track', async t => {
  const { set } = await setWith([])
  const tracker = await startDirtyTracker(set.devices, [{ iova: 0, size: RAM }])
  t.equal(tracker.kind, 'no-devices')
  const bm = new DirtyBitmap(0, RAM)
  await tracker.sync(bm)
  t.equal(bm.count(), 0)
})

// ---- The set wires DMA dirty tracking into the RAM migration by itself ----
//
// An embedder registers RAM with its own (vCPU) dirty sources and adds a
// DMA-capable device to the set, and wires nothing else: every page the
// device writes during pre-copy must still reach the destination.

interface Vmm {
  vm: Vm
  ram: Buffer
  emu: InstanceType<typeof native.EmulatedDevice>
  machine: MigratableVm
}

async function vmmWithDmaDevice(role: 'source' | 'dest', dev: { dmaLogging?: boolean } = {}, vfioOpts: VfioSetOptions = {}): Promise<Vmm> {
  const vm = new Vm(role === 'source' ? 'prelaunch' : 'inmigrate')
  const registry = new SaveVMRegistry()
  const ram = Buffer.alloc(MIG_RAM)
  // Non-zero pages, so the bulk stage moves bytes (zero pages would go as flags, at once).
  if (role === 'source') for (let p = 0; p < MIG_RAM / 4096; p++) ram.fill(1 + (p % 251), p * 4096, p * 4096 + 4096)
  // The guest's vCPUs are idle: nothing but the device writes guest memory.
  registerRam(registry, { blocks: [{ name: 'pc.ram', memory: ram }], dirtySources: [] })
  const vfio = new VfioMigrationSet(vm, registry, vfioOpts)
  const emu = new native.EmulatedDevice({ name: `${role}-nic`, flags: 7, stateSize: 64 << 10, seed: role === 'source' ? 1 : 2, ...dev })
  emu.attachGuestMemory(ram, 0)
  await vfio.add(emu.device(), { idstr: 'nic/vfio' })
  if (role === 'source') await vm.vmStart()
  return { vm, ram, emu, machine: { vm, registry, machine: 'dma-test', vfio } }
}

const MIG_RAM = 8 << 20

async function migrateOnce(t: Test, src: Vmm, dst: Vmm, opts: Parameters<typeof migrate>[2] = {}, onProgress?: (m: OutgoingMigration) => void) {
  const l = await listen(`unix:${join(mkdtempSync(join(tmpdir(), 'dma-dirty-')), 's')}`)
  t.teardown(() => void l.close())
  const arrived = incoming(dst.machine, l)
  arrived.catch(() => undefined)
  const out = new OutgoingMigration(src.machine, opts)
  if (onProgress) out.once('progress', () => onProgress(out))
  const stats = await out.start(l.address)
  await arrived
  return stats
}

t.test('a DMA-writing device whose dirty tracking the embedder never wired: every page it wrote arrives', async t => {
  const src = await vmmWithDmaDevice('source')
  const dst = await vmmWithDmaDevice('dest')
  t.teardown(() => { src.emu.detachGuestMemory(); dst.emu.detachGuestMemory() })
  // 4000 random page writes a second into 2048 pages, during a pre-copy the
  // bandwidth cap stretches to about half a second: most writes land on
  // pages the bulk stage has already sent.
  src.emu.startDma(4000)
  for (let i = 0; i < 200 && src.emu.stats().dmaWrites === 0; i++) await sleep(25)
  const before = src.emu.stats().dmaWrites
  const stats = await migrateOnce(t, src, dst, { parameters: { maxBandwidth: 16 << 20, downtimeLimitMs: 300 } })
  t.equal(stats.status, 'completed')
  // That the device wrote during the migration is what makes the check below
  // mean something; how much depends on how much CPU its thread got (280
  // pages in one run beside a CPU-starved suite, thousands when idle), so
  // only "some" is asserted.
  const during = src.emu.stats().dmaWrites - before
  t.ok(during > 0, `the device wrote ${during} pages during the migration`)
  t.equal(stats.dirtyTracker, 'device-dma-logging', 'the devices\' own DMA logging was used')
  // The device stopped DMA with the VM at the switchover, so the source's RAM is final.
  const stale: number[] = []
  for (let p = 0; p < MIG_RAM / 4096; p++) {
    if (!src.ram.subarray(p * 4096, p * 4096 + 4096).equals(dst.ram.subarray(p * 4096, p * 4096 + 4096))) stale.push(p)
  }
  t.same(stale, [], 'no page differs between source and destination')
  t.equal(src.emu.loggedPages(), null, 'DMA logging stopped when the migration ended')
})

t.test('a device without DMA logging: every page it may write is resent at every sync, and the migration still completes exact', async t => {
  // The device may write only the first MiB (its IOMMU mapping): only that counts as dirty.
  const window = { iova: 0, size: 1 << 20 }
  const src = await vmmWithDmaDevice('source', { dmaLogging: false }, { dmaMappings: () => [window] })
  const dst = await vmmWithDmaDevice('dest', { dmaLogging: false }, { dmaMappings: () => [window] })
  t.teardown(() => { src.emu.detachGuestMemory(); dst.emu.detachGuestMemory() })
  src.emu.detachGuestMemory()
  src.emu.attachGuestMemory(src.ram.subarray(0, window.size), 0)
  src.emu.startDma(4000)
  const stats = await migrateOnce(t, src, dst, { parameters: { maxBandwidth: 16 << 20, downtimeLimitMs: 300 } })
  t.equal(stats.status, 'completed')
  t.equal(stats.dirtyTracker, 'none')
  t.match(src.machine.vfio!.dirtyTracker!.reason, /no device DMA logging on source-nic.*every DMA-mapped page counts as dirty/)
  t.ok(src.ram.equals(dst.ram), 'RAM identical on the destination')
})

t.test('DMA logging starts with the RAM migration and stops when it is cancelled', async t => {
  const src = await vmmWithDmaDevice('source')
  const dst = await vmmWithDmaDevice('dest')
  t.teardown(() => { src.emu.detachGuestMemory(); dst.emu.detachGuestMemory() })
  t.equal(src.emu.loggedPages(), null, 'no logging before a migration')
  let during: unknown = 'not seen'
  await t.rejects(migrateOnce(t, src, dst, { parameters: { maxBandwidth: 1 << 20 } }, m => {
    during = src.emu.loggedPages()
    m.cancel()
  }), { code: 'ECANCELED' })
  t.type(during, Array, 'logging was on during pre-copy')
  t.equal(src.emu.loggedPages(), null, 'and off after the cancel')
  t.equal(src.vm.state, 'running')
  // Nothing left behind: the next migration starts logging afresh (a leftover log would be EBUSY).
  const dst2 = await vmmWithDmaDevice('dest')
  t.teardown(() => dst2.emu.detachGuestMemory())
  const stats = await migrateOnce(t, src, dst2, { parameters: { maxBandwidth: 0 } })
  t.equal(stats.status, 'completed')
  t.equal(stats.dirtyTracker, 'device-dma-logging')
})
