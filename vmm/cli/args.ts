// Command-line parsing for vmm-migrate: no dependency, every mistake a
// UsageError naming the option and what was wrong with it.
import { MAX_RAM } from '../machine/workload.js'
import { parseUri, UriError } from '../channel/uri.js'
import { VmmError } from '../core/errors.js'

export class UsageError extends VmmError {
  readonly code = 'ERR_USAGE'
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

export type Command = 'demo' | 'incoming' | 'migrate' | 'save' | 'restore' | 'analyze' | 'resolve' | 'run' | 'help'

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
  /** The handover (docs/flows.md); off (--no-handover) for a QEMU peer. */
  handover: boolean
  /** Local migration: guest RAM passed as file descriptors over a unix: channel. */
  local: boolean
  /** Source: no RAM digest in the proof section (it costs the downtime a hash of all RAM). */
  noRamProof: boolean
  linkTimeoutMs: number
  handoverTimeoutMs: number
  handshakeTimeoutMs: number
  incomingTimeoutMs: number
  /** Where a side in handover-unknown serves `resolve` (default: a private directory under the temp dir). */
  control: string | undefined
  /** resolve: what to do. */
  resolve: 'resume' | 'discard' | 'status' | undefined
  /** run: the QMP socket (unix path). */
  qmp: string | undefined
  /** run: be a destination, like QEMU's -incoming: 'defer' (wait for migrate-incoming) or a URI. */
  incoming: string | undefined
  /** TLS credentials directory (tls-creds; QEMU's tls-creds-x509 layout). */
  tlsCreds: string | undefined
  /** migrate: the name the destination's certificate must carry (tls-hostname). */
  tlsHostname: string | undefined
  /** incoming: client subject DNs let in (tls-authz), one per --tls-authz. */
  tlsAuthz: readonly string[]
  /** demo: migrate over TLS with throwaway certificates. */
  tls: boolean
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
  handover: true,
  local: false,
  noRamProof: false,
  linkTimeoutMs: 15_000,
  handoverTimeoutMs: 30_000,
  handshakeTimeoutMs: 5_000,
  incomingTimeoutMs: 600_000,
  control: undefined,
  resolve: undefined,
  qmp: undefined,
  incoming: undefined,
  tlsCreds: undefined,
  tlsHostname: undefined,
  tlsAuthz: Object.freeze([]) as readonly string[],
  tls: false,
})

export interface Parsed {
  command: Command
  /** URI or file argument. */
  target?: string
  options: Options
  /** Options given explicitly, each [name] or [name, value] (so a child process gets only those). */
  given: string[][]
  /** With command 'help': the command whose help was asked for (`migrate --help`, `help migrate`). */
  topic?: Command
}

