// Writing a VMState description's fields to a stream, building the vmdesc
// JSON for them on the way (QEMU's vmstate_save_state).
import type { MigStream } from '../stream/stream.js'
import { SaveError } from '../savevm/errors.js'
import { QEMU_VM_SUBSECTION } from '../savevm/constants.js'
import type { State, VMStateDescription, VMStateField, ScalarType, VmdescField, VmdescVmsd } from './types.js'
import { countOf, lengthOf } from './layout.js'

const RANGE: Record<Exclude<ScalarType, 'bool' | 'uint64' | 'int64'>, [number, number]> = {
  uint8: [0, 0xff], int8: [-0x80, 0x7f], uint16: [0, 0xffff], int16: [-0x8000, 0x7fff],
  uint32: [0, 0xffffffff], int32: [-0x80000000, 0x7fffffff],
}

function bad(vmsd: VMStateDescription, field: VMStateField, why: string): SaveError {
  return new SaveError('ERR_VMSTATE_BAD_VALUE', `${vmsd.name}.${field.name}: ${why}`)
}

function putScalar(f: MigStream, vmsd: VMStateDescription, field: VMStateField, type: ScalarType, v: unknown): void {
  switch (type) {
    case 'bool':
      if (typeof v !== 'boolean') throw bad(vmsd, field, `expected boolean, got ${typeof v}`)
      f.putU8(v ? 1 : 0)
      return
    case 'uint64':
    case 'int64': {
      let b: bigint
      if (typeof v === 'bigint') b = v
      else if (typeof v === 'number' && Number.isSafeInteger(v)) b = BigInt(v)
      else throw bad(vmsd, field, `expected bigint or safe integer, got ${String(v)}`)
      const lo = type === 'uint64' ? 0n : -(1n << 63n)
      const hi = type === 'uint64' ? (1n << 64n) - 1n : (1n << 63n) - 1n
      if (b < lo || b > hi) throw bad(vmsd, field, `${b} out of ${type} range`)
      f.putBe64(b)
      return
    }
    default: {
      const [lo, hi] = RANGE[type]
      if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
        throw bad(vmsd, field, `${String(v)} is not a ${type}`)
      }
      if (type === 'uint8' || type === 'int8') f.putU8(v)
      else if (type === 'uint16' || type === 'int16') f.putBe16(v)
      else f.putBe32(v)
    }
  }
}

/** QEMU describes an array once (array_len) unless its elements may differ in shape. */
export function canCompress(field: VMStateField): boolean {
  if (field.exists) return false
  if (field.type === 'struct') {
    if (field.vmsd.subsections?.length) return false
    return field.vmsd.fields.every(canCompress)
  }
  return true
}

function elements(vmsd: VMStateDescription, field: VMStateField, obj: State, n: number): unknown[] {
  const v = obj[field.name]
  if (!('count' in field) || field.count === undefined) return [v]
  if (!Array.isArray(v)) throw bad(vmsd, field, `expected an array of ${n}, got ${typeof v}`)
  if (v.length !== n) throw bad(vmsd, field, `array has ${v.length} elements, description says ${n}`)
  return v
}

/** Save `obj` as described by `vmsd`; resolves the vmdesc of what was written. */
export async function saveState(f: MigStream, vmsd: VMStateDescription, obj: State): Promise<VmdescVmsd> {
  if (vmsd.preSave) await vmsd.preSave(obj)
  const desc: VmdescVmsd = { vmsd_name: vmsd.name, version: vmsd.versionId, fields: [] }
  for (const field of vmsd.fields) {
    if (field.exists && !field.exists(obj, vmsd.versionId)) continue
    const n = field.type === 'buffer' ? 1 : countOf(field, obj, vmsd.name)
    if (n < 0) throw bad(vmsd, field, `count field ${String(field.type !== 'buffer' && field.count)} is not a valid count`)
    const elems = elements(vmsd, field, obj, n)
    const compress = canCompress(field)
    for (let i = 0; i < elems.length; i++) {
      const before = f.transferred
      let sub: VmdescVmsd | undefined
      const el = elems[i]
      if (field.type === 'struct') {
        if (typeof el !== 'object' || el === null) throw bad(vmsd, field, 'expected an object')
        sub = await saveState(f, field.vmsd, el as State)
      } else if (field.type === 'buffer') {
        const len = lengthOf(field, obj)
        if (!(el instanceof Uint8Array)) throw bad(vmsd, field, 'expected a Buffer/Uint8Array')
        if (len < 0 || el.length !== len) throw bad(vmsd, field, `buffer has ${el.length} bytes, length says ${len}`)
        f.putBuffer(el)
      } else {
        putScalar(f, vmsd, field, field.type, el)
      }
      if (i === 0 || !compress) {
        const d: VmdescField = { name: field.name } as VmdescField
        if (elems.length > 1) {
          if (compress) d.array_len = elems.length
          else d.index = i
        }
        d.type = field.type
        if (sub) d.struct = sub
        d.size = f.transferred - before
        desc.fields.push(d)
      }
    }
    if (f.error) throw new SaveError('ERR_VMSTATE_STREAM', `${vmsd.name}.${field.name}: ${f.error.message}`, { cause: f.error })
  }
  for (const sub of vmsd.subsections ?? []) {
    if (sub.needed && !sub.needed(obj)) continue
    f.putU8(QEMU_VM_SUBSECTION)
    f.putCountedString(sub.name)
    f.putBe32(sub.versionId)
    const sd = await saveState(f, sub, obj)
    ;(desc.subsections ??= []).push(sd)
  }
  return desc
}
