// Guests above the old 1 GiB - 2 MiB limit, up to MAX_RAM, on both vCPUs. The
// region is the top 64 pages (the last page directory the KVM guest uses),
// and the move copies only the fixed pages and what the dirty log reported:
// each guest touches a few hundred KiB of its gigabytes.
import t from 'tap'
import type { Test } from 'tap'
import { native } from '../../vmm/native/addon.js'
import {
  createVcpu, dirtyPages, expectedDirtyPages, kvmAvailable, readCtl, validateRamSize,
  CTL, FIRST_DATA_PAGE, MAX_RAM, PAGE_SIZE, RAM_ALIGN, type VcpuKind,
} from '../../vmm/machine/index.js'
import { consistent, runUntil } from './helpers.js'

const GiB = 1024 ** 3
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

t.test('the limit: 2, 3 GiB and MAX_RAM (4 GiB) are taken, one step more is refused', async (t) => {
  t.equal(MAX_RAM, 4 * GiB)
  t.doesNotThrow(() => validateRamSize(2 * GiB))
  t.doesNotThrow(() => validateRamSize(3 * GiB))
  t.doesNotThrow(() => validateRamSize(MAX_RAM))
  t.throws(() => validateRamSize(MAX_RAM + RAM_ALIGN), { errno: 22, message: /at most 4 GiB/ })
  const l = native.kvmLayout()
  t.equal(l.maxRam, MAX_RAM, 'kvm-core agrees')
  t.equal(l.exitMmio, 3 * GiB, `the KVM exit page (${l.exitMmio.toString(16)}) opens the hole at 3 GiB, where no RAM is mapped`)
})

async function bigGuestMoves(t: Test, kind: VcpuKind, ramSize: number): Promise<void> {
  const pages = ramSize / PAGE_SIZE
  const params = { regionStart: pages - 64, regionPages: 64, pagesPerIter: 4, spin: 200 }
  const a = await createVcpu(ramSize, { kind, params })
  t.teardown(() => a.destroy())
  t.equal(a.memory.size, ramSize)
  await a.quiesce() // up to the first stop check
  const moved = new Set(dirtyPages(await a.syncDirtyLog()))
  const cursor = readCtl(a.memory.bytes, CTL.cursor)
  const c0 = a.counter()
  await a.start()
  const deadline = Date.now() + 10_000
  while (a.counter() < c0 + 5n && Date.now() < deadline) await sleep(2)
  await a.quiesce()
  const iters = Number(a.counter() - c0)
  t.ok(iters >= 5, `${kind} ${ramSize / GiB} GiB: ran ${iters} iterations`)
  const logged = dirtyPages(await a.syncDirtyLog())
  t.same(logged, expectedDirtyPages(a.params(), cursor, iters), 'dirty log: exactly the top pages written and the control block')
  t.ok(consistent(a), 'checksum matches the region')
  for (const p of logged) moved.add(p)

  // Pause anywhere once the guest is under way again, then move what the
  // logs reported plus the fixed pages (installed before logging began); the
  // rest is zero on both sides.
  const resumedAt = a.counter()
  await a.start()
  await runUntil(a, resumedAt + 1n)
  t.equal((await a.pause()).reason, 'paused')
  const state = await a.getState()
  for (const p of dirtyPages(await a.syncDirtyLog())) moved.add(p)
  for (let p = 0; p < FIRST_DATA_PAGE; p++) moved.add(p)
  const counter = a.counter()
  const b = await createVcpu(ramSize, { kind, params: { ...params, seed: 5 } })
  t.teardown(() => b.destroy())
  for (const p of moved) b.memory.page(p).set(a.memory.page(p))
  await a.destroy()
  await b.setState(state)
  t.equal(b.counter(), counter)
  await b.start()
  const deadline2 = Date.now() + 10_000
  while (b.counter() < counter + 5n && Date.now() < deadline2) await sleep(2)
  await b.quiesce()
  t.ok(b.counter() >= counter + 5n, `counter continues after the move: ${counter} -> ${b.counter()}`)
  t.ok(consistent(b), 'checksum still matches the region after the move')
  t.comment(`${kind} ${ramSize / GiB} GiB: ${moved.size} pages moved, rss ${Math.round(process.memoryUsage().rss / 2 ** 20)} MiB`)
}

for (const size of [3 * GiB, MAX_RAM]) {
  t.test(`soft vCPU: ${size / GiB} GiB guest runs, dirties, moves`, (t) => bigGuestMoves(t, 'soft', size))
}

const probe = await kvmAvailable()
const skip = probe.available ? false : `KVM unavailable: ${probe.reason}`
if (skip) t.comment(`skipping KVM big-guest tests: ${skip}`)
// 3 GiB: all RAM in one slot below the hole; MAX_RAM: the region (the top
// 64 pages) lies in the slot above the hole, at guest-physical 4 GiB + 1 GiB - 256 KiB.
for (const size of [3 * GiB, MAX_RAM]) {
  t.test(`KVM vCPU: ${size / GiB} GiB guest runs, dirties, moves`, { skip }, (t) => bigGuestMoves(t, 'kvm', size))
}

t.test('the microVM layout still fits at 2 GiB and MAX_RAM', async (t) => {
  const { planLayout, DEFAULT_WORKING_SET } = await import('../../vmm/microvm/layout.js')
  for (const size of [2 * GiB, MAX_RAM]) {
    const l = planLayout(size, { dma: true })
    t.equal(l.pages, size / PAGE_SIZE)
    t.same([l.workload.regionStart, l.workload.regionPages], [FIRST_DATA_PAGE, DEFAULT_WORKING_SET / PAGE_SIZE], 'working set at the bottom')
    t.equal(l.dmaBase + l.dmaSize, size, 'DMA window ends at the top of RAM')
    t.equal(l.dmaSize, size / 16)
    t.equal(l.coldFirst + l.coldPages, l.dmaBase / PAGE_SIZE, 'cold pages fill the gap exactly')
  }
  t.throws(() => planLayout(MAX_RAM + RAM_ALIGN, { dma: true }), { errno: 22 })
})