const TAKES_TARGET: Record<Command, string | undefined> = {
  demo: undefined, help: undefined, incoming: 'URI', migrate: 'URI', save: 'file:PATH', restore: 'file:PATH', analyze: 'FILE',
  resolve: 'CONTROL', run: undefined,
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
  '--link-timeout': (o, v, n) => (o.linkTimeoutMs = parseCount(v, n, 0, 3_600_000)),
  '--handover-timeout': (o, v, n) => (o.handoverTimeoutMs = parseCount(v, n, 1, 3_600_000)),
  '--handshake-timeout': (o, v, n) => (o.handshakeTimeoutMs = parseCount(v, n, 1, 3_600_000)),
  '--incoming-timeout': (o, v, n) => (o.incomingTimeoutMs = parseCount(v, n, 0, 86_400_000)),
  '--control': (o, v) => (o.control = v),
  '--tls-creds-x509': (o, v, n) => {
    if (!v) throw new UsageError(`${n} needs a directory`)
    o.tlsCreds = v
  },
  '--tls-hostname': (o, v, n) => {
    if (!v) throw new UsageError(`${n} needs a name`)
    o.tlsHostname = v
  },
  // QEMU's PSK credentials have no TLS 1.3 counterpart in rustls (no
  // external PSK): refused by name rather than unknown.
  '--tls-creds-psk': (_o, _v, n) => {
    throw new UsageError(`${n}: PSK credentials are not supported (the TLS library has no TLS 1.3 external PSK); use --tls-creds-x509 (docs/tls.md)`)
  },
  '--tls-username': (_o, _v, n) => {
    throw new UsageError(`${n}: belongs to PSK credentials, which are not supported; use --tls-creds-x509 (docs/tls.md)`)
  },
  // A new array each time: the default one is shared and frozen.
  '--tls-authz': (o, v, n) => {
    if (!v.includes('=')) throw new UsageError(`${n}: '${v}' is not a distinguished name (example: CN=source,O=Example)`)
    o.tlsAuthz = [...o.tlsAuthz, v]
  },
  '--qmp': (o, v, n) => {
    if (!v) throw new UsageError(`${n} needs a socket path`)
    // QEMU's spelling (-qmp unix:PATH,server) is accepted too.
    o.qmp = v.replace(/^unix:/, '').replace(/,server(=on)?$/, '')
  },
  '--incoming': (o, v, n) => {
    if (v !== 'defer') {
      try {
        parseUri(v)
      } catch (e) {
        throw e instanceof UriError ? new UsageError(`${n}: ${e.detail}`) : e
      }
    }
    o.incoming = v
  },
}
const FLAGS: Record<string, (o: Options) => void> = {
  '--switchover-ack': (o) => (o.switchoverAck = true),
  '--auto-converge': (o) => (o.autoConverge = true),
  '--json': (o) => (o.json = true),
  '--events': (o) => (o.events = true),
  '--no-dma-logging': (o) => (o.noDmaLogging = true),
  '--no-verify': (o) => (o.noVerify = true),
  '--no-handover': (o) => (o.handover = false),
  '--local': (o) => (o.local = true),
  '--no-ram-proof': (o) => (o.noRamProof = true),
  '--tls': (o) => (o.tls = true),
  '--resume': (o) => (o.resolve = setOnce(o.resolve, 'resume')),
  '--discard': (o) => (o.resolve = setOnce(o.resolve, 'discard')),
  '--status': (o) => (o.resolve = setOnce(o.resolve, 'status')),
}

function setOnce(was: Options['resolve'], now: NonNullable<Options['resolve']>): Options['resolve'] {
  if (was !== undefined && was !== now) throw new UsageError(`--${was} and --${now} exclude each other`)
  return now
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
      // errorLine adds the "(see --help)" hint to every usage error.
      if (!set) throw new UsageError(`unknown option ${name}`)
      let v: string | undefined = eq > 0 ? a.slice(eq + 1) : argv[++i]
      if (v === undefined || (eq < 0 && v.startsWith('--'))) throw new UsageError(`${name} needs a value`)
      set(options, v, name)
      given.push([name, v])
      continue
    }
    positional.push(a)
  }
  const command = (positional.shift() ?? 'help') as Command
  if (!Object.hasOwn(TAKES_TARGET, command)) throw new UsageError(`unknown command '${command}' (commands: ${COMMANDS.join(', ')})`)
  if (help) return { command: 'help', options, given, topic: command === 'help' ? undefined : command }
  if (command === 'help') {
    const topic = positional.shift()
    if (topic !== undefined && !Object.hasOwn(TAKES_TARGET, topic)) throw new UsageError(`help: unknown command '${topic}' (commands: ${COMMANDS.join(', ')})`)
    if (positional.length) throw new UsageError(`unexpected argument '${positional[0]}'`)
    return { command, options, given, topic: topic === 'help' ? undefined : topic as Command | undefined }
  }
  const want = TAKES_TARGET[command]
  let target: string | undefined
  if (want) {
    target = positional.shift()
    if (!target) throw new UsageError(`${command} needs ${want}`)
    if ((command === 'save' || command === 'restore') && !target.startsWith('file:')) {
      throw new UsageError(`${command}: '${target}' is not a file: URI (write file:PATH)`)
    }
    // A malformed address is the user's mistake, found before any VM is built.
    if (command !== 'analyze' && command !== 'resolve') {
      try {
        parseUri(target)
      } catch (e) {
        throw e instanceof UriError ? new UsageError(`${command}: ${e.detail}`) : e
      }
    }
  }
  if (positional.length) throw new UsageError(`unexpected argument '${positional[0]}'`)
  if (command === 'resolve' && options.resolve === undefined) throw new UsageError('resolve needs --resume, --discard or --status')
  if (command === 'run' && options.qmp === undefined) throw new UsageError('run needs --qmp PATH (its only control is QMP)')
  if (command !== 'run' && (options.qmp !== undefined || options.incoming !== undefined)) throw new UsageError(`--${options.qmp !== undefined ? 'qmp' : 'incoming'} belongs to the run command`)
  if (options.local) {
    if (command !== 'migrate' && command !== 'incoming' && command !== 'demo') throw new UsageError(`--local belongs to migrate, incoming and demo, not ${command}`)
    if (target !== undefined && !target.startsWith('unix:')) {
      throw new UsageError(`--local: a local migration passes guest RAM as file descriptors, which only a unix: channel carries (to a process on this host); got ${target}`)
    }
  }
  if (command !== 'resolve' && options.resolve !== undefined) throw new UsageError(`--${options.resolve} belongs to the resolve command`)
  const tlsFlags = given.filter(([n]) => n!.startsWith('--tls')).map(([n]) => n!)
  for (const n of tlsFlags) {
    const ok = n === '--tls' ? command === 'demo'
      : n === '--tls-hostname' ? command === 'migrate' || command === 'demo'
        : n === '--tls-authz' ? command === 'incoming' || command === 'demo'
          : command === 'incoming' || command === 'migrate' || command === 'demo'
    if (!ok) throw new UsageError(`${n} does not apply to ${command}`)
  }
  if (options.tls && options.tlsCreds !== undefined) throw new UsageError('--tls makes throwaway certificates; --tls-creds-x509 uses yours: give one of them')
  if (options.tlsCreds === undefined && !options.tls && (options.tlsHostname !== undefined || options.tlsAuthz.length)) {
    throw new UsageError(`${options.tlsHostname !== undefined ? '--tls-hostname' : '--tls-authz'} needs --tls-creds-x509`)
  }
  if (options.ram % (2 << 20) !== 0) throw new UsageError(`--ram: ${options.ram} bytes is not a multiple of 2 MiB`)
  if (options.ram < (4 << 20) || options.ram > MAX_RAM) throw new UsageError(`--ram: must be between 4M and ${MAX_RAM / (1 << 20)}M`)
  if (options.workingSet < 4096) throw new UsageError('--working-set: must be at least 4K')
  return { command, target, options, given }
}

