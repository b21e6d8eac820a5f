// Interoperability with real QEMU (qemu-system-x86_64, TCG, no guest kernel).
// QEMU -> us: QEMU saves a machine (paused, or running SeaBIOS under a rate
// limit) with `migrate exec:cat > FILE`; the analyzer and our loader (savevm +
// vmstate + ram) must read every byte of it and agree with what QEMU itself
// reports (QMP/HMP), never with numbers copied from an earlier run. Every
// device field the analyzer prints must be what QEMU's VMStateInfo reader
// loads from the bytes QEMU wrote (tests/interop/fields.ts), and with
// QEMU_ANALYZE_MIGRATION naming QEMU's scripts/analyze-migration.py, what
// that script prints. For the same shapes our writer must produce QEMU's bytes.
// us -> QEMU: our writer's stream (header, configuration, ram, a FULL vmstate
// section, EOF, vmdesc) is loaded by QEMU with `migrate-incoming exec:cat FILE`;
// QEMU's RAM must then hold what we sent, also when QEMU migrates it back to
// our loader, and over TLS (x509, mutual) both ways between migrate() and
// QEMU's tls-creds-x509. Streams QEMU must refuse prove it parsed our framing
// up to the section it names. Docs: docs/stream-format.md, "Checked against
// QEMU"; docs/tls.md.
import t, { type Test } from 'tap'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomFill } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { QmpClient } from '../../bench/lib/qmp.js'
import { stopProcess, track, killChildren } from '../../bench/lib/proc.js'
import { freePort } from '../../bench/lib/qemu.js'
import { analyzeFile, toJson, type Analysis, type SectionInfo } from '../../vmm/cli/analyze.js'
import { run } from '../../vmm/cli/main.js'
import { connect, listen } from '../../vmm/channel/connect.js'
import { loadTlsCreds } from '../../vmm/channel/tls.js'
import { makeTlsCreds } from '../../vmm/cli/certs.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { SaveVM } from '../../vmm/savevm/save.js'
import { loadvm } from '../../vmm/savevm/load.js'
import { QEMU_VM_EOF, QEMU_VM_VMDESCRIPTION, QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL } from '../../vmm/savevm/constants.js'
import { registerRam, type RamMigration } from '../../vmm/ram/index.js'
import { Vm } from '../../vmm/runstate/index.js'
import { migrate, OutgoingMigration, DEFAULT_CAPABILITIES, type MigratableVm, type MigrationCapabilities } from '../../vmm/migration/index.js'
import type { ScalarType, State, VMStateDescription, VMStateField } from '../../vmm/vmstate/types.js'
import { SCALAR_SIZE } from '../../vmm/vmstate/types.js'
import { fieldsMatchBytes, matchQemuAnalyzer, structsNamed, type DescDevice, type DescVmsd } from './fields.js'

const QEMU = process.env.QEMU || 'qemu-system-x86_64'
/**
 * QEMU's own analyzer, scripts/analyze-migration.py of a QEMU source tree.
 * No package installs it, so the comparison with it runs where it is given;
 * the byte-level check of every field runs always.
 */
const QEMU_ANALYZER = process.env.QEMU_ANALYZE_MIGRATION
const RAM_MB = 32
const PAGE = 4096

// ---- QEMU processes ---------------------------------------------------------

function qemuVersion(): Promise<{ version?: string; reason?: string }> {
  return new Promise((res, rej) => {
    execFile(QEMU, ['--version'], { timeout: 20000 }, (e, out) => {
      if (!e) return res({ version: /version (\S+)/.exec(out)?.[1] ?? out.split('\n')[0] })
      // Only a missing binary skips; a QEMU that is there but broken must fail the test.
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return res({ reason: `${QEMU} is not installed (apt-get install qemu-system-x86)` })
      rej(e)
    })
  })
}

interface Qemu {
  child: ChildProcess
  qmp: QmpClient
  stderr(): string
  exit: Promise<number | null>
  hmp(cmd: string): Promise<string>
  stop(): Promise<void>
}

async function startQemu(dir: string, name: string, args: string[]): Promise<Qemu> {
  const sock = join(dir, `${name}.qmp`)
  const child = track(spawn(QEMU, [
    '-nodefaults', '-display', 'none', '-serial', 'none', '-monitor', 'none',
    '-qmp', `unix:${sock},server=on,wait=off`, ...args,
  ], { stdio: ['ignore', 'ignore', 'pipe'] }))
  let err = ''
  child.stderr!.on('data', d => { if (err.length < 65536) err += d })
  const exit = new Promise<number | null>(res => child.once('exit', code => res(code)))
  const died = exit.then(code => { throw new Error(`${name}: qemu exited ${code} before QMP: ${err.trim()}`) })
  died.catch(() => undefined)
  let qmp: QmpClient
  try {
    qmp = await Promise.race([QmpClient.connect(sock, 20000), died])
  } catch (e) {
    await stopProcess(child)
    throw e
  }
  return {
    child, qmp, exit,
    stderr: () => err,
    hmp: async cmd => String(await qmp.execute('human-monitor-command', { 'command-line': cmd })),
    stop: async () => {
      await qmp.execute('quit', undefined, 3000).catch(() => undefined)
      qmp.close()
      await stopProcess(child)
    },
  }
}

/** QEMU's machine type as the configuration section names it ("pc" resolves to e.g. "pc-i440fx-7.2"). */
async function machineType(q: Qemu): Promise<string> {
  const type = String(await q.qmp.execute('qom-get', { path: '/machine', property: 'type' }))
  return type.replace(/-machine$/, '')
}

/** `info ramblock`: the migratable RAM blocks, in QEMU's list order, with their used lengths. */
async function ramBlocks(q: Qemu): Promise<{ name: string; length: number }[]> {
  const out = await q.hmp('info ramblock')
  const blocks: { name: string; length: number }[] = []
  for (const line of out.split('\n')) {
    const m = /^\s*(\S+)\s+\d+ \S+\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s*$/i.exec(line)
    if (m) blocks.push({ name: m[1]!, length: Number(m[2]) })
  }
  if (blocks.length === 0) throw new Error(`info ramblock printed no blocks: ${out}`)
  return blocks
}

