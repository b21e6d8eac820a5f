import t from 'tap'
import { native } from '../../vmm/native/addon.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { VfioMigrationSet } from '../../vmm/vfio/vfio-set.js'
import { DirtyBitmap } from '../../vmm/vfio/dirty-pages.js'

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
  const tracker = await set.startDirtyTracker([{ iova: 0, size: RAM }])
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
  const tracker = await set.startDirtyTracker([{ iova: 0, size: 1 << 20 }, { iova: 2 << 20, size: 4096 }])
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
  const tracker = await set.startDirtyTracker([{ iova: 0, size: 1 << 20 }], container as never)
  t.equal(tracker.kind, 'container')
  const bm = new DirtyBitmap(0, RAM)
  await tracker.sync(bm)
  t.same([...bm.dirtyPages()], [0, 2])
  await tracker.stop()
  t.same(calls, ['start', 'bitmap 0+1048576', 'stop'])

  const broken = { ...container, dirtyStart: async () => { throw new Error('ENOTTY: no dirty tracking') } }
  const t2 = await set.startDirtyTracker([{ iova: 0, size: 8192 }], broken as never)
  t.equal(t2.kind, 'none')
  t.match(t2.reason, /container dirty tracking unavailable: ENOTTY/)

  const flaky = { ...container, dirtyBitmap: async () => { throw new Error('EIO') } }
  const t3 = await set.startDirtyTracker([{ iova: 0, size: 8192 }], flaky as never)
  const bm3 = new DirtyBitmap(0, RAM)
  await t3.sync(bm3)
  t.equal(bm3.count(), 2, 'a failed bitmap read marks the whole mapping dirty')
})

t.test('no VFIO device: nothing to track', async t => {
  const { set } = await setWith([])
  const tracker = await set.startDirtyTracker([{ iova: 0, size: RAM }])
  t.equal(tracker.kind, 'no-devices')
  const bm = new DirtyBitmap(0, RAM)
  await tracker.sync(bm)
  t.equal(bm.count(), 0)
})
