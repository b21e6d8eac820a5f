// The source side of a migration (QEMU's migration/migration.c): the status
// machine, the pre-copy loop, the switchover, and the rule that a failed or
// cancelled migration loses nothing: the VM and its devices run again.
//
// Beyond QEMU: the handover (docs/flows.md). After the stream the source
// waits for the destination's READY, then hands it the guest with GO and
// waits for STARTED (RESUME_OK). Until GO is on the socket any failure
// resumes the guest here, since the destination cannot start without GO;
// after it, only the destination's explicit "failed, not running" does.
// A side that cannot know stays paused in 'handover-unknown' until an
// operator resolves it. Every wait is bounded: the link watchdog, the
// handover timeout.
import { connect } from '../channel/connect.js'
import { loadTlsCreds } from '../channel/tls.js'
import { hasReturnPath, type Channel } from '../channel/types.js'
import { ReturnPathReader, RpMsg } from '../channel/return-path.js'
import { HandoverFrame, writeHandoverFrame } from '../channel/handover.js'
import { LinkWatchdog } from './watchdog.js'
import { MigStream } from '../stream/stream.js'
import { SaveVM } from '../savevm/save.js'
import type { SaveVMRegistry } from '../savevm/registry.js'
import { MigCmd } from '../savevm/constants.js'
import { typedEmitter } from '../core/events.js'
import { AutoConverge, BandwidthMeter, expectedDowntimeMs, handoverReserveMs, thresholdBytes } from './convergence.js'
import { MigrationError } from './errors.js'
import {
  DEFAULT_CAPABILITIES, DEFAULT_PARAMETERS, type MigratableVm, type MigrationCapabilities, type MigrationEvents,
  type DowntimePhases, type MigrationParameters, type MigrationStats, type MigrationStatus, type ResolveAction,
} from './types.js'
import { checkCapabilities, checkParameters, validatedCapabilities, HANDOVER_CAPABILITY } from './validate.js'
import { sendsSwitchoverStart } from './switchover-start.js'

export interface OutgoingOptions {
  parameters?: Partial<MigrationParameters>
  capabilities?: Partial<MigrationCapabilities>
  signal?: AbortSignal
  /**
   * The channel given to start() or abandon() carries the stream's file
   * header (fileHeader() of vmm/savevm/writer.ts) already: sent as soon as
   * it connected, so that a destination dropping peers that send no stream
   * (handshake-timeout) keeps this one while the VM is still being built.
   */
  fileHeaderSent?: boolean
  /**
   * A local migration (live update on one host): guest RAM goes to the
   * destination as its file descriptors over a unix: channel, not as pages,
   * so the downtime does not grow with RAM. Refused, before anything is
   * sent, on any other channel and for RAM that is not fd-backed.
   */
  local?: boolean
}

/** Why a local migration to `target` cannot be: a channel that cannot pass descriptors, entries that cannot go by them. */
export function localRefusal(target: string | Channel, registry: SaveVMRegistry): string | null {
  const kind = typeof target === 'string' ? target.slice(0, Math.max(0, target.indexOf(':'))) : target.kind
  if (kind !== 'unix') {
    return `a local migration passes file descriptors, which only a unix: channel carries (to a process on this host); got ${typeof target === 'string' ? target : `a ${kind} channel`}`
  }
  const why = registry.entries().flatMap(e => e.handlers.localBlockers?.() ?? [])
  return why.length ? why.join('; ') : null
}

const now = () => performance.now()

/**
 * A cancel in setup or pre-copy lets the stream reach a section boundary and
 * the destination take the cancel marker while bytes still move (our writes
 * complete, the destination reports its progress); after this long without
 * any, the channel is shut regardless (a peer that stopped reading).
 */
export const CANCEL_GRACE_MS = 1000
/** And after this long in any case. */
export const CANCEL_GRACE_MAX_MS = 10_000

