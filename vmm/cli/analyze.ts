// `vmm-migrate analyze FILE`: decode a stream of ours (or QEMU's framing) into
// JSON, the way QEMU's scripts/analyze-migration.py does: the vmdesc found at
// the end describes the FULL sections; RAM and VFIO sections are decoded by
// their own formats; anything else is reported, not guessed at.
import { open } from 'node:fs/promises'
import {
  QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION, QEMU_VM_EOF, QEMU_VM_SECTION_START, QEMU_VM_SECTION_PART,
  QEMU_VM_SECTION_END, QEMU_VM_SECTION_FULL, QEMU_VM_SUBSECTION, QEMU_VM_VMDESCRIPTION, QEMU_VM_CONFIGURATION,
  QEMU_VM_COMMAND, QEMU_VM_SECTION_FOOTER, MIG_CMD_NAME,
} from '../savevm/constants.js'
import { markerName, VFIO_MIG_FLAG_END_OF_STATE, VFIO_MIG_FLAG_DEV_CONFIG_STATE, VFIO_MIG_FLAG_DEV_SETUP_STATE, VFIO_MIG_FLAG_DEV_DATA_STATE, VFIO_MIG_FLAG_DEV_INIT_DATA_SENT } from '../vfio/markers.js'
import { FileReader, AnalyzeError } from './file-reader.js'

export { AnalyzeError }

const TYPE_NAME: Record<number, string> = {
  [QEMU_VM_SECTION_START]: 'START', [QEMU_VM_SECTION_PART]: 'PART', [QEMU_VM_SECTION_END]: 'END', [QEMU_VM_SECTION_FULL]: 'FULL',
}
const MAX_VMDESC = 16 << 20
const MAX_VALUE_BYTES = 4096
/** RAM_SAVE_FLAG_* (QEMU migration/ram.c). */
const RAM = { ZERO: 0x02, MEM_SIZE: 0x04, PAGE: 0x08, EOS: 0x10, CONTINUE: 0x20 }

/** A field; QEMU's VMSTATE_WITH_TMP ("tmp") carries its vmsd keys inline instead of under "struct". */
interface VmdescField extends VmdescVmsd { name: string; type: string; size: number; array_len?: number; index?: number; struct?: VmdescVmsd }
interface VmdescVmsd { vmsd_name?: string; version?: number; fields?: VmdescField[]; subsections?: VmdescVmsd[] }
interface VmdescDevice extends VmdescVmsd { name: string; instance_id: number }

export interface SectionInfo {
  type: string
  sectionId: number
  idstr: string
  instanceId?: number
  versionId?: number
  offset: number
  /** Payload bytes (between the header and the footer). */
  size: number
  kind: 'ram' | 'vfio' | 'vmstate' | 'unknown'
  ram?: { pages: number; zeroPages: number; blocks?: { name: string; length: number }[] }
  vfio?: { markers: string[]; dataBlocks: number[] }
  fields?: Record<string, unknown>
}

export interface Analysis {
  file: string
  size: number
  header: { magic: string; version: number }
  configuration?: { machine: string; targetPageBits?: number }
  sections: SectionInfo[]
  commands: { cmd: string; length: number; offset: number }[]
  ram?: { blocks: { name: string; length: number }[]; pages: number; zeroPages: number; pageBytes: number }
  vfio: Record<string, { dataBlocks: number; dataBytes: number; largestBlock: number; configBytes: number; initDataSent: boolean }>
  eof: boolean
  /** Byte offset of the EOF marker (the VMDESCRIPTION, if any, starts one byte later). */
  eofOffset?: number
  vmdesc?: unknown
}

/** The VMDESCRIPTION sits after EOF at the very end: find it from the back. */
async function findVmdesc(r: FileReader): Promise<{ at: number; json: unknown } | undefined> {
  const tailLen = Math.min(r.size, MAX_VMDESC + 6)
  const tailAt = r.size - tailLen
  const tail = await r.readAt(tailAt, tailLen)
  for (let i = tail.length - 5; i >= 1; i--) {
    if (tail[i] !== QEMU_VM_VMDESCRIPTION || tail[i - 1] !== QEMU_VM_EOF) continue
    if (tail.readUInt32BE(i + 1) !== tail.length - i - 5) continue
    try {
      return { at: tailAt + i, json: JSON.parse(tail.subarray(i + 5).toString('utf8')) }
    } catch {
      // A 0x06 inside page data that happens to fit: keep looking.
    }
  }
  return undefined
}

