// Checks of the analyzer's decoded device fields against what QEMU wrote:
// fieldsMatchBytes re-reads every value from the raw section payload by the
// semantics of QEMU's VMStateInfo readers (migration/vmstate-types.c: every
// integer big-endian, the sign the reader's); matchQemuAnalyzer compares them
// with the output of QEMU's own scripts/analyze-migration.py.
export interface DescField { name: string; type: string; size: number; array_len?: number; index?: number; struct?: DescVmsd; vmsd_name?: string; version?: number; fields?: DescField[]; subsections?: DescVmsd[] }
export interface DescVmsd { vmsd_name?: string; version?: number; fields?: DescField[]; subsections?: DescVmsd[] }
export interface DescDevice extends DescVmsd { name: string; instance_id: number }

/** Width and sign of each integer reader, by its VMStateInfo name, as vmstate-types.c and savevm.c define them. */
const INTS: Record<string, { bytes: number; signed: boolean }> = {
  int8: { bytes: 1, signed: true }, int16: { bytes: 2, signed: true }, int32: { bytes: 4, signed: true }, int64: { bytes: 8, signed: true },
  uint8: { bytes: 1, signed: false }, uint16: { bytes: 2, signed: false }, uint32: { bytes: 4, signed: false }, uint64: { bytes: 8, signed: false },
  // get_int32_equal, get_int32_le (qemu_get_sbe32s), get_uint*_equal; "int64 equal" is get_uint64_equal.
  'int32 equal': { bytes: 4, signed: true }, 'int32 le': { bytes: 4, signed: true },
  'uint8 equal': { bytes: 1, signed: false }, 'uint16 equal': { bytes: 2, signed: false }, 'uint32 equal': { bytes: 4, signed: false },
  'int64 equal': { bytes: 8, signed: false },
  // savevm.c get_timer: qemu_get_be64 of the expiry, -1 when not armed.
  timer: { bytes: 8, signed: true },
}

/** Types whose vmdesc entry carries the nested description inline (VMSTATE_WITH_TMP). */
const inline = (f: DescField) => f.type === 'tmp' && Array.isArray(f.fields)

/**
 * The bytes a decoded leaf stands for, by its type's reader, or a reason it
 * cannot be what QEMU wrote. Values too long to print whole come back as
 * their length and head.
 */
function encodeLeaf(v: unknown, f: DescField): Buffer | { bytes: number; head?: Buffer } | string {
  const int = INTS[f.type]
  if (int && f.size === int.bytes) {
    if (typeof v !== 'number' && typeof v !== 'string') return `${JSON.stringify(v)} is not an integer`
    const n = BigInt(v)
    const bits = BigInt(8 * int.bytes)
    const [lo, hi] = int.signed ? [-(1n << (bits - 1n)), (1n << (bits - 1n)) - 1n] : [0n, (1n << bits) - 1n]
    if (n < lo || n > hi) return `${n} is outside ${f.type}'s range ${lo}..${hi}`
    const u = BigInt.asUintN(Number(bits), n)
    const b = Buffer.alloc(int.bytes)
    for (let i = 0; i < int.bytes; i++) b[i] = Number((u >> BigInt(8 * (int.bytes - 1 - i))) & 0xffn)
    return b
  }
  if (f.type === 'bool') return typeof v === 'boolean' ? Buffer.from([v ? 1 : 0]) : `${JSON.stringify(v)} is not a bool`
  if (v === 'nullptr') return Buffer.from([0x30])
  if (typeof v === 'string') return /^([0-9a-f]{2})*$/.test(v) ? Buffer.from(v, 'hex') : `${JSON.stringify(v)} is not hex bytes`
  if (v && typeof v === 'object' && typeof (v as { bytes?: unknown }).bytes === 'number') {
    const { bytes, head } = v as { bytes: number; head?: string }
    return { bytes, head: head === undefined ? undefined : Buffer.from(head, 'hex') }
  }
  return `${JSON.stringify(v)} is not a value of type ${f.type}`
}

