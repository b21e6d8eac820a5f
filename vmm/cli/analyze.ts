// `vmm-migrate analyze FILE`: decode a stream of ours (or QEMU's framing) into
// JSON, the way QEMU's scripts/analyze-migration.py does: the vmdesc found at
// the end describes the FULL sections; RAM and VFIO sections are decoded by
// their own formats; anything else is reported, not guessed at.
//
// It streams: each section and command goes to a sink as it is decoded and
// the rest is totals, so its memory does not grow with the file (the
// command line spools them to a temporary file and prints the document once
// the whole stream decoded). What it keeps is bounded by its own limits:
// the vmdesc it parses (MAX_VMDESC), the sections open at once, the RAM
// blocks announced.
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import {
  QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION, QEMU_VM_EOF, QEMU_VM_SECTION_START, QEMU_VM_SECTION_PART,
  QEMU_VM_SECTION_END, QEMU_VM_SECTION_FULL, QEMU_VM_SUBSECTION, QEMU_VM_VMDESCRIPTION, QEMU_VM_CONFIGURATION,
  QEMU_VM_COMMAND, QEMU_VM_SECTION_FOOTER, MIG_CMD_NAME,
} from '../savevm/constants.js'
import { markerName, VFIO_MIG_FLAG_END_OF_STATE, VFIO_MIG_FLAG_DEV_CONFIG_STATE, VFIO_MIG_FLAG_DEV_SETUP_STATE, VFIO_MIG_FLAG_DEV_DATA_STATE, VFIO_MIG_FLAG_DEV_INIT_DATA_SENT } from '../vfio/markers.js'
import { FileReader, AnalyzeError } from './file-reader.js'
import { MAX_CAPABILITIES } from '../savevm/configuration.js'
import { RamFlag } from '../ram/format.js'

export { AnalyzeError }

const TYPE_NAME: Record<number, string> = {
  [QEMU_VM_SECTION_START]: 'START', [QEMU_VM_SECTION_PART]: 'PART', [QEMU_VM_SECTION_END]: 'END', [QEMU_VM_SECTION_FULL]: 'FULL',
}
/** The largest vmdesc parsed (a destination's default, DEFAULT_MAX_VMDESC); QEMU's for a q35 machine is 99 KB. */
const MAX_VMDESC = 1 << 20
/** How far from the end a vmdesc is looked for, to say that one is too large rather than missing. */
const VMDESC_SCAN = 16 << 20
const MAX_VALUE_BYTES = 4096
/** Live sections open at once (the loader's bound too). */
const MAX_OPEN_SECTIONS = 1 << 16
/** RAM blocks one MEM_SIZE record may announce (QEMU has a few dozen). */
const MAX_RAM_BLOCKS = 4096
/** Blocks one LOCAL_FDS record may pass (the channel's bound on descriptors). */
const MAX_PASSED_BLOCKS = 16

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
  ram?: { pages: number; zeroPages: number; blocks?: { name: string; length: number }[]; passed?: { name: string; length: number }[] }
  /** Markers in order, a run of one marker as "NAME xN"; data blocks counted, not listed. */
  vfio?: { markers: string[]; dataBlocks: number; dataBytes: number; largestBlock: number }
  fields?: Record<string, unknown>
  /** A local migration's kernel VFIO devices, passed as file descriptors (section `vfio-kernel-local`). */
  vfioLocal?: {
    containers: { mappings: { iova: bigint; size: bigint; block: string; offset: bigint }[] }[]
    groups: { container: number }[]
    devices: { name: string; group: number; mdev: boolean; irqFds: number }[]
  }
}

export interface Analysis {
  file: string
  size: number
  header: { magic: string; version: number }
  configuration?: { machine: string; targetPageBits?: number; capabilities?: string[] }
  sections: SectionInfo[]
  commands: { cmd: string; length: number; offset: number }[]
  ram?: {
    blocks: { name: string; length: number }[]
    pages: number
    zeroPages: number
    pageBytes: number
    /** A local migration's blocks, passed as file descriptors (their pages are not in the stream). */
    passed?: { name: string; length: number }[]
  }
  vfio: Record<string, { dataBlocks: number; dataBytes: number; largestBlock: number; configBytes: number; initDataSent: boolean }>
  eof: boolean
  /** Byte offset of the EOF marker (the VMDESCRIPTION, if any, starts one byte later). */
  eofOffset?: number
  vmdesc?: unknown
}

/** Where each section and command goes as it is decoded. */
export interface AnalyzeSink {
  /** The header and configuration are decoded; `a` has no sections or commands. */
  start?(a: Analysis): void | Promise<void>
  section(s: SectionInfo): void | Promise<void>
  command(c: Analysis['commands'][number]): void | Promise<void>
}

