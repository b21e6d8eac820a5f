// The migration commands of QMP over one VM: the settings a manager sets
// (capabilities and parameters by QEMU's names), the outgoing and incoming
// migrations it starts, what query-migrate reports, and the events QEMU
// sends. Independent of sessions and sockets (vmm/qmp/server.ts), so each
// command can be tested on its own.
import diagnostics_channel from 'node:diagnostics_channel'
import { parseUri } from '../channel/uri.js'
import { IncomingMigration, OutgoingMigration, MigrationError } from '../migration/index.js'
import {
  DEFAULT_CAPABILITIES, DEFAULT_PARAMETERS, type IncomingStatus, type MigratableVm, type MigrationCapabilities,
  type MigrationParameters, type MigrationStats, type MigrationStatus,
} from '../migration/types.js'
import { checkParameters } from '../migration/validate.js'
import { VFIO_TRACE_CHANNEL, type VfioTraceEvent } from '../vfio/trace.js'
import { QmpError } from './codec.js'
import { checkValue, parseArgs, type ArgSpec } from './args.js'
import { QomObjects } from './objects.js'

/** What query-migrate reports of RAM needs, when the VMM has it (vmm/ram's RamMigration has it). */
export interface QmpRamSource {
  readonly layout: { readonly totalBytes: number }
  stats(): { normalPages: number; zeroPages: number; bytes: number; dirtySyncCount: number; remaining: number }
}

/** The capabilities QMP sets, by their QEMU names; ours are 'x-' ones. */
export const SUPPORTED_CAPABILITIES = [
  'auto-converge', 'events', 'return-path', 'pause-before-switchover', 'switchover-ack', 'x-handover',
] as const
export type QmpCapability = (typeof SUPPORTED_CAPABILITIES)[number]

/**
 * QEMU's other capabilities (qapi/migration.json, QEMU 9.x): accepted off, so
 * that a manager turning them off in one call with ours works; refused on.
 */
const UNSUPPORTED_CAPABILITIES = [
  'xbzrle', 'rdma-pin-all', 'zero-blocks', 'compress', 'postcopy-ram', 'x-colo', 'release-ram', 'block', 'multifd',
  'dirty-bitmaps', 'postcopy-blocktime', 'late-block-activate', 'x-ignore-shared', 'validate-uuid',
  'background-snapshot', 'zero-copy-send', 'postcopy-preempt', 'dirty-limit', 'mapped-ram',
]

/** QEMU's MigrationStatus names, for migrate-continue's argument. */
const MIGRATION_STATUSES = [
  'none', 'setup', 'cancelling', 'cancelled', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover-setup',
  'postcopy-recover', 'completed', 'failed', 'colo', 'pre-switchover', 'device', 'wait-unplug', 'handover-unknown',
]

/** QMP parameter name -> ours, with the range QEMU states in its error. */
const PARAMETERS: Record<string, { key: keyof MigrationParameters; max: number; min?: number; unit?: string; qemu?: string }> = {
  'max-bandwidth': { key: 'maxBandwidth', max: Number.MAX_SAFE_INTEGER, unit: ' bytes/second', qemu: 'max_bandwidth' },
  'downtime-limit': { key: 'downtimeLimitMs', max: 2_000_000, qemu: 'downtime_limit' },
  'avail-switchover-bandwidth': { key: 'availSwitchoverBandwidth', max: Number.MAX_SAFE_INTEGER, unit: ' bytes/second', qemu: 'avail_switchover_bandwidth' },
  'cpu-throttle-initial': { key: 'cpuThrottleInitial', min: 1, max: 99, qemu: 'cpu_throttle_initial' },
  'cpu-throttle-increment': { key: 'cpuThrottleIncrement', min: 1, max: 99, qemu: 'cpu_throttle_increment' },
  'max-cpu-throttle': { key: 'maxCpuThrottle', min: 1, max: 99, qemu: 'max_cpu_throttle' },
  'x-max-iterations': { key: 'xMaxIterations', max: Number.MAX_SAFE_INTEGER },
  'x-link-timeout': { key: 'linkTimeoutMs', max: 3_600_000 },
  'x-handover-timeout': { key: 'handoverTimeoutMs', min: 1, max: 3_600_000 },
  'x-handshake-timeout': { key: 'handshakeTimeoutMs', min: 1, max: 3_600_000 },
  'x-incoming-timeout': { key: 'incomingTimeoutMs', max: 86_400_000 },
}