export class OutgoingMigration extends typedEmitter<MigrationEvents>() {
  readonly parameters: MigrationParameters
  readonly capabilities: MigrationCapabilities
  private st: MigrationStatus = 'none'
  private f: MigStream | null = null
  private t0 = 0
  private setupTime = 0
  private downtime: number | undefined
  private downtimeMeasured = false
  private expected = 0
  private remaining = 0
  private mbps = 0
  private dirtyRate = 0
  private iterations = 0
  private throttle = 0
  private cancelRequested = false
  private error: string | undefined
  private acked = false
  private ackWaiters: (() => void)[] = []
  private resumed: { ok: boolean; at: number; errno?: number; verificationUs?: number; startedMonoNs?: bigint } | null = null
  private stopMonoNs = 0n
  private downtimeClock: MigrationStats['downtimeClock']
  private resumeWaiters: (() => void)[] = []
  private rpClosed = false
  /** The destination's own words for its failure (FAIL_REASON), if it sent them. */
  private remoteReason: string | undefined
  /** Bytes the destination reported loaded (LOAD_PROGRESS), -1 until it reports. */
  private destLoaded = -1
  /**
   * Set once the destination may run the guest: GO handed to the socket (with
   * the handover), or EOF on the wire (without). From then on this side never
   * resumes on its own, and a cancel is not honoured.
   */
  private committed = false
  /** The stream's EOF is written: with the handover, a withdrawal is then an ABORT frame. */
  private eofSent = false
  /** Aborts a connect still in progress when the migration is cancelled. */
  private readonly connecting = new AbortController()
  /** Shuts the channel once a cancel's grace is over. */
  private graceTimer: ReturnType<typeof setInterval> | undefined
  /** When READY arrived (the handover), 0 until then. */
  private readyAt = 0
  /** What the destination said its checks after the stream will take, ms (RpMsg.SWITCHOVER_COST). */
  private destCheckMs = 0
  /** This side's own switchover work, ms (MigratableVm.expectedSaveMs). */
  private saveCostMs = 0
  /** now() at each step of the switchover, for MigrationStats.downtimePhases. */
  private marks: { stopped: number; stopDone: number; eof: number; go: number } = { stopped: 0, stopDone: 0, eof: 0, go: 0 }
  private watchdog: LinkWatchdog | null = null
  /** continue() was called in 'pre-switchover'. */
  private continued = false
  /** Set in 'handover-unknown': how start() ends once resolve() is called. */
  private pending: { resolve: (s: MigrationStats) => void; reject: (e: Error) => void; wasRunning: boolean; code: string } | null = null

  constructor(readonly machine: MigratableVm, opts: OutgoingOptions = {}) {
    super()
    this.parameters = checkParameters({ ...DEFAULT_PARAMETERS, ...opts.parameters })
    this.capabilities = checkCapabilities({ ...DEFAULT_CAPABILITIES, ...opts.capabilities })
    this.fileHeaderSent = opts.fileHeaderSent ?? false
    this.local = opts.local ?? false
    opts.signal?.addEventListener('abort', () => this.cancel(), { once: true })
  }

  private readonly fileHeaderSent: boolean
  private readonly local: boolean

  /** The capabilities the configuration section lists over `channel`. */
  private streamCapabilities(channel: Channel): string[] {
    const capabilities = validatedCapabilities(this.capabilities)
    // A save (no return path) is not a handover: nobody could say READY.
    if (hasReturnPath(channel) && this.capabilities.handover) capabilities.push(HANDOVER_CAPABILITY)
    return capabilities
  }

  /**
   * For a migration cancelled before start(), over a channel already open to
   * the destination: send the stream's beginning and the cancel marker, so
   * that the destination reports a cancel rather than a cut stream, then
   * close the channel. Bounded by CANCEL_GRACE_MS.
   */
  async abandon(channel: Channel): Promise<void> {
    if (this.st !== 'none') throw new MigrationError(`abandon: the migration is ${this.st}`, 'EBUSY')
    const f = (this.f = new MigStream(channel))
    const save = new SaveVM(f, this.machine.registry, { machine: this.machine.machine, capabilities: this.streamCapabilities(channel), fileHeaderSent: this.fileHeaderSent })
    const rpDone = hasReturnPath(channel) ? this.returnPath(f) : null
    try {
      await this.endCancelled(save, rpDone, false)
    } finally {
      clearInterval(this.graceTimer)
      f.shutdown('migration cancelled')
      await f.close().catch(() => undefined)
      if (rpDone) await rpDone
    }
  }

  get status(): MigrationStatus {
    return this.st
  }

  private set(s: MigrationStatus): void {
    if (this.st === s) return
    this.st = s
    this.emit('status', s)
  }

  /** Cancel at any moment; `start` then rejects after the source runs again. */
  cancel(): void {
    if (this.st === 'completed' || this.st === 'failed' || this.st === 'cancelled' || this.st === 'handover-unknown') return
    // Once the destination may run the guest, resuming here too could leave
    // two copies running: only its answer, or resolve(), decides from then on.
    if (this.committed) return
    const vmStopped = this.st === 'device' || this.st === 'pre-switchover'
    this.cancelRequested = true
    if (this.st !== 'none') this.set('cancelling')
    this.connecting.abort()
    // After EOF the stream stays up so that the failure path can tell the
    // destination with ABORT; it then fails cleanly instead of being left
    // in handover-unknown.
    if (this.eofSent) {
      // (the failure path writes ABORT)
    } else if (vmStopped || !this.f) {
      // The guest is paused: every millisecond is downtime, cut at once.
      this.f?.shutdown('migration cancelled')
    } else {
      // The guest runs: let the handlers end their sections (no more budget)
      // so that the stream can end with the cancel marker (endCancelled).
      this.f.rateLimiter.halt()
      this.armGrace()
    }
    this.wakeAll()
  }