/**
 * Integer types by QEMU's VMStateInfo names: "int32 equal" & co. are checked
 * integers, "int32 le" is little-endian (VMSTATE_INT32_POSITIVE_LE, e.g. a PCI
 * device's version_id), "timer" is the be64 expiry in ns (-1: not armed).
 */
const INT_TYPE = /^(u?)int(8|16|32|64)( equal| le)?$/

function scalar(b: Buffer, type: string): unknown {
  if (type === 'bool') return b[0] !== 0
  const m = type === 'timer' ? ['', '', '64'] : INT_TYPE.exec(type)
  if (m && b.length === Number(m[2]) / 8) {
    const bytes = m[3] === ' le' ? Buffer.from(b).reverse() : b
    let v = 0n
    for (const x of bytes) v = (v << 8n) | BigInt(x)
    if (m[1] !== 'u' && (bytes[0]! & 0x80)) v -= 1n << BigInt(8 * bytes.length)
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()
  }
  return b.length <= 64 ? b.toString('hex') : { bytes: b.length, head: b.subarray(0, 32).toString('hex') }
}

async function decodeFields(r: FileReader, d: VmdescVmsd, where: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {}
  for (const f of d.fields ?? []) {
    const n = f.array_len ?? 1
    if (!Number.isInteger(f.size) || f.size < 0 || !Number.isInteger(n) || n < 0) throw new AnalyzeError(`vmdesc of ${where}: field ${f.name} has a bad size`)
    const vals: unknown[] = []
    for (let i = 0; i < n; i++) {
      if (f.type === 'struct' && f.struct) {
        vals.push(await decodeFields(r, f.struct, `${where}.${f.name}`))
      } else if (Array.isArray(f.fields)) {
        vals.push(await decodeFields(r, f, `${where}.${f.name}`))
      } else if (f.size > MAX_VALUE_BYTES) {
        await r.skip(f.size, `${where}.${f.name}`)
        vals.push({ bytes: f.size })
      } else {
        vals.push(scalar(await r.bytes(f.size, `${where}.${f.name}`), f.type))
      }
    }
    const key = f.index !== undefined ? `${f.name}[${f.index}]` : f.name
    out[key] = f.array_len !== undefined ? vals : vals[0]
  }
  while (d.subsections?.length && r.remaining > 1 && (await r.peekU8('subsection')) === QEMU_VM_SUBSECTION) {
    const head = await r.readAt(r.pos, 2 + 255)
    const len = head[1]!
    const name = head.subarray(2, 2 + len).toString('latin1')
    // As QEMU's vmstate_subsection_load: a name without this vmsd's name as
    // prefix is the enclosing description's next subsection.
    if (d.vmsd_name !== undefined && (len < Buffer.byteLength(d.vmsd_name, 'latin1') + 1 || !name.startsWith(d.vmsd_name))) break
    await r.skip(2 + len, 'subsection name')
    const version = await r.be32('subsection version')
    const sub = d.subsections.find((s) => s.vmsd_name === name)
    if (!sub) throw new AnalyzeError(`${where}: subsection '${name}' is not in the vmdesc`, r.pos)
    out[`${name} (v${version})`] = await decodeFields(r, sub, name)
  }
  return out
}

async function decodeRam(r: FileReader, s: SectionInfo, pageBits: number, a: Analysis): Promise<void> {
  const page = 2 ** pageBits
  const mask = BigInt(page - 1)
  const ram = (a.ram ??= { blocks: [], pages: 0, zeroPages: 0, pageBytes: 0 })
  s.ram = { pages: 0, zeroPages: 0 }
  for (;;) {
    const at = r.pos
    const w = await r.be64('RAM record')
    const flags = Number(w & mask)
    const addr = w & ~mask
    if (flags & RAM.MEM_SIZE) {
      let left = addr
      s.ram.blocks = []
      while (left > 0n) {
        const len = await r.u8('RAM block name length')
        const name = (await r.bytes(len, 'RAM block name')).toString('latin1')
        const length = await r.be64('RAM block length')
        if (length === 0n || length > left) throw new AnalyzeError(`RAM block '${name}' length ${length} does not fit the announced total`, at)
        left -= length
        s.ram.blocks.push({ name, length: Number(length) })
      }
      ram.blocks = s.ram.blocks
    } else if (flags & (RAM.ZERO | RAM.PAGE)) {
      if (!(flags & RAM.CONTINUE)) {
        const len = await r.u8('RAM block id length')
        await r.skip(len, 'RAM block id')
      }
      if (flags & RAM.ZERO) {
        await r.u8('zero page fill byte')
        s.ram.zeroPages++
      } else {
        await r.skip(page, 'RAM page')
        s.ram.pages++
      }
    } else if (flags !== RAM.EOS) {
      throw new AnalyzeError(`RAM record with unsupported flags 0x${flags.toString(16)}`, at)
    }
    if (flags & RAM.EOS) break
  }
  ram.pages += s.ram.pages
  ram.zeroPages += s.ram.zeroPages
  ram.pageBytes += s.ram.pages * page
}