/** The general registers of `info registers` (32-bit or 64-bit form), by their 32-bit names. */
async function registers(q: Qemu): Promise<Record<string, bigint>> {
  const out = await q.hmp('info registers')
  const regs: Record<string, bigint> = {}
  for (const r of ['AX', 'CX', 'DX', 'BX', 'SP', 'BP', 'SI', 'DI', 'IP']) {
    const m = new RegExp(`\\b[ER]${r}=([0-9a-f]+)`).exec(out)
    if (!m) throw new Error(`info registers has no E${r}/R${r}: ${out.slice(0, 300)}`)
    regs[`E${r}`] = BigInt(`0x${m[1]}`)
  }
  return regs
}

async function pmemsave(q: Qemu, addr: number, size: number, file: string): Promise<Buffer> {
  await q.hmp(`pmemsave ${addr} ${size} "${file}"`)
  return readFile(file)
}

async function waitMigration(q: Qemu, what: string, timeoutMs = 30000): Promise<Record<string, any>> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    let info: Record<string, any>
    try {
      info = (await q.qmp.execute('query-migrate')) as Record<string, any>
    } catch (e) {
      // QEMU gone: what it printed is the diagnosis.
      throw new Error(`${what}: ${(e as Error).message}; qemu stderr: ${q.stderr().trim()}`)
    }
    if (info.status === 'completed') return info
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`${what}: migration ${info.status}: ${info['error-desc'] ?? ''} ${q.stderr()}`)
    if (Date.now() > deadline) throw new Error(`${what}: migration not completed in ${timeoutMs} ms (${info.status})`)
    await new Promise(r => setTimeout(r, 10))
  }
}

async function randomRam(bytes: number): Promise<Buffer> {
  const m = Buffer.alloc(bytes)
  await promisify(randomFill)(m)
  // Zero pages, and pages that are zero but for their last byte: QEMU must
  // send the first as ZERO records and the second as PAGE records.
  for (let p = 0; p < bytes / PAGE; p++) {
    if (p % 3 === 0) m.fill(0, p * PAGE, (p + 1) * PAGE)
    else if (p % 7 === 1) m.fill(0, p * PAGE, (p + 1) * PAGE - 1).writeUInt8(0x5a, (p + 1) * PAGE - 1)
  }
  return m
}

/** Pages of `m` that are all `fill`. */
function countPagesOf(m: Buffer, fill: number): number {
  const page = Buffer.alloc(PAGE, fill)
  let n = 0
  for (let p = 0; p < m.length / PAGE; p++) if (m.subarray(p * PAGE, (p + 1) * PAGE).equals(page)) n++
  return n
}

const countZeroPages = (m: Buffer) => countPagesOf(m, 0)

// ---- the vmdesc as a VMState description -------------------------------------

const SCALAR: Record<string, ScalarType> = {
  bool: 'bool', uint8: 'uint8', uint16: 'uint16', uint32: 'uint32', uint64: 'uint64',
  int8: 'int8', int16: 'int16', int32: 'int32', int64: 'int64',
  'uint8 equal': 'uint8', 'uint16 equal': 'uint16', 'uint32 equal': 'uint32', 'int32 equal': 'int32', 'int32 le': 'int32',
  // get_uint64_equal, whatever the name says.
  'int64 equal': 'uint64',
  timer: 'int64',
}

/**
 * QEMU's vmdesc describes what each FULL section holds; turned into our
 * VMStateDescription it lets our vmstate loader read QEMU's device sections
 * (fields, arrays, nested structs, subsections) to the byte.
 */
function vmsdOf(d: DescVmsd, where: string): VMStateDescription {
  const names = new Set<string>()
  const fields = (d.fields ?? []).map((f, i): VMStateField => {
    let name = f.index !== undefined ? `${f.name}[${f.index}]` : f.name
    if (names.has(name)) name = `${name}#${i}`
    names.add(name)
    const count = f.array_len !== undefined ? { count: f.array_len, maxCount: f.array_len } : {}
    const inner = f.struct ?? (f.fields ? f : undefined)
    if (inner) return { name, type: 'struct', vmsd: vmsdOf(inner, `${where}.${name}`), ...count }
    const s = SCALAR[f.type]
    if (s && SCALAR_SIZE[s] === f.size) return { name, type: s, ...count }
    return { name, type: 'buffer', length: f.size * (f.array_len ?? 1) }
  })
  return {
    name: d.vmsd_name ?? where, versionId: d.version ?? 0, minimumVersionId: 0, fields,
    subsections: d.subsections?.map(s => vmsdOf(s, `${where}/${s.vmsd_name}`)),
  }
}

/** Every device of a QEMU vmdesc as a vmsd entry of `reg`; resolves the state objects by "idstr/instance". */
function registerQemuDevices(reg: SaveVMRegistry, devices: DescDevice[], versions: number[]): Map<string, State> {
  const states = new Map<string, State>()
  for (const [i, d] of devices.entries()) {
    const key = `${d.name}/${d.instance_id}`
    // QEMU registers some old-style sections twice under one name and instance (a "slirp" per
    // user netdev) and loads both into the first; so do we.
    if (states.has(key)) continue
    const state: State = {}
    states.set(key, state)
    // State saved without a vmsd has no version in the vmdesc: the section header has it.
    reg.register({ idstr: d.name, instanceId: d.instance_id, vmsd: { ...vmsdOf(d, d.name), versionId: versions[i]! }, state })
  }
  return states
}

/** RAM blocks laid out one after the other, each filled with `fill` (0xee: "never loaded"). */
function ramOf(reg: SaveVMRegistry, blocks: { name: string; length: number }[], fill = 0xee): { memory: Map<string, Buffer>; ram: RamMigration } {
  const memory = new Map<string, Buffer>()
  let base = 0
  const ram = registerRam(reg, {
    dirtySources: [],
    blocks: blocks.map(b => {
      const m = Buffer.alloc(b.length, fill)
      memory.set(b.name, m)
      const blk = { name: b.name, memory: m, base }
      base += b.length
      return blk
    }),
  })
  return { memory, ram }
}

// ---- QEMU -> us ------------------------------------------------------------

function headerLen(s: SectionInfo): number {
  return s.type === 'START' || s.type === 'FULL' ? 1 + 4 + 1 + Buffer.byteLength(s.idstr, 'latin1') + 4 + 4 : 1 + 4
}