/** QEMU's device states (QEMU 9.1 QapiVfioMigrationState) for the VFIO uAPI's. */
const VFIO_STATE: Record<string, string> = {
  STOP: 'stop', RUNNING: 'running', STOP_COPY: 'stop-copy', RESUMING: 'resuming', RUNNING_P2P: 'running-p2p',
  PRE_COPY: 'pre-copy', PRE_COPY_P2P: 'pre-copy-p2p',
}

const ACTIVE: ReadonlySet<MigrationStatus> = new Set(['setup', 'active', 'pre-switchover', 'device', 'cancelling', 'handover-unknown'])

export interface MigrationControlOptions {
  /** The VMM the commands act on. */
  machine: MigratableVm
  /** Initial parameters (QEMU's defaults otherwise); migrate-set-parameters changes them. */
  parameters?: Partial<MigrationParameters>
  /** Initial capabilities of the library (switchoverAck, autoConverge, handover, pauseBeforeSwitchover). */
  capabilities?: Partial<MigrationCapabilities>
  /**
   * Like QEMU's -incoming: 'defer' waits for migrate-incoming, a URI starts
   * listening at once (start()), undefined: this VM is not a destination.
   */
  incoming?: string
  /** RAM for query-migrate's ram{} figures (vmm/ram's RamMigration). */
  ram?: QmpRamSource
  /** Before each migration (either way), with its capabilities: for VMM state that depends on them. */
  beforeMigration?(capabilities: MigrationCapabilities): void
  /** An incoming migration failed: QEMU exits then, since the loaded guest is unusable. */
  onIncomingFailed?(error: Error): void
  /** QEMU 9.1's VFIO_MIGRATION events (its devices' x-migration-events); off by default, as in QEMU. */
  vfioMigrationEvents?: boolean
}

export type EventSink = (event: string, data?: Record<string, unknown>) => void

export class MigrationControl {
  readonly machine: MigratableVm
  private readonly params: MigrationParameters
  private readonly caps: Record<QmpCapability, boolean>
  private outgoing: OutgoingMigration | null = null
  /** The last outgoing migration's stats once it ended (its own keep counting time). */
  private finalStats: MigrationStats | null = null
  private incomingMode: string | undefined
  private inc: IncomingMigration | null = null
  private incStatus: IncomingStatus | 'none' = 'none'
  private incError: string | undefined
  private lastPass = 0
  private readonly unsubscribe: (() => void)[] = []
  /** The objects object-add made (TLS credentials, authz lists). */
  readonly objects = new QomObjects()
  /** tls-creds, tls-hostname, tls-authz as QMP sets them: object ids and a name, '' when unset. */
  private readonly tls = { 'tls-creds': '', 'tls-hostname': '', 'tls-authz': '' }

  constructor(private readonly opts: MigrationControlOptions, private readonly emit: EventSink) {
    this.machine = opts.machine
    this.params = checkParameters({ ...DEFAULT_PARAMETERS, ...opts.parameters })
    const c = { ...DEFAULT_CAPABILITIES, ...opts.capabilities }
    this.caps = {
      'auto-converge': c.autoConverge, events: false, 'return-path': false, 'pause-before-switchover': c.pauseBeforeSwitchover,
      'switchover-ack': c.switchoverAck, 'x-handover': c.handover,
    }
    if (opts.incoming !== undefined && opts.incoming !== 'defer') this.checkUri(opts.incoming)
    this.incomingMode = opts.incoming
    const vm = this.machine.vm
    const onStop = () => this.emit('STOP')
    const onResume = () => this.emit('RESUME')
    vm.on('stop', onStop)
    vm.on('resume', onResume)
    this.unsubscribe.push(() => {
      vm.off('stop', onStop)
      vm.off('resume', onResume)
    })
    if (opts.vfioMigrationEvents && this.machine.vfio) {
      const onTrace = (m: unknown) => this.vfioEvent(m as VfioTraceEvent)
      diagnostics_channel.subscribe(VFIO_TRACE_CHANNEL, onTrace)
      this.unsubscribe.push(() => diagnostics_channel.unsubscribe(VFIO_TRACE_CHANNEL, onTrace))
    }
  }

