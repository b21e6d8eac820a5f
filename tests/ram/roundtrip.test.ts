import t from 'tap'
import { connect, listen } from '../../vmm/channel/connect.js'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { loadvm } from '../../vmm/savevm/load.js'
import { RamFlag, RAM_VERSION } from '../../vmm/ram/index.js'
import { PAGE, MACHINE, guestRam, side, migrate, saveOver, drain, firstDiff } from './helpers.js'

t.test('round trip over a memory pair: random and zero pages, byte-equal', async t => {
  const pages = 300
  const src = side([{ name: 'pc.ram', memory: guestRam(pages) }])
  const dstMem = new Uint8Array(pages * PAGE).fill(0xee)
  const dst = side([{ name: 'pc.ram', memory: dstMem }])
  const { load } = await migrate(src, dst)
  t.equal(firstDiff(src.ram.blocks[0].memory, dstMem), -1, 'destination RAM equals source RAM')
  const s = src.ram.stats()
  t.equal(s.zeroPages, 100, 'every third page went as a ZERO flag')
  t.equal(s.normalPages, 200)
  t.equal(s.remaining, 0)
  t.ok(s.iterations >= 1)
  t.ok(s.dirtySyncCount >= 2, 'setup and complete each synced')
  t.ok(s.bytes > 200 * PAGE && s.bytes < 200 * PAGE + pages * 40, `section bytes ${s.bytes} are the pages plus small headers`)
  t.same(dst.ram.stats().load.normalPages, 200)
  t.same(dst.ram.stats().load.zeroPages, 100)
  t.ok(load.sections >= 3, 'START, PART(s), END')
})

t.test('round trip over a real TCP socket', async t => {
  const pages = 2048
  const src = side([{ name: 'pc.ram', memory: guestRam(pages, 5) }])
  const dstMem = new Uint8Array(pages * PAGE)
  const dst = side([{ name: 'pc.ram', memory: dstMem }])
  const l = await listen('tcp:127.0.0.1:0')
  t.teardown(() => l.close())
  const [out, inc] = await Promise.all([connect(l.address), l.accept()])
  const f = new MigStream(inc)
  const [, res] = await Promise.all([
    saveOver(src, out, { maxBandwidth: 64 << 20 }),
    loadvm(f, dst.reg, { machine: MACHINE }),
  ])
  await out.close()
  await inc.close()
  t.equal(firstDiff(src.ram.blocks[0].memory, dstMem), -1)
  t.ok(res.sections >= 3)
  t.ok(src.ram.stats().iterations >= 1)
})

t.test('several blocks at their own guest-physical bases', async t => {
  const mk = () => [
    { name: 'pc.ram', memory: guestRam(64), base: 0 },
    { name: '/rom@etc/acpi/tables', memory: guestRam(4, 2), base: 0x100000000 },
    { name: 'pc.bios', memory: guestRam(8, 4), base: 0xfff00000 },
  ]
  const srcBlocks = mk()
  const src = side(srcBlocks)
  const dstBlocks = srcBlocks.map(b => ({ ...b, memory: new Uint8Array(b.memory.length).fill(7) }))
  const dst = side(dstBlocks)
  await migrate(src, dst)
  for (const [i, b] of srcBlocks.entries()) t.equal(firstDiff(b.memory, dstBlocks[i].memory), -1, `block ${b.name}`)
  t.equal(src.ram.layout.totalBytes, (64 + 4 + 8) * PAGE)
  t.equal(src.ram.layout.base, 0)
})

t.test('byte layout: section header, MEM_SIZE + block list, pages, CONTINUE, EOS', async t => {
  const a = guestRam(3, 2) // pages 0 and 2 zero, page 1 random
  const b = guestRam(1, 2) // page 0 zero
  const src = side([{ name: 'pc.ram', memory: a }, { name: 'vga.vram', memory: b, base: 0x1000000 }])
  const [x, y] = memoryPair(1 << 24)
  const f = new MigStream(x)
  const h = src.ram.entry.handlers
  await h.saveSetup!(f)
  const done = await h.saveLiveIterate!(f)
  await f.flush()
  await x.endWrites()
  const bytes = await drain(y)
  t.equal(done, true, 'one round sent everything')
  let o = 0
  const be64 = () => { const v = Number(bytes.readBigUInt64BE(o)); o += 8; return v }
  const str = () => { const n = bytes[o]; const s = bytes.subarray(o + 1, o + 1 + n).toString(); o += 1 + n; return s }
  t.equal(be64(), 4 * PAGE + RamFlag.MEM_SIZE, 'total RAM | MEM_SIZE (0x04)')
  t.equal(str(), 'pc.ram')
  t.equal(be64(), 3 * PAGE)
  t.equal(str(), 'vga.vram')
  t.equal(be64(), PAGE)
  t.equal(be64(), RamFlag.EOS, 'setup ends with EOS (0x10)')
  t.equal(be64(), 0 + RamFlag.ZERO, 'page 0 of pc.ram: ZERO (0x02), block named')
  t.equal(str(), 'pc.ram')
  t.equal(bytes[o++], 0, 'zero page fill byte')
  t.equal(be64(), PAGE + RamFlag.PAGE + RamFlag.CONTINUE, 'page 1: PAGE (0x08) | CONTINUE (0x20)')
  t.equal(Buffer.compare(bytes.subarray(o, o + PAGE), a.subarray(PAGE, 2 * PAGE)), 0, 'raw page bytes')
  o += PAGE
  t.equal(be64(), 2 * PAGE + RamFlag.ZERO + RamFlag.CONTINUE)
  t.equal(bytes[o++], 0)
  t.equal(be64(), RamFlag.ZERO, 'next block: its name again, no CONTINUE')
  t.equal(str(), 'vga.vram')
  t.equal(bytes[o++], 0)
  t.equal(be64(), RamFlag.EOS)
  t.equal(o, bytes.length, 'nothing else')
  t.equal(src.ram.entry.idstr, 'ram')
  t.equal(src.ram.entry.instanceId, 0)
  t.equal(src.ram.entry.versionId, RAM_VERSION)
  await h.saveCleanup!()
})