interface SourceRun {
  machine: string
  status: string
  blocks: { name: string; length: number }[]
  regs: Record<string, bigint>
  info: Record<string, any>
  bios: Buffer
  low: Buffer
}

/**
 * QEMU saves into `file`; `bandwidth` (bytes/s) makes it take several rounds.
 * Everything but the runstate is read from QEMU after the migration: the VM
 * is then stopped (postmigrate) in exactly the state the stream holds, also
 * when it ran during the migration.
 */
async function qemuSave(dir: string, tag: string, machineArgs: string[], file: string, bandwidth?: number): Promise<SourceRun> {
  const q = await startQemu(dir, tag, machineArgs)
  try {
    // globalstate records the runstate the migration started from.
    const status = ((await q.qmp.execute('query-status')) as { status: string }).status
    // QEMU switches over once what is left fits the downtime limit at this bandwidth (300 ms: most of
    // the RAM); 20 ms leaves the bulk of it to PART sections.
    if (bandwidth) await q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': bandwidth, 'downtime-limit': 20 })
    await q.qmp.execute('migrate', { uri: `exec:cat > ${file}` })
    const info = await waitMigration(q, `${tag} save`)
    const machine = await machineType(q)
    const blocks = await ramBlocks(q)
    const regs = await registers(q)
    const biosLen = blocks.find(b => b.name === 'pc.bios')?.length
    if (!biosLen) throw new Error(`${tag}: no pc.bios block in ${JSON.stringify(blocks)}`)
    // The BIOS block is mapped just below 4 GiB, the first 640 KiB of RAM at 0: QEMU's view of both.
    const bios = await pmemsave(q, 2 ** 32 - biosLen, biosLen, join(dir, `${tag}.bios`))
    const low = await pmemsave(q, 0, 0xa0000, join(dir, `${tag}.low`))
    return { machine, status, blocks, regs, info, bios, low }
  } finally {
    await q.stop()
  }
}

interface Source {
  /** QEMU's arguments besides the common ones (-S or not is the caller's). */
  args: string[]
  /** RAM block backed by `file` (share=on: the file is the guest's RAM), and what it held before QEMU started. */
  ramFile?: { block: string; file: string; before: Buffer }
  /** The guest runs (SeaBIOS) during a rate-limited migration. */
  live?: boolean
  /** At least this many PCI devices. */
  pci?: number
}