/**
 * The VMDESCRIPTION sits after EOF at the very end: find it from the back,
 * a window at a time. One longer than MAX_VMDESC is refused, not parsed.
 */
async function findVmdesc(r: FileReader): Promise<{ at: number; json: unknown } | undefined> {
  const WIN = 1 << 20
  const low = r.size - Math.min(r.size, VMDESC_SCAN + 6)
  // Windows overlap by 5 bytes: a candidate needs the byte before it and the 4 after.
  for (let end = r.size; end > low; end -= WIN - 5) {
    const start = Math.max(low, end - WIN)
    const w = await r.readAt(start, end - start)
    for (let j = w.length - 5; j >= 1; j--) {
      if (w[j] !== QEMU_VM_VMDESCRIPTION || w[j - 1] !== QEMU_VM_EOF) continue
      const at = start + j
      const len = r.size - at - 5
      if (w.readUInt32BE(j + 1) !== len) continue
      if (len > MAX_VMDESC) throw new AnalyzeError(`the vmdesc is ${len} bytes, more than the ${MAX_VMDESC} analyze reads`, at)
      try {
        return { at, json: JSON.parse((await r.readAt(at + 5, len)).toString('utf8')) }
      } catch {
        // A 0x06 inside page data that happens to fit: keep looking.
      }
    }
    if (start === low) break
  }
  return undefined
}

/**
 * How QEMU's VMStateInfo readers (migration/vmstate-types.c, savevm.c) load
 * each type, by the name the vmdesc gives it. Every integer is big-endian:
 * "int32 le" is an int32 checked to be less than or equal to the
 * destination's value (get_int32_le, qemu_get_sbe32s), not little-endian.
 * The sign is the reader's, not the name's: "int64 equal" is
 * get_uint64_equal. "timer" is the be64 expiry in ns, -1 when not armed.
 */
const INT_READER: Record<string, { bytes: number; signed: boolean }> = {
  int8: { bytes: 1, signed: true },
  int16: { bytes: 2, signed: true },
  int32: { bytes: 4, signed: true },
  'int32 equal': { bytes: 4, signed: true },
  'int32 le': { bytes: 4, signed: true },
  int64: { bytes: 8, signed: true },
  uint8: { bytes: 1, signed: false },
  'uint8 equal': { bytes: 1, signed: false },
  uint16: { bytes: 2, signed: false },
  'uint16 equal': { bytes: 2, signed: false },
  uint32: { bytes: 4, signed: false },
  'uint32 equal': { bytes: 4, signed: false },
  uint64: { bytes: 8, signed: false },
  'int64 equal': { bytes: 8, signed: false },
  timer: { bytes: 8, signed: true },
}

/** VMS_NULLPTR_MARKER: what get_nullptr expects for a NULL array element. */
const NULLPTR_MARKER = 0x30

/** Types whose vmdesc entry carries a nested vmsd that describes its bytes exactly once. */
const INLINE_VMSD = new Set(['tmp'])

function scalar(b: Buffer, type: string): unknown {
  if (type === 'bool') return b[0] !== 0
  // QEMU 7.2's nullptr info is named "uint64" (later ones say "nullptr"), yet it writes one byte.
  if ((type === 'nullptr' || type === 'uint64') && b.length === 1 && b[0] === NULLPTR_MARKER) return 'nullptr'
  const r = INT_READER[type]
  if (r && b.length === r.bytes) {
    let v = 0n
    for (const x of b) v = (v << 8n) | BigInt(x)
    if (r.signed && (b[0]! & 0x80)) v -= 1n << BigInt(8 * b.length)
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()
  }
  // Everything else (buffer, unused_buffer, pci config, virtio, bitmap,
  // CPU_Double_U, qtailq, ...) is shown as the bytes QEMU wrote.
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
      } else if (INLINE_VMSD.has(f.type) && Array.isArray(f.fields)) {
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
    if (flags & RamFlag.MEM_SIZE) {
      let left = addr
      s.ram.blocks = []
      while (left > 0n) {
        if (s.ram.blocks.length === MAX_RAM_BLOCKS) throw new AnalyzeError(`MEM_SIZE announces more than ${MAX_RAM_BLOCKS} RAM blocks`, at)
        const len = await r.u8('RAM block name length')
        const name = (await r.bytes(len, 'RAM block name')).toString('latin1')
        const length = await r.be64('RAM block length')
        if (length === 0n || length > left) throw new AnalyzeError(`RAM block '${name}' length ${length} does not fit the announced total`, at)
        left -= length
        s.ram.blocks.push({ name, length: Number(length) })
      }
      ram.blocks = s.ram.blocks
    } else if (flags & (RamFlag.ZERO | RamFlag.PAGE)) {
      if (!(flags & RamFlag.CONTINUE)) {
        const len = await r.u8('RAM block id length')
        await r.skip(len, 'RAM block id')
      }
      if (flags & RamFlag.ZERO) {
        await r.u8('zero page fill byte')
        s.ram.zeroPages++
      } else {
        await r.skip(page, 'RAM page')
        s.ram.pages++
      }
    } else if (flags === RamFlag.LOCAL_FDS) {
      const count = Number(addr >> BigInt(pageBits))
      if (count < 1 || count > MAX_PASSED_BLOCKS) throw new AnalyzeError(`LOCAL_FDS passes ${count} blocks, 1..${MAX_PASSED_BLOCKS} may be`, at)
      s.ram.passed = []
      for (let i = 0; i < count; i++) {
        const len = await r.u8('passed RAM block name length')
        const name = (await r.bytes(len, 'passed RAM block name')).toString('latin1')
        s.ram.passed.push({ name, length: Number(await r.be64('passed RAM block length')) })
      }
      ram.passed = [...(ram.passed ?? []), ...s.ram.passed]
    } else if (flags !== RamFlag.EOS) {
      throw new AnalyzeError(`RAM record with unsupported flags 0x${flags.toString(16)}`, at)
    }
    if (flags & RamFlag.EOS) break
  }
  ram.pages += s.ram.pages
  ram.zeroPages += s.ram.zeroPages
  ram.pageBytes += s.ram.pages * page
}