  /**
   * With a URI for `incoming` (not 'defer'): listen now, as QEMU does at
   * start-up; resolves once bound, rejects if the address cannot be used.
   */
  async start(): Promise<void> {
    if (this.incomingMode !== undefined && this.incomingMode !== 'defer') await this.startIncoming(this.incomingMode)
  }

  /** Stop listening to the VM; a migration in progress goes on. */
  close(): void {
    for (const u of this.unsubscribe.splice(0)) u()
  }

  private vfioEvent(m: VfioTraceEvent): void {
    if (m.event !== 'set-state' || !m.ok) return
    const devices = this.machine.vfio?.devices ?? []
    if (!devices.some((d) => d.name === m.device)) return
    this.emit('VFIO_MIGRATION', { 'device-id': m.device, 'qom-path': `/machine/peripheral/${m.device}`, 'device-state': VFIO_STATE[m.to] ?? m.to.toLowerCase() })
  }

  private libraryCapabilities(): MigrationCapabilities {
    return {
      switchoverAck: this.caps['switchover-ack'], autoConverge: this.caps['auto-converge'], handover: this.caps['x-handover'],
      pauseBeforeSwitchover: this.caps['pause-before-switchover'],
    }
  }

  private migrationEvent(status: string): void {
    if (this.caps.events) this.emit('MIGRATION', { status })
  }

  private checkUri(uri: string): void {
    try {
      parseUri(uri)
    } catch (e) {
      throw new QmpError('GenericError', `Invalid migration URI '${uri}': ${(e as Error).message}`)
    }
  }

  /** A migration (either way) that has not ended: settings that shape it are frozen. */
  private busy(): boolean {
    return (this.outgoing !== null && ACTIVE.has(this.outgoing.status)) ||
      this.incStatus === 'setup' || this.incStatus === 'active' || this.incStatus === 'ready' || this.incStatus === 'handover-unknown'
  }

  /** Dirty-log syncs of this migration: RAM's own count, else the migration's rounds. */
  private syncCount(s: MigrationStats): number {
    const r = this.opts.ram?.stats()
    return r ? r.dirtySyncCount : s.iterations
  }

  // ---- commands ----------------------------------------------------------

  migrate(a: Record<string, unknown>): Record<string, never> {
    const { uri, blk, inc, resume } = parseArgs<{ uri: string; blk?: boolean; inc?: boolean; detach?: boolean; resume?: boolean }>(a, {
      uri: { type: 'str' }, blk: { type: 'bool', optional: true }, inc: { type: 'bool', optional: true },
      detach: { type: 'bool', optional: true }, resume: { type: 'bool', optional: true },
    })
    if (blk || inc) throw new QmpError('GenericError', 'Block migration is not supported by this VMM')
    if (resume) throw new QmpError('GenericError', 'Postcopy is not supported by this VMM: there is no paused migration to resume')
    if (this.busy()) throw new QmpError('GenericError', "There's a migration process in progress")
    const vm = this.machine.vm
    if (vm.state === 'inmigrate') throw new QmpError('GenericError', 'Guest is waiting for an incoming migration')
    if (vm.state !== 'running' && vm.state !== 'paused') throw new QmpError('GenericError', `Cannot migrate a VM in run state '${vm.state}'`)
    this.checkUri(uri)
    const caps = this.libraryCapabilities()
    this.opts.beforeMigration?.(caps)
    // Detached, as QMP's migrate always is: the reply says it started, query-migrate and events say how it goes.
    const m = new OutgoingMigration(this.machine, { parameters: { ...this.params, ...this.tlsParameters('client') }, capabilities: caps })
    this.outgoing = m
    this.finalStats = null
    this.lastPass = 0
    // QEMU sends MIGRATION_PASS at every sync of the dirty log; the last one
    // comes right before the switchover, with no progress event after it, so
    // status changes look too.
    const passes = (s: MigrationStats) => {
      // RAM's figures start again at each migration's setup, before its first progress event.
      const n = this.syncCount(s)
      while (this.lastPass < n) {
        this.lastPass++
        if (this.caps.events) this.emit('MIGRATION_PASS', { pass: this.lastPass })
      }
    }
    m.on('status', (s) => {
      if (s === 'pre-switchover' || s === 'device' || s === 'completed') passes(m.stats())
      this.migrationEvent(s)
    })
    m.on('progress', passes)
    m.start(uri).then(
      (s) => { if (this.outgoing === m) this.finalStats = s },
      (e: MigrationError) => { if (this.outgoing === m) this.finalStats = e.stats ?? m.stats() },
    )
    return {}
  }

