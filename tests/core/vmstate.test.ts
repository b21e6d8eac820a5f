import t from 'tap'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { saveState, canCompress } from '../../vmm/vmstate/save.js'
import { loadState } from '../../vmm/vmstate/load.js'
import { validateVmsd } from '../../vmm/vmstate/layout.js'
import type { VMStateDescription } from '../../vmm/vmstate/types.js'
import { InvalidFieldError } from '../../vmm/savevm/errors.js'
import { uartVmsd, uartState } from './helpers.js'

const point: VMStateDescription = { name: 'point', versionId: 1, fields: [{ name: 'x', type: 'int16' }, { name: 'y', type: 'int8' }] }
const dev: VMStateDescription = {
  name: 'dev',
  versionId: 2,
  fields: [
    { name: 'u8', type: 'uint8' }, { name: 'u16', type: 'uint16' }, { name: 'u32', type: 'uint32' }, { name: 'u64', type: 'uint64' },
    { name: 'i8', type: 'int8' }, { name: 'i16', type: 'int16' }, { name: 'i32', type: 'int32' }, { name: 'i64', type: 'int64' },
    { name: 'b', type: 'bool' },
    { name: 'fixed', type: 'buffer', length: 4 },
    { name: 'n', type: 'uint8' },
    { name: 'list', type: 'uint16', count: 'n', maxCount: 8 },
    { name: 'origin', type: 'struct', vmsd: point },
    { name: 'pts', type: 'struct', vmsd: point, count: 2 },
    { name: 'opt', type: 'uint32', exists: s => s.u8 === 1 },
  ],
}
const devState = () => ({
  u8: 1, u16: 0xffff, u32: 0x80000000, u64: 1n << 63n, i8: -1, i16: -300, i32: -5, i64: -(1n << 62n), b: true,
  fixed: Buffer.from([9, 8, 7, 6]), n: 3, list: [1, 2, 3], origin: { x: -2, y: 3 }, pts: [{ x: 1, y: 1 }, { x: 2, y: 2 }], opt: 77,
})

async function roundTrip(vmsd: VMStateDescription, state: Record<string, unknown>, into: Record<string, unknown> = {}, version = vmsd.versionId) {
  const [a, b] = memoryPair(1 << 30)
  const w = new MigStream(a)
  const desc = await saveState(w, vmsd, state)
  await w.flush()
  await a.endWrites()
  const r = new MigStream(b)
  await loadState(r, vmsd, into, version)
  return { desc, into, r, w }
}

t.test('every field type round trips and the vmdesc matches QEMU shapes', async t => {
  const { desc, into, r, w } = await roundTrip(dev, devState())
  t.same(into, devState())
  t.equal(r.bytesRead, w.transferred)
  t.equal(desc.vmsd_name, 'dev')
  t.same(desc.fields.find(f => f.name === 'list'), { name: 'list', array_len: 3, type: 'uint16', size: 2 })
  t.same(desc.fields.find(f => f.name === 'origin'), { name: 'origin', type: 'struct', struct: { vmsd_name: 'point', version: 1, fields: [{ name: 'x', type: 'int16', size: 2 }, { name: 'y', type: 'int8', size: 1 }] }, size: 3 })
  t.same(desc.fields.find(f => f.name === 'pts')?.array_len, 2)
  t.same(desc.fields.find(f => f.name === 'u64'), { name: 'u64', type: 'uint64', size: 8 })
  t.same(desc.fields.find(f => f.name === 'b'), { name: 'b', type: 'bool', size: 1 })
  t.ok(canCompress(dev.fields[0]))
  t.notOk(canCompress(dev.fields[14]), 'exists() prevents compression')
})

