import t from 'tap'
import { randomInt } from 'node:crypto'
import { createVcpu, kvmAvailable } from '../../vmm/machine/index.js'
import { DirtyBitmap } from '../../vmm/core/dirty-bitmap.js'
import { vcpuDirtySource, registerRam, type DirtySource } from '../../vmm/ram/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms))

import { PAGE, guestRam, side, migrate, firstDiff } from './helpers.js'

t.test('a writer keeps dirtying pages while pre-copy iterates; stop + complete leaves byte-equal RAM', async t => {
  const pages = 1024
  const mem = guestRam(pages)
  // The writer's own log, read-and-cleared by the dirty source like KVM's.
  let log = new Set<number>()
  const source: DirtySource = async into => {
    const pagesNow = log
    log = new Set()
    for (const p of pagesNow) into.markPage(p)
  }
  let writes = 0
  const write = () => {
    for (let i = 0; i < 4; i++) {
      const p = randomInt(pages)
      // Data first, then the log: a sync between the two re-sends the page, never loses it.
      mem[p * PAGE + randomInt(PAGE)] = randomInt(1, 256)
      if (i % 2 === 0) mem.fill(0, p * PAGE, (p + 1) * PAGE)
      log.add(p)
      writes++
    }
  }
  const timer = setInterval(write, 1)
  t.teardown(() => clearInterval(timer))
  const src = side([{ name: 'pc.ram', memory: mem }], [source])
  const dstMem = new Uint8Array(pages * PAGE)
  const dst = side([{ name: 'pc.ram', memory: dstMem }])
  let rounds = 0
  await migrate(src, dst, {
    maxBandwidth: 64 << 20,
    round: async (i, save) => {
      rounds = i + 1
      // A memory channel never waits on I/O; give the writer its turn, as a socket would.
      await sleep(3)
      if (i < 5) return false
      const p = await save.pendingExact()
      return p.precopyOnly < 64 * PAGE || i > 200
    },
    stop: async () => clearInterval(timer),
  })
  t.ok(writes > 4, `the writer ran during pre-copy (${writes} writes, ${rounds} rounds)`)
  const s = src.ram.stats()
  t.ok(s.dirtySyncCount >= 3, `synced ${s.dirtySyncCount} times`)
  t.ok(s.normalPages + s.zeroPages > pages, 're-dirtied pages went out again')
  t.ok(s.iterations >= 6)
  t.equal(firstDiff(mem, dstMem), -1, 'destination RAM equals the stopped source')
})

for (const kind of ['soft', 'kvm'] as const) {
t.test(`a ${kind} vCPU dirties RAM through its dirty log while pre-copy runs`, async t => {
  if (kind === 'kvm') {
    const probe = await kvmAvailable()
    if (!probe.available) return t.skip(`no KVM here: ${probe.reason ?? 'unavailable'}`)
  }
  const v = await createVcpu(4 << 20, { kind, params: { pagesPerIter: 8, spin: 2000 } })
  t.teardown(() => v.destroy())
  const src = side([{ name: 'pc.ram', memory: v.memory.bytes }], [vcpuDirtySource(v)])
  const dstMem = new Uint8Array(v.memory.size)
  const dst = side([{ name: 'pc.ram', memory: dstMem }])
  await v.start()
  const before = v.counter()
  await migrate(src, dst, {
    maxBandwidth: 32 << 20,
    round: async (i, save) => {
      await sleep(3)
      await save.pendingExact()
      // Correctness, not convergence: this guest may outrun a busy machine's link.
      return i >= 5
    },
    stop: async () => { await v.pause() },
  })
  t.ok(v.counter() > before, `the guest ran ${v.counter() - before} iterations during migration`)
  const s = src.ram.stats()
  t.ok(s.normalPages + s.zeroPages > v.memory.pages, `pages the guest re-dirtied went out again (${s.normalPages + s.zeroPages} sent, ${s.dirtySyncCount} syncs)`)
  t.equal(firstDiff(v.memory.bytes, dstMem), -1, 'destination RAM equals the paused guest\'s')
})
}