  migrateCancel(a: Record<string, unknown>): Record<string, never> {
    parseArgs(a, {})
    // As QEMU: nothing to cancel is no error.
    this.outgoing?.cancel()
    return {}
  }

  async migrateIncoming(a: Record<string, unknown>): Promise<Record<string, never>> {
    const { uri } = parseArgs<{ uri?: string; channels?: unknown; 'exit-on-error'?: boolean }>(a, {
      uri: { type: 'str', optional: true }, channels: { type: 'any', optional: true }, 'exit-on-error': { type: 'bool', optional: true },
    })
    if (a.channels !== undefined) throw new QmpError('GenericError', "'channels' is not supported by this VMM: give 'uri'")
    if (uri === undefined) throw new QmpError('GenericError', "Parameter 'uri' is missing")
    if (this.incomingMode === undefined) throw new QmpError('GenericError', "'-incoming' was not specified on the command line")
    if (this.incomingMode !== 'defer' || this.inc) throw new QmpError('GenericError', 'The incoming migration has already been started')
    this.checkUri(uri)
    // As QEMU's: the reply comes once the address is bound, so a manager may
    // start the source's migrate right after it.
    await this.startIncoming(uri)
    return {}
  }

  /** Resolves once listening; rejects (a QmpError) if the address cannot be used. */
  private startIncoming(uri: string): Promise<void> {
    const caps = this.libraryCapabilities()
    this.opts.beforeMigration?.(caps)
    let listening: () => void = () => undefined
    let isListening = false
    const bound = new Promise<void>((resolve) => (listening = resolve))
    const tls = this.tlsParameters('server')
    const m = new IncomingMigration(this.machine, {
      parameters: { ...this.params, ...tls }, capabilities: caps,
      onListening: () => {
        isListening = true
        listening()
      },
    })
    const mode = this.incomingMode
    this.inc = m
    this.incomingMode = uri
    m.on('status', (s) => {
      this.incStatus = s
      // 'ready' is this project's (the handover): QEMU's destination is still 'active' then.
      if (s !== 'ready') this.migrationEvent(s)
    })
    const ended = m.start(uri).then(() => undefined, (e: Error) => {
      if (!isListening) {
        // Nothing was received (the address could not be bound): the guest
        // is untouched; deferred, the manager may try another address, and
        // at start-up (incoming: URI) QmpServer.listen() fails with it.
        this.inc = null
        this.incomingMode = mode
        this.incStatus = 'none'
        throw e
      }
      this.incError = e.message
      this.opts.onIncomingFailed?.(e)
      throw e
    })
    return Promise.race([bound, ended]).catch((e: Error) => {
      throw new QmpError('GenericError', `Failed to start the incoming migration: ${e.message}`)
    })
  }

  migrateContinue(a: Record<string, unknown>): Record<string, never> {
    const { state } = parseArgs<{ state: string }>(a, { state: { type: 'str', values: MIGRATION_STATUSES } })
    const m = this.outgoing
    const now = m?.status ?? 'none'
    if (!m || now !== state) throw new QmpError('GenericError', `Migration not in expected state: ${now}`)
    m.continue()
    return {}
  }

  /** This project's: settle 'handover-unknown' on either side (docs/flows.md). */
  async resolve(a: Record<string, unknown>): Promise<Record<string, never>> {
    const { action } = parseArgs<{ action: 'resume' | 'discard' }>(a, { action: { type: 'str', values: ['resume', 'discard'] } })
    const target = this.outgoing?.status === 'handover-unknown' ? this.outgoing : this.inc?.status === 'handover-unknown' ? this.inc : null
    if (!target) throw new QmpError('GenericError', 'No migration is in status handover-unknown')
    try {
      await target.resolve(action)
    } catch (e) {
      throw new QmpError('GenericError', (e as Error).message)
    }
    return {}
  }

