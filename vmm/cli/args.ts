// Command-line parsing for vmm-migrate: no dependency, every mistake a
// UsageError naming the option and what was wrong with it.
import { MAX_RAM } from '../machine/workload.js'

export class UsageError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'UsageError'
  }
}

const UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }

/** "256M", "1G", "4096", "1.5G", "64KiB" -> bytes (binary units, as QEMU's size options). */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?$/i.exec(text.trim())
  if (!m) throw new UsageError(`${what}: '${text}' is not a size (examples: 4096, 64K, 256M, 1G)`)
  const n = Number(m[1]) * UNITS[m[2]!.toUpperCase()]!
  if (!Number.isSafeInteger(Math.round(n))) throw new UsageError(`${what}: '${text}' is too large`)
  return Math.round(n)
}

export function parseCount(text: string, what: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${what}: '${text}' is not a whole number`)
  const n = Number(text)
  if (n < min || n > max) throw new UsageError(`${what}: ${n} is outside ${min}..${max}`)
  return n
}

export type Command = 'demo' | 'incoming' | 'migrate' | 'save' | 'restore' | 'analyze' | 'help'

export interface Options {
  ram: number
  vcpu: 'auto' | 'kvm' | 'soft'
  downtimeLimitMs: number
  maxBandwidth: number
  switchoverAck: boolean
  autoConverge: boolean
  /** 0 = no VFIO device. */
  deviceState: number
  /** Device state bytes dirtied per second while running. */
  dirtyRate: number
  /** Device DMA writes into guest RAM, pages per second. */
  dmaRate: number
  /** The vCPU workload's hot set, bytes. */
  workingSet: number
  /** How long the source runs before the migration starts, ms. */
  runMs: number
  /** Destination: how long the VM runs after the migration before the process exits, ms. */
  runAfterMs: number
  json: boolean
  /** Machine-readable event lines on stdout (used by demo for its destination). */
  events: boolean
  /** Device without DMA logging (forces the "no tracker" fallback). */
  noDmaLogging: boolean
  /** Destination: skip hashing RAM and device before the first start (it adds to the downtime). */
  noVerify: boolean
  /**
   * Source: after a failed or cancelled migration keep the resumed guest running
   * this long, then report its state (undefined = just exit with the error).
   */
  afterFailureMs: number | undefined
}

export const DEFAULT_OPTIONS: Readonly<Options> = Object.freeze({
  ram: 256 << 20,
  vcpu: 'auto',
  downtimeLimitMs: 300,
  maxBandwidth: 128 << 20,
  switchoverAck: false,
  autoConverge: false,
  deviceState: 4 << 20,
  dirtyRate: 1 << 20,
  dmaRate: 500,
  workingSet: 8 << 20,
  runMs: 500,
  runAfterMs: 300,
  json: false,
  events: false,
  noDmaLogging: false,
  noVerify: false,
  afterFailureMs: undefined,
})

export interface Parsed {
  command: Command
  /** URI or file argument. */
  target?: string
  options: Options
  /** Options given explicitly, each [name] or [name, value] (so a child process gets only those). */
  given: string[][]
}

const TAKES_TARGET: Record<Command, string | undefined> = {
  demo: undefined, help: undefined, incoming: 'URI', migrate: 'URI', save: 'file:PATH', restore: 'file:PATH', analyze: 'FILE',
}

type Setter = (o: Options, v: string, name: string) => void
const VALUED: Record<string, Setter> = {
  '--ram': (o, v, n) => (o.ram = parseSize(v, n)),
  '--vcpu': (o, v, n) => {
    if (v !== 'auto' && v !== 'kvm' && v !== 'soft') throw new UsageError(`${n}: '${v}' is not one of auto, kvm, soft`)
    o.vcpu = v
  },
  '--downtime-limit': (o, v, n) => (o.downtimeLimitMs = parseCount(v, n, 1, 2_000_000)),
  '--max-bandwidth': (o, v, n) => (o.maxBandwidth = parseSize(v, n)),
  '--device-state': (o, v, n) => (o.deviceState = parseSize(v, n)),
  '--dirty-rate': (o, v, n) => (o.dirtyRate = parseSize(v, n)),
  '--dma-rate': (o, v, n) => (o.dmaRate = parseCount(v, n, 0, 10_000_000)),
  '--working-set': (o, v, n) => (o.workingSet = parseSize(v, n)),
  '--run': (o, v, n) => (o.runMs = parseCount(v, n, 0, 3_600_000)),
  '--run-after': (o, v, n) => (o.runAfterMs = parseCount(v, n, 0, 3_600_000)),
  '--after-failure': (o, v, n) => (o.afterFailureMs = parseCount(v, n, 1, 3_600_000)),
}
const FLAGS: Record<string, (o: Options) => void> = {
  '--switchover-ack': (o) => (o.switchoverAck = true),
  '--auto-converge': (o) => (o.autoConverge = true),
  '--json': (o) => (o.json = true),
  '--events': (o) => (o.events = true),
  '--no-dma-logging': (o) => (o.noDmaLogging = true),
  '--no-verify': (o) => (o.noVerify = true),
}

export function parseArgs(argv: readonly string[]): Parsed {
  const options: Options = { ...DEFAULT_OPTIONS }
  const given: string[][] = []
  const positional: string[] = []
  let help = false
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--help' || a === '-h') {
      help = true
      continue
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=')
      const name = eq > 0 ? a.slice(0, eq) : a
      if (FLAGS[name]) {
        if (eq > 0) throw new UsageError(`${name} takes no value`)
        FLAGS[name]!(options)
        given.push([name])
        continue
      }
      const set = VALUED[name]
      if (!set) throw new UsageError(`unknown option ${name} (see --help)`)
      let v: string | undefined = eq > 0 ? a.slice(eq + 1) : argv[++i]
      if (v === undefined || (eq < 0 && v.startsWith('--'))) throw new UsageError(`${name} needs a value`)
      set(options, v, name)
      given.push([name, v])
      continue
    }
    positional.push(a)
  }
  if (help) return { command: 'help', options, given }
  const command = (positional.shift() ?? 'help') as Command
  if (!(command in TAKES_TARGET)) throw new UsageError(`unknown command '${command}' (commands: demo, incoming, migrate, save, restore, analyze)`)
  const want = TAKES_TARGET[command]
  let target: string | undefined
  if (want) {
    target = positional.shift()
    if (!target) throw new UsageError(`${command} needs ${want}`)
    if ((command === 'save' || command === 'restore') && !target.startsWith('file:')) {
      throw new UsageError(`${command}: '${target}' is not a file: URI (write file:PATH)`)
    }
  }
  if (positional.length) throw new UsageError(`unexpected argument '${positional[0]}'`)
  if (options.ram % (2 << 20) !== 0) throw new UsageError(`--ram: ${options.ram} bytes is not a multiple of 2 MiB`)
  if (options.ram < (4 << 20) || options.ram > MAX_RAM) throw new UsageError(`--ram: must be between 4M and ${MAX_RAM / (1 << 20)}M`)
  if (options.workingSet < 4096) throw new UsageError('--working-set: must be at least 4K')
  return { command, target, options, given }
}

export const HELP = `vmm-migrate: live-migrate a running microVM (RAM, vCPU, a timer device and an emulated VFIO device)

usage: vmm-migrate COMMAND [ARG] [OPTIONS]

commands:
  demo                 migrate a running microVM to a child process over loopback TCP and verify it (npm start)
  incoming URI         receive a migration (tcp:HOST:PORT, unix:PATH, ...), start the VM, report
  migrate URI          start a microVM and migrate it to URI
  save file:PATH       start a microVM and save it (live) to a file
  restore file:PATH    load a saved microVM and start it
  analyze FILE         decode a saved stream into JSON (header, configuration, sections, RAM, VFIO, vmdesc)

options (defaults in brackets):
  --ram SIZE              guest RAM, multiple of 2M [256M]
  --vcpu auto|kvm|soft    vCPU implementation [auto: KVM when /dev/kvm works]
  --downtime-limit MS     longest acceptable pause [300]
  --max-bandwidth BYTES   bytes per second, 0 = unlimited [128M, QEMU's default]
  --switchover-ack        destination acks before switchover (VFIO pre-copy)
  --auto-converge         throttle the vCPU when dirtying outpaces the link
  --device-state SIZE     emulated VFIO device state, 0 = no device [4M]
  --dirty-rate BYTES      device state dirtied per second while running [1M]
  --dma-rate PAGES        device DMA page writes into guest RAM per second [500]
  --no-dma-logging        device without DMA logging (every DMA page dirty on every sync)
  --working-set SIZE      RAM the vCPU keeps dirtying [8M]
  --run MS                source runs this long before migrating [500]
  --run-after MS          destination runs this long after loading before it exits [300]
  --no-verify             incoming/restore: do not hash RAM and device before the VM starts (shorter downtime)
  --after-failure MS      migrate/save: if the migration fails or is cancelled (SIGINT), keep the resumed guest
                          running MS, check it (digests, checksum, counter) and report it; exit code stays 1
  --events                JSON event lines on stdout (status, throttle, starting, completed, failed)
  --json                  machine-readable output
  -h, --help              this text
`