t.test('uncompressible arrays get one entry per index', async t => {
  const sub: VMStateDescription = { name: 'q', versionId: 1, fields: [{ name: 'v', type: 'uint8' }], subsections: [{ name: 'q/x', versionId: 1, needed: () => false, fields: [] }] }
  const v: VMStateDescription = { name: 'v', versionId: 1, fields: [{ name: 'qs', type: 'struct', vmsd: sub, count: 2 }] }
  const { desc } = await roundTrip(v, { qs: [{ v: 1 }, { v: 2 }] })
  t.same(desc.fields.map(f => f.index), [0, 1])
})

t.test('versions, since, subsections, hooks', async t => {
  const s = uartState()
  const { into } = await roundTrip(uartVmsd, s)
  t.same(into, s)
  // An old stream (version 2) has no ier field.
  const old: VMStateDescription = { ...uartVmsd, versionId: 2, fields: uartVmsd.fields.filter(f => f.name !== 'ier') }
  const [a, b] = memoryPair()
  const w = new MigStream(a)
  await saveState(w, old, { ...s, timeout: 0 })
  await w.flush()
  await a.endWrites()
  const into2: Record<string, unknown> = { ier: 99 }
  await loadState(new MigStream(b), uartVmsd, into2, 2)
  t.equal(into2.ier, 99, 'field since v3 not read from a v2 stream')
  t.equal(into2.timeout, undefined, 'subsection not needed, not sent')
  const f = new MigStream(memoryPair()[1])
  await t.rejects(loadState(f, uartVmsd, {}, 4), { code: 'ERR_SAVEVM_VERSION_TOO_NEW' })
  await t.rejects(loadState(f, uartVmsd, {}, 1), { code: 'ERR_SAVEVM_VERSION_TOO_OLD' })

  const calls: string[] = []
  const hooked: VMStateDescription = {
    name: 'h', versionId: 1, fields: [{ name: 'x', type: 'uint8' }],
    preSave: o => { calls.push('preSave'); o.x = 5 },
    preLoad: () => { calls.push('preLoad') },
    postLoad: (o, v) => { calls.push(`postLoad ${String(o.x)} v${v}`) },
  }
  await roundTrip(hooked, { x: 1 })
  t.same(calls, ['preSave', 'preLoad', 'postLoad 5 v1'])
  const failing: VMStateDescription = { ...hooked, postLoad: () => { throw new Error('bad state') } }
  await t.rejects(roundTrip(failing, { x: 1 }), { code: 'ERR_SAVEVM_HANDLER', message: /h postLoad failed: bad state/ })
})