  setCapabilities(a: Record<string, unknown>): Record<string, never> {
    const { capabilities } = parseArgs<{ capabilities: unknown }>(a, { capabilities: { type: 'any' } })
    if (!Array.isArray(capabilities)) throw new QmpError('GenericError', "Invalid parameter type for 'capabilities', expected: array")
    const next = { ...this.caps }
    const all = [...SUPPORTED_CAPABILITIES, ...UNSUPPORTED_CAPABILITIES]
    capabilities.forEach((c, i) => {
      const where = `capabilities[${i}]`
      if (c === null || typeof c !== 'object' || Array.isArray(c)) throw new QmpError('GenericError', `Invalid parameter type for '${where}', expected: object`)
      const { capability, state } = parseArgs<{ capability: string; state: boolean }>(c as Record<string, unknown>, {
        capability: { type: 'str', values: all }, state: { type: 'bool' },
      }, `${where}.`)
      if ((SUPPORTED_CAPABILITIES as readonly string[]).includes(capability)) next[capability as QmpCapability] = state
      else if (state) throw new QmpError('GenericError', `Capability '${capability}' is not supported by this VMM`)
    })
    // QEMU refuses any change while a migration runs, the same ones included.
    if (this.busy()) throw new QmpError('GenericError', "There's a migration process in progress")
    if (next['switchover-ack'] && !next['return-path']) throw new QmpError('GenericError', "Capability 'switchover-ack' requires capability 'return-path'")
    Object.assign(this.caps, next)
    return {}
  }

  queryCapabilities(a: Record<string, unknown>): { capability: string; state: boolean }[] {
    parseArgs(a, {})
    return SUPPORTED_CAPABILITIES.map((c) => ({ capability: c, state: this.caps[c] }))
  }

  setParameters(a: Record<string, unknown>): Record<string, never> {
    const changed: Partial<MigrationParameters> = {}
    const tls: Partial<Record<keyof MigrationControl['tls'], string>> = {}
    for (const [name, v] of Object.entries(a)) {
      if (Object.hasOwn(this.tls, name)) {
        // QEMU's StrOrNull: null resets, as "" does. Object ids are looked up when a migration starts, as QEMU does.
        if (v !== null) checkValue(name, v, { type: 'str' } satisfies ArgSpec)
        tls[name as keyof MigrationControl['tls']] = (v as string | null) ?? ''
        continue
      }
      const p = PARAMETERS[name]
      if (!p) throw new QmpError('GenericError', `Parameter '${name}' is unexpected`)
      checkValue(name, v, { type: 'uint' } satisfies ArgSpec)
      const n = v as number
      if (n < (p.min ?? 0) || n > p.max) {
        throw new QmpError('GenericError', `Parameter '${p.qemu ?? name}' expects an integer in the range of ${p.min ?? 0} to ${p.max}${p.unit ?? ''}`)
      }
      ;(changed as Record<string, number>)[p.key] = n
    }
    let next: MigrationParameters
    try {
      next = checkParameters({ ...this.params, ...changed })
    } catch (e) {
      throw new QmpError('GenericError', (e as Error).message)
    }
    // QEMU applies them to the running migration too (migrate_params_apply, then the rate limit).
    if (this.outgoing && ACTIVE.has(this.outgoing.status)) this.outgoing.setParameters(changed)
    Object.assign(this.params, next)
    Object.assign(this.tls, tls)
    return {}
  }

  queryParameters(a: Record<string, unknown>): Record<string, number | string> {
    parseArgs(a, {})
    const out: Record<string, number | string> = {}
    for (const [name, p] of Object.entries(PARAMETERS)) out[name] = this.params[p.key] as number
    return { ...out, ...this.tls }
  }

  /**
   * The library's TLS parameters for this side from what QMP set: the
   * credentials object must exist and be for this end ('client' on the
   * source, 'server' on the destination, as QEMU checks); tls-hostname
   * counts on the source only, tls-authz on the destination only.
   */
  private tlsParameters(endpoint: 'client' | 'server'): Partial<MigrationParameters> {
    const id = this.tls['tls-creds']
    if (!id) return {}
    const creds = this.objects.creds(id, endpoint)
    if (endpoint === 'client') return { tlsCreds: creds.dir, tlsHostname: this.tls['tls-hostname'] }
    const authz = this.tls['tls-authz']
    return { tlsCreds: creds.dir, tlsAuthz: authz ? this.objects.authz(authz) : [] }
  }

  queryMigrate(a: Record<string, unknown>): Record<string, unknown> {
    parseArgs(a, {})
    const m = this.outgoing
    if (m) return this.sourceInfo(m)
    if (this.inc || this.incStatus !== 'none') {
      const s = this.incStatus === 'ready' ? 'active' : this.incStatus
      const info: Record<string, unknown> = { status: s }
      if (s === 'failed' && this.incError) info['error-desc'] = this.incError
      return info
    }
    // No migration ever: QEMU answers an empty object.
    return {}
  }