async function checkQemuStream(t: Test, dir: string, tag: string, o: Source): Promise<{ a: Analysis; raw: Buffer }> {
  const file = join(dir, `${tag}.qemu.mig`)
  const src = await qemuSave(dir, tag, o.live ? o.args : ['-S', ...o.args], file, o.live ? 64 << 20 : undefined)
  const a: Analysis = await analyzeFile(file)
  const raw = await readFile(file)

  // The command line prints the same analysis.
  let printed = ''
  t.equal(await run(['analyze', file], { line: l => { printed += `${l}\n` }, progress: () => undefined, done: () => undefined }), 0, '`vmm-migrate analyze` exits 0')
  t.same(JSON.parse(printed), JSON.parse(toJson(a)), '`vmm-migrate analyze` prints the analysis')
  t.same(a.header, { magic: 'QEVM', version: 3 }, 'header')
  t.equal(raw.readUInt32BE(0), 0x5145564d)
  t.equal(a.configuration?.machine, src.machine, `configuration names QEMU's machine type ${src.machine}`)

  // Every byte between the header and EOF belongs to the configuration, a section or a command.
  let at = 8 + 1 + 4 + Buffer.byteLength(a.configuration!.machine) + (a.configuration!.targetPageBits !== undefined ? 2 + 30 + 4 + 4 : 0)
  const pieces = [
    ...a.sections.map(s => ({ offset: s.offset, len: headerLen(s) + s.size + 5, what: `${s.type} ${s.idstr}` })),
    ...a.commands.map(c => ({ offset: c.offset, len: 1 + 4 + c.length, what: c.cmd })),
  ].sort((x, y) => x.offset - y.offset)
  const gaps: string[] = []
  for (const p of pieces) {
    if (p.offset !== at) gaps.push(`${p.what} at ${p.offset}, expected ${at}`)
    at = p.offset + p.len
  }
  t.same(gaps, [], 'sections and commands are contiguous')
  t.ok(a.eof)
  t.equal(a.eofOffset, at, 'EOF follows the last section')
  t.equal(raw[at], QEMU_VM_EOF)
  t.equal(raw[at + 1], QEMU_VM_VMDESCRIPTION, 'VMDESCRIPTION follows EOF')
  t.equal(at + 2 + 4 + raw.readUInt32BE(at + 2), raw.length, 'the vmdesc runs exactly to the end of the file')

  // Section headers and footers, read straight from the bytes.
  const footers: string[] = []
  for (const s of a.sections) {
    const type = raw[s.offset]!
    if (raw.readUInt32BE(s.offset + 1) !== s.sectionId) footers.push(`${s.idstr}: header id`)
    if (type === QEMU_VM_SECTION_START || type === QEMU_VM_SECTION_FULL) {
      const n = raw[s.offset + 5]!
      if (raw.subarray(s.offset + 6, s.offset + 6 + n).toString('latin1') !== s.idstr) footers.push(`${s.idstr}: idstr`)
      if (raw.readUInt32BE(s.offset + 6 + n) !== s.instanceId || raw.readUInt32BE(s.offset + 10 + n) !== s.versionId) footers.push(`${s.idstr}: instance/version`)
    }
    const foot = s.offset + headerLen(s) + s.size
    if (raw[foot] !== 0x7e || raw.readUInt32BE(foot + 1) !== s.sectionId) footers.push(`${s.idstr}: footer`)
  }
  t.same(footers, [], `${a.sections.length} section headers and footers`)

  // RAM: the block list and the counts QEMU reports.
  const ramSections = a.sections.filter(s => s.idstr === 'ram')
  t.same(ramSections.map(s => s.type), ['START', ...ramSections.slice(1, -1).map(() => 'PART'), 'END'], 'ram: START, PART..., END')
  if (o.live) t.ok(ramSections.length > 3, `the rate limit split RAM into ${ramSections.length - 2} PART sections`)
  t.same([ramSections[0]?.instanceId, ramSections[0]?.versionId], [0, 4], 'ram instance 0 version 4')
  t.same(a.ram?.blocks, src.blocks, 'ram block list = info ramblock (names, used lengths, order)')
  const ramInfo = src.info.ram as Record<string, number>
  t.equal(a.ram!.blocks.reduce((s, b) => s + b.length, 0), ramInfo.total, 'block lengths add up to query-migrate ram.total')
  t.equal(a.ram!.pages, ramInfo.normal, `pages = query-migrate ram.normal (${ramInfo.normal})`)
  t.equal(a.ram!.zeroPages, ramInfo.duplicate, `zero pages = query-migrate ram.duplicate (${ramInfo.duplicate})`)
  t.equal(a.ram!.pageBytes, ramInfo['normal-bytes'], 'page bytes = ram.normal-bytes')
  if (!o.live) t.equal(a.ram!.pages + a.ram!.zeroPages, ramInfo.total / PAGE, 'a paused guest: every page sent exactly once')
  else t.ok(a.ram!.pages + a.ram!.zeroPages >= ramInfo.total / PAGE, 'a running guest: every page sent at least once')

  // The vmdesc: the FULL sections' devices, in stream order.
  const vmdesc = a.vmdesc as { page_size: number; devices: DescDevice[] }
  t.equal(vmdesc.page_size, ramInfo['page-size'], 'vmdesc page_size')
  const full = a.sections.filter(s => s.type === 'FULL')
  t.same(vmdesc.devices.map(d => [d.name, d.instance_id]), full.map(s => [s.idstr, s.instanceId]),
    `vmdesc lists the ${full.length} FULL sections in stream order`)
  // State saved without a vmsd (old style) is described without a version.
  t.same(vmdesc.devices.flatMap(d => d.version === undefined ? [] : [[d.name, d.version]]),
    full.flatMap((s, i) => vmdesc.devices[i]?.version === undefined ? [] : [[s.idstr, s.versionId]]), 'vmdesc versions = section versions')
  t.ok(full.every(s => s.kind === 'vmstate'), 'every FULL section decoded by its vmdesc')
  // 100 bytes are more than the analyzer prints whole: the head holds the name.
  const gs = full.find(s => s.idstr === 'globalstate')?.fields as { size: number; runstate: { bytes: number; head: string } } | undefined
  t.equal(gs && Buffer.from(gs.runstate.head, 'hex').toString('latin1', 0, gs.size - 1), src.status, 'analyzer: globalstate runstate = query-status')
  const cpu = full.find(s => s.idstr === 'cpu')!.fields as Record<string, unknown>
  t.equal(BigInt(cpu['env.eip'] as number), src.regs.EIP, 'analyzer: cpu env.eip = info registers EIP')

  // Every value the analyzer prints, field by field, against the bytes QEMU wrote for it.
  const misread = full.flatMap((s, i) => {
    const at = s.offset + headerLen(s)
    return fieldsMatchBytes(s.fields!, vmdesc.devices[i]!, raw.subarray(at, at + s.size)).bad.map(b => `${s.idstr}${b}`)
  })
  t.same(misread, [], `analyzer: every field of the ${full.length} devices is what QEMU's reader loads from QEMU's bytes`)
  // QEMU's pci.c saves version_id (VMSTATE_INT32_POSITIVE_LE, "int32 le") as the PCIDevice vmsd's version.
  const pci = full.flatMap((s, i) => structsNamed(s.fields!, vmdesc.devices[i]!, 'PCIDevice').map(p => ({ idstr: s.idstr, versionId: p.fields.version_id, version: p.version })))
  if (o.pci) t.ok(pci.length >= o.pci, `${pci.length} PCI devices (${pci.map(p => p.idstr).join(', ')})`)
  t.same(pci.map(p => [p.idstr, p.versionId]), pci.map(p => [p.idstr, p.version]), 'analyzer: each PCI device\'s version_id (int32 le) = its PCIDevice vmsd version')

  if (QEMU_ANALYZER) {
    const { stdout } = await promisify(execFile)('python3', [QEMU_ANALYZER, '-f', file], { maxBuffer: 256 << 20, timeout: 60000 })
    const q = JSON.parse(stdout) as Record<string, Record<string, unknown>>
    t.same(Object.keys(q).filter(k => !/^ram \(\d+\)$/.test(k)), full.map(s => `${s.idstr} (${s.sectionId})`), 'QEMU\'s analyzer: the same device sections')
    const differ = full.flatMap((s, i) => matchQemuAnalyzer(s.fields!, q[`${s.idstr} (${s.sectionId})`] ?? {}, vmdesc.devices[i]!, s.idstr))
    t.same(differ, [], `QEMU's analyzer prints the same value for every field of the ${full.length} devices`)
  }

  // Our loader: ram through vmm/ram, every device through vmm/vmstate built from QEMU's vmdesc.
  const reg = new SaveVMRegistry()
  const { memory, ram } = ramOf(reg, src.blocks)
  const states = registerQemuDevices(reg, vmdesc.devices, full.map(s => s.versionId!))
  const listener = await listen(`file:${file}`)
  const f = new MigStream(await listener.accept())
  const res = await loadvm(f, reg, { machine: src.machine, strictEnd: true })
  await f.close()
  t.equal(res.sections, a.sections.length, 'loadvm read every section')
  t.same(res.vmdesc, a.vmdesc)
  const ls = ram.stats().load
  t.same([ls.normalPages, ls.zeroPages], [ramInfo.normal, ramInfo.duplicate], 'vmm/ram loaded ram.normal pages and ram.duplicate zero pages')
  // Blocks start as 0xee: a page still all 0xee was never written by the load.
  t.ok([...memory.values()].every(m => countPagesOf(m, 0xee) === 0), 'every page of every block was written')
  t.ok(memory.get('pc.bios')!.equals(src.bios), 'pc.bios as loaded = QEMU pmemsave below 4 GiB')
  const main = memory.get(src.blocks[0]!.name)!
  t.ok(main.subarray(0, 0xa0000).equals(src.low), `${src.blocks[0]!.name}[0, 640K) as loaded = QEMU pmemsave from 0`)
  if (!o.live) t.equal([...memory.values()].reduce((n, m) => n + countZeroPages(m), 0), ramInfo.duplicate, 'the zero pages loaded are the ones QEMU counted as duplicate')
  if (o.ramFile) {
    const now = await readFile(o.ramFile.file)
    t.ok(memory.get(o.ramFile.block)!.equals(now), `${o.ramFile.block}: every byte as loaded = QEMU's guest RAM (its backing file) after the migration`)
    // Paused, nothing wrote the guest's RAM: it must still be our pattern. Running, SeaBIOS wrote some of it.
    if (!o.live) t.ok(now.equals(o.ramFile.before), `${o.ramFile.block}: the pattern written before QEMU started`)
    else t.ok(!now.equals(o.ramFile.before), `${o.ramFile.block}: the running guest changed its RAM`)
  }
  const loadedGs = states.get('globalstate/0')!
  t.equal(Buffer.from(loadedGs.runstate as Buffer).toString('latin1', 0, (loadedGs.size as number) - 1), src.status, 'vmstate: globalstate runstate = query-status')
  const env = states.get('cpu/0')!
  const gpr = env['env.regs'] as bigint[]
  const names = ['EAX', 'ECX', 'EDX', 'EBX', 'ESP', 'EBP', 'ESI', 'EDI']
  t.same(names.map((n, i) => [n, gpr[i]]), names.map(n => [n, src.regs[n]]), 'vmstate: cpu env.regs = info registers')
  t.equal(env['env.eip'], src.regs.EIP)
  return { a, raw }
}