  /**
   * Change parameters of this migration while it runs (QMP
   * migrate-set-parameters during a migration). max-bandwidth applies from
   * the next rate-limit window (100 ms), downtime-limit,
   * avail-switchover-bandwidth, the cpu-throttle ones and x-max-iterations
   * at the next decision of the pre-copy loop, which reads them every round.
   * The others (timeouts) were used when their waits were armed. A bad value
   * is refused and nothing changes.
   *
   * @example
   * const m = new OutgoingMigration(vm)
   * const done = m.start('tcp:10.0.0.2:4444')
   * m.setParameters({ maxBandwidth: 32 << 20, downtimeLimitMs: 500 })
   */
  setParameters(p: Partial<MigrationParameters>): void {
    const next = checkParameters({ ...this.parameters, ...p })
    Object.assign(this.parameters, next)
    if (this.f && p.maxBandwidth !== undefined) this.f.rateLimiter.maxBandwidth = next.maxBandwidth
  }

  /**
   * Release a migration paused in 'pre-switchover' (QEMU's migrate-continue,
   * with the pauseBeforeSwitchover capability): the switchover goes on.
   */
  continue(): void {
    if (this.st !== 'pre-switchover') throw new MigrationError(`Migration not in expected state: ${this.st}`, 'EINVAL')
    this.continued = true
    this.wakeAll()
  }

