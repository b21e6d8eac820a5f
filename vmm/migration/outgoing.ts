// The source side of a migration (QEMU's migration/migration.c): the status
// machine, the pre-copy loop, the switchover, and the rule that a failed or
// cancelled migration loses nothing: the VM and its devices run again.
//
// Beyond QEMU: the source keeps its stopped VM until the destination reports
// that its VM runs (RESUME_OK on the return path). If the destination fails to
// start — a device image its driver rejects, say — the source resumes instead
// of leaving the guest dead in 'postmigrate'.
import { connect } from '../channel/connect.js'
import type { Channel } from '../channel/types.js'
import { ReturnPathReader, RpMsg } from '../channel/return-path.js'
import { MigStream } from '../stream/stream.js'
import { SaveVM } from '../savevm/save.js'
import { MigCmd } from '../savevm/constants.js'
import { TypedEmitter } from '../runstate/emitter.js'
import { AutoConverge, BandwidthMeter, expectedDowntimeMs, thresholdBytes } from './convergence.js'
import { MigrationError } from './errors.js'
import {
  DEFAULT_CAPABILITIES, DEFAULT_PARAMETERS, type MigratableVm, type MigrationCapabilities, type MigrationEvents,
  type MigrationParameters, type MigrationStats, type MigrationStatus,
} from './types.js'
import { checkCapabilities, checkParameters, validatedCapabilities } from './validate.js'

export interface OutgoingOptions {
  parameters?: Partial<MigrationParameters>
  capabilities?: Partial<MigrationCapabilities>
  signal?: AbortSignal
}

const now = () => performance.now()

/** Channels that can carry the destination's messages back. */
const duplex = (c: Channel) => c.kind === 'tcp' || c.kind === 'unix' || c.kind === 'memory'

export class OutgoingMigration extends TypedEmitter<MigrationEvents> {
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
  private resumed: { ok: boolean; at: number; errno?: number } | null = null
  private resumeWaiters: (() => void)[] = []
  private rpClosed = false
  /** The destination's own words for its failure (FAIL_REASON), if it sent them. */
  private remoteReason: string | undefined
  /** Bytes the destination reported loaded (LOAD_PROGRESS), -1 until it reports. */
  private destLoaded = -1
  /** Set once EOF is on the wire: from then on the destination may run the guest, so a cancel could split it in two. */
  private committed = false

  constructor(readonly machine: MigratableVm, opts: OutgoingOptions = {}) {
    super()
    this.parameters = checkParameters({ ...DEFAULT_PARAMETERS, ...opts.parameters })
    this.capabilities = checkCapabilities({ ...DEFAULT_CAPABILITIES, ...opts.capabilities })
    opts.signal?.addEventListener('abort', () => this.cancel(), { once: true })
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
    if (this.st === 'completed' || this.st === 'failed' || this.st === 'cancelled') return
    // After EOF the destination may already run the guest: resuming here too
    // would leave two copies running. Only the destination's answer (or its
    // silence until x-resume-timeout) decides from then on.
    if (this.committed) return
    this.cancelRequested = true
    if (this.st !== 'none') this.set('cancelling')
    this.f?.shutdown('migration cancelled')
    this.wakeAll()
  }

