// Reading a VMState description's fields from a stream (QEMU's
// vmstate_load_state). Every count and length from the stream is checked
// against its bound before anything is allocated.
import type { MigStream } from '../stream/stream.js'
import { QEMU_VM_SUBSECTION } from '../savevm/constants.js'
import {
  LengthLimitError, VersionTooNewError, VersionTooOldError, UnknownSubsectionError, HandlerError, LoadError, InvalidFieldError,
} from '../savevm/errors.js'
import { need, streamFailure } from '../savevm/fail.js'
import type { State, VMStateDescription, VMStateField, ScalarField, ScalarType } from './types.js'
import { SCALAR_SIZE, DEFAULT_MAX_COUNT, DEFAULT_MAX_LENGTH } from './types.js'
import { countOf, lengthOf } from './layout.js'

function readScalar(f: MigStream, type: ScalarType): unknown {
  switch (type) {
    case 'bool': return f.u8() !== 0
    case 'uint8': return f.u8()
    case 'int8': return (f.u8() << 24) >> 24
    case 'uint16': return f.be16()
    case 'int16': return (f.be16() << 16) >> 16
    case 'uint32': return f.be32()
    case 'int32': return f.be32() | 0
    case 'uint64': return f.be64()
    case 'int64': return BigInt.asIntN(64, f.be64())
  }
}

async function hook(run: () => void | Promise<void>, vmsd: VMStateDescription, what: string, f: MigStream, section?: string): Promise<void> {
  try {
    await run()
  } catch (e) {
    if (e instanceof LoadError) throw e
    throw new HandlerError(`${vmsd.name} ${what} failed: ${(e as Error)?.message ?? String(e)}`, { section, offset: f.bytesRead, cause: e })
  }
}

export interface LoadContext {
  /** Section name for error messages. */
  section?: string
}

export async function loadState(
  f: MigStream, vmsd: VMStateDescription, obj: State, versionId: number, ctx: LoadContext = {},
): Promise<void> {
  const section = ctx.section ?? vmsd.name
  if (versionId > vmsd.versionId) {
    throw new VersionTooNewError(`${vmsd.name}: stream has version ${versionId}, this side knows up to ${vmsd.versionId}`, { section, offset: f.bytesRead })
  }
  const min = vmsd.minimumVersionId ?? vmsd.versionId
  if (versionId < min) {
    throw new VersionTooOldError(`${vmsd.name}: stream has version ${versionId}, minimum is ${min}`, { section, offset: f.bytesRead })
  }
  if (vmsd.preLoad) await hook(() => vmsd.preLoad!(obj), vmsd, 'preLoad', f, section)
  for (const field of vmsd.fields) {
    if ((field.since ?? 0) > versionId) continue
    if (field.exists && !field.exists(obj, versionId)) continue
    await loadField(f, vmsd, field, obj, section)
  }
  await loadSubsections(f, vmsd, obj, ctx, section)
  if (vmsd.postLoad) await hook(() => vmsd.postLoad!(obj, versionId), vmsd, 'postLoad', f, section)
}

async function loadField(
  f: MigStream, vmsd: VMStateDescription, field: VMStateField, obj: State, section: string,
): Promise<void> {
  const what = `${vmsd.name}.${field.name}`
  if (field.type === 'buffer') {
    const len = lengthOf(field, obj)
    const max = typeof field.length === 'number' ? field.length : field.maxLength ?? DEFAULT_MAX_LENGTH
    if (len < 0 || len > max) throw new LengthLimitError(`${what}: length ${len} outside 0..${max}`, { section, offset: f.bytesRead })
    const at = f.bytesRead
    const b = await f.getBuffer(len)
    if (f.error) throw streamFailure(f, section, what)
    obj[field.name] = b
    checked(field, obj, what, section, at)
    return
  }
  const n = countOf(field, obj)
  const max = typeof field.count === 'number' ? field.count : field.maxCount ?? DEFAULT_MAX_COUNT
  if (n < 0 || n > max) throw new LengthLimitError(`${what}: count ${n} outside 0..${max}`, { section, offset: f.bytesRead })
  const isArray = field.count !== undefined
  if (field.type === 'struct') {
    const prev = obj[field.name]
    const out: State[] = []
    for (let i = 0; i < n; i++) {
      const cur = isArray ? (Array.isArray(prev) ? prev[i] : undefined) : prev
      const el: State = typeof cur === 'object' && cur !== null ? (cur as State) : {}
      await loadState(f, field.vmsd, el, field.vmsd.versionId, { section })
      out.push(el)
    }
    obj[field.name] = isArray ? out : out[0]
    checked(field, obj, what, section, f.bytesRead)
    return
  }
  const size = SCALAR_SIZE[field.type]
  await need(f, size * n, section, what)
  const at = f.bytesRead
  if (!isArray) {
    const v = readScalar(f, field.type)
    inRange(field, v, what, section, at)
    obj[field.name] = v
  } else {
    const out = new Array<unknown>(n)
    for (let i = 0; i < n; i++) {
      out[i] = readScalar(f, field.type)
      inRange(field, out[i], `${what}[${i}]`, section, at + i * size)
    }
    obj[field.name] = out
  }
  checked(field, obj, what, section, at)
}

function inRange(field: ScalarField, v: unknown, what: string, section: string, offset: number): void {
  if (field.min === undefined && field.max === undefined) return
  const x = typeof v === 'bigint' ? v : BigInt(v as number)
  if (field.min !== undefined && x < BigInt(field.min)) throw new InvalidFieldError(what, `${x} is below the minimum ${field.min}`, { section, offset })
  if (field.max !== undefined && x > BigInt(field.max)) throw new InvalidFieldError(what, `${x} is above the maximum ${field.max}`, { section, offset })
}

function checked(field: VMStateField, obj: State, what: string, section: string, offset: number): void {
  if (!field.check) return
  const why = field.check(obj[field.name], obj)
  if (why !== undefined) throw new InvalidFieldError(what, why, { section, offset })
}

async function loadSubsections(f: MigStream, vmsd: VMStateDescription, obj: State, ctx: LoadContext, section: string): Promise<void> {
  for (;;) {
    if ((await f.tryFill(1)) < 1 || f.peekU8() !== QEMU_VM_SUBSECTION) return
    await need(f, 2, section, `${vmsd.name} subsection header`)
    const len = f.peekU8(1)
    await need(f, 2 + len + 4, section, `${vmsd.name} subsection header`)
    const name = f.peek(len, 2).toString('latin1')
    // QEMU's vmstate_subsection_load: a subsection whose name does not start
    // with this description's name belongs to an enclosing one (the subsection
    // after a nested struct, or the parent's next one after a subsection).
    if (len < Buffer.byteLength(vmsd.name, 'latin1') + 1 || !name.startsWith(vmsd.name)) return
    const sub = vmsd.subsections?.find(s => s.name === name)
    if (!sub) {
      throw new UnknownSubsectionError(`${vmsd.name} has no subsection ${JSON.stringify(name)}`, { section, offset: f.bytesRead })
    }
    f.view(2 + len)
    const version = f.be32()
    await loadState(f, sub, obj, version, { ...ctx, section })
  }
}
