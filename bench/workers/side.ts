// Child process: one side of one migration, so source and destination each
// have their own process, event loop and peak RSS (as QEMU's two processes
// do). argv[2] is a JSON job; the destination prints {"listening": uri}
// first; each side prints one {"result": ...} line at the end.
import { createHash } from 'node:crypto'
import { native } from '../../vmm/native/addon.js'
import { OutgoingMigration, incoming, type MigratableVm, type MigrationStats } from '../../vmm/migration/index.js'
import { registerRam } from '../../vmm/ram/index.js'
import { MicroVm } from '../../vmm/microvm/index.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { VfioMigrationSet } from '../../vmm/vfio/vfio-set.js'
import { readInto } from '../lib/ramfile.js'

export interface Job {
  kind: 'ram' | 'device' | 'live'
  role: 'src' | 'dst'
  /** ram: guest RAM bytes; device: device-state bytes; live: guest RAM bytes. */
  size: number
  /** ram src: the file with the guest's RAM content. */
  file?: string
  /** src: where the destination listens. */
  uri?: string
  verify?: boolean
  /** device: VFIO_MIGRATION_* flags (1 STOP_COPY, 5 with PRE_COPY). */
  flags?: number
  switchoverAck?: boolean
  downtimeLimitMs?: number
  /** Bytes/s to assume for the switchover decision (QEMU's avail-switchover-bandwidth); needed when pre-copy moves nothing to measure. */
  availSwitchoverBandwidth?: number
  /** device: bytes/s the device dirties while running. */
  dirtyRate?: number
  /** live: working set the guest keeps dirtying, bytes. */
  workingSet?: number
  autoConverge?: boolean
  maxIterations?: number
  /** TLS credentials in QEMU's x509 layout, both ends' files in one directory (bench/sections/tls.ts). */
  tls?: string
}

const emit = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n')
const rss = () => process.resourceUsage().maxRSS * 1024
function sha(b: Uint8Array): string {
  // In slices: one update() over 4 GiB is past what some OpenSSL paths take in one call.
  const h = createHash('sha256')
  for (let off = 0; off < b.length; off += 256 << 20) h.update(b.subarray(off, Math.min(b.length, off + (256 << 20))))
  return h.digest('hex')
}

function parseJob(): Job {
  let j: Job
  try {
    j = JSON.parse(process.argv[2] ?? '') as Job
  } catch {
    throw new Error(`side: argv[2] must be a JSON job, got ${JSON.stringify(process.argv[2])}`)
  }
  if (!['ram', 'device', 'live'].includes(j.kind) || !['src', 'dst'].includes(j.role)) throw new Error(`side: bad kind/role ${j.kind}/${j.role}`)
  if (!Number.isSafeInteger(j.size) || j.size <= 0) throw new Error(`side: bad size ${j.size}`)
  if (j.role === 'src' && !j.uri) throw new Error('side: a source needs the destination uri')
  return j
}

interface Built { m: MigratableVm; check(): Promise<string>; destroy?(): Promise<void> }

async function build(j: Job): Promise<Built> {
  if (j.kind === 'ram') {
    // A plain Buffer is the guest's RAM: nothing runs, nothing dirties it (a paused VM, as QEMU's -S source).
    const mem = Buffer.allocUnsafe(j.size)
    if (j.role === 'src') await readInto(j.file!, mem)
    else mem.fill(0)
    const registry = new SaveVMRegistry()
    registerRam(registry, { blocks: [{ name: 'pc.ram', memory: mem }], dirtySources: [] })
    const vm = new Vm(j.role === 'src' ? 'prelaunch' : 'inmigrate')
    if (j.role === 'src') { await vm.vmStart(); await vm.vmStop('paused') }
    return { m: { vm, registry, machine: 'microvm' }, check: async () => sha(mem) }
  }
  if (j.kind === 'device') {
    const vm = new Vm(j.role === 'src' ? 'prelaunch' : 'inmigrate')
    const registry = new SaveVMRegistry()
    const set = new VfioMigrationSet(vm, registry, { switchoverAck: () => j.switchoverAck ?? false })
    const emu = new native.EmulatedDevice({
      name: `bench-${j.role}`, flags: j.flags ?? 1, stateSize: j.size, seed: j.role === 'src' ? 7 : 99,
      dirtyRate: j.role === 'src' ? j.dirtyRate ?? 0 : 0,
    })
    await set.add(emu.device(), { idstr: 'bench/vfio' })
    if (j.role === 'src') await vm.vmStart()
    return { m: { vm, registry, machine: 'microvm', vfio: set }, check: () => emu.digest() }
  }
  const mvm = await MicroVm.create({ role: j.role === 'src' ? 'source' : 'dest', ramSize: j.size, vfio: false, workingSet: j.workingSet })
  return { m: mvm, check: () => mvm.ramDigest(), destroy: () => mvm.destroy() }
}

async function main(): Promise<void> {
  const j = parseJob()
  const b = await build(j)
  if (j.role === 'dst') {
    const res = await incoming(b.m, 'tcp:127.0.0.1:0', {
      capabilities: { switchoverAck: j.switchoverAck ?? false },
      ...(j.tls ? { parameters: { tlsCreds: j.tls } } : {}),
      onListening: address => emit({ listening: address }),
    })
    // A live guest keeps writing after it starts: only a paused one can be compared byte for byte.
    const digest = j.verify && j.kind !== 'live' ? await b.check() : undefined
    emit({ result: { ...res, digest, maxRss: rss() } })
  } else {
    if (j.kind === 'live') await new Promise(r => setTimeout(r, 500)) // let the guest reach its steady dirty rate
    const pending: number[] = []
    const om = new OutgoingMigration(b.m, {
      parameters: {
        maxBandwidth: 0,
        ...(j.downtimeLimitMs !== undefined ? { downtimeLimitMs: j.downtimeLimitMs } : {}),
        ...(j.maxIterations !== undefined ? { xMaxIterations: j.maxIterations } : {}),
        ...(j.availSwitchoverBandwidth !== undefined ? { availSwitchoverBandwidth: Math.round(j.availSwitchoverBandwidth) } : {}),
        ...(j.tls ? { tlsCreds: j.tls } : {}),
      },
      capabilities: { switchoverAck: j.switchoverAck ?? false, autoConverge: j.autoConverge ?? false },
    })
    om.on('progress', s => { if (s.status === 'active') pending.push(s.remaining) })
    let stats: MigrationStats
    let error: string | undefined
    try {
      stats = await om.start(j.uri!)
    } catch (e) {
      stats = (e as { stats?: MigrationStats }).stats ?? om.stats()
      error = (e as Error).message
    }
    const digest = !error && j.verify && j.kind !== 'live' ? await b.check() : undefined
    emit({ result: { stats, error, pending, digest, maxRss: rss() } })
  }
  await b.destroy?.()
}

main().then(() => process.exit(0), e => {
  console.error(`side: ${(e as Error).stack ?? String(e)}`)
  process.exit(1)
})