const COMMANDS = ['demo', 'incoming', 'migrate', 'save', 'restore', 'analyze', 'resolve', 'run'] as const

/** Each option's help line; the commands list the ones they use. */
const OPTION_HELP: Record<string, string> = {
  '--ram': '--ram SIZE              guest RAM, multiple of 2M [256M]',
  '--vcpu': '--vcpu auto|kvm|soft    vCPU implementation [auto: KVM when /dev/kvm works]',
  '--downtime-limit': '--downtime-limit MS     longest acceptable pause [300]',
  '--max-bandwidth': "--max-bandwidth BYTES   bytes per second, 0 = unlimited [128M, QEMU's default]",
  '--switchover-ack': '--switchover-ack        destination acks before switchover (VFIO pre-copy)',
  '--auto-converge': '--auto-converge         throttle the vCPU when dirtying outpaces the link',
  '--device-state': '--device-state SIZE     emulated VFIO device state, 0 = no device [4M]',
  '--dirty-rate': '--dirty-rate BYTES      device state dirtied per second while running [1M]',
  '--dma-rate': '--dma-rate PAGES        device DMA page writes into guest RAM per second [500]',
  '--no-dma-logging': '--no-dma-logging        device without DMA logging (every DMA page dirty on every sync)',
  '--working-set': '--working-set SIZE      RAM the vCPU keeps dirtying [8M]',
  '--run': '--run MS                source runs this long before migrating [500]',
  '--run-after': '--run-after MS          destination runs this long after loading before it exits [300]',
  '--no-verify': '--no-verify             incoming/restore: do not hash RAM and device before the VM starts (shorter downtime)',
  '--after-failure': '--after-failure MS      migrate/save: if the migration fails or is cancelled (SIGINT), keep the resumed guest\n' +
    '                          running MS, check it (digests, checksum, counter) and report it; exit code stays 1',
  '--events': '--events                JSON event lines on stdout (status, throttle, starting, completed, failed)',
  '--json': '--json                  machine-readable output',
  '--no-ram-proof': '--no-ram-proof          source: no RAM digest in the proof (saves hashing all RAM in the downtime;\n' +
    '                          a destination that verifies then refuses the guest)',
  '--local': '--local                 same host: pass guest RAM as file descriptors over a unix: channel, no page copied',
  '--no-handover': '--no-handover           without the handover (for a QEMU peer): the destination starts by itself',
  '--link-timeout': '--link-timeout MS       no data from the peer this long: the link is down, 0 = never [15000]',
  '--handover-timeout': '--handover-timeout MS   each wait of the handover: READY, GO, STARTED [30000]',
  '--handshake-timeout': '--handshake-timeout MS  incoming: drop a peer that sends no stream header this long [5000]',
  '--incoming-timeout': '--incoming-timeout MS   incoming: give up when no source came this long, 0 = never [600000]',
  '--control': '--control PATH          the socket `resolve` talks to in handover-unknown [a new private dir in $TMPDIR]',
  '--resume': '--resume                resolve: run the guest on this side (do it on exactly one side)',
  '--discard': '--discard               resolve: give this side\'s copy up (the other side runs it)',
  '--status': '--status                resolve: only show the side\'s status',
  '--qmp': '--qmp PATH              run: serve QMP on this unix socket (the only control of the VM)',
  '--incoming': '--incoming defer|URI    run: a destination, like QEMU\'s -incoming (defer: wait for migrate-incoming)',
  '--tls-creds-x509': '--tls-creds-x509 DIR    TLS 1.3 with mutual x509 auth, credentials in QEMU\'s layout (docs/tls.md)',
  '--tls-hostname': '--tls-hostname NAME     migrate: name the destination\'s certificate must carry [the URI\'s host]',
  '--tls-authz': '--tls-authz DN          incoming: let in only clients with this subject DN (repeatable)',
  '--tls': '--tls                   demo: migrate over TLS with throwaway certificates (needs openssl)',
  '--help': '-h, --help              this text',
}