async function decodeVfio(r: FileReader, s: SectionInfo, a: Analysis): Promise<void> {
  const dev = (a.vfio[s.idstr] ??= { dataBlocks: 0, dataBytes: 0, largestBlock: 0, configBytes: 0, initDataSent: false })
  s.vfio = { markers: [], dataBlocks: [] }
  for (;;) {
    const at = r.pos
    const m = await r.be64('VFIO marker')
    s.vfio.markers.push(markerName(m))
    if (m === VFIO_MIG_FLAG_END_OF_STATE) return
    if (m === VFIO_MIG_FLAG_DEV_INIT_DATA_SENT) {
      dev.initDataSent = true
      return
    }
    if (m === VFIO_MIG_FLAG_DEV_DATA_STATE) {
      const size = await r.be64('VFIO data block size')
      if (size > BigInt(r.remaining)) throw new AnalyzeError(`VFIO data block of ${size} bytes runs past the end of the file`, at)
      await r.skip(Number(size), 'VFIO data block')
      s.vfio.dataBlocks.push(Number(size))
      dev.dataBlocks++
      dev.dataBytes += Number(size)
      dev.largestBlock = Math.max(dev.largestBlock, Number(size))
      continue
    }
    if (m === VFIO_MIG_FLAG_DEV_CONFIG_STATE) {
      const len = await r.be32('VFIO config length')
      await r.skip(len, 'VFIO config')
      dev.configBytes += len
    } else if (m !== VFIO_MIG_FLAG_DEV_SETUP_STATE) {
      throw new AnalyzeError(`unknown VFIO marker ${markerName(m)} in ${s.idstr}`, at)
    }
    const end = await r.be64('VFIO END_OF_STATE')
    s.vfio.markers.push(markerName(end))
    if (end !== VFIO_MIG_FLAG_END_OF_STATE) throw new AnalyzeError(`${s.idstr}: expected END_OF_STATE, found ${markerName(end)}`, r.pos - 8)
    return
  }
}

async function isVfioPayload(r: FileReader): Promise<boolean> {
  if (r.remaining < 8) return false
  await r.need(8, 'VFIO marker')
  const b = await r.readAt(r.pos, 8)
  return b.readUInt32BE(0) === 0xffffffff && b.readUInt16BE(4) === 0xef10
}

export async function analyzeFile(path: string): Promise<Analysis> {
  let fh
  try {
    fh = await open(path, 'r')
  } catch (e) {
    throw new AnalyzeError(`cannot open ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`)
  }
  try {
    const st = await fh.stat()
    if (!st.isFile()) throw new AnalyzeError(`${path} is not a regular file`)
    const r = new FileReader(fh, st.size)
    return await analyze(r, path)
  } finally {
    await fh.close()
  }
}