/** A bool is any non-zero byte (get_bool); everything else must be the same bytes. */
function leafMatches(v: unknown, f: DescField, raw: Buffer): string | undefined {
  if (raw.length !== f.size) return `runs past the payload`
  if (f.type === 'bool' && f.size === 1) return v === (raw[0] !== 0) ? undefined : `${JSON.stringify(v)}, QEMU wrote ${raw.toString('hex')}`
  const e = encodeLeaf(v, f)
  if (typeof e === 'string') return e
  if (Buffer.isBuffer(e)) return e.equals(raw) ? undefined : `${JSON.stringify(v)} stands for ${e.toString('hex')}, QEMU wrote ${raw.toString('hex')}`
  if (e.bytes !== raw.length) return `${e.bytes} bytes, QEMU wrote ${raw.length}`
  if (e.head && !e.head.equals(raw.subarray(0, e.head.length))) return `head ${e.head.toString('hex')}, QEMU wrote ${raw.subarray(0, e.head.length).toString('hex')}`
  return undefined
}

const ourKey = (f: DescField) => (f.index !== undefined ? `${f.name}[${f.index}]` : f.name)
const SUBSECTION_KEY = /^(.*) \(v(\d+)\)$/

/**
 * Walk `fields` (one FULL section as the analyzer decoded it) along its
 * vmdesc over `payload`, QEMU's bytes of that section. Returns every
 * mismatch, and the offset where the walk ended.
 */
export function fieldsMatchBytes(fields: Record<string, unknown>, desc: DescVmsd, payload: Buffer): { bad: string[]; end: number } {
  const bad: string[] = []
  const walk = (o: Record<string, unknown>, d: DescVmsd, at: number, path: string): number => {
    for (const f of d.fields ?? []) {
      const key = ourKey(f)
      if (!(key in o)) {
        bad.push(`${path}.${key}: missing`)
        continue
      }
      const n = f.array_len ?? 1
      for (let i = 0; i < n; i++) {
        const v = f.array_len !== undefined ? (o[key] as unknown[])[i] : o[key]
        const p = `${path}.${key}${f.array_len !== undefined ? `[${i}]` : ''}`
        if (f.type === 'struct' && f.struct) at = walk(v as Record<string, unknown>, f.struct, at, p)
        else if (inline(f)) at = walk(v as Record<string, unknown>, f, at, p)
        else {
          const why = leafMatches(v, f, payload.subarray(at, at + f.size))
          if (why) bad.push(`${p} (${f.type}, byte ${at}): ${why}`)
          at += f.size
        }
      }
    }
    for (const [k, v] of Object.entries(o)) {
      const m = SUBSECTION_KEY.exec(k)
      if (!m) continue
      const name = Buffer.from(m[1]!, 'latin1')
      const head = Buffer.concat([Buffer.from([0x05, name.length]), name, Buffer.alloc(4)])
      head.writeUInt32BE(Number(m[2]), 2 + name.length)
      if (!payload.subarray(at, at + head.length).equals(head)) bad.push(`${path}: subsection ${k} is not what QEMU wrote at byte ${at}`)
      const sd = d.subsections?.find(s => s.vmsd_name === m[1])
      if (!sd) {
        bad.push(`${path}: subsection ${k} is not in the vmdesc`)
        continue
      }
      at = walk(v as Record<string, unknown>, sd, at + head.length, `${path}/${m[1]}`)
    }
    return at
  }
  const end = walk(fields, desc, 0, '')
  if (end !== payload.length) bad.push(`the fields end at byte ${end} of a ${payload.length}-byte payload`)
  return { bad, end }
}

/** QEMU's analyzer prints integers as "0x<hex, 2 digits a byte>" (signed ones " (-n)" after), other fields as spaced hex bytes. */
function qemuBytes(q: unknown, f: DescField): Buffer | boolean | string {
  if (typeof q === 'boolean') return q
  if (typeof q !== 'string') return `QEMU's analyzer printed ${JSON.stringify(q)}`
  const int = /^0x([0-9a-f]+)(?: \(-\d+\))?$/.exec(q)
  if (int && int[1]!.length === 2 * f.size) return Buffer.from(int[1]!, 'hex')
  if (/^([0-9a-f]{2}( [0-9a-f]{2})*)?$/.test(q)) return Buffer.from(q.replace(/ /g, ''), 'hex')
  return `QEMU's analyzer printed ${JSON.stringify(q)}`
}

/** Our decoded inline (tmp) struct as the bytes QEMU's analyzer shows for it. */
function encodeInline(o: Record<string, unknown>, d: DescVmsd): Buffer | string {
  const parts: Buffer[] = []
  for (const f of d.fields ?? []) {
    const n = f.array_len ?? 1
    for (let i = 0; i < n; i++) {
      const v = f.array_len !== undefined ? (o[ourKey(f)] as unknown[])[i] : o[ourKey(f)]
      const e = f.type === 'struct' && f.struct ? encodeInline(v as Record<string, unknown>, f.struct) : encodeLeaf(v, f)
      if (!Buffer.isBuffer(e)) return typeof e === 'string' ? e : 'too long to compare'
      parts.push(e)
    }
  }
  return Buffer.concat(parts)
}