// ---- us -> QEMU --------------------------------------------------------------

const globalstateVmsd: VMStateDescription = {
  name: 'globalstate', versionId: 1,
  fields: [{ name: 'size', type: 'uint32' }, { name: 'runstate', type: 'buffer', length: 100 }],
}

interface OurStream {
  machine: string
  /** RAM blocks in stream order. */
  blocks: { name: string; memory: Buffer }[]
  runstate?: string
  extra?: boolean
  vmdesc?: boolean
}

/** A registry of the shapes QEMU's pc stream has: RAM blocks, globalstate, and (extra) a section QEMU has no device for. */
function ourRegistry(o: OurStream): SaveVMRegistry {
  const reg = new SaveVMRegistry()
  let base = 0
  registerRam(reg, {
    dirtySources: [],
    blocks: o.blocks.map(b => {
      const blk = { ...b, base }
      base += b.memory.length
      return blk
    }),
  })
  if (o.runstate) {
    const runstate = Buffer.alloc(100)
    runstate.write(o.runstate, 'latin1')
    reg.register({ idstr: 'globalstate', vmsd: globalstateVmsd, state: { size: o.runstate.length + 1, runstate } })
  }
  if (o.extra) {
    reg.register({ idstr: 'microvm-timer', vmsd: { name: 'microvm-timer', versionId: 1, fields: [{ name: 'ticks', type: 'uint64' }] }, state: { ticks: 7n } })
  }
  return reg
}

async function writeOurStream(file: string, o: OurStream): Promise<void> {
  const f = new MigStream(await connect(`file:${file}`))
  await new SaveVM(f, ourRegistry(o), { machine: o.machine, vmdesc: o.vmdesc }).saveAll()
  const err = await f.close()
  if (err) throw err
}

function pcArgs(memFile: string): string[] {
  return ['-machine', 'pc,accel=tcg,memory-backend=ram0', '-m', `${RAM_MB}M`,
    '-object', `memory-backend-file,id=ram0,size=${RAM_MB}M,mem-path=${memFile},share=on`]
}

/**
 * A pc destination waiting with -incoming defer. Its RAM is `memFile`, all
 * 0xa5 at first, so only a ZERO record QEMU honoured leaves a page zero.
 */
async function destination(dir: string, tag: string): Promise<{ q: Qemu; memFile: string; machine: string }> {
  const memFile = join(dir, `${tag}.ram`)
  await writeFile(memFile, Buffer.alloc(RAM_MB << 20, 0xa5))
  const q = await startQemu(dir, tag, ['-S', ...pcArgs(memFile), '-incoming', 'defer'])
  return { q, memFile, machine: await machineType(q) }
}

/** Feed `file` to a destination that must refuse it; resolves QEMU's stderr once it has exited. */
async function refused(q: Qemu, file: string): Promise<{ code: number | null; stderr: string }> {
  // QEMU may exit on the bad stream before its reply reaches us; the exit and its message are the answer.
  await q.qmp.execute('migrate-incoming', { uri: `exec:cat ${file}` }).catch(() => undefined)
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_, rej) => { timer = setTimeout(() => rej(new Error(`qemu did not exit on a bad stream: ${q.stderr()}`)), 20000) })
  try {
    return { code: await Promise.race([q.exit, late]), stderr: q.stderr() }
  } finally {
    clearTimeout(timer)
  }
}

// ---- the tests ---------------------------------------------------------------

// A QEMU waiting on its monitor outlives a test process that dies: take it down with us.
process.once('exit', killChildren)