// QEMU 7.2's x86 "cpu" section has this shape: the subsection cpu/ymmh ends
// with an array of structs and cpu/pkru follows. A subsection whose name does
// not start with the vmsd's name belongs to an enclosing vmsd (QEMU's
// vmstate_subsection_load); before, the nested struct's loader refused
// "cpu/pkru" as its own unknown subsection and QEMU's stream could not load.
t.test('subsections after a nested struct or a subsection belong to the enclosing vmsd', async t => {
  const reg: VMStateDescription = {
    name: 'ymmh_reg', versionId: 1, fields: [{ name: 'q', type: 'uint64', count: 2 }],
    subsections: [{ name: 'ymmh_reg/hi', versionId: 1, needed: s => s.hi !== undefined, fields: [{ name: 'hi', type: 'uint8' }] }],
  }
  const cpu: VMStateDescription = {
    name: 'cpu', versionId: 12, fields: [{ name: 'eip', type: 'uint32' }],
    subsections: [
      {
        name: 'cpu/ymmh', versionId: 1, needed: () => true,
        fields: [{ name: 'ymmh', type: 'struct', vmsd: reg, count: 2 }],
        subsections: [{ name: 'cpu/ymmh/x', versionId: 1, needed: () => true, fields: [{ name: 'x', type: 'uint8' }] }],
      },
      { name: 'cpu/pkru', versionId: 1, needed: () => true, fields: [{ name: 'pkru', type: 'uint32' }] },
    ],
  }
  const state = { eip: 0xfff0, ymmh: [{ q: [1n, 2n] }, { q: [3n, 4n], hi: 9 }], x: 5, pkru: 0x55 }
  const { into, r, w } = await roundTrip(cpu, state)
  t.same(into, state, 'nested struct subsection, sub-subsection and sibling subsection all land')
  t.equal(r.bytesRead, w.transferred)

  // A subsection named under this vmsd but unknown to it is still refused (QEMU: -ENOENT).
  const [a, b] = memoryPair()
  const out = new MigStream(a)
  await saveState(out, { ...cpu, subsections: [{ name: 'cpu/zzz', versionId: 1, needed: () => true, fields: [] }] }, { eip: 1 })
  await out.flush()
  await a.endWrites()
  await t.rejects(loadState(new MigStream(b), cpu, {}, 12), { code: 'ERR_SAVEVM_UNKNOWN_SUBSECTION', message: /cpu has no subsection "cpu\/zzz"/ })
  // One whose name is not under "cpu" ends cpu's subsections and is left in the stream, as in QEMU.
  const [c, d] = memoryPair()
  const out2 = new MigStream(c)
  await saveState(out2, { ...cpu, subsections: [{ name: 'apic/x', versionId: 1, needed: () => true, fields: [] }] }, { eip: 1 })
  await out2.flush()
  await c.endWrites()
  const in2 = new MigStream(d)
  await loadState(in2, cpu, {}, 12)
  t.equal(in2.bytesRead, 4, 'stopped before the foreign subsection')
})
t.test('bad values are refused on save', async t => {
  const f = () => new MigStream(memoryPair()[0])
  const one = (type: string, v: unknown) => saveState(f(), { name: 'x', versionId: 1, fields: [{ name: 'v', type } as never] }, { v })
  await t.rejects(one('uint8', 256), { code: 'ERR_VMSTATE_BAD_VALUE' })
  await t.rejects(one('int8', -129), { code: 'ERR_VMSTATE_BAD_VALUE' })
  await t.rejects(one('uint32', 1.5), { code: 'ERR_VMSTATE_BAD_VALUE' })
  await t.rejects(one('bool', 1), { code: 'ERR_VMSTATE_BAD_VALUE' })
  await t.rejects(one('uint64', -1n), { code: 'ERR_VMSTATE_BAD_VALUE' })
  await t.rejects(one('int64', 'x'), { code: 'ERR_VMSTATE_BAD_VALUE' })
  await one('uint64', 5)
  await t.rejects(saveState(f(), dev, { ...devState(), list: [1] }), /array has 1 elements/)
  await t.rejects(saveState(f(), dev, { ...devState(), list: 5 }), /expected an array/)
  await t.rejects(saveState(f(), dev, { ...devState(), fixed: Buffer.alloc(3) }), /buffer has 3 bytes/)
  await t.rejects(saveState(f(), dev, { ...devState(), fixed: 'abcd' }), /Buffer/)
  await t.rejects(saveState(f(), dev, { ...devState(), origin: null }), /object/)
  await t.rejects(saveState(f(), dev, { ...devState(), n: -1 }), /not a uint8/)
  await t.rejects(saveState(f(), { name: 'c', versionId: 1, fields: [{ name: 'n', type: 'uint8', exists: () => false }, { name: 'l', type: 'uint8', count: 'n' }] }, { n: -1, l: [] }), /not a valid count/)
})

t.test('lengths and counts from the stream are bounded before allocation', async t => {
  const [a, b] = memoryPair()
  const w = new MigStream(a)
  // n = 200 > maxCount 8
  const st = devState()
  await saveState(w, { ...dev, fields: dev.fields.map(f => (f.name === 'list' ? { ...f, maxCount: 1000 } : f)) }, { ...st, n: 200, list: new Array(200).fill(1) })
  await w.flush()
  await a.endWrites()
  await t.rejects(loadState(new MigStream(b), dev, {}, 2), { code: 'ERR_SAVEVM_LENGTH_LIMIT' })
  const [c, d] = memoryPair()
  const w2 = new MigStream(c)
  await saveState(w2, { ...uartVmsd, fields: uartVmsd.fields.map(f => (f.name === 'fifo' ? { ...f, maxLength: 1 << 20 } : f)) }, { ...uartState(), fifo_len: 100, fifo: Buffer.alloc(100) })
  await w2.flush()
  await c.endWrites()
  await t.rejects(loadState(new MigStream(d), uartVmsd, {}, 3), { code: 'ERR_SAVEVM_LENGTH_LIMIT' })
})