  /**
   * Wait in 'pre-switchover' for continue() or a cancel, for as long as the
   * manager takes: that is the capability's point. The destination's link
   * watchdog must still hear from us meanwhile, so PING it as pre-copy does.
   */
  private async pausedBeforeSwitchover(save: SaveVM, rp: boolean): Promise<void> {
    this.set('pre-switchover')
    const every = rp && this.parameters.linkTimeoutMs > 0 ? this.parameters.linkTimeoutMs / 4 : 0
    let pings = 0
    while (!this.continued) {
      this.checkCancel()
      const fe = this.f?.error
      if (fe) throw new MigrationError(`paused before the switchover: ${fe.message}`, fe.code ?? 'EIO', { cause: fe })
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          resolve()
        }
        const timer = every ? setTimeout(done, every) : undefined
        this.resumeWaiters.push(done)
      })
      if (!this.continued && !this.cancelRequested && every) {
        const b = Buffer.alloc(4)
        // Apart from pre-copy's counter: only the destination's PONG would tell them apart.
        b.writeUInt32BE((0x80000000 + ++pings) >>> 0)
        await save.command(MigCmd.PING, b)
      }
    }
    this.checkCancel()
    this.set('device')
  }

  private armGrace(): void {
    if (this.graceTimer) return
    const started = now()
    let moved = -1
    let movedAt = started
    this.graceTimer = setInterval(() => {
      const f = this.f
      // Under load the destination can take seconds to drain its socket; it
      // reports its progress on the return path every 20 ms meanwhile.
      const n = f ? f.bytesWritten + f.bytesRead : 0
      if (n !== moved) {
        moved = n
        movedAt = now()
      }
      if (now() - movedAt >= CANCEL_GRACE_MS || now() - started >= CANCEL_GRACE_MAX_MS) {
        clearInterval(this.graceTimer)
        f?.shutdown('migration cancelled')
      }
    }, Math.min(100, CANCEL_GRACE_MS / 4))
  }

  /**
   * End a cancelled stream so that the destination can tell a cancel from a
   * broken link: the cancel marker at a section boundary, the end of our
   * writes, then wait for the destination to close. Closing first, with its
   * return-path messages unread, would reset the connection, and a reset can
   * discard the marker before it is read. Bounded by the grace timer.
   */
  private async endCancelled(save: SaveVM, rpDone: Promise<void> | null, headerSent: boolean): Promise<void> {
    this.armGrace()
    try {
      // A marker needs the configuration before it, which the loader reads first.
      if (!headerSent) await save.header()
      await save.cancelled()
      await this.f!.channel.endWrites()
      if (rpDone) await rpDone
    } catch {
      // The destination is gone or the grace ran out: the channel is shut next.
    }
  }

  stats(): MigrationStats {
    const f = this.f
    return {
      status: this.st,
      totalTime: this.t0 ? Math.round(now() - this.t0) : 0,
      setupTime: Math.round(this.setupTime),
      downtime: this.downtime === undefined ? undefined : Math.round(this.downtime * 1000) / 1000,
      downtimeMeasured: this.downtime === undefined ? undefined : this.downtimeMeasured,
      downtimeClock: this.downtime === undefined || !this.downtimeMeasured ? undefined : this.downtimeClock,
      downtimeVerification: this.downtime !== undefined && this.downtimeMeasured
        ? Math.round(Math.min(this.downtime, (this.resumed?.verificationUs ?? 0) / 1000) * 1000) / 1000
        : undefined,
      downtimePhases: this.downtimePhases(),
      expectedDowntime: Number.isFinite(this.expected) ? Math.round(this.expected) : -1,
      transferred: f?.transferred ?? 0,
      remaining: this.remaining,
      mbps: Math.round(this.mbps * 100) / 100,
      dirtyPagesRate: Math.round(this.dirtyRate),
      iterations: this.iterations,
      cpuThrottlePercentage: this.throttle,
      vfio: this.machine.vfio ? this.machine.vfio.stats() : undefined,
      dirtyTracker: this.machine.dirtyTrackerKind?.() ?? this.machine.vfio?.dirtyTracker?.kind,
      devicesReset: this.machine.vfio?.devicesReset(),
      error: this.error,
    }
  }

  /**
   * The downtime as the guest had it: from the stop here to its start there,
   * on CLOCK_MONOTONIC, when the destination said when and shares that clock
   * (a UNIX socket's peer runs on this kernel). STARTED's own trip back is
   * then not counted. A time namespace can give the peer another
   * CLOCK_MONOTONIC: a figure outside (0, what the return trip measured] is
   * not believed.
   */
  private sharedClockDowntime(channel: Channel, roundTrip: number): number | undefined {
    const at = this.resumed?.startedMonoNs
    if (!at || (channel.kind !== 'unix' && !this.local)) return undefined
    const ms = Number(at - this.stopMonoNs) / 1e6
    return ms > 0 && ms <= roundTrip ? ms : undefined
  }

  private downtimePhases(): DowntimePhases | undefined {
    const m = this.marks
    const end = this.resumed?.ok ? (this.downtime !== undefined ? m.stopped + this.downtime : this.resumed.at) : 0
    if (!m.stopped || !m.eof || !end) return undefined
    const r = (x: number) => Math.round(x * 1000) / 1000
    const ready = this.readyAt || m.go || end
    return {
      stopMs: r(m.stopDone - m.stopped),
      sendMs: r(m.eof - m.stopDone),
      readyMs: r(Math.max(0, ready - m.eof)),
      startMs: r(Math.max(0, end - ready)),
    }
  }

  private checkCancel(): void {
    if (this.cancelRequested) throw new MigrationError('migration cancelled', 'ECANCELED')
  }

  private wakeAll(): void {
    for (const w of this.ackWaiters.splice(0)) w()
    for (const w of this.resumeWaiters.splice(0)) w()
  }

  /** Read the destination's messages until the path closes. */
  private async returnPath(f: MigStream): Promise<void> {
    const rp = new ReturnPathReader(f)
    try {
      for (;;) {
        const m = await rp.next()
        if (!m) break
        if (m.type === RpMsg.SWITCHOVER_ACK) {
          this.acked = true
        } else if (m.type === RpMsg.SWITCHOVER_COST && m.data.length === 8) {
          // Capped: a destination must not be able to stall the switchover
          // with a figure no limit can hold (the limit's own bound).
          this.destCheckMs = Math.min(Number(m.data.readBigUInt64BE(0)) / 1000, 2_000_000)
        } else if (m.type === RpMsg.READY) {
          this.readyAt ||= now()
        } else if (m.type === RpMsg.RESUME_OK) {
          const timing = ReturnPathReader.resumeTiming(m)
          this.resumed = { ok: true, at: now(), verificationUs: timing.verificationUs, startedMonoNs: timing.startedMonoNs }
        } else if (m.type === RpMsg.LOAD_PROGRESS && m.data.length === 8) {
          this.destLoaded = Number(m.data.readBigUInt64BE(0))
        } else if (m.type === RpMsg.FAIL_REASON) {
          this.remoteReason = m.data.toString('utf8')
        } else if (m.type === RpMsg.SHUT) {
          const errno = m.data.length >= 4 ? m.data.readUInt32BE(0) : 0
          this.resumed = { ok: errno === 0, at: now(), errno }
          if (errno !== 0) f.setError(new MigrationError(`destination failed: ${this.remoteReason ?? `errno ${errno}`}`, 'EREMOTEIO'), 'return path')
        }
        this.wakeAll()
      }
    } catch {
      // The stream's error is what the main loop reports.
    }
    this.rpClosed = true
    this.wakeAll()
  }

  private waitFor(ready: () => boolean, list: (() => void)[], timeoutMs: number, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const finish = (err?: Error) => {
        clearTimeout(timer)
        if (err) reject(err)
        else resolve()
      }
      const check = () => {
        if (this.cancelRequested) return finish(new MigrationError('migration cancelled', 'ECANCELED'))
        if (ready()) return finish()
        const fe = this.f?.error
        if (fe) return finish(new MigrationError(`${what}: ${fe.message}`, fe.code ?? 'EIO', { cause: fe }))
        if (this.rpClosed) return finish(new MigrationError(`${what}: the destination closed the connection`, 'ECONNRESET'))
        list.push(check)
      }
      const timer = setTimeout(() => finish(new MigrationError(`${what}: no answer in ${timeoutMs} ms`, 'ETIMEDOUT')), timeoutMs)
      check()
    })
  }

  /**
   * The destination may run the guest and this side cannot learn whether it
   * does: keep the guest paused ('postmigrate'), release the link, say so
   * ('handover-unknown'), and leave the decision to resolve().
   */
  private async handoverUnknown(e: unknown, save: SaveVM | null, wasRunning: boolean): Promise<MigrationStats> {
    const why = (e as Error)?.message ?? String(e)
    this.error = `handover-unknown: ${why}`
    this.f?.shutdown('handover-unknown')
    await this.f?.close().catch(() => undefined)
    if (save) await save.cleanup()
    if (this.throttle) this.machine.setThrottle?.(0)
    this.throttle = 0
    const { vm } = this.machine
    if (vm.state === 'finish-migrate') vm.runstateSet('postmigrate')
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject, wasRunning, code: (e as { code?: string })?.code ?? 'EIO' }
      this.set('handover-unknown')
    })
  }

  /**
   * Settle 'handover-unknown' (docs/flows.md): 'resume' runs the guest here
   * again and start() rejects (the migration failed); 'discard' leaves it to
   * the destination and start() resolves 'completed'. Run 'resume' on exactly
   * one side. A failed resume leaves the state as it was.
   */
  async resolve(action: ResolveAction): Promise<void> {
    if (action !== 'resume' && action !== 'discard') throw new MigrationError(`resolve: action must be 'resume' or 'discard', got ${JSON.stringify(action)}`, 'EINVAL')
    const p = this.pending
    if (this.st !== 'handover-unknown' || !p) throw new MigrationError(`resolve: the migration is ${this.st}, not handover-unknown`, 'EINVAL')
    if (action === 'resume') {
      if (p.wasRunning) await this.machine.vm.vmStart()
      this.pending = null
      this.error = `${this.error}; resolved: the guest runs here again`
      this.set('failed')
      p.reject(new MigrationError(this.error, p.code, { stats: this.stats() }))
    } else {
      this.pending = null
      this.set('completed')
      p.resolve(this.stats())
    }
  }

  /** Why the migration is in 'handover-unknown', or its last error. */
  get reason(): string | undefined {
    return this.error
  }

  /**
   * Run the migration to `uri` (or an open channel). Resolves the final stats
   * with status 'completed'; rejects with a MigrationError (stats attached)
   * once the source VM and its devices run again.
   */
  /** Connects to `target`, with TLS when tls-creds is set (the handshake ends before the stream starts). */
  private async open(target: string): Promise<Channel> {
    const p = this.parameters
    if (!p.tlsCreds) return connect(target, { signal: this.connecting.signal })
    const creds = await loadTlsCreds(p.tlsCreds, 'client')
    const tls = { creds, handshakeTimeoutMs: p.handshakeTimeoutMs, ...(p.tlsHostname ? { hostname: p.tlsHostname } : {}) }
    return connect(target, { signal: this.connecting.signal, tls })
  }

  async start(target: string | Channel): Promise<MigrationStats> {
    if (this.st !== 'none') throw new MigrationError(`migration already ${this.st}`, 'EBUSY')
    const { vm, registry } = this.machine
    this.t0 = now()
    this.set('setup')
    const p = this.parameters
    const blockers = this.machine.vfio?.blockers() ?? []
    if (blockers.length) {
      this.error = blockers.join('; ')
      this.set('failed')
      throw new MigrationError(`migration blocked: ${this.error}`, 'EOPNOTSUPP', { stats: this.stats() })
    }
    if (vm.state !== 'running' && vm.state !== 'paused') {
      this.error = `VM is ${vm.state}`
      this.set('failed')
      throw new MigrationError(`cannot migrate a VM in run state '${vm.state}'`, 'EINVAL', { stats: this.stats() })
    }
    if (this.local) {
      const why = p.tlsCreds
        ? 'a local migration passes file descriptors, which a TLS session cannot carry (the peer is a process on this host): leave out tls-creds'
        : localRefusal(target, registry)
      if (why) {
        this.error = why
        this.set('failed')
        throw new MigrationError(`local migration refused: ${why}`, 'EINVAL', { stats: this.stats() })
      }
    }
    const wasRunning = vm.state === 'running'
    let save: SaveVM | null = null
    let rpDone: Promise<void> | null = null
    let headerSent = false
    let stoppedAt = 0
    const auto = new AutoConverge(p)
    try {
      const channel = typeof target === 'string' ? await this.open(target) : target
      if (p.tlsCreds && !(channel as { tls?: boolean }).tls) {
        await channel.close().catch(() => undefined)
        throw new MigrationError('tls-creds is set but the channel given has no TLS: pass a URI, or connect(uri, { tls })', 'EINVAL')
      }
      // The kernel bounds a dead TCP link by the same figure as the watchdog (TCP_USER_TIMEOUT, keepalive).
      channel.setLinkTimeout?.(p.linkTimeoutMs)
      const f = (this.f = new MigStream(channel, { maxBandwidth: p.maxBandwidth, local: this.local }))
      f.linkTimeoutMs = p.linkTimeoutMs
      const rp = hasReturnPath(channel)
      // A save (no return path) is not a handover: nobody could say READY.
      const handover = rp && this.capabilities.handover
      save = new SaveVM(f, registry, { machine: this.machine.machine, capabilities: this.streamCapabilities(channel), fileHeaderSent: this.fileHeaderSent })
      // With a SaveVM, a cancel can still be told to the destination (endCancelled).
      this.checkCancel()
      // Read from the start: a destination that refuses the configuration
      // says why before our next write fails with EPIPE.
      if (rp) rpDone = this.returnPath(f)
      await save.prepare()
      await save.header()
      headerSent = true
      if (rp) {
        await save.command(MigCmd.OPEN_RETURN_PATH)
        // The destination answers at least every quarter of the link timeout.
        this.watchdog = new LinkWatchdog(f, p.linkTimeoutMs, () => f.bytesRead, 'destination', () => this.wakeAll())
        this.watchdog.arm()
      } else if (this.capabilities.switchoverAck) {
        throw new MigrationError(`switchover-ack needs a return path; ${channel.kind} channels have none`, 'EINVAL')
      }
      await save.setup()
      this.checkCancel()
      this.setupTime = now() - this.t0
      this.set('active')

      // ---- pre-copy ----
      // The link's rate is measured over wall-clock time, throttle waits
      // included: a round that only fills socket buffers says nothing about
      // how fast bytes leave. Where the destination reports its progress
      // (LOAD_PROGRESS on the return path), the rate is what it actually
      // loaded, and what it has not loaded yet counts as pending: without
      // that, a destination slower than the link (a device that takes its
      // time to absorb state) would still be chewing on pre-copy data during
      // the downtime, and the limit would not hold.
      // Known before the first switchover decision in all but the smallest
      // migrations; a machine whose estimate fails budgets nothing for it.
      this.saveCostMs = 0
      this.machine.expectedSaveMs?.().then((ms) => { if (Number.isFinite(ms) && ms > 0) this.saveCostMs = ms }, () => undefined)
      const meter = new BandwidthMeter()
      let lastSyncPending = -1
      let sentSinceSync = 0
      let lastSyncAt = now()
      let sampleAt = now()
      let sampleBytes = f.transferred
      let idleRounds = 0
      const progress = () => (this.destLoaded >= 0 ? this.destLoaded : f.transferred)
      let pingAt = now()
      let pings = 0
      // PING bytes sent and not yet seen in progress(). They move the stream
      // but are no pre-copy data: counted as link rate, a few pings over an
      // idle link gave a state that only moves with the VM stopped a rate of
      // bytes per second, so it waited for a switchover that could never fit
      // instead of failing (on a loaded machine, whose rounds are slow enough
      // for a ping to come first).
      let pingBytes = 0
      for (;;) {
        this.checkCancel()
        // The destination's link watchdog must hear from us while we have
        // nothing to send (or are held back); QEMU answers PING with PONG too,
        // which feeds ours.
        if (rp && p.linkTimeoutMs > 0 && now() - pingAt >= p.linkTimeoutMs / 4) {
          const b = Buffer.alloc(4)
          b.writeUInt32BE(++pings >>> 0)
          const at = f.transferred
          await save.command(MigCmd.PING, b)
          pingBytes += f.transferred - at
          pingAt = now()
        }
        const before = f.transferred
        const done = await save.iterate()
        const sent = f.transferred - before
        sentSinceSync += sent
        await f.flush()
        const t = now()
        // An idle round says how much there was to send, not how fast the
        // link is: leave it out of the measurement.
        const idle = sent === 0 && !done
        // A window in which no LOAD_PROGRESS arrived (it comes every 20 ms
        // of the destination's clock, not ours) is not a window without
        // bytes: its time goes to the next window, the one that sees them.
        // Dropped, the next window's rate was two reports' bytes over one
        // window's time: a link faster than it is.
        const moved = progress() - sampleBytes
        if (idle || (t - sampleAt >= 20 && moved > 0)) {
          // The destination reports its progress late, so a ping's bytes
          // show up in some later window: take them out of the one they reach.
          const pingSeen = Math.min(pingBytes, Math.max(0, moved))
          pingBytes -= pingSeen
          if (!idle) meter.sample(moved - pingSeen, t - sampleAt)
          sampleAt = t
          sampleBytes = progress()
        }
        this.mbps = (meter.bytesPerMs * 1000 * 8) / 1e6
        // The destination's checks before it starts the guest are downtime
        // too, and so is this side's own work (the microVM's proof), so they
        // take their share of the limit before data does. At
        // most half of it: checks that alone outlast the limit (a digest of
        // gigabytes of RAM) would otherwise hold pre-copy back for ever; the
        // expected downtime in the stats then shows the limit is not held.
        // So do the handover's own messages, which a lossy link can hold
        // up by a retransmission timeout each (handoverReserveMs).
        const linkMs = handoverReserveMs(f.channel.linkStats?.())
        const reserveMs = Math.min(this.destCheckMs + this.saveCostMs + linkMs, p.downtimeLimitMs / 2)
        const bw = meter.bytesPerMs
        const backlog = this.destLoaded >= 0 ? Math.max(0, f.transferred - this.destLoaded) : 0
        let pending = save.pendingEstimate().precopyOnly + backlog
        const input = { pending, bytesPerMs: bw, downtimeLimitMs: p.downtimeLimitMs, availSwitchoverBandwidth: p.availSwitchoverBandwidth, reserveMs }
        if (done || pending <= thresholdBytes(input)) {
          const exact = (await save.pendingExact()).precopyOnly
          pending = exact + backlog
          this.iterations++
          const ts = now()
          if (lastSyncPending >= 0) {
            const dirtied = Math.max(0, exact - Math.max(0, lastSyncPending - sentSinceSync))
            this.dirtyRate = (dirtied / 4096) / Math.max(0.001, (ts - lastSyncAt) / 1000)
            if (this.capabilities.autoConverge) {
              const th = auto.period(dirtied, sentSinceSync)
              if (th !== this.throttle) {
                this.throttle = th
                this.machine.setThrottle?.(th)
              }
            }
          }
          lastSyncPending = exact
          sentSinceSync = 0
          lastSyncAt = ts
          input.pending = pending
          this.remaining = pending
          this.expected = expectedDowntimeMs({ ...input, reserveMs: this.destCheckMs + this.saveCostMs + linkMs })
          const rateKnown = bw > 0 || p.availSwitchoverBandwidth > 0
          const fits = rateKnown ? pending <= thresholdBytes(input) : pending === 0
          if (fits && (!this.capabilities.switchoverAck || this.acked)) break
          // Nothing moves in pre-copy and the link was never measured: the
          // state left can only move with the VM stopped, and how long that
          // takes is unknown. Stopping anyway could break the limit.
          idleRounds = sent === 0 && !rateKnown ? idleRounds + 1 : 0
          if (idleRounds >= 200) {
            throw new MigrationError(
              `${pending} bytes can only move with the VM stopped and the link rate was never measured (nothing to send in pre-copy); ` +
              'set avail-switchover-bandwidth to the bandwidth the switchover may assume', 'EINVAL')
          }
        } else {
          this.remaining = pending
          this.expected = expectedDowntimeMs({ ...input, reserveMs: this.destCheckMs + this.saveCostMs + linkMs })
        }
        this.emit('progress', this.stats())
        if (p.xMaxIterations > 0 && this.iterations >= p.xMaxIterations) {
          const why = this.capabilities.switchoverAck && !this.acked && this.expected <= p.downtimeLimitMs
            ? 'the destination has not acked the switchover (switchover-ack)'
            : `expected downtime ${Math.round(this.expected)} ms > limit ${p.downtimeLimitMs} ms`
          throw new MigrationError(`did not converge in ${this.iterations} iterations: ${why}`, 'ETIMEDOUT')
        }
        if (f.rateLimitExceeded()) await f.throttle()
        // Nothing to send now: let the guest run. Also when everything is
        // sent and only the destination's backlog keeps the switchover
        // waiting: another round would put only section framing, and rounds
        // whose writes all complete at once never let the event loop read
        // the return path, so the backlog would look stuck forever.
        else if (sent === 0 || done) await new Promise(r => setTimeout(r, 5))
      }

      // ---- switchover ----
      // Not for a cancel that came during the last round: the guest would stop for nothing.
      this.checkCancel()
      const pause = this.capabilities.pauseBeforeSwitchover
      // QEMU's order with the pause: active, VM stopped, pre-switchover, device.
      if (!pause) this.set('device')
      stoppedAt = now()
      this.stopMonoNs = process.hrtime.bigint()
      this.marks.stopped = stoppedAt
      await vm.vmStopForceState('finish-migrate')
      this.marks.stopDone = now()
      if (pause) await this.pausedBeforeSwitchover(save, rp)
      this.checkCancel()
      if (sendsSwitchoverStart(p.sendSwitchoverStart, this.machine.machine, registry)) await save.switchoverStart()
      await save.complete()
      await save.nonIterable()
      // Before the write: a cancel while EOF is on its way must leave the
      // stream up, so that the destination, which may then hold the whole
      // stream, hears ABORT instead of a lost link.
      this.eofSent = true
      await save.finish()
      this.marks.eof = now()
      this.remaining = 0
      if (handover) {
        // The destination cannot start the guest without GO: until GO is
        // handed to the socket every failure and timeout resumes it here.
        await this.waitFor(() => this.readyAt > 0, this.resumeWaiters, p.handoverTimeoutMs, 'waiting for the destination to be READY')
        this.checkCancel()
        if (f.error) throw new MigrationError(`before GO: ${f.error.message}`, f.error.code, { cause: f.error })
        this.committed = true
        // Whether it arrived is learnt from the answer, or never: an error
        // here does not mean the destination did not get it.
        await writeHandoverFrame(f, HandoverFrame.GO).catch(() => undefined)
        this.marks.go = now()
        await this.waitFor(() => this.resumed !== null, this.resumeWaiters, p.handoverTimeoutMs, 'waiting for the destination to start the guest (STARTED)')
      } else if (rp) {
        this.committed = true
        // QEMU's destination says nothing until it ends: only the timeout bounds this wait.
        this.watchdog?.stop()
        await this.waitFor(() => this.resumed !== null, this.resumeWaiters, p.handoverTimeoutMs, 'waiting for the destination to resume')
      } else {
        this.committed = true
      }
      this.watchdog?.stop()
      if (rp) {
        if (!this.resumed!.ok) throw new MigrationError(`destination failed to start the VM: ${this.remoteReason ?? `errno ${this.resumed!.errno}`}`, 'EREMOTEIO')
        this.downtime = this.resumed!.at - stoppedAt
        this.downtimeClock = 'return'
        const shared = this.sharedClockDowntime(f.channel, this.downtime)
        if (shared !== undefined) {
          this.downtime = shared
          this.downtimeClock = 'shared'
        }
        this.downtimeMeasured = true
      } else {
        this.downtime = now() - stoppedAt
        this.downtimeMeasured = false
      }
      await f.close()
      await save.cleanup()
      if (this.throttle) this.machine.setThrottle?.(0)
      vm.runstateSet('postmigrate')
      this.set('completed')
      const s = this.stats()
      this.emit('progress', s)
      return s
    } catch (e) {
      this.watchdog?.stop()
      // The destination may run the guest, and did not say it failed to: this
      // side must not run it too, nor can it know that the other does.
      if (this.committed && this.resumed?.ok !== false) return await this.handoverUnknown(e, save, wasRunning)
      const cancelled = this.cancelRequested
      // Withdraw the handover in words: the destination then fails cleanly
      // instead of waiting in handover-unknown for an operator.
      if (this.eofSent && this.capabilities.handover && this.f && hasReturnPath(this.f.channel) && !this.f.error) {
        await Promise.race([writeHandoverFrame(this.f, HandoverFrame.ABORT).catch(() => undefined), new Promise(r => setTimeout(r, 1000))])
      }
      // A write that failed because the destination gave up says EPIPE; the
      // destination's own reason, if it reaches us shortly, says why.
      if (!cancelled && rpDone && this.remoteReason === undefined) {
        await Promise.race([rpDone, new Promise(r => setTimeout(r, 200))])
      }
      if (!cancelled && this.remoteReason !== undefined && !(e instanceof MigrationError && e.code === 'EREMOTEIO')) {
        e = new MigrationError(`destination failed: ${this.remoteReason}`, 'EREMOTEIO', { cause: e })
      } else if (!cancelled && this.local && this.remoteReason === undefined && /EPIPE|ECONNRESET/.test(String((e as Error).message))) {
        // A destination whose stream broke on descriptors it did not take
        // cannot say so over that stream: say what the likely cause is.
        e = new MigrationError(`${(e as Error).message} (the destination closed the link without a reason: one not taking a local migration, started without --local, refuses the passed RAM descriptors and closes)`, 'EPIPE', { cause: e })
      }
      this.error = (e as Error).message
      if (cancelled && !this.eofSent && save && this.f && !this.f.error) await this.endCancelled(save, rpDone, headerSent)
      clearInterval(this.graceTimer)
      this.f?.shutdown(cancelled ? 'migration cancelled' : 'migration failed')
      await this.f?.close().catch(() => undefined)
      if (save) await save.cleanup()
      if (this.throttle) this.machine.setThrottle?.(0)
      this.throttle = 0
      let resumeError: unknown
      if (wasRunning && vm.state !== 'running') {
        try {
          await vm.vmStart()
        } catch (re) {
          resumeError = re
        }
      }
      this.set(cancelled ? 'cancelled' : 'failed')
      // Whatever a cancel interrupted fails with its own error; the caller asked for a cancel.
      const err = cancelled && !(e instanceof MigrationError && e.code === 'ECANCELED')
        ? new MigrationError('migration cancelled', 'ECANCELED', { cause: e })
        : e instanceof MigrationError ? e : new MigrationError(this.error, (e as { code?: string }).code ?? 'EIO', { cause: e })
      err.stats = this.stats()
      if (resumeError) err.message += `; resuming the source failed too: ${(resumeError as Error).message}`
      throw err
    } finally {
      clearInterval(this.graceTimer)
      if (rpDone) await rpDone
    }
  }
}

/** Run one outgoing migration; see OutgoingMigration.start. */
export function migrate(machine: MigratableVm, uri: string | Channel, opts: OutgoingOptions = {}): Promise<MigrationStats> {
  return new OutgoingMigration(machine, opts).start(uri)
}