// Both sides build the same microVM from these (they must match, see docs/cli.md).
const VM = ['--ram', '--vcpu', '--device-state', '--switchover-ack', '--working-set', '--dirty-rate', '--dma-rate', '--no-dma-logging']
const SOURCE = ['--downtime-limit', '--max-bandwidth', '--auto-converge', '--run']
// Both sides of a handover; the incoming side has its own two.
const LINK = ['--no-handover', '--link-timeout', '--handover-timeout', '--control']
const INCOMING = ['--handshake-timeout', '--incoming-timeout']

interface CommandHelp {
  usage: string
  about: string
  options: string[]
  examples: string[]
}

const COMMAND_HELP: Record<Exclude<Command, 'help'>, CommandHelp> = {
  demo: {
    usage: 'demo [OPTIONS]',
    about: 'Spawns a destination process (incoming tcp:127.0.0.1:0), runs a microVM here for --run ms, migrates it\n' +
      'over loopback TCP and checks that the guest arrived intact (digests, counters, checksum). Exit 1 if a check fails.',
    options: [...VM, ...SOURCE, '--run-after', '--local', '--tls', '--tls-creds-x509', '--tls-hostname', '--tls-authz', '--json'],
    examples: ['vmm-migrate demo', 'vmm-migrate demo --ram 64M --vcpu soft --json', 'vmm-migrate demo --tls', 'vmm-migrate demo --local'],
  },
  incoming: {
    usage: 'incoming URI [OPTIONS]',
    about: 'Creates a destination microVM, receives a migration on URI (tcp:HOST:PORT with port 0 allowed, unix:PATH,\n' +
      'file:PATH, exec:COMMAND, fd:N), starts the VM, lets it run --run-after ms, stops it and reports.\n' +
      'Give it the same VM options as the source.',
    options: [...VM, '--run-after', '--no-verify', ...LINK, ...INCOMING, '--local', '--tls-creds-x509', '--tls-authz', '--events', '--json'],
    examples: ['vmm-migrate incoming tcp:0.0.0.0:4444 --ram 1G --tls-creds-x509 /etc/vmm/tls --tls-authz CN=hostA,O=Example'],
  },
  migrate: {
    usage: 'migrate URI [OPTIONS]',
    about: 'Connects to URI (a destination started with incoming), then creates a source microVM, runs it --run ms,\n' +
      "migrates it and prints the stats and the source's digests. SIGINT cancels: the guest runs on here.",
    options: [...VM, ...SOURCE, ...LINK, '--local', '--no-ram-proof', '--tls-creds-x509', '--tls-hostname', '--after-failure', '--events', '--json'],
    examples: ['vmm-migrate migrate tcp:hostB:4444 --ram 1G --max-bandwidth 1G --tls-creds-x509 /etc/vmm/tls', 'vmm-migrate migrate unix:/run/vm.sock --local --ram 1G'],
  },
  save: {
    usage: 'save file:PATH [OPTIONS]',
    about: 'Like migrate, into a file: a live save (the VM runs during pre-copy).',
    options: [...VM, ...SOURCE, '--after-failure', '--events', '--json'],
    examples: ['vmm-migrate save file:/tmp/vm.sav --ram 32M'],
  },
  restore: {
    usage: 'restore file:PATH [OPTIONS]',
    about: 'Like incoming, from a file: loads a saved microVM, prints the digests save printed, then runs the guest.',
    options: [...VM, '--run-after', '--no-verify', '--events', '--json'],
    examples: ['vmm-migrate restore file:/tmp/vm.sav --ram 32M'],
  },
  analyze: {
    usage: 'analyze FILE',
    about: 'Decodes a saved stream (ours or QEMU\'s) into JSON on stdout: header, configuration, sections, RAM,\n' +
      'VFIO, vmdesc.',
    options: [],
    examples: ['vmm-migrate analyze /tmp/vm.sav > vm.json'],
  },
  resolve: {
    usage: 'resolve CONTROL --resume|--discard|--status',
    about: 'Settles a side that stopped in handover-unknown (it lost the other side after the go-ahead, or while\n' +
      'waiting for it, and cannot know whether the guest runs there). CONTROL is the socket that side printed.\n' +
      'Find out which side runs the guest, if any: a source that reports "failed" runs it; a destination that\n' +
      'completed runs it. Then --discard every side in handover-unknown whose peer runs the guest; if no side\n' +
      'runs it, --resume exactly one of them (either holds the state the source stopped with) and --discard the other.',
    options: ['--json'],
    examples: ['vmm-migrate resolve /tmp/vmm-migrate-Xb3k9a/control --resume'],
  },
  run: {
    usage: 'run --qmp PATH [--incoming defer|URI] [OPTIONS]',
    about: 'A long-running microVM controlled only through QMP on PATH (docs/qmp.md), like\n' +
      'qemu-system-x86_64 -qmp unix:PATH,server [-incoming defer]: a source runs its guest at once; with --incoming it\n' +
      'waits for a migration (defer: for migrate-incoming). Runs until quit, SIGINT/SIGTERM, or a failed incoming\n' +
      'migration (exit 1, as QEMU). The migration options give the initial parameters and capabilities.',
    options: ['--qmp', '--incoming', ...VM, '--downtime-limit', '--max-bandwidth', '--auto-converge', '--no-verify', ...LINK.filter((o) => o !== '--control'), ...INCOMING],
    examples: ['vmm-migrate run --qmp /tmp/dst.qmp --incoming defer --ram 64M', 'vmm-migrate run --qmp /tmp/src.qmp --ram 64M'],
  },
}

