// The native RAM paths (ramSendPages / ramLoadPages) against the JS paths:
// the same wire bytes from the same RAM and bitmap, the same memory and
// stats from the same bytes however they are cut, the same errors, and
// arguments checked before any work.
import t from 'tap'
import * as fs from 'node:fs'
import { randomFillSync } from 'node:crypto'
import { connect, listen } from '../../vmm/channel/connect.js'
import type { Channel } from '../../vmm/channel/types.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { FakeClock } from '../../vmm/stream/clock.js'
import { loadvm } from '../../vmm/savevm/load.js'
import { LoadError } from '../../vmm/savevm/errors.js'
import { native } from '../../vmm/native/addon.js'
import { RamFlag, registerRam, type DirtySource, type RamStats } from '../../vmm/ram/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { PAGE, MACHINE, guestRam, side, saveOver, drain, firstDiff } from './helpers.js'
import { Payload, local, loadPayload, malformedCases } from './cases.js'

/** A connected TCP pair: [writer, reader]. */
async function tcpPair(): Promise<[Channel, Channel]> {
  const l = await listen('tcp:127.0.0.1:0')
  const pair = await Promise.all([connect(l.address), l.accept()])
  // The listener's close settles once these connections end; nothing waits for it.
  void l.close()
  return pair
}

/** Counts calls of a native function for the duration of one test. */
function spy(t: Teardown, name: 'ramSendPages' | 'ramLoadPages'): { calls: number } {
  const n = native as unknown as Record<string, (...a: unknown[]) => unknown>
  const orig = n[name]
  const c = { calls: 0 }
  n[name] = (...a: unknown[]) => {
    c.calls++
    return orig(...a)
  }
  t.teardown(() => {
    n[name] = orig
  })
  return c
}

interface Teardown { teardown(fn: () => unknown): void }

// One content for every run, so the two paths can be compared byte for byte.
const contents = [guestRam(300, 3), guestRam(40, 2), guestRam(9, 4)]
const blocks = () => [
  { name: 'pc.ram', memory: contents[0].slice(), base: 0 },
  { name: '/rom@etc/acpi/tables', memory: contents[1].slice(), base: 0x100000000 },
  { name: 'pc.bios', memory: contents[2].slice(), base: 0xfff00000 },
]

/** A dirty source that marks `pages` (guest-physical page numbers) once, on its second call. */
function marker(pages: number[]): DirtySource {
  let calls = 0
  return async into => {
    if (calls++ === 1) for (const p of pages) into.markPage(p)
  }
}

interface SaveRun {
  bytes: Buffer
  stats: RamStats
}

/**
 * Setup, `rounds` PART rounds (a dirty source re-marks pages after the
 * first), complete: every byte the source wrote, through native code
 * (`native` true) or through the stream.
 */
async function saveOnce(t: Teardown & { equal: typeof t.equal }, useNative: boolean, o: { rounds: number; maxBandwidth?: number; clock?: FakeClock; now?: () => number }): Promise<SaveRun> {
  const bl = blocks()
  const again = [1, 2, 3, 64, 65, 299, 0x100000 + 5, 0x100000 + 6, 0xfff00 + 8]
  const reg = new SaveVMRegistry()
  const src = { reg, ram: registerRam(reg, { blocks: bl, dirtySources: [marker(again)], now: o.now }) }
  const [a, b] = await tcpPair()
  t.teardown(async () => {
    await a.close()
    await b.close()
  })
  const got = drain(b)
  const f = new MigStream(a, { maxBandwidth: o.maxBandwidth ?? 0, clock: o.clock, fdTransfer: useNative ? undefined : null })
  const h = src.ram.entry.handlers
  await h.saveSetup!(f)
  for (let i = 0; i < o.rounds; i++) {
    await h.saveLiveIterate!(f)
    if (i === 0) await h.statePendingExact!()
    o.clock?.advance(100)
  }
  await h.saveComplete!(f)
  await f.flush()
  t.equal(f.error, null, 'the stream has no error')
  await a.endWrites()
  const stats = src.ram.stats()
  await h.saveCleanup!()
  return { bytes: await got, stats }
}