/** The `vfio-kernel-local` record (docs/local.md): what the descriptors passed with it are. */
async function decodeVfioLocal(r: FileReader): Promise<NonNullable<SectionInfo['vfioLocal']>> {
  const out: NonNullable<SectionInfo['vfioLocal']> = { containers: [], groups: [], devices: [] }
  const marker = await r.be16('vfio-kernel-local marker')
  if (marker === 0) return out
  if (marker !== 0xffff) throw new AnalyzeError(`vfio-kernel-local: unknown marker 0x${marker.toString(16)}`, r.pos - 2)
  const nc = await r.be16('container count')
  const ng = await r.be16('group count')
  const nd = await r.be16('device count')
  await r.be16('eventfd count')
  const name = async (what: string) => (await r.bytes(await r.u8(`${what} length`), what)).toString('utf8')
  for (let i = 0; i < nc; i++) {
    const n = await r.be32('mapping count')
    if (n > 1024) throw new AnalyzeError(`vfio-kernel-local: container ${i} claims ${n} mappings`, r.pos - 4)
    const mappings = []
    for (let k = 0; k < n; k++) {
      const iova = await r.be64('mapping iova')
      const size = await r.be64('mapping size')
      const block = await name('mapping block name')
      mappings.push({ iova, size, block, offset: await r.be64('mapping offset') })
    }
    out.containers.push({ mappings })
  }
  for (let i = 0; i < ng; i++) out.groups.push({ container: await r.be16('group container') })
  for (let i = 0; i < nd; i++) {
    const n = await name('device name')
    const group = await r.be16('device group')
    const mdev = (await r.u8('device mdev flag')) === 1
    out.devices.push({ name: n, group, mdev, irqFds: await r.be16('device eventfd count') })
  }
  return out
}