t.test('every dirty source is synced, a failing one fails the sync', async t => {
  const mem = guestRam(64)
  const calls: string[] = []
  const a: DirtySource = async into => { calls.push('a'); into.markPage(3) }
  const b: DirtySource = async into => { calls.push('b'); into.markRange(10 * PAGE, 2 * PAGE) }
  let clock = 0
  const reg = new SaveVMRegistry()
  const ram = registerRam(reg, { blocks: [{ name: 'pc.ram', memory: mem }], dirtySources: [a, b], now: () => clock })
  const src = { reg, ram }
  const { MigStream } = await import('../../vmm/stream/stream.js')
  const { memoryPair } = await import('../../vmm/channel/memory.js')
  const [x] = memoryPair(1 << 24)
  const f = new MigStream(x)
  const h = src.ram.entry.handlers
  await h.saveSetup!(f)
  t.same(calls, ['a', 'b'], 'setup starts every log')
  t.equal(h.statePendingEstimate!().precopyOnly, 64 * PAGE, 'bulk stage: every page')
  t.equal(await h.saveLiveIterate!(f), true)
  t.equal(h.statePendingEstimate!().precopyOnly, 0)
  const exact = await h.statePendingExact!()
  t.equal(exact.precopyOnly, 3 * PAGE, 'page 3 and pages 10-11 dirty again')
  t.equal(src.ram.stats().dirtyPagesLastSync, 3)
  t.equal(src.ram.stats().dirtyPagesRate, 0, 'no rate before a whole period')
  clock = 1500
  await src.ram.sync()
  t.equal(src.ram.stats().dirtyPagesRate, 4, '6 pages in 1.5 s (the setup sync does not count)')
  t.equal(src.ram.stats().dirtySyncCount, 3)
  t.same(calls, ['a', 'b', 'a', 'b', 'a', 'b'])
  await h.saveCleanup!()
  const bad = side([{ name: 'pc.ram', memory: mem }], [async () => { throw new Error('dirty log gone') }])
  await t.rejects(bad.ram.entry.handlers.saveSetup!(f) as Promise<void>, /dirty log gone/)
  const fresh = side([{ name: 'pc.ram', memory: mem }])
  await t.rejects(async () => fresh.ram.entry.handlers.saveLiveIterate!(new MigStream(memoryPair()[0])), /not set up/)
})

t.test('DirtyBitmap: word-wise operations agree with a page-by-page model', async t => {
  for (const pages of [1, 31, 32, 33, 100, 1000]) {
    const base = 0x100000
    const bm = new DirtyBitmap(base, pages * PAGE)
    const model = new Set<number>()
    for (let k = 0; k < 50; k++) {
      const op = randomInt(4)
      if (op === 0) {
        const p = randomInt(-2, pages + 2)
        bm.markPage(p)
        if (p >= 0 && p < pages) model.add(p)
      } else if (op === 1) {
        const first = randomInt(-3, pages + 3)
        const n = randomInt(0, 70)
        bm.markRange(base + first * PAGE + randomInt(PAGE), n * PAGE)
      } else if (op === 2) {
        const kvm = new Uint8Array(Math.ceil(pages / 8) + 2)
        for (let i = 0; i < 5; i++) { const p = randomInt(kvm.length * 8); kvm[p >> 3] |= 1 << (p & 7) }
        const at = randomInt(3) * 8
        bm.markBitmap(base + at * PAGE, kvm)
        for (let p = 0; p < kvm.length * 8; p++) if (kvm[p >> 3] & (1 << (p & 7)) && at + p < pages) model.add(at + p)
      } else {
        const p = randomInt(pages)
        bm.clearPage(p)
        model.delete(p)
      }
      // markRange adds whatever it adds; resync the model from isDirty only for ranges.
      if (op === 1) for (let p = 0; p < pages; p++) if (bm.isDirty(p)) model.add(p)
    }
    const sorted = [...model].sort((x, y) => x - y)
    t.same([...bm.dirtyPages()], sorted, `${pages} pages: iteration`)
    t.equal(bm.count(), model.size, `${pages} pages: count`)
    const lo = randomInt(pages)
    const hi = randomInt(lo, pages + 1)
    t.equal(bm.countRange(lo, hi - lo), sorted.filter(p => p >= lo && p < hi).length, 'countRange')
    t.equal(bm.findNext(lo, hi), sorted.find(p => p >= lo && p < hi) ?? -1, 'findNext')
    const target = new DirtyBitmap(base, pages * PAGE)
    target.markPage(0)
    const added = bm.mergeInto(target, lo, hi - lo)
    const inRange = sorted.filter(p => p >= lo && p < hi)
    t.equal(added, inRange.filter(p => p !== 0).length, 'mergeInto counts new pages')
    t.same([...target.dirtyPages()], [...new Set([0, ...inRange])].sort((x, y) => x - y), 'mergeInto merges the range only')
  }
  const all = new DirtyBitmap(0, 40 * PAGE)
  all.markAll()
  t.equal(all.count(), 40)
  all.clearPage(5)
  t.equal(all.count(), 39, 'clearing a page of an all-dirty map')
  t.notOk(all.isDirty(5))
  t.equal(all.findNext(5), 6)
  const bits = new Uint8Array(8).fill(0xff)
  const tail = new DirtyBitmap(0, 37 * PAGE)
  tail.markBitmap(0, bits)
  t.equal(tail.count(), 37, 'bits past the last page are dropped')
  const half = new DirtyBitmap(0, 8 * PAGE, PAGE)
  half.markBitmap(0, new Uint8Array([0b10]), 2 * PAGE)
  t.same([...half.dirtyPages()], [2, 3], 'a coarser source page marks every page it covers')
})
