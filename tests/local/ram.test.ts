// The RAM section of a local migration on its own: a LOCAL_FDS record
// (blocks passed as descriptors) is checked whole before any descriptor is
// taken, each descriptor ends up adopted or closed, and a destination that
// gives up lets go of what it adopted. The saver refuses blocks that are
// not fd-backed by name, and sends no page.
import t from 'tap'
import { closeSync, fstatSync, openSync } from 'node:fs'
import { memoryPair } from '../../vmm/channel/memory.js'
import type { Channel } from '../../vmm/channel/types.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { RamFlag, registerRam, localBlockers, type SharedRam } from '../../vmm/ram/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { Payload } from '../ram/cases.js'
import { fdsSettle, steadyFds } from './gate.js'

const PAGE = 4096
const ctx = { sectionId: 1, versionId: 4, approveSwitchover() {} }

interface Fake extends SharedRam {
  adopted: number[]
  detached: number
  failWith?: string
}

function shared(): Fake {
  const s: Fake = {
    adopted: [],
    detached: 0,
    fd: () => 99,
    async adopt(fd) {
      // As the KVM machine does: the descriptor is the adopter's, closed on failure too.
      const ino = fstatSync(fd).ino
      closeSync(fd)
      if (s.failWith) throw new Error(s.failWith)
      s.adopted.push(ino)
    },
    async detach() {
      s.detached++
    },
  }
  return s
}

function dest() {
  const a = shared()
  const b = shared()
  const reg = new SaveVMRegistry()
  const ram = registerRam(reg, {
    blocks: [
      { name: 'a', memory: new Uint8Array(4 * PAGE), shared: a },
      { name: 'b', memory: new Uint8Array(2 * PAGE), base: 1 << 20, shared: b },
      { name: 'plain', memory: new Uint8Array(PAGE), base: 1 << 21, backing: 'a test buffer' },
    ],
    dirtySources: [],
  })
  return { a, b, ram, h: ram.entry.handlers }
}

/** A memory channel that passes `fds` the way a unix: channel would: queued until taken. */
function passing(c: Channel, fds: number[]): Channel & { dropped: number } {
  const x = c as Channel & { dropped: number }
  x.dropped = 0
  x.takeFds = (n) => {
    if (fds.length < n) throw new Error(`expected ${n} passed file descriptor(s), ${fds.length} arrived`)
    return fds.splice(0, n)
  }
  x.dropFds = () => {
    x.dropped++
    for (const fd of fds.splice(0)) closeSync(fd)
  }
  Object.defineProperty(x, 'queuedFds', { get: () => fds.length })
  return x
}

const devNull = () => openSync('/dev/null', 'r')

async function load(payload: Buffer, opts: { local?: boolean; fds?: number[]; noFds?: boolean } = {}) {
  const d = dest()
  const [w, r] = memoryPair()
  await w.writev([payload])
  await w.endWrites()
  const fds = opts.fds ?? []
  const ch = opts.noFds ? r : passing(r, fds)
  const f = new MigStream(ch, { local: opts.local ?? true })
  const done = Promise.resolve(d.h.loadState!(f, ctx))
  return { d, ch: ch as Channel & { dropped?: number }, done, fds }
}

const rec = (n: number) => new Payload().be64(n * PAGE + RamFlag.LOCAL_FDS)
const good = () => rec(2).str('a').be64(4 * PAGE).str('b').be64(2 * PAGE)