async function decodeVfio(r: FileReader, s: SectionInfo, a: Analysis): Promise<void> {
  const dev = (a.vfio[s.idstr] ??= { dataBlocks: 0, dataBytes: 0, largestBlock: 0, configBytes: 0, initDataSent: false })
  const v: NonNullable<SectionInfo['vfio']> = (s.vfio = { markers: [], dataBlocks: 0, dataBytes: 0, largestBlock: 0 })
  // A run of one marker is one entry: a section of a million data blocks stays small.
  let run = 0
  const mark = (name: string) => {
    const last = v.markers.length - 1
    if (last >= 0 && v.markers[last]!.split(' ')[0] === name) v.markers[last] = `${name} x${++run}`
    else {
      v.markers.push(name)
      run = 1
    }
  }
  for (;;) {
    const at = r.pos
    const m = await r.be64('VFIO marker')
    mark(markerName(m))
    if (m === VFIO_MIG_FLAG_END_OF_STATE) return
    if (m === VFIO_MIG_FLAG_DEV_INIT_DATA_SENT) {
      dev.initDataSent = true
      return
    }
    if (m === VFIO_MIG_FLAG_DEV_DATA_STATE) {
      const size = await r.be64('VFIO data block size')
      if (size > BigInt(r.remaining)) throw new AnalyzeError(`VFIO data block of ${size} bytes runs past the end of the file`, at)
      await r.skip(Number(size), 'VFIO data block')
      v.dataBlocks++
      v.dataBytes += Number(size)
      v.largestBlock = Math.max(v.largestBlock, Number(size))
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
    mark(markerName(end))
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

/** The whole analysis in memory, sections and commands included: as large as the file has sections and commands. */
export async function analyzeFile(path: string): Promise<Analysis> {
  const sections: SectionInfo[] = []
  const commands: Analysis['commands'] = []
  const a = await analyzeStream(path, { section: (s) => void sections.push(s), command: (c) => void commands.push(c) })
  return { ...a, sections, commands }
}

/**
 * Decode `path`, handing each section and command to `sink` as it comes;
 * the result has everything else, and empty `sections` and `commands`.
 */
export async function analyzeStream(path: string, sink: AnalyzeSink): Promise<Analysis> {
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
    return await analyze(r, path, sink)
  } finally {
    await fh.close()
  }
}

/** JSON lines into a temporary file, written as they come, read back in order. */
class Spool {
  private readonly out: WriteStream
  private failed: Error | undefined
  constructor(readonly file: string) {
    this.out = createWriteStream(file)
    this.out.on('error', (e) => (this.failed = e))
  }

  async put(v: unknown): Promise<void> {
    if (this.failed) throw this.failed
    if (!this.out.write(`${JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x))}\n`)) {
      await new Promise<void>((resolve) => this.out.once('drain', resolve))
    }
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve, reject) => this.out.end((e?: Error | null) => (e ? reject(e) : resolve())))
    if (this.failed) throw this.failed
  }

  async *lines(): AsyncGenerator<string> {
    for await (const l of createInterface({ input: createReadStream(this.file), crlfDelay: Infinity })) yield l
  }
}

/**
 * The command line's analysis: `toJson(analyzeFile(path))`'s document,
 * printed through `line` piece by piece once the whole file decoded, with
 * memory that does not grow with the file (sections and commands wait in a
 * temporary file). Nothing is printed when the file does not decode.
 */
export async function writeAnalysis(path: string, line: (s: string) => void): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vmm-analyze-'))
  try {
    const sections = new Spool(join(dir, 'sections'))
    const commands = new Spool(join(dir, 'commands'))
    let a: Analysis
    try {
      a = await analyzeStream(path, { section: (s) => sections.put(s), command: (c) => commands.put(c) })
    } finally {
      await sections.close()
      await commands.close()
    }
    const { sections: _s, commands: _c, ...rest } = a
    const head = toJson(rest)
    line(`${head.slice(0, -2)},`)
    for (const [name, spool] of [['sections', sections], ['commands', commands]] as const) {
      line(`  "${name}": [`)
      let prev: string | undefined
      for await (const l of spool.lines()) {
        if (prev !== undefined) line(`    ${prev},`)
        prev = l
      }
      if (prev !== undefined) line(`    ${prev}`)
      line(name === 'sections' ? '  ],' : '  ]')
    }
    line('}')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

async function analyze(r: FileReader, path: string, sink: AnalyzeSink): Promise<Analysis> {
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
      if (name === 'configuration/capabilities') {
        // A stream sent over a socket (a local migration's, captured) names its capabilities, the handover among them.
        const count = await r.be32('capability count')
        if (count > MAX_CAPABILITIES) throw new AnalyzeError(`${count} capabilities, at most ${MAX_CAPABILITIES}`, r.pos - 4)
        const caps: string[] = []
        for (let i = 0; i < count; i++) caps.push((await r.bytes(await r.u8('capability name length'), 'capability name')).toString('utf8'))
        a.configuration.capabilities = caps
        continue
      }
      if (name !== 'configuration/target-page-bits') throw new AnalyzeError(`unknown configuration subsection '${name}'`, r.pos)
      pageBits = await r.be32('target page bits')
      if (pageBits < 9 || pageBits > 30) throw new AnalyzeError(`target page bits ${pageBits} is implausible`, r.pos - 4)
      a.configuration.targetPageBits = pageBits
    }
  }
  await sink.start?.(a)
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
      await sink.command({ cmd: MIG_CMD_NAME[cmd] ?? `unknown ${cmd}`, length: len, offset: at })
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
    } else if (type === QEMU_VM_SECTION_FULL && s.idstr === 'vfio-kernel-local') {
      s.kind = 'vmstate'
      s.vfioLocal = await decodeVfioLocal(r)
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
    if (type === QEMU_VM_SECTION_START || type === QEMU_VM_SECTION_FULL) {
      if (!byId.has(sectionId) && byId.size >= MAX_OPEN_SECTIONS) throw new AnalyzeError(`more than ${MAX_OPEN_SECTIONS} distinct section ids`, at)
      byId.set(sectionId, { idstr: s.idstr, kind: s.kind })
    }
    await sink.section(s)
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