t.test('the ram section comes first in the whole stream', async t => {
  const src = side([{ name: 'pc.ram', memory: guestRam(4) }])
  src.reg.register({ idstr: 'dev', versionId: 1, priority: 5, handlers: { saveState: f => f.putBe32(1) } })
  src.ram.unregister()
  const again = side([{ name: 'pc.ram', memory: guestRam(4) }])
  again.reg.register({ idstr: 'early', versionId: 1, priority: 5, handlers: { saveSetup: f => f.putBe32(1) } })
  t.equal(again.reg.entries()[0].idstr, 'ram', 'saved before a priority-5 live device')
  t.equal(src.reg.find('ram', 0), undefined, 'unregister removes the section')
})

t.test('a round stops at the rate limit; cleanup then a second migration starts over', async t => {
  const { FakeClock } = await import('../../vmm/stream/clock.js')
  const pages = 256
  const mem = guestRam(pages, 1000) // page 0 zero, the rest random
  let syncs = 0
  const src = side([{ name: 'pc.ram', memory: mem }], [async into => { syncs++; into.markPage(7) }])
  const h = src.ram.entry.handlers
  for (const attempt of [1, 2]) {
    const clock = new FakeClock()
    const [x, y] = memoryPair(1 << 24)
    const drained = drain(y)
    // 10 pages' worth per 100 ms window.
    const f = new MigStream(x, { clock, maxBandwidth: 100 * PAGE })
    await h.saveSetup!(f)
    t.equal(src.ram.remainingBytes, pages * PAGE, `attempt ${attempt}: the bulk stage marks every page`)
    t.equal(await h.saveLiveIterate!(f), false, 'the budget runs out before the RAM does')
    const sent = src.ram.stats().normalPages + src.ram.stats().zeroPages
    t.ok(sent >= 10 && sent <= 12, `one window's worth went out (${sent} pages)`)
    t.equal(src.ram.remainingBytes, (pages - sent) * PAGE)
    clock.advance(100 * 300)
    while (!(await h.saveLiveIterate!(f))) clock.advance(100 * 300)
    await h.saveComplete!(f)
    t.equal(src.ram.stats().remaining, 0)
    t.equal(src.ram.stats().normalPages + src.ram.stats().zeroPages, pages + 1, 'page 7, dirty at the final sync, went twice')
    await h.saveCleanup!()
    await f.flush()
    await x.endWrites()
    await drained
  }
  t.equal(syncs, 4, 'setup and complete synced the tracker, twice')
})

t.test('the registry\'s dirty logs: started by setup with the blocks, synced after the dirty sources at every sync, stopped by cleanup', async t => {
  const calls: string[] = []
  const src = side([{ name: 'pc.ram', memory: guestRam(64) }], [async () => { calls.push('source') }])
  // Registered after registerRam: the section reads the logs when a migration starts.
  const remove = src.reg.addDirtyLog({
    logStart: async ram => { calls.push(`start ${ram.map(b => `${b.name}@${b.base}+${b.length}`).join()}`) },
    logSync: async into => { calls.push('sync'); into.markPage(3) },
    logStop: async () => { calls.push('stop') },
  })
  await migrate(src, side([{ name: 'pc.ram', memory: new Uint8Array(64 * PAGE) }]))
  t.same(calls.slice(0, 3), ['start pc.ram@0+262144', 'source', 'sync'], 'started before the setup sync')
  t.same(calls.slice(3), ['source', 'sync', 'stop'], 'the final sync, then stopped by cleanup')
  t.equal(src.ram.stats().dirtyPagesLastSync, 1, 'what the log reported is in the bitmap')

  calls.length = 0
  const h = src.ram.entry.handlers
  await h.saveCleanup!()
  t.same(calls, [], 'a log not started is not stopped')
  remove()
  const failing = { logStart: async () => { throw new Error('no tracker') }, logSync: async () => {}, logStop: async () => { calls.push('stop after failed start') } }
  src.reg.addDirtyLog(failing)
  const [x] = memoryPair(1 << 24)
  await t.rejects(h.saveSetup!(new MigStream(x)), /no tracker/)
  await h.saveCleanup!()
  t.same(calls, ['stop after failed start'], 'a log whose start failed is still stopped')
})

t.test('isZeroPage: a single non-zero byte anywhere in the page counts, at any offset', async t => {
  const { isZeroPage } = await import('../../vmm/ram/zero.js')
  const PAGE = 4096
  const m = new Uint8Array(3 * PAGE)
  t.ok(isZeroPage(m, PAGE), 'all-zero page')
  let missed = 0
  for (let i = 0; i < PAGE; i++) {
    m[PAGE + i] = 1 + (i % 255)
    if (isZeroPage(m, PAGE)) missed++
    m[PAGE + i] = 0
  }
  t.equal(missed, 0, 'every byte position makes the page non-zero')
  m[PAGE - 1] = 9
  m[2 * PAGE] = 9
  t.ok(isZeroPage(m, PAGE), 'bytes of the neighbouring pages do not count')
  const view = new Uint8Array(m.buffer, 5, PAGE)
  t.notOk(isZeroPage(view, 0), 'an unaligned view sees byte PAGE - 1 of the buffer as its byte PAGE - 6')
})