t.test('refused records: nothing taken, every descriptor closed', async (t) => {
  const base = await steadyFds()
  const cases: [string, Buffer, RegExp, { local?: boolean; noFds?: boolean }?][] = [
    ['a destination not started for it', good().be64(RamFlag.EOS).bytes(), /this destination was not started for one \(--local\)/, { local: false }],
    ['a channel that passes none', good().be64(RamFlag.EOS).bytes(), /has a memory: channel, which passes none/, { noFds: true }],
    ['no blocks', rec(0).be64(RamFlag.EOS).bytes(), /LOCAL_FDS names 0 blocks, 1\.\.16 may be passed/],
    ['17 blocks', rec(17).be64(RamFlag.EOS).bytes(), /LOCAL_FDS names 17 blocks/],
    ['a block this side lacks', rec(1).str('nope').be64(PAGE).bytes(), /unknown RAM block "nope"/],
    ['a block of another size', rec(1).str('a').be64(PAGE).bytes(), /passed block 'a' is 4096 bytes on the source, 16384 here/],
    ['a block not fd-backed here', rec(1).str('plain').be64(PAGE).bytes(), /block 'plain' is not fd-backed here \(a test buffer\), so it cannot map the source's/],
    ['a block twice', rec(2).str('a').be64(4 * PAGE).str('a').be64(4 * PAGE).bytes(), /block 'a' is passed twice/],
    ['a record cut short', rec(1).str('a').bytes(), /length of passed block 'a'/],
    ['CONTINUE', new Payload().be64(PAGE + RamFlag.LOCAL_FDS + RamFlag.CONTINUE).bytes(), /LOCAL_FDS cannot continue a block/],
  ]
  for (const [name, payload, why, o] of cases) {
    const fds = [devNull(), devNull()]
    const { d, ch, done } = await load(payload, { ...o, fds })
    await t.rejects(done, { message: why }, name)
    t.same(d.a.adopted, [], `${name}: nothing adopted`)
    if (!o?.noFds && !/CONTINUE/.test(name)) t.equal(ch.dropped, 1, `${name}: the channel's descriptors dropped`)
    for (const fd of fds) {
      try {
        closeSync(fd)
      } catch {
        // closed by the drop: what the case checks through the count below
      }
    }
  }
  t.equal(await fdsSettle(base), base, 'no descriptor left open')
})

t.test('fewer descriptors than blocks', async (t) => {
  const base = await steadyFds()
  const { d, done } = await load(good().be64(RamFlag.EOS).bytes(), { fds: [devNull()] })
  await t.rejects(done, { code: 'ERR_RAM_LOCAL', message: /RAM passed as file descriptors: expected 2 passed file descriptor\(s\), 1 arrived/ })
  t.same(d.a.adopted, [])
  t.equal(await fdsSettle(base), base, 'the one that came was closed')
})

t.test('an adoption that fails closes the rest and gives back what was adopted', async (t) => {
  const base = await steadyFds()
  const fds = [devNull(), devNull()]
  const d0 = dest()
  // The second block fails, the first was adopted already.
  const [w, r] = memoryPair()
  await w.writev([good().be64(RamFlag.EOS).bytes()])
  d0.b.failWith = 'the passed RAM fd is 4096 bytes, this guest RAM 8192 bytes'
  const f = new MigStream(passing(r, fds), { local: true })
  await t.rejects(Promise.resolve(d0.h.loadState!(f, ctx)), { code: 'ERR_RAM_LOCAL', message: /passed block 'b': the passed RAM fd is 4096 bytes, this guest RAM 8192 bytes/ })
  t.equal(d0.a.adopted.length, 1, 'a was adopted')
  t.equal(d0.a.detached, 1, 'and given back')
  t.equal(await fdsSettle(base), base)
})

t.test('a good record: both blocks adopted, complete without a page, given back on abort', async (t) => {
  const base = await steadyFds()
  const fds = [devNull(), devNull()]
  const inos = fds.map((fd) => fstatSync(fd).ino)
  const d = dest()
  const [w, r] = memoryPair()
  // MEM_SIZE first, as a source sends it; 'plain' then comes as a page.
  await w.writev([new Payload().memSize([['a', 4 * PAGE], ['b', 2 * PAGE], ['plain', PAGE]]).raw(good().bytes())
    .be64(RamFlag.ZERO).str('plain').u8(0).be64(RamFlag.EOS).bytes()])
  await Promise.resolve(d.h.loadState!(new MigStream(passing(r, fds), { local: true }), ctx))
  t.same(d.a.adopted, [inos[0]], 'a got the first descriptor')
  t.same(d.b.adopted, [inos[1]], 'b the second')
  t.equal(d.ram.stats().load.passedBlocks, 2)
  t.equal(d.ram.stats().load.normalPages, 0)
  await Promise.resolve(d.h.loadVerify!())
  await Promise.resolve(d.h.loadAbort!())
  t.equal(d.a.detached + d.b.detached, 2, 'abort gives both back')
  await Promise.resolve(d.h.loadAbort!())
  t.equal(d.a.detached + d.b.detached, 2, 'once')
  t.equal(await fdsSettle(base), base)
})

t.test('the saver: blockers by name, descriptors with the record, no page', async (t) => {
  const reg = new SaveVMRegistry()
  const a = shared()
  const ram = registerRam(reg, {
    blocks: [{ name: 'a', memory: new Uint8Array(4 * PAGE), shared: a }, { name: 'sab', memory: new Uint8Array(PAGE), base: 1 << 20, backing: 'a SharedArrayBuffer' }],
    dirtySources: [async () => { throw new Error('a local migration syncs no dirty log') }],
  })
  t.same(ram.entry.handlers.localBlockers!(), ["RAM block 'sab' is not fd-backed (a SharedArrayBuffer): a local migration passes RAM as file descriptors"])
  t.same(localBlockers(ram.layout), ram.entry.handlers.localBlockers!())
  const [w] = memoryPair()
  await t.rejects(Promise.resolve(ram.entry.handlers.saveSetup!(new MigStream(w, { local: true }))), /local migration refused: RAM block 'sab' is not fd-backed/)

  const reg2 = new SaveVMRegistry()
  const ok = registerRam(reg2, { blocks: [{ name: 'a', memory: new Uint8Array(4 * PAGE).fill(7), shared: a }], dirtySources: [async () => { throw new Error('no sync') }] })
  const [x, y] = memoryPair()
  const sent: { fds: readonly number[]; data: Buffer }[] = []
  x.sendFds = async (fds, data) => {
    sent.push({ fds, data: Buffer.from(data) })
    await x.writev([data])
  }
  const f = new MigStream(x, { local: true })
  const h = ok.entry.handlers
  await h.saveSetup!(f)
  t.equal(await h.saveLiveIterate!(f), true, 'nothing left after setup')
  await Promise.resolve(h.statePendingExact!())
  t.equal(ok.remainingBytes, 0)
  await h.saveComplete!(f)
  await f.flush()
  await h.saveCleanup!()
  t.equal(sent.length, 1, 'one message with descriptors')
  t.same(sent[0]!.fds, [99], "the block's descriptor")
  t.same(sent[0]!.data, rec(1).str('a').be64(4 * PAGE).bytes(), 'with the LOCAL_FDS record')
  t.equal(ok.stats().normalPages + ok.stats().zeroPages, 0, 'no page')
  await x.endWrites()
  const all: Buffer[] = []
  const buf = Buffer.alloc(4096)
  for (let n; (n = await y.read(buf, 0, buf.length)) > 0;) all.push(Buffer.from(buf.subarray(0, n)))
  const bytes = Buffer.concat(all)
  t.notOk(bytes.includes(Buffer.alloc(64, 7)), 'no page data in the stream')

  // A stream whose channel cannot pass descriptors fails, saying so.
  const [p] = memoryPair()
  const g = new MigStream(p, { local: true })
  await Promise.resolve(h.saveSetup!(g))
  t.match(g.error?.message, /cannot pass file descriptors/)
})