  private sourceInfo(m: OutgoingMigration): Record<string, unknown> {
    const s = this.finalStats ?? m.stats()
    const status = m.status
    const info: Record<string, unknown> = { status }
    if (status === 'none') return {}
    const ended = status === 'completed' || status === 'failed' || status === 'cancelled'
    info['total-time'] = s.totalTime
    if (status !== 'setup') info['setup-time'] = s.setupTime
    if (ended && s.downtime !== undefined) info.downtime = Math.round(s.downtime)
    if (!ended && status !== 'setup') info['expected-downtime'] = Math.max(0, s.expectedDowntime)
    if (status !== 'setup') {
      const ram = this.opts.ram
      const r = ram?.stats()
      const page = 4096
      const seconds = Math.max(0.001, s.totalTime / 1000)
      info.ram = {
        transferred: r ? r.bytes : s.transferred,
        remaining: status === 'completed' ? 0 : r ? r.remaining : s.remaining,
        total: ram ? ram.layout.totalBytes : 0,
        duplicate: r?.zeroPages ?? 0,
        normal: r?.normalPages ?? 0,
        'normal-bytes': (r?.normalPages ?? 0) * page,
        'dirty-pages-rate': s.dirtyPagesRate,
        'dirty-sync-count': r?.dirtySyncCount ?? s.iterations,
        mbps: s.mbps,
        'pages-per-second': Math.round(((r?.normalPages ?? 0) + (r?.zeroPages ?? 0)) / seconds),
        'page-size': page,
        skipped: 0,
        'postcopy-requests': 0,
        'multifd-bytes': 0,
        'postcopy-bytes': 0,
        'dirty-sync-missed-zero-copy': 0,
      }
      if (s.vfio) info.vfio = { transferred: Object.values(s.vfio).reduce((n, d) => n + d.bytesSaved, 0) }
      if (this.caps['auto-converge']) info['cpu-throttle-percentage'] = s.cpuThrottlePercentage
    }
    if ((status === 'failed' || status === 'cancelled' || status === 'handover-unknown') && m.reason) info['error-desc'] = m.reason
    return info
  }

  /** query-status's answer. */
  status(): { status: string; running: boolean; singlestep: boolean } {
    const st = this.machine.vm.state
    return { status: st, running: st === 'running', singlestep: false }
  }

  /**
   * QEMU's cont has nothing to refuse in pre-copy; a VM the migration stopped
   * for the switchover is another matter: starting it would run the guest
   * while its final state is on its way to the destination.
   */
  async cont(a: Record<string, unknown>): Promise<Record<string, never>> {
    parseArgs(a, {})
    const vm = this.machine.vm
    const m = this.outgoing
    if (m && (m.status === 'pre-switchover' || m.status === 'device' || m.status === 'cancelling' || m.status === 'handover-unknown')) {
      throw new QmpError('GenericError', `Cannot continue the VM while its migration is in status '${m.status}'` +
        (m.status === 'handover-unknown' ? ': settle it first (x-migrate-resolve)' : ''))
    }
    if (vm.state === 'inmigrate' || this.incStatus === 'ready' || this.incStatus === 'handover-unknown') {
      throw new QmpError('GenericError', 'Guest is waiting for an incoming migration: it starts when the migration completes')
    }
    if (vm.state === 'running') return {}
    try {
      await vm.vmStart()
    } catch (e) {
      throw new QmpError('GenericError', `Cannot continue the VM: ${(e as Error).message}`)
    }
    return {}
  }

  async stop(a: Record<string, unknown>): Promise<Record<string, never>> {
    parseArgs(a, {})
    const vm = this.machine.vm
    if (vm.state === 'inmigrate') throw new QmpError('GenericError', 'Guest is waiting for an incoming migration: it cannot be stopped before it runs')
    const m = this.outgoing
    if (m && (m.status === 'pre-switchover' || m.status === 'device')) return {} // already stopped by the migration
    if (vm.state !== 'running') return {}
    try {
      await vm.vmStop('paused')
    } catch (e) {
      throw new QmpError('GenericError', `Cannot stop the VM: ${(e as Error).message}`)
    }
    return {}
  }
}