t.test('save: native and JS paths put the same bytes on the wire', async t => {
  for (const [what, o] of [
    ['all in the complete stage', { rounds: 0 }],
    ['rounds under a rate limit (fake clock), then complete', { rounds: 6, maxBandwidth: 300 * PAGE, clock: 'fake' }],
    ['rounds cut by a custom MAX_ITERATE_MS clock', { rounds: 4, now: 'ticking' }],
  ] as const) {
    const mk = () => ({
      rounds: o.rounds,
      maxBandwidth: 'maxBandwidth' in o ? o.maxBandwidth : 0,
      clock: 'clock' in o ? new FakeClock() : undefined,
      // Every reading 20 ms later: a round ends at its third clock test (192 pages).
      now: 'now' in o ? (() => { let ms = 0; return () => (ms += 20) })() : undefined,
    })
    const calls = spy(t, 'ramSendPages')
    const n = await saveOnce(t, true, mk())
    const used = calls.calls
    const j = await saveOnce(t, false, mk())
    t.ok(used > 0, `${what}: the native path ran (${used} calls)`)
    t.equal(calls.calls, used, `${what}: the JS path made no native call`)
    t.equal(n.bytes.length, j.bytes.length, `${what}: same length (${n.bytes.length})`)
    t.ok(n.bytes.equals(j.bytes), `${what}: byte-identical`)
    t.same(n.stats, j.stats, `${what}: same stats`)
    t.ok(n.stats.zeroPages > 0 && n.stats.normalPages > 0, `${what}: zero and normal pages`)
  }
})

t.test('save: a round stops at the same page on both paths when the rate limit cuts it', async t => {
  const cut = async (useNative: boolean) => {
    const clock = new FakeClock()
    const src = side(blocks())
    const [a, b] = await tcpPair()
    t.teardown(async () => {
      await a.close()
      await b.close()
    })
    const got = drain(b)
    const f = new MigStream(a, { clock, maxBandwidth: 37 * PAGE * 10, fdTransfer: useNative ? undefined : null })
    const h = src.ram.entry.handlers
    await h.saveSetup!(f)
    const done = await h.saveLiveIterate!(f)
    const s = src.ram.stats()
    await f.flush()
    await a.endWrites()
    await h.saveCleanup!()
    return { done, sent: s.normalPages + s.zeroPages, remaining: s.remaining, bytes: await got }
  }
  const n = await cut(true)
  const j = await cut(false)
  t.equal(n.done, false, 'the budget ran out first')
  t.equal(n.sent, j.sent, `both sent ${j.sent} pages`)
  t.equal(n.remaining, j.remaining)
  t.ok(n.bytes.equals(j.bytes), 'byte-identical')
})

t.test('load: native and JS paths fill the same memory from the same bytes, however they arrive', async t => {
  const bl = blocks()
  const src = side(bl, [marker([7, 8, 0x100000 + 1])])
  const { memoryPair } = await import('../../vmm/channel/memory.js')
  const [x, y] = memoryPair(1 << 26)
  const got = drain(y)
  await saveOver(src, x, { maxRounds: 3, round: () => false })
  const bytes = await got
  for (const chunk of [0, 1000, 4099, 65536]) {
    const results = []
    for (const useNative of [true, false]) {
      const dstBlocks = bl.map(b => ({ ...b, memory: new Uint8Array(b.memory.length).fill(0xee) }))
      const dst = side(dstBlocks)
      const calls = spy(t, 'ramLoadPages')
      const [a, b] = await tcpPair()
      const write = async () => {
        const step = chunk || bytes.length
        for (let i = 0; i < bytes.length; i += step) {
          await a.writev([bytes.subarray(i, i + step)])
          if (chunk) await new Promise(r => setImmediate(r))
        }
        await a.endWrites()
      }
      await Promise.all([write(), loadvm(new MigStream(b, { fdTransfer: useNative ? undefined : null }), dst.reg, { machine: MACHINE })])
      await a.close()
      await b.close()
      for (const [i, blk] of bl.entries()) t.equal(firstDiff(blk.memory, dstBlocks[i].memory), -1, `chunk ${chunk || 'all'}, ${useNative ? 'native' : 'JS'}: block ${blk.name} arrived`)
      if (useNative) t.ok(calls.calls > 0, `chunk ${chunk || 'all'}: the native path ran (${calls.calls} calls)`)
      else t.equal(calls.calls, 0, 'the JS path made no native call')
      results.push(dst.ram.stats().load)
    }
    t.same(results[0], results[1], `chunk ${chunk || 'all'}: same load stats`)
  }
})

t.test('load: malformed payloads over a socket fail as they do through the stream', async t => {
  for (const [name, payload, code, msg, version] of malformedCases) {
    for (const chunk of [undefined, 3]) {
      const err = await loadPayload(payload, version, local(), name.startsWith('truncated'), { pair: tcpPair, chunk })
        .then(() => null, (e: unknown) => e)
      const ref = await loadPayload(payload, version, local(), name.startsWith('truncated')).then(() => null, (e: unknown) => e)
      t.ok(err instanceof LoadError, `${name}${chunk ? ', 3-byte writes' : ''}: a typed LoadError (${(err as Error)?.message})`)
      t.equal((err as LoadError).code, code)
      t.match((err as Error).message, msg)
      t.equal((err as Error).message, (ref as Error).message, 'the same message (and offset) as through the stream')
    }
  }
})