const found = await qemuVersion()
if (!found.version) {
  t.comment(`skipping QEMU interop: ${found.reason}`)
  t.skip(`QEMU interop: ${found.reason}`, () => undefined)
} else {
  t.comment(`QEMU ${found.version}`)
  if (!QEMU_ANALYZER) t.comment('QEMU_ANALYZE_MIGRATION is not set: the fields are checked against QEMU\'s bytes, not against QEMU\'s analyzer')
  const dir = await mkdtemp(join(tmpdir(), 'vmm-qemu-interop-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))

  let qemuPc: { a: Analysis; raw: Buffer } | undefined
  t.test('QEMU pc (i440fx) stream with a known RAM pattern: analyzer and loader agree with QEMU', async t => {
    const before = await randomRam(RAM_MB << 20)
    const file = join(dir, 'pc.ram')
    await writeFile(file, before)
    // I440FX, PIIX3, its IDE and piix4_pm.
    qemuPc = await checkQemuStream(t, dir, 'pc', { args: pcArgs(file), ramFile: { block: 'ram0', file, before }, pci: 4 })
  })

  t.test('QEMU q35 stream', async t => {
    // More device shapes: PCIe, virtio (long vmsds with many subsections), e1000e, USB, an
    // old-style section without a vmsd (slirp, one per user netdev), option ROM RAM blocks.
    await checkQemuStream(t, dir, 'q35', {
      args: ['-machine', 'q35,accel=tcg', '-m', `${RAM_MB}M`,
        '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0', '-netdev', 'user,id=n1', '-device', 'e1000e,netdev=n1',
        '-drive', 'if=none,id=d0,driver=null-co,read-zeroes=on', '-device', 'virtio-blk-pci,drive=d0',
        '-device', 'qemu-xhci', '-device', 'usb-tablet', '-device', 'virtio-rng-pci', '-device', 'isa-serial,chardev=c0', '-chardev', 'null,id=c0'],
      // mch, ICH9LPC, its AHCI and SMBus, e1000e, xhci (virtio devices save their PCI state inside an opaque "virtio" field).
      pci: 6,
    })
  })

  t.test('QEMU microvm stream', async t => {
    await checkQemuStream(t, dir, 'microvm', { args: ['-machine', 'microvm,accel=tcg', '-m', `${RAM_MB}M`] })
  })

  t.test('QEMU pc stream of a running guest (SeaBIOS), rate-limited: PART sections, pages as they were at the switchover', async t => {
    const before = await randomRam(RAM_MB << 20)
    const file = join(dir, 'pc-live.ram')
    await writeFile(file, before)
    await checkQemuStream(t, dir, 'pc-live', { args: pcArgs(file), ramFile: { block: 'ram0', file, before }, live: true, pci: 4 })
  })

  t.test('our writer, given the shapes of QEMU\'s pc stream, writes QEMU\'s bytes', async t => {
    if (!qemuPc) return t.fail('needs the pc stream of the first test')
    const { a, raw } = qemuPc
    const at = (idstr: string, type: string) => a.sections.find(s => s.idstr === idstr && s.type === type)!
    const qGs = at('globalstate', 'FULL')
    const gsPayload = raw.subarray(qGs.offset + headerLen(qGs), qGs.offset + headerLen(qGs) + qGs.size)
    const reg = new SaveVMRegistry()
    let base = 0
    registerRam(reg, {
      dirtySources: [],
      blocks: a.ram!.blocks.map(b => {
        const blk = { name: b.name, memory: Buffer.alloc(b.length), base }
        base += b.length
        return blk
      }),
    })
    // The values are QEMU's; what is compared is how each side encodes them.
    reg.register({ idstr: 'globalstate', vmsd: globalstateVmsd, state: { size: gsPayload.readUInt32BE(0), runstate: gsPayload.subarray(4, 104) } })
    const file = join(dir, 'pc-shapes.mig')
    const f = new MigStream(await connect(`file:${file}`))
    await new SaveVM(f, reg, { machine: a.configuration!.machine }).saveAll()
    t.equal(await f.close(), null)
    const ours = await readFile(file)
    const b = await analyzeFile(file)
    const cfgEnd = a.sections[0]!.offset
    t.equal(b.sections[0]!.offset, cfgEnd)
    t.ok(ours.subarray(0, cfgEnd).equals(raw.subarray(0, cfgEnd)), 'header and configuration: the same bytes')
    // Section ids are each side's own; from the idstr on, START ram and FULL globalstate must match to the byte.
    for (const [idstr, type] of [['ram', 'START'], ['globalstate', 'FULL']] as const) {
      const q = at(idstr, type)
      const o = b.sections.find(s => s.idstr === idstr && s.type === type)!
      t.ok(ours.subarray(o.offset + 5, o.offset + headerLen(o) + o.size).equals(raw.subarray(q.offset + 5, q.offset + headerLen(q) + q.size)),
        `${type} ${idstr}: idstr, instance, version and payload (${q.size} bytes) the same bytes`)
      t.equal(ours[o.offset], raw[q.offset])
    }
    const qDesc = (a.vmdesc as { devices: DescDevice[] }).devices.find(d => d.name === 'globalstate')
    const oDesc = (b.vmdesc as { devices: DescDevice[] }).devices.find(d => d.name === 'globalstate')
    t.same(oDesc, qDesc, 'vmdesc entry of globalstate: the same JSON')
    t.equal((b.vmdesc as { page_size: number }).page_size, (a.vmdesc as { page_size: number }).page_size)
    t.same([ours[b.eofOffset!], ours[b.eofOffset! + 1]], [QEMU_VM_EOF, QEMU_VM_VMDESCRIPTION])
  })

  t.test('QEMU loads our stream (every RAM block, globalstate), and sends it back to our loader', async t => {
    const dst = await destination(dir, 'dst-ok')
    try {
      // Every block QEMU has, ram0 and the firmware/ROM/ACPI ones, with content of ours.
      const blocks = await ramBlocks(dst.q)
      const sent = new Map<string, Buffer>()
      for (const b of blocks) sent.set(b.name, await randomRam(b.length))
      const ram = sent.get('ram0')!
      const file = join(dir, 'ours.mig')
      // QEMU lands in the runstate globalstate names; without the section it would be 'paused' (-S).
      await writeOurStream(file, { machine: dst.machine, blocks: [...sent].map(([name, memory]) => ({ name, memory })), runstate: 'prelaunch' })

      // Our own analyzer accounts for every byte of what we wrote.
      const a = await analyzeFile(file)
      t.equal(a.configuration?.machine, dst.machine)
      const kinds = a.sections.map(s => `${s.type} ${s.idstr}`)
      t.match(kinds.join(','), /^START ram,(PART ram,)+END ram,FULL globalstate$/, 'ram START, PARTs, END, then globalstate')
      t.same(a.ram?.blocks, blocks, 'our block list = QEMU\'s info ramblock')
      t.equal(a.ram!.zeroPages, [...sent.values()].reduce((n, m) => n + countZeroPages(m), 0))

      await dst.q.qmp.execute('migrate-incoming', { uri: `exec:cat ${file}` })
      await waitMigration(dst.q, 'QEMU loading our stream')
      const status = ((await dst.q.qmp.execute('query-status')) as { status: string }).status
      t.equal(status, 'prelaunch', 'QEMU took the runstate from our globalstate section')
      const loaded = await pmemsave(dst.q, 0, 0xa0000, join(dir, 'dst-ok.low'))
      t.ok(loaded.equals(ram.subarray(0, 0xa0000)), 'QEMU pmemsave of [0, 640K) = what we sent')
      const mem = await readFile(dst.memFile)
      t.ok(mem.equals(ram), `QEMU's ram0 (${RAM_MB} MiB, ${countZeroPages(ram)} zero pages) = what we sent, byte for byte`)
      t.notMatch(dst.q.stderr(), /Expected vmdescription/, 'QEMU found our VMDESCRIPTION after EOF')
      const biosLen = sent.get('pc.bios')!.length
      t.ok((await pmemsave(dst.q, 2 ** 32 - biosLen, biosLen, join(dir, 'dst-ok.bios'))).equals(sent.get('pc.bios')!), 'QEMU pmemsave below 4 GiB = the pc.bios we sent')

      // Back: QEMU migrates what it now holds straight into our loader over a unix socket. Its
      // devices are the pc machine's of the first test (the same options), described by that vmdesc.
      if (!qemuPc) return t.fail('needs the pc stream of the first test')
      const reg = new SaveVMRegistry()
      const got = ramOf(reg, blocks).memory
      const pcFull = qemuPc.a.sections.filter(s => s.type === 'FULL')
      const states = registerQemuDevices(reg, (qemuPc.a.vmdesc as { devices: DescDevice[] }).devices, pcFull.map(s => s.versionId!))
      const listener = await listen(`unix:${join(dir, 'back.sock')}`)
      try {
        const accepted = listener.accept()
        await dst.q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 })
        await dst.q.qmp.execute('migrate', { uri: `unix:${join(dir, 'back.sock')}` })
        const f = new MigStream(await accepted)
        const res = await loadvm(f, reg, { machine: dst.machine })
        await f.close()
        t.equal(res.machine, dst.machine)
        t.same([...got].filter(([name, m]) => !m.equals(sent.get(name)!)).map(([name]) => name), [],
          `every block QEMU sent back = what we sent it (${[...got.keys()].join(', ')})`)
        const gs = states.get('globalstate/0')!
        t.equal(Buffer.from(gs.runstate as Buffer).toString('latin1', 0, (gs.size as number) - 1), 'prelaunch', 'globalstate back: our runstate')
      } finally {
        await listener.close()
      }
    } finally {
      await dst.q.stop()
    }
  })

  t.test('QEMU loads what migrate() sends over a unix socket (return path and all); SWITCHOVER_START only where asked for', async t => {
    const [dst, forced] = await Promise.all(['dst-migrate', 'dst-switchover'].map(tag => destination(dir, tag)))
    try {
      const blocks = await ramBlocks(dst!.q)
      const sent = new Map<string, Buffer>()
      for (const b of blocks) sent.set(b.name, await randomRam(b.length))
      const source = async (): Promise<MigratableVm> => {
        const vm = new Vm('prelaunch')
        await vm.vmStart()
        const registry = ourRegistry({ machine: dst!.machine, blocks: [...sent].map(([name, memory]) => ({ name, memory })), runstate: 'prelaunch' })
        return { vm, registry, machine: dst!.machine }
      }
      // A QEMU peer knows nothing of this project's handover (x-handover in the configuration
      // section): off, in a build that has the capability.
      const capabilities = ('handover' in DEFAULT_CAPABILITIES ? { handover: false } : {}) as Partial<MigrationCapabilities>

      // The orchestrator's defaults for a QEMU machine type before 10.0: no SWITCHOVER_START.
      const sock = join(dir, 'dst-migrate.sock')
      await dst!.q.qmp.execute('migrate-incoming', { uri: `unix:${sock}` })
      const src = await source()
      const stats = await migrate(src, `unix:${sock}`, { parameters: { maxBandwidth: 0 }, capabilities })
      await waitMigration(dst!.q, 'QEMU loading what migrate() sent')
      t.equal(stats.status, 'completed')
      t.equal(stats.downtimeMeasured, true, 'QEMU answered on the return path (SHUT)')
      t.equal(src.vm.state, 'postmigrate')
      t.equal(((await dst!.q.qmp.execute('query-status')) as { status: string }).status, 'prelaunch', 'QEMU took the runstate from our globalstate')
      t.ok((await readFile(dst!.memFile)).equals(sent.get('ram0')!), `QEMU's ram0 = what migrate() sent, byte for byte`)
      const biosLen = sent.get('pc.bios')!.length
      t.ok((await pmemsave(dst!.q, 2 ** 32 - biosLen, biosLen, join(dir, 'dst-migrate.bios'))).equals(sent.get('pc.bios')!), 'QEMU pmemsave below 4 GiB = the pc.bios we sent')
      t.notMatch(dst!.q.stderr(), /unknown|error/i, 'QEMU reported nothing')

      // Asked for, it is sent, and QEMU 7.2 refuses it: the stream is the same but for that command.
      const sock2 = join(dir, 'dst-switchover.sock')
      await forced!.q.qmp.execute('migrate-incoming', { uri: `unix:${sock2}` })
      const src2 = await source()
      const m2 = new OutgoingMigration(src2, { parameters: { maxBandwidth: 0, sendSwitchoverStart: true }, capabilities })
      const failed = m2.start(`unix:${sock2}`).then(() => false, () => true)
      t.equal(await forced!.q.exit, 1, 'QEMU 7.2 exits')
      // If the whole stream was in the socket before QEMU read the command,
      // the source cannot know that QEMU never started the guest: without the
      // handover it then stays paused in handover-unknown (docs/flows.md).
      // QEMU's exit status says it did not run: resume the guest here.
      const unknown = await Promise.race([failed.then(() => false), new Promise<boolean>((r) => {
        m2.on('status', (st) => { if (st === 'handover-unknown') r(true) })
        if (m2.status === 'handover-unknown') r(true)
      })])
      if (unknown) {
        t.equal(src2.vm.state, 'postmigrate', 'handover-unknown: the source guest stays paused')
        await m2.resolve('resume')
      }
      t.ok(await failed, 'migrate() fails')
      t.equal(src2.vm.state, 'running', 'the source runs again')
      t.match(forced!.q.stderr(), /MIG_CMD 0xb unknown/, 'QEMU 7.2 names MIG_CMD_SWITCHOVER_START as unknown')
    } finally {
      await Promise.all([dst, forced].map(d => d!.q.stop()))
    }
  })

  t.test('over TLS 1.3, mutual x509, verify-peer at both ends: QEMU loads what migrate() sends, and migrates it back into our loader', async t => {
    if (!qemuPc) return t.fail('needs the pc stream of the first test')
    // One directory holds both ends' files (QEMU's layout); the client's subject is CN=source,O=vmm-migration.
    const creds = join(dir, 'tls')
    await makeTlsCreds(creds)
    const memFile = join(dir, 'dst-tls.ram')
    await writeFile(memFile, Buffer.alloc(RAM_MB << 20, 0xa5))
    const q = await startQemu(dir, 'dst-tls', ['-S', ...pcArgs(memFile),
      '-object', `tls-creds-x509,id=tls0,dir=${creds},endpoint=server,verify-peer=on`, '-incoming', 'defer'])
    try {
      const machine = await machineType(q)
      const blocks = await ramBlocks(q)
      const sent = new Map<string, Buffer>()
      for (const b of blocks) sent.set(b.name, await randomRam(b.length))
      const port = await freePort()
      // QEMU takes tls-creds only before it listens: -incoming defer, then migrate-incoming.
      await q.qmp.execute('migrate-set-parameters', { 'tls-creds': 'tls0' })
      await q.qmp.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${port}` })
      const vm = new Vm('prelaunch')
      await vm.vmStart()
      const registry = ourRegistry({ machine, blocks: [...sent].map(([name, memory]) => ({ name, memory })), runstate: 'prelaunch' })
      const capabilities = ('handover' in DEFAULT_CAPABILITIES ? { handover: false } : {}) as Partial<MigrationCapabilities>
      // Our source checks QEMU's certificate against the name in the URI (127.0.0.1 is in its SANs).
      const stats = await migrate({ vm, registry, machine }, `tcp:127.0.0.1:${port}`, { parameters: { maxBandwidth: 0, tlsCreds: creds }, capabilities })
      await waitMigration(q, 'QEMU loading what migrate() sent over TLS')
      t.equal(stats.status, 'completed')
      t.equal(vm.state, 'postmigrate')
      t.ok((await readFile(memFile)).equals(sent.get('ram0')!), `QEMU's ram0 = what migrate() sent over TLS, byte for byte`)
      const biosLen = sent.get('pc.bios')!.length
      t.ok((await pmemsave(q, 2 ** 32 - biosLen, biosLen, join(dir, 'dst-tls.bios'))).equals(sent.get('pc.bios')!), 'QEMU pmemsave below 4 GiB = the pc.bios we sent')
      t.notMatch(q.stderr(), /error|unknown/i, 'QEMU reported nothing')

      // Back: QEMU, now a TLS client (a second credentials object), into our TLS
      // listener that admits only the client certificate's DN. Its devices are
      // the pc machine's of the first test, described by that vmdesc.
      const reg = new SaveVMRegistry()
      const got = ramOf(reg, blocks).memory
      const pcFull = qemuPc.a.sections.filter(s => s.type === 'FULL')
      registerQemuDevices(reg, (qemuPc.a.vmdesc as { devices: DescDevice[] }).devices, pcFull.map(s => s.versionId!))
      const serverCreds = await loadTlsCreds(creds, 'server', ['CN=source,O=vmm-migration'])
      const listener = await listen('tcp:127.0.0.1:0', { tls: { creds: serverCreds } })
      try {
        const accepted = listener.accept()
        await q.qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls1', dir: creds, endpoint: 'client', 'verify-peer': true })
        await q.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 2 ** 40, 'tls-creds': 'tls1', 'tls-hostname': '127.0.0.1' })
        await q.qmp.execute('migrate', { uri: listener.address })
        const f = new MigStream(await accepted)
        const res = await loadvm(f, reg, { machine }).catch(async e => {
          const info = await q.qmp.execute('query-migrate').catch(x => String(x))
          throw new Error(`${(e as Error).message}; QEMU: ${JSON.stringify(info)} ${q.stderr()}`)
        })
        await f.close()
        t.equal(res.machine, machine)
        t.same([...got].filter(([name, m]) => !m.equals(sent.get(name)!)).map(([name]) => name), [],
          `every block QEMU sent back over TLS = what we sent it (${[...got.keys()].join(', ')})`)
        await waitMigration(q, 'QEMU sending back over TLS')
      } finally {
        await listener.close()
      }
    } finally {
      await q.stop()
    }
  })

  t.test('QEMU refuses our streams for the reason we built in, not a framing error', async t => {
    const ram = await randomRam(1 << 20)
    const big = Buffer.alloc(RAM_MB << 20)
    ram.copy(big)
    const [unknown, wrongMachine, noVmdesc] = await Promise.all(['dst-unknown', 'dst-machine', 'dst-novmdesc'].map(tag => destination(dir, tag)))
    try {
      const f1 = join(dir, 'unknown.mig')
      const f2 = join(dir, 'machine.mig')
      const f3 = join(dir, 'novmdesc.mig')
      const blocks = [{ name: 'ram0', memory: big }]
      await writeOurStream(f1, { machine: unknown!.machine, blocks, runstate: 'prelaunch', extra: true })
      await writeOurStream(f2, { machine: 'microvm-1', blocks })
      await writeOurStream(f3, { machine: noVmdesc!.machine, blocks, vmdesc: false })
      const [r1, r2] = await Promise.all([refused(unknown!.q, f1), refused(wrongMachine!.q, f2)])
      // RAM and globalstate were read and accepted; the first section QEMU has no device for is named.
      t.equal(r1.code, 1)
      t.match(r1.stderr, /Unknown savevm section or instance 'microvm-timer' 0/)
      t.notMatch(r1.stderr, /ram|globalstate/i, 'nothing before it was refused')
      t.equal(r2.code, 1)
      t.match(r2.stderr, new RegExp(`Machine type received is 'microvm-1' and local is '${wrongMachine!.machine}'`))
      // Without a vmdesc QEMU still loads (it only warns): the check in the test above can fail.
      await noVmdesc!.q.qmp.execute('migrate-incoming', { uri: `exec:cat ${f3}` })
      await waitMigration(noVmdesc!.q, 'QEMU loading a stream without vmdesc')
      t.match(noVmdesc!.q.stderr(), /Expected vmdescription section, but got 0/)
      // Nor does it hold a globalstate section: QEMU obeys -S, so 'prelaunch' above came from ours.
      t.equal(((await noVmdesc!.q.qmp.execute('query-status')) as { status: string }).status, 'paused')
    } finally {
      await Promise.all([unknown, wrongMachine, noVmdesc].map(d => d!.q.stop()))
    }
  })
}