  stats(): MigrationStats {
    const f = this.f
    return {
      status: this.st,
      totalTime: this.t0 ? Math.round(now() - this.t0) : 0,
      setupTime: Math.round(this.setupTime),
      downtime: this.downtime === undefined ? undefined : Math.round(this.downtime * 1000) / 1000,
      downtimeMeasured: this.downtime === undefined ? undefined : this.downtimeMeasured,
      expectedDowntime: Number.isFinite(this.expected) ? Math.round(this.expected) : -1,
      transferred: f?.transferred ?? 0,
      remaining: this.remaining,
      mbps: Math.round(this.mbps * 100) / 100,
      dirtyPagesRate: Math.round(this.dirtyRate),
      iterations: this.iterations,
      cpuThrottlePercentage: this.throttle,
      vfio: this.machine.vfio ? this.machine.vfio.stats() : undefined,
      dirtyTracker: this.machine.dirtyTrackerKind?.(),
      error: this.error,
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
        } else if (m.type === RpMsg.RESUME_OK) {
          this.resumed = { ok: true, at: now() }
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
   * Run the migration to `uri` (or an open channel). Resolves the final stats
   * with status 'completed'; rejects with a MigrationError (stats attached)
   * once the source VM and its devices run again.
   */
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
    const wasRunning = vm.state === 'running'
    let save: SaveVM | null = null
    let rpDone: Promise<void> | null = null
    let stoppedAt = 0
    const auto = new AutoConverge(p)
    try {
      const channel = typeof target === 'string' ? await connect(target) : target
      const f = (this.f = new MigStream(channel, { maxBandwidth: p.maxBandwidth }))
      this.checkCancel()
      save = new SaveVM(f, registry, { machine: this.machine.machine, capabilities: validatedCapabilities(this.capabilities) })
      await save.prepare()
      await save.header()
      const rp = duplex(channel)
      if (rp) {
        await save.command(MigCmd.OPEN_RETURN_PATH)
        rpDone = this.returnPath(f)
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
      const meter = new BandwidthMeter()
      let lastSyncPending = -1
      let sentSinceSync = 0
      let lastSyncAt = now()
      let sampleAt = now()
      let sampleBytes = f.transferred
      let idleRounds = 0
      const progress = () => (this.destLoaded >= 0 ? this.destLoaded : f.transferred)
      for (;;) {
        this.checkCancel()
        const before = f.transferred
        const done = await save.iterate()
        const sent = f.transferred - before
        sentSinceSync += sent
        await f.flush()
        const t = now()
        if (sent === 0 && !done) {
          // An idle round says how much there was to send, not how fast the
          // link is: leave it out of the measurement.
          sampleAt = t
          sampleBytes = progress()
        } else if (t - sampleAt >= 20) {
          meter.sample(progress() - sampleBytes, t - sampleAt)
          sampleAt = t
          sampleBytes = progress()
        }
        const bw = meter.bytesPerMs
        this.mbps = (bw * 1000 * 8) / 1e6
        const backlog = this.destLoaded >= 0 ? Math.max(0, f.transferred - this.destLoaded) : 0
        let pending = save.pendingEstimate().precopyOnly + backlog
        const input = { pending, bytesPerMs: bw, downtimeLimitMs: p.downtimeLimitMs, availSwitchoverBandwidth: p.availSwitchoverBandwidth }
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
          this.expected = expectedDowntimeMs(input)
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
          this.expected = expectedDowntimeMs(input)
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
      this.set('device')
      stoppedAt = now()
      await vm.vmStopForceState('finish-migrate')
      this.checkCancel()
      await save.switchoverStart()
      await save.complete()
      await save.nonIterable()
      await save.finish()
      this.committed = true
      this.remaining = 0
      if (rp) {
        await this.waitFor(() => this.resumed !== null, this.resumeWaiters, p.xResumeTimeoutMs, 'waiting for the destination to resume')
        if (!this.resumed!.ok) throw new MigrationError(`destination failed to start the VM: ${this.remoteReason ?? `errno ${this.resumed!.errno}`}`, 'EREMOTEIO')
        this.downtime = this.resumed!.at - stoppedAt
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
      const cancelled = this.cancelRequested
      // A write that failed because the destination gave up says EPIPE; the
      // destination's own reason, if it reaches us shortly, says why.
      if (!cancelled && rpDone && this.remoteReason === undefined) {
        await Promise.race([rpDone, new Promise(r => setTimeout(r, 200))])
      }
      if (!cancelled && this.remoteReason !== undefined && !(e instanceof MigrationError && e.code === 'EREMOTEIO')) {
        e = new MigrationError(`destination failed: ${this.remoteReason}`, 'EREMOTEIO', { cause: e })
      }
      this.error = (e as Error).message
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
      if (rpDone) await rpDone
    }
  }
}

/** Run one outgoing migration; see OutgoingMigration.start. */
export function migrate(machine: MigratableVm, uri: string | Channel, opts: OutgoingOptions = {}): Promise<MigrationStats> {
  return new OutgoingMigration(machine, opts).start(uri)
}
