// Counts and lengths of fields, shared by save, load and validation.
import type { State, VMStateDescription, VMStateField, BufferField } from './types.js'
import { DEFAULT_MAX_COUNT } from './types.js'

function intFrom(obj: State, name: string): number {
  const v = obj[name]
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v
  if (typeof v === 'bigint' && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v)
  return -1
}

/** Number of elements of a scalar or struct field (1 when not an array); -1 when invalid. */
export function countOf(field: Exclude<VMStateField, BufferField>, obj: State, _vmsd?: string): number {
  if (field.count === undefined) return 1
  if (typeof field.count === 'number') return field.count
  return intFrom(obj, field.count)
}

/** Byte length of a buffer field; -1 when the length field is invalid. */
export function lengthOf(field: BufferField, obj: State): number {
  return typeof field.length === 'number' ? field.length : intFrom(obj, field.length)
}

/** Reject descriptions that cannot work, once, at registration. */
export function validateVmsd(vmsd: VMStateDescription, seen = new Set<VMStateDescription>()): void {
  if (seen.has(vmsd)) return
  seen.add(vmsd)
  const where = (f?: VMStateField) => `vmstate ${vmsd.name}${f ? `.${f.name}` : ''}`
  if (!vmsd.name || Buffer.byteLength(vmsd.name) > 255) throw new TypeError(`${where()}: name must be 1..255 bytes`)
  if (!Number.isInteger(vmsd.versionId) || vmsd.versionId < 0 || vmsd.versionId > 0xffffffff) throw new TypeError(`${where()}: bad versionId`)
  const min = vmsd.minimumVersionId ?? vmsd.versionId
  if (!Number.isInteger(min) || min > vmsd.versionId) throw new TypeError(`${where()}: minimumVersionId ${min} > versionId ${vmsd.versionId}`)
  const names = new Set<string>()
  for (const f of vmsd.fields) {
    if (names.has(f.name)) throw new TypeError(`${where(f)}: duplicate field name`)
    const ref = f.type === 'buffer' ? f.length : f.count
    if (typeof ref === 'string' && !names.has(ref)) throw new TypeError(`${where(f)}: length/count field ${ref} must come earlier`)
    if (typeof ref === 'number' && (!Number.isSafeInteger(ref) || ref < 0)) throw new TypeError(`${where(f)}: bad length/count ${ref}`)
    if (f.type !== 'buffer' && typeof f.count === 'number' && f.count > (f.maxCount ?? DEFAULT_MAX_COUNT)) {
      throw new TypeError(`${where(f)}: count ${f.count} above maxCount`)
    }
    if (f.type !== 'buffer' && f.type !== 'struct' && (f.min !== undefined || f.max !== undefined)) {
      const int = (v: unknown) => typeof v === 'bigint' || (typeof v === 'number' && Number.isSafeInteger(v))
      if (f.type === 'bool') throw new TypeError(`${where(f)}: min/max on a bool`)
      if ((f.min !== undefined && !int(f.min)) || (f.max !== undefined && !int(f.max))) throw new TypeError(`${where(f)}: min/max must be integers`)
      if (f.min !== undefined && f.max !== undefined && BigInt(f.min) > BigInt(f.max)) throw new TypeError(`${where(f)}: min ${f.min} > max ${f.max}`)
    }
    if (f.check !== undefined && typeof f.check !== 'function') throw new TypeError(`${where(f)}: check must be a function`)
    names.add(f.name)
    if (f.type === 'struct') validateVmsd(f.vmsd, seen)
  }
  for (const s of vmsd.subsections ?? []) validateVmsd(s, seen)
}