t.test('description validation', async t => {
  t.throws(() => validateVmsd({ name: '', versionId: 1, fields: [] }), /name/)
  t.throws(() => validateVmsd({ name: 'a', versionId: -1, fields: [] }), /versionId/)
  t.throws(() => validateVmsd({ name: 'a', versionId: 1, minimumVersionId: 2, fields: [] }), /minimumVersionId/)
  t.throws(() => validateVmsd({ name: 'a', versionId: 1, fields: [{ name: 'x', type: 'uint8' }, { name: 'x', type: 'uint8' }] }), /duplicate/)
  t.throws(() => validateVmsd({ name: 'a', versionId: 1, fields: [{ name: 'x', type: 'uint8', count: -1 }] }), /bad length/)
  t.throws(() => validateVmsd({ name: 'a', versionId: 1, fields: [{ name: 'x', type: 'uint8', count: 1e6 }] }), /maxCount/)
  validateVmsd(dev)
})

t.test('validation on load: declared ranges, checks and postLoad refuse what cannot run, naming the field', async t => {
  const ring: VMStateDescription = {
    name: 'ring',
    versionId: 1,
    fields: [
      { name: 'size', type: 'uint8', min: 1, max: 8 },
      { name: 'slots', type: 'uint16', count: 4, max: 999 },
      // An index into slots: below the count loaded just before.
      { name: 'head', type: 'uint32', check: (v, o) => ((v as number) < (o.size as number) ? undefined : `index ${v as number} is past the ${o.size as number} slots in use`) },
      { name: 'gen', type: 'int64', min: -1n },
    ],
    postLoad: o => {
      if (o.gen === -1n && o.head !== 0) throw new InvalidFieldError('ring.gen', 'generation -1 (never used) with a head other than 0')
    },
  }
  const ok = { size: 4, slots: [1, 2, 3, 999], head: 3, gen: 5n }
  t.same((await roundTrip(ring, ok)).into, ok)
  for (const [bad, field, msg] of [
    [{ size: 0 }, 'ring.size', /0 is below the minimum 1/],
    [{ size: 9 }, 'ring.size', /9 is above the maximum 8/],
    [{ slots: [1, 1000, 2, 3] }, 'ring.slots[1]', /1000 is above the maximum 999/],
    [{ head: 4 }, 'ring.head', /index 4 is past the 4 slots in use/],
    [{ gen: -2n }, 'ring.gen', /-2 is below the minimum -1/],
    [{ gen: -1n }, 'ring.gen', /never used/],
  ] as const) {
    const err = await roundTrip(ring, { ...ok, ...bad }).then(() => null, e => e as InvalidFieldError)
    t.type(err, InvalidFieldError, field)
    t.equal(err!.code, 'ERR_VMSTATE_INVALID')
    t.equal(err!.field, field)
    t.match(err!.message, new RegExp(`^ERR_VMSTATE_INVALID: ${field.replace(/[[\]]/g, '\\$&')}: `))
    t.match(err!.message, msg)
  }
  t.throws(() => validateVmsd({ name: 'x', versionId: 1, fields: [{ name: 'b', type: 'bool', min: 0 }] }), /min\/max on a bool/)
  t.throws(() => validateVmsd({ name: 'x', versionId: 1, fields: [{ name: 'u', type: 'uint8', min: 3, max: 2 }] }), /min 3 > max 2/)
  t.throws(() => validateVmsd({ name: 'x', versionId: 1, fields: [{ name: 'u', type: 'uint8', max: 1.5 }] }), /integers/)
})