async function analyze(r: FileReader, path: string): Promise<Analysis> {
  const magic = await r.be32('file header')
  if (magic !== QEMU_VM_FILE_MAGIC) throw new AnalyzeError(`not a migration stream: magic 0x${magic.toString(16).padStart(8, '0')} is not QEVM`, 0)
  const version = await r.be32('file header')
  if (version !== QEMU_VM_FILE_VERSION) throw new AnalyzeError(`stream version ${version} is not 3`, 4)
  const a: Analysis = { file: path, size: r.size, header: { magic: 'QEVM', version }, sections: [], commands: [], vfio: {}, eof: false }
  const vd = await findVmdesc(r)
  const vmdesc = vd?.json as { devices?: VmdescDevice[] } | undefined
  if (vd) a.vmdesc = vd.json
  let pageBits = 12
  if ((await r.peekU8('section type')) === QEMU_VM_CONFIGURATION) {
    await r.u8('configuration')
    const len = await r.be32('configuration length')
    if (len > 256) throw new AnalyzeError(`machine name of ${len} bytes is implausible`, r.pos - 4)
    const machine = (await r.bytes(len, 'machine name')).toString('utf8')
    a.configuration = { machine }
    while ((await r.peekU8('section type')) === QEMU_VM_SUBSECTION) {
      await r.u8('subsection')
      const n = await r.u8('subsection name length')
      const name = (await r.bytes(n, 'subsection name')).toString('latin1')
      await r.be32('subsection version')
      if (name !== 'configuration/target-page-bits') throw new AnalyzeError(`unknown configuration subsection '${name}'`, r.pos)
      pageBits = await r.be32('target page bits')
      if (pageBits < 9 || pageBits > 30) throw new AnalyzeError(`target page bits ${pageBits} is implausible`, r.pos - 4)
      a.configuration.targetPageBits = pageBits
    }
  }
  const byId = new Map<number, { idstr: string; kind: SectionInfo['kind'] }>()
  const fullSeen = new Map<string, number>()
  for (;;) {
    const at = r.pos
    const type = await r.u8('section type')
    if (type === QEMU_VM_EOF) {
      a.eof = true
      a.eofOffset = at
      break
    }
    if (type === QEMU_VM_COMMAND) {
      const cmd = await r.be16('command')
      const len = await r.be16('command length')
      await r.skip(len, 'command data')
      a.commands.push({ cmd: MIG_CMD_NAME[cmd] ?? `unknown ${cmd}`, length: len, offset: at })
      continue
    }
    if (!TYPE_NAME[type]) throw new AnalyzeError(`unknown section type 0x${type.toString(16)}`, at)
    const sectionId = await r.be32('section id')
    const s: SectionInfo = { type: TYPE_NAME[type]!, sectionId, idstr: '', offset: at, size: 0, kind: 'unknown' }
    if (type === QEMU_VM_SECTION_START || type === QEMU_VM_SECTION_FULL) {
      const len = await r.u8('idstr length')
      s.idstr = (await r.bytes(len, 'idstr')).toString('latin1')
      s.instanceId = await r.be32('instance id')
      s.versionId = await r.be32('version id')
      const known = byId.get(sectionId)
      s.kind = known?.idstr === s.idstr ? known.kind : s.idstr === 'ram' ? 'ram' : 'unknown'
    } else {
      const known = byId.get(sectionId)
      if (!known) throw new AnalyzeError(`${s.type} section for id ${sectionId}, which no START section opened`, at)
      s.idstr = known.idstr
      s.kind = known.kind
    }
    const payloadAt = r.pos
    if (s.kind === 'unknown' && (await isVfioPayload(r))) s.kind = 'vfio'
    if (s.kind === 'ram') {
      await decodeRam(r, s, pageBits, a)
    } else if (s.kind === 'vfio') {
      await decodeVfio(r, s, a)
    } else if (type === QEMU_VM_SECTION_FULL) {
      const nth = fullSeen.get(`${s.idstr}/${s.instanceId}`) ?? 0
      fullSeen.set(`${s.idstr}/${s.instanceId}`, nth + 1)
      const desc = vmdesc?.devices?.filter((d) => d.name === s.idstr && d.instance_id === s.instanceId)[nth]
      if (!desc) throw new AnalyzeError(`FULL section '${s.idstr}' ${s.instanceId} is not described in the vmdesc${vmdesc ? '' : ' (the stream has no vmdesc)'}`, at)
      s.kind = 'vmstate'
      s.fields = await decodeFields(r, desc, s.idstr)
    } else {
      throw new AnalyzeError(`cannot decode live section '${s.idstr}': neither RAM nor VFIO`, at)
    }
    s.size = r.pos - payloadAt
    const foot = await r.u8('section footer')
    const fid = await r.be32('section footer')
    if (foot !== QEMU_VM_SECTION_FOOTER || fid !== sectionId) {
      throw new AnalyzeError(`section '${s.idstr}' (id ${sectionId}) is not followed by its footer (found 0x${foot.toString(16)} id ${fid})`, r.pos - 5)
    }
    if (type === QEMU_VM_SECTION_START || type === QEMU_VM_SECTION_FULL) byId.set(sectionId, { idstr: s.idstr, kind: s.kind })
    a.sections.push(s)
  }
  if (vd && r.pos !== vd.at) {
    throw new AnalyzeError(`EOF at byte ${r.pos - 1} but the vmdesc starts at ${vd.at}`)
  }
  if (!vd && r.pos !== r.size) {
    throw new AnalyzeError(`${r.size - r.pos} bytes after EOF are not a VMDESCRIPTION`, r.pos)
  }
  return a
}

/** JSON.stringify that writes bigints as decimal strings. */
export function toJson(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x), 2)
}