t.test('load: errors found inside a record native code already took', async t => {
  const page = Buffer.alloc(PAGE, 0x5a)
  // The head arrives first and the rest later, so native code holds the record when the bad byte comes.
  const zeroFill = new Payload().be64(RamFlag.PAGE).str('pc.ram').raw(page).be64(PAGE + RamFlag.ZERO + RamFlag.CONTINUE).u8(7).be64(RamFlag.EOS).bytes()
  const truncated = new Payload().be64(RamFlag.PAGE).str('pc.ram').raw(page).be64(PAGE + RamFlag.PAGE + RamFlag.CONTINUE).raw(page.subarray(0, 1000)).bytes()
  for (const [name, payload, trunc, code, msg] of [
    ['zero page fill byte 7', zeroFill, false, 'ERR_RAM_ZERO_PAGE', /zero page at 0x1000 of 'pc.ram' has fill byte 7/],
    ['stream ends inside a page', truncated, true, 'ERR_SAVEVM_TRUNCATED', /stream ends inside page data/],
  ] as const) {
    const calls = spy(t, 'ramLoadPages')
    const ref = await loadPayload(payload, 4, local(), trunc).then(() => null, (e: unknown) => e)
    for (const chunk of [PAGE + 20, 7]) {
      const err = await loadPayload(payload, 4, local(), trunc, { pair: tcpPair, chunk }).then(() => null, (e: unknown) => e)
      t.equal((err as LoadError)?.code, code, `${name}, ${chunk}-byte writes: ${(err as Error)?.message}`)
      t.match((err as Error).message, msg)
      t.equal((err as Error).message, (ref as Error).message, 'the same message and offset as through the stream')
    }
    t.ok(calls.calls > 0, `${name}: native code read the records`)
  }
})

t.test('a closed channel ends a native send that waits on a peer that does not read', async t => {
  const [w, r] = native.testingSocketPair()
  t.teardown(() => {
    try { fs.closeSync(r) } catch { /* closed */ }
  })
  const mem = Buffer.alloc(16 << 20)
  randomFillSync(mem)
  const bitmap = new Uint32Array((mem.length / PAGE) / 32).fill(0xffffffff)
  const p = native.ramSendPages(w, [{ memory: mem, name: Buffer.from('pc.ram'), firstPage: 0, pages: mem.length / PAGE }], bitmap, {
    cursorBlock: 0, cursorPage: 0, lastSent: -1, maxPages: mem.length / PAGE, roundPages: 0,
  })
  await new Promise(res => setTimeout(res, 100))
  fs.closeSync(w)
  const t0 = Date.now()
  const err = await p.then(() => null, (e: unknown) => e as Error & { code?: string })
  t.equal(err?.code, 'ECANCELED', `rejects: ${err?.message}`)
  t.ok(Date.now() - t0 < 2000, 'promptly')
})