/** The help of one command: usage, what it does, its options, an example. */
export function commandHelp(command: Command): string {
  if (command === 'help') return HELP
  const h = COMMAND_HELP[command]
  const options = [...h.options, '--help'].map((o) => `  ${OPTION_HELP[o]!}`).join('\n')
  const heading = h.options.length ? 'options (defaults in brackets)' : 'options'
  return `usage: vmm-migrate ${h.usage}\n\n${h.about}\n\n${heading}:\n${options}\n\n` +
    `example${h.examples.length > 1 ? 's' : ''}:\n${h.examples.map((e) => `  ${e}`).join('\n')}\n`
}

export const HELP = `vmm-migrate: live-migrate a running microVM (RAM, vCPU, a timer device and an emulated VFIO device)

usage: vmm-migrate COMMAND [ARG] [OPTIONS]
       vmm-migrate COMMAND --help      that command's usage, options and an example

commands:
  demo                 migrate a running microVM to a child process over loopback TCP and verify it (npm start)
  incoming URI         receive a migration (tcp:HOST:PORT, unix:PATH, ...), start the VM, report
  migrate URI          start a microVM and migrate it to URI
  save file:PATH       start a microVM and save it (live) to a file
  restore file:PATH    load a saved microVM and start it
  analyze FILE         decode a saved stream into JSON (header, configuration, sections, RAM, VFIO, vmdesc)
  resolve CONTROL      settle a side stopped in handover-unknown: --resume (run the guest there) or --discard
  run --qmp PATH       a long-running microVM controlled through QMP (--incoming defer|URI: a destination)

options (defaults in brackets):
${Object.values(OPTION_HELP).map((l) => `  ${l}`).join('\n')}
`