/**
 * Compare one FULL section as we decoded it with the same section in the
 * JSON of QEMU's analyzer (its keys: field names, repeated ones as a list in
 * stream order; subsections by name). Returns every mismatch.
 */
export function matchQemuAnalyzer(fields: Record<string, unknown>, q: Record<string, unknown>, desc: DescVmsd, where: string): string[] {
  const bad: string[] = []
  const walk = (o: Record<string, unknown>, qo: Record<string, unknown>, d: DescVmsd, path: string): void => {
    const nth = new Map<string, number>()
    for (const f of d.fields ?? []) {
      const n = f.array_len ?? 1
      for (let i = 0; i < n; i++) {
        const k = nth.get(f.name) ?? 0
        nth.set(f.name, k + 1)
        const all = qo[f.name]
        const qv = Array.isArray(all) ? all[k] : k === 0 ? all : undefined
        const v = f.array_len !== undefined ? (o[ourKey(f)] as unknown[] | undefined)?.[i] : o[ourKey(f)]
        const p = `${path}.${f.name}#${k}`
        if (qv === undefined || v === undefined) {
          bad.push(`${p}: ours ${JSON.stringify(v)}, QEMU's analyzer ${JSON.stringify(qv)}`)
          continue
        }
        if (f.type === 'struct' && f.struct) {
          walk(v as Record<string, unknown>, qv as Record<string, unknown>, f.struct, p)
          continue
        }
        const theirs = qemuBytes(qv, f)
        if (typeof theirs === 'string') {
          bad.push(`${p}: ${theirs}`)
          continue
        }
        if (typeof theirs === 'boolean') {
          if (v !== theirs) bad.push(`${p}: ours ${JSON.stringify(v)}, QEMU's analyzer ${theirs}`)
          continue
        }
        const why = inline(f)
          ? ((e) => (typeof e === 'string' ? e : e.equals(theirs) ? undefined : `ours stands for ${e.toString('hex')}, QEMU's analyzer ${theirs.toString('hex')}`))(encodeInline(v as Record<string, unknown>, f))
          : leafMatches(v, f, theirs)
        if (why) bad.push(`${p} (${f.type}): ${why}`)
      }
    }
    const ourSubs = Object.keys(o).flatMap(k => {
      const m = SUBSECTION_KEY.exec(k)
      return m ? [[m[1]!, k] as const] : []
    })
    const theirSubs = (d.subsections ?? []).map(s => s.vmsd_name!).filter(n => n in qo)
    if (JSON.stringify(ourSubs.map(s => s[0])) !== JSON.stringify(theirSubs)) bad.push(`${path}: subsections ${JSON.stringify(ourSubs.map(s => s[0]))}, QEMU's analyzer ${JSON.stringify(theirSubs)}`)
    for (const [name, k] of ourSubs) {
      const sd = d.subsections?.find(s => s.vmsd_name === name)
      if (sd && qo[name]) walk(o[k] as Record<string, unknown>, qo[name] as Record<string, unknown>, sd, `${path}/${name}`)
    }
  }
  walk(fields, q, desc, where)
  return bad
}

/** Every nested struct described by `vmsdName`, with the fields we decoded for it. */
export function structsNamed(fields: Record<string, unknown>, desc: DescVmsd, vmsdName: string): { version?: number; fields: Record<string, unknown> }[] {
  const found: { version?: number; fields: Record<string, unknown> }[] = []
  const walk = (o: Record<string, unknown>, d: DescVmsd): void => {
    if (d.vmsd_name === vmsdName) found.push({ version: d.version, fields: o })
    for (const f of d.fields ?? []) {
      const s = f.struct ?? (inline(f) ? f : undefined)
      if (!s) continue
      const v = o[ourKey(f)]
      for (const x of f.array_len !== undefined ? (v as unknown[]) : [v]) walk(x as Record<string, unknown>, s)
    }
    for (const [k, v] of Object.entries(o)) {
      const m = SUBSECTION_KEY.exec(k)
      const sd = m && d.subsections?.find(s => s.vmsd_name === m[1])
      if (sd) walk(v as Record<string, unknown>, sd)
    }
  }
  walk(fields, desc)
  return found
}