t.test('native RAM calls check their arguments before any work', async t => {
  const mem = Buffer.alloc(4 * PAGE)
  const name = Buffer.from('pc.ram')
  const [s1, s2] = native.testingSocketPair()
  const [p1, p2] = native.testingPipe()
  t.teardown(() => [s1, s2, p1, p2].forEach(fd => fs.closeSync(fd)))
  const bitmap = new Uint32Array(1)
  const blk = (o: object = {}) => [{ memory: mem, name, firstPage: 0, pages: 4, ...o }]
  const opts = (o: object = {}) => ({ cursorBlock: 0, cursorPage: 0, lastSent: -1, maxPages: 4, roundPages: 0, ...o })
  const send = (fd: number, b: unknown, bm: unknown, o: unknown) => {
    try {
      return native.ramSendPages(fd, b as never, bm as never, o as never).then(() => null, (e: unknown) => e)
    } catch (e) {
      return Promise.resolve(e)
    }
  }
  const cases: [string, Promise<unknown>, string, RegExp][] = [
    ['a negative fd', send(-1, blk(), bitmap, opts()), 'EBADF', /fd = -1/],
    ['a pipe', send(p2, blk(), bitmap, opts()), 'ENOTSOCK', /not a stream socket/],
    ['no blocks', send(s1, [], bitmap, opts()), 'EINVAL', /blocks: .*must not be empty/],
    ['an empty name', send(s1, blk({ name: Buffer.alloc(0) }), bitmap, opts()), 'EINVAL', /blocks\[0\]\.name.*1\.\.255 bytes, got 0/],
    ['a 256-byte name', send(s1, blk({ name: Buffer.alloc(256, 97) }), bitmap, opts()), 'EINVAL', /1\.\.255 bytes, got 256/],
    ['memory that is not whole pages', send(s1, blk({ memory: Buffer.alloc(PAGE + 1) }), bitmap, opts()), 'EINVAL', /multiple of 4096 bytes, got 4097/],
    ['pages that disagree with the memory', send(s1, blk({ pages: 5 }), bitmap, opts()), 'EINVAL', /is 16384 bytes, pages says 5/],
    ['a block past the bitmap', send(s1, blk({ firstPage: 30 }), bitmap, opts()), 'EINVAL', /pages 30\.\.34 lie past the bitmap's 32 bits/],
    ['a cursor block out of range', send(s1, blk(), bitmap, opts({ cursorBlock: 1 })), 'EINVAL', /cursorBlock.*below 1, got 1/],
    ['a cursor page past the block', send(s1, blk(), bitmap, opts({ cursorPage: 5 })), 'EINVAL', /cursorPage.*at most 4, got 5/],
    ['lastSent out of range', send(s1, blk(), bitmap, opts({ lastSent: 1 })), 'EINVAL', /lastSent.*-1\.\.0, got 1/],
    ['a negative maxBytes', send(s1, blk(), bitmap, opts({ maxBytes: -1 })), 'EINVAL', /maxBytes = -1/],
    ['a fractional maxPages', send(s1, blk(), bitmap, opts({ maxPages: 1.5 })), 'EINVAL', /maxPages = 1.5/],
    ['an infinite time', send(s1, blk(), bitmap, opts({ timeLeftMs: Infinity })), 'EINVAL', /timeLeftMs.*finite/],
  ]
  const load = (fd: number, b: unknown, o: unknown) => {
    try {
      return native.ramLoadPages(fd, b as never, o as never).then(() => null, (e: unknown) => e)
    } catch (e) {
      return Promise.resolve(e)
    }
  }
  const lb = [{ memory: mem, name }]
  cases.push(
    ['load: a pipe', load(p1, lb, { last: -1, base: 0 }), 'ENOTSOCK', /not a stream socket/],
    ['load: last out of range', load(s2, lb, { last: 3, base: 0 }), 'EINVAL', /last.*-1\.\.0, got 3/],
    ['load: a pending page past the block', load(s2, lb, { last: -1, base: 0, pending: { block: 0, offset: 4 * PAGE, zero: false, got: 0, at: 0 } }), 'EINVAL', /pending\.offset.*16384 bytes, got 16384/],
    ['load: an unaligned pending page', load(s2, lb, { last: -1, base: 0, pending: { block: 0, offset: 100, zero: false, got: 0, at: 0 } }), 'EINVAL', /pending\.offset/],
    ['load: a full pending page', load(s2, lb, { last: -1, base: 0, pending: { block: 0, offset: 0, zero: false, got: PAGE, at: 0 } }), 'EINVAL', /pending\.got.*below 4096/],
    ['load: a zero page with payload', load(s2, lb, { last: -1, base: 0, pending: { block: 0, offset: 0, zero: true, got: 1, at: 0 } }), 'EINVAL', /pending\.got.*below 1 for a zero page/],
    ['load: a pending block out of range', load(s2, lb, { last: -1, base: 0, pending: { block: 2, offset: 0, zero: false, got: 0, at: 0 } }), 'EINVAL', /pending\.block.*below 1, got 2/],
    ['load: a negative base', load(s2, lb, { last: -1, base: -5 }), 'EINVAL', /base = -5/],
  )
  for (const [what, p, code, msg] of cases) {
    const e = (await p) as (Error & { code?: string }) | null
    t.equal(e?.code, code, `${what}: ${e?.message}`)
    t.match(e?.message ?? '', msg)
  }
  t.equal(bitmap[0], 0, 'no bitmap bit was touched')
})

t.test('save over TCP with the native path: a full migration through loadvm, byte-equal', async t => {
  const bl = blocks()
  const src = side(bl)
  const dstBlocks = bl.map(b => ({ ...b, memory: new Uint8Array(b.memory.length) }))
  const dst = side(dstBlocks)
  const sends = spy(t, 'ramSendPages')
  const loads = spy(t, 'ramLoadPages')
  const [a, b] = await tcpPair()
  await Promise.all([saveOver(src, a), loadvm(new MigStream(b), dst.reg, { machine: MACHINE })])
  await a.close()
  await b.close()
  for (const [i, blk] of bl.entries()) t.equal(firstDiff(blk.memory, dstBlocks[i].memory), -1, `block ${blk.name}`)
  t.ok(sends.calls > 0 && loads.calls > 0, `both native paths ran (${sends.calls} sends, ${loads.calls} loads)`)
  const s = src.ram.stats()
  const l = dst.ram.stats().load
  t.equal(l.normalPages, s.normalPages)
  t.equal(l.zeroPages, s.zeroPages)
})
