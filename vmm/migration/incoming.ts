// The destination side: accept one migration (dropping peers that send no
// stream), load it, check it, and start the guest only when that is safe:
// with the handover (docs/flows.md), on the source's GO after this side
// reported READY; without it (a QEMU source, a file), once the stream is
// loaded, as QEMU does. The source hears RESUME_OK once the guest runs, SHUT
// with an errno (after FAIL_REASON) if anything failed and the guest did not.
import { listen, type Listener } from '../channel/connect.js'
import { loadTlsCreds } from '../channel/tls.js'
import { hasReturnPath, type Channel } from '../channel/types.js'
import { ReturnPathWriter } from '../channel/return-path.js'
import { HandoverFrame, readHandoverFrame } from '../channel/handover.js'
import { MigStream } from '../stream/stream.js'
import { MAX_LOCAL_BLOCKS } from '../ram/load.js'
import { StreamError } from '../stream/errors.js'
import { loadvm } from '../savevm/load.js'
import { MigCmd, QEMU_VM_FILE_MAGIC } from '../savevm/constants.js'
import { BadCommandError } from '../savevm/errors.js'
import { typedEmitter } from '../core/events.js'
import { describeDeviceOutcomes } from '../vfio/vfio-set.js'
import { MigrationError } from './errors.js'
import { LinkWatchdog } from './watchdog.js'
import {
  DEFAULT_CAPABILITIES, DEFAULT_PARAMETERS, type IncomingStatus, type MigratableVm, type MigrationCapabilities,
  type MigrationParameters, type ResolveAction,
} from './types.js'
import { checkCapabilities, checkParameters, validatedCapabilities, HANDOVER_CAPABILITY } from './validate.js'

export interface IncomingOptions {
  capabilities?: Partial<MigrationCapabilities>
  /** Only the destination's are used: link-, handover-, handshake- and incoming-timeout. */
  parameters?: Partial<MigrationParameters>
  /** Called with the bound address once listening (tcp port 0 becomes the real port). */
  onListening?(address: string): void
  signal?: AbortSignal
  /**
   * Take a local migration (see OutgoingOptions.local): the source's RAM
   * arrives as file descriptors over a unix: channel and is mapped here.
   * Without it, descriptors from the peer fail the migration (and are closed).
   */
  local?: boolean
}

/** Descriptors a local migration's channel accepts in all: one per RAM block, bounded. */
const LOCAL_MAX_FDS = MAX_LOCAL_BLOCKS

export interface IncomingResult {
  status: 'completed'
  /** From the first byte to the end of the stream, ms. */
  loadTimeMs: number
  /** From the end of the stream to the VM running, ms (with the handover: READY, the source's GO and the start). */
  resumeTimeMs: number
  /** The part of resumeTimeMs the machine's own verification took (MigratableVm.verificationMs), ms. */
  verificationMs: number
  sections: number
  /** Whether the guest started on the source's GO (the handover) or by itself (a QEMU source, a file). */
  handover: boolean
  /** Set when the guest started by `resolve('resume')` after 'handover-unknown'. */
  resolved?: 'resume'
}

export type IncomingEvents = {
  status: (s: IncomingStatus) => void
  /** A peer connected and sent no stream header within handshake-timeout (or garbage): closed, still listening. */
  'peer-dropped': (e: { peer: string; reason: string }) => void
}

const errnoOf = (e: unknown) => Math.abs(Number((e as { errno?: number }).errno)) || 5
const now = () => performance.now()

/**
 * Read and drop what the source still sends, until it closes or `ms` pass:
 * closing a socket with unread data resets it, and the source's next write
 * would then fail (EPIPE) before it read our FAIL_REASON and SHUT.
 */
async function linger(f: MigStream, ms: number): Promise<void> {
  const scratch = Buffer.allocUnsafe(64 << 10)
  let timer: NodeJS.Timeout | undefined
  const drained = (async () => {
    for (;;) {
      const n = await f.channel.read(scratch, 0, scratch.length).catch(() => 0)
      if (n === 0) return
    }
  })()
  await Promise.race([drained, new Promise<void>((r) => { timer = setTimeout(r, ms) })])
  clearTimeout(timer)
}

/** Whether `p` settled (either way) within `ms`. */
async function bounded(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const settled = await Promise.race([
    p.then(() => true, () => true),
    new Promise<boolean>((r) => { timer = setTimeout(() => r(false), ms) }),
  ])
  clearTimeout(timer)
  return settled
}

/**
 * A listener's accept that a finished incoming migration left pending, or
 * that accepted a peer after it finished: the next migration on that
 * listener takes it instead of accepting again.
 */
const unclaimed = new WeakMap<Listener, Promise<Channel>>()

type Accepted = { ch: Channel } | { err: unknown }
/**
 * An accept as a value. At module level on purpose: a closure made inside
 * an incoming migration would keep that migration, and with it a destroyed
 * guest's RAM, alive for as long as the listener's next accept is pending.
 */
function accepted(p: Promise<Channel>): Promise<Accepted> {
  return p.then((ch) => ({ ch }), (err: unknown) => ({ err }))
}

/** The commands this destination acts on; any other one is refused, as the loader does without onCommand. */
const KNOWN_COMMANDS = new Set<number>([MigCmd.OPEN_RETURN_PATH, MigCmd.PING, MigCmd.SWITCHOVER_START])

export class IncomingMigration extends typedEmitter<IncomingEvents>() {
  readonly parameters: MigrationParameters
  readonly capabilities: MigrationCapabilities
  private st: IncomingStatus = 'none'
  private error: string | undefined
  /** Set in 'handover-unknown': how the start() promise ends once resolved. */
  private pending: { done: (r: IncomingResult) => void; fail: (e: Error) => void; result: IncomingResult; rp: ReturnPathWriter | null } | null = null
  private unknownWhy: string | undefined

  constructor(readonly machine: MigratableVm, private readonly opts: IncomingOptions = {}) {
    super()
    this.parameters = checkParameters({ ...DEFAULT_PARAMETERS, ...opts.parameters })
    this.capabilities = checkCapabilities({ ...DEFAULT_CAPABILITIES, ...opts.capabilities })
  }

  get status(): IncomingStatus {
    return this.st
  }

  /** Why this side is in 'handover-unknown', or its last error. */
  get reason(): string | undefined {
    return this.st === 'handover-unknown' ? this.unknownWhy : this.error
  }

  private set(s: IncomingStatus): void {
    if (this.st === s) return
    this.st = s
    this.emit('status', s)
  }

  /**
   * Settle 'handover-unknown' (docs/flows.md): 'resume' starts the loaded guest
   * here and start() resolves; 'discard' gives this copy up and start() rejects.
   * Run 'resume' on exactly one side. A failed start leaves the state as it was.
   */
  async resolve(action: ResolveAction): Promise<void> {
    if (action !== 'resume' && action !== 'discard') throw new MigrationError(`resolve: action must be 'resume' or 'discard', got ${JSON.stringify(action)}`, 'EINVAL')
    const p = this.pending
    if (this.st !== 'handover-unknown' || !p) throw new MigrationError(`resolve: the incoming migration is ${this.st}, not handover-unknown`, 'EINVAL')
    if (action === 'resume') {
      await this.machine.vm.vmStart()
      this.pending = null
      this.set('completed')
      p.done({ ...p.result, resolved: 'resume' })
    } else {
      this.pending = null
      await this.machine.vfio?.abortIncoming().catch(() => undefined)
      await this.letGoOfSource(null)
      this.error = `handover-unknown resolved by discarding this copy (${this.unknownWhy})`
      this.set('failed')
      p.fail(new MigrationError(this.error, 'ECANCELED'))
    }
  }

  /** Accept one incoming migration on `source` (a URI, a Listener, or an accepted channel). */
  async start(source: string | Listener | Channel): Promise<IncomingResult> {
    if (this.st !== 'none') throw new MigrationError(`incoming migration already ${this.st}`, 'EBUSY')
    const { vm } = this.machine
    if (vm.state !== 'inmigrate' && vm.state !== 'prelaunch') {
      throw new MigrationError(`cannot receive a migration into a VM in run state '${vm.state}'`, 'EINVAL')
    }
    this.set('setup')
    let f: MigStream
    try {
      if (this.opts.local) {
        const kind = typeof source === 'string' ? source.slice(0, Math.max(0, source.indexOf(':'))) : 'accept' in source ? source.address.split(':')[0] : source.kind
        if (kind !== 'unix') throw new MigrationError(`local migration refused: only a unix: channel passes file descriptors (from a process on this host); got ${typeof source === 'string' ? source : kind}`, 'EINVAL')
        if (this.parameters.tlsCreds) throw new MigrationError('local migration refused: file descriptors cannot pass through a TLS session (the peer is a process on this host): leave out tls-creds', 'EINVAL')
      }
      f = await this.accept(source)
    } catch (e) {
      this.error = (e as Error).message
      this.set('failed')
      throw e instanceof MigrationError ? e : new MigrationError(`incoming migration failed: ${this.error}`, (e as { code?: string }).code ?? 'EIO', { cause: e })
    }
    return this.load(f)
  }

  private async accept(source: string | Listener | Channel): Promise<MigStream> {
    const p = this.parameters
    if (p.tlsCreds && typeof source !== 'string' && !(source as { tls?: boolean }).tls) {
      throw new MigrationError(`tls-creds is set but the ${'accept' in source ? 'listener' : 'channel'} given has no TLS: pass a URI, or listen(uri, { tls })`, 'EINVAL')
    }
    if (typeof source !== 'string' && !('accept' in source)) return new MigStream(this.fdsAccepted(source), { local: this.opts.local })
    const tls = p.tlsCreds
      ? { tls: { creds: await loadTlsCreds(p.tlsCreds, 'server', p.tlsAuthz), handshakeTimeoutMs: p.handshakeTimeoutMs } }
      : {}
    const listener = typeof source === 'string' ? await listen(source, tls) : source
    try {
      this.opts.onListening?.(listener.address)
      return await this.firstStream(listener)
    } finally {
      if (typeof source === 'string') void listener.close()
    }
  }

  /**
   * Accept until a peer sends a stream header. A peer that sends nothing (or
   * not a stream) within handshake-timeout is dropped and the listener goes on,
   * so an idle or stray client cannot keep the real source out; the whole
   * wait is bounded by incoming-timeout.
   */
  private firstStream(listener: Listener): Promise<MigStream> {
    const p = this.parameters
    // A listener of one channel (file:, exec:, fd:) has no other peer to wait for.
    const many = listener.acceptsMany !== false
    return new Promise((resolve, reject) => {
      let done = false
      // Ends the accept loop's wait as soon as this migration has its stream:
      // the pending accept is the next migration's, and must not hold this one.
      let stopLoop!: () => void
      const stopped = new Promise<null>((r) => { stopLoop = () => r(null) })
      const probing = new Set<MigStream>()
      const overall = p.incomingTimeoutMs > 0
        ? setTimeout(() => finish(new MigrationError(`no migration arrived on ${listener.address} within incoming-timeout (${p.incomingTimeoutMs} ms)`, 'ETIMEDOUT')), p.incomingTimeoutMs)
        : undefined
      const onAbort = () => finish(new MigrationError('incoming migration cancelled', 'ECANCELED'))
      this.opts.signal?.addEventListener('abort', onAbort, { once: true })
      if (this.opts.signal?.aborted) onAbort()
      const finish = (err: Error | undefined, winner?: MigStream) => {
        if (done) return
        done = true
        stopLoop()
        clearTimeout(overall)
        this.opts.signal?.removeEventListener('abort', onAbort)
        for (const s of probing) {
          if (s === winner) continue
          s.shutdown('another peer was accepted')
          void s.close().catch(() => undefined)
        }
        if (winner) resolve(winner)
        else reject(err)
      }
      const probe = async (ch: Channel) => {
        // Before the first read: the stream's first reads may already bring the RAM's descriptors.
        const f = new MigStream(this.fdsAccepted(ch), { local: this.opts.local })
        probing.add(f)
        let timedOut = false
        const timer = many
          ? setTimeout(() => {
            timedOut = true
            f.shutdown('handshake timeout')
          }, p.handshakeTimeoutMs)
          : undefined
        const have = await f.tryFill(4)
        clearTimeout(timer)
        probing.delete(f)
        if (done) {
          f.shutdown('another peer was accepted')
          await f.close().catch(() => undefined)
          return
        }
        let reason: string | undefined
        if (have >= 4 && f.peek(4).readUInt32BE(0) !== QEMU_VM_FILE_MAGIC) {
          const head = f.peek(4)
          // A TLS record header: handshake (22), version 3.x.
          const hint = head[0] === 0x16 && head[1] === 0x03 ? ': a TLS ClientHello; the source uses TLS and this destination has no tls-creds' : ''
          reason = `not a migration stream (first bytes ${head.toString('hex')})${hint}`
        }
        else if (have < 4 && timedOut) reason = `no stream header within handshake-timeout (${p.handshakeTimeoutMs} ms)`
        else if (have < 4 && many) reason = f.error && f.error.code !== 'ENODATA' ? f.error.message : `closed after ${have} bytes, before a stream header`
        if (reason === undefined || !many) {
          // The one channel of a file/exec/fd listener is the stream, whatever
          // it holds: the loader reports what is wrong with it.
          finish(undefined, f)
          return
        }
        this.emit('peer-dropped', { peer: ch.description, reason })
        f.shutdown(`dropped: ${reason}`)
        await f.close().catch(() => undefined)
      }
      void (async () => {
        while (!done) {
          let ch: Channel
          // At most one accept per listener at any time, shared across
          // migrations: the one this loop leaves pending when it ends is the
          // next migration's on the same listener.
          const next = unclaimed.get(listener) ?? listener.accept()
          unclaimed.set(listener, next)
          const got = await Promise.race([accepted(next), stopped])
          if (got === null) return
          if ('err' in got) {
            if (unclaimed.get(listener) === next) unclaimed.delete(listener)
            finish(got.err as Error)
            return
          }
          ch = got.ch
          // A peer that came after this migration found its source belongs
          // to the next one; closing it reset a source that had connected in
          // time (a VMM migrating back and forth over one listener).
          if (done) return
          unclaimed.delete(listener)
          void probe(ch)
          if (!many) return
        }
      })()
    })
  }

  /** `ch`, set to accept a local migration's descriptors when this is one. */
  private fdsAccepted(ch: Channel): Channel {
    if (this.opts.local) {
      if (!ch.acceptFds) throw new MigrationError(`local migration refused: ${ch.description} cannot pass file descriptors`, 'EINVAL')
      ch.acceptFds(LOCAL_MAX_FDS)
    }
    return ch
  }

  private async load(f: MigStream): Promise<IncomingResult> {
    const { vm, registry } = this.machine
    const p = this.parameters
    const caps = this.capabilities
    if (vm.state === 'prelaunch') vm.runstateSet('inmigrate')
    this.set('active')
    // The return path writes through a stream of its own over the same
    // channel, as QEMU's does (qemu_file_get_return_path): its sticky error
    // (READY written to a source that has gone) must not stop the reads of
    // what that source said before it went (ABORT). The channel stays f's to close.
    const rp = hasReturnPath(f.channel) ? new ReturnPathWriter(new MigStream(f.channel, { local: f.local })) : null
    // QEMU's destination answers only once the source opened the return
    // path: a peer that did not (a file's reader, `exec:cat`) is not listening.
    let rpOpen = false
    const onAbort = () => {
      // After READY only the handover's own rules end the wait (docs/flows.md).
      if (this.st === 'active') f.shutdown('incoming migration cancelled')
    }
    this.opts.signal?.addEventListener('abort', onAbort, { once: true })
    const t0 = now()
    // Tell the source how far loading has got, so it can count what is still
    // queued here as pending (see the pre-copy loop in outgoing.ts); unchanged
    // progress is repeated as a heartbeat, so its link watchdog hears us.
    let reported = -1
    let sentAt = now()
    // Measured before the stream's first bytes matter, so the source knows
    // it before its first switchover decision. A machine whose estimate
    // fails announces nothing: the source then budgets as QEMU does.
    let checkUs: number | undefined
    let checkSent = false
    this.machine.expectedCheckMs?.().then((ms) => { checkUs = Number.isFinite(ms) && ms > 0 ? ms * 1000 : undefined }, () => undefined)
    const heartbeatMs = p.linkTimeoutMs > 0 ? p.linkTimeoutMs / 4 : 1000
    const ticker = rp
      ? setInterval(() => {
        const n = f.bytesRead
        if (!rpOpen || f.error) return
        if (!checkSent && checkUs !== undefined) {
          checkSent = true
          rp.switchoverCost(checkUs).catch(() => undefined)
        }
        if (n === reported && now() - sentAt < heartbeatMs) return
        reported = n
        sentAt = now()
        rp.loadProgress(n).catch(() => undefined)
      }, 20)
      : undefined
    // The kernel bounds a dead TCP link by the same figure (TCP_USER_TIMEOUT, keepalive).
    f.channel.setLinkTimeout?.(p.linkTimeoutMs)
    f.linkTimeoutMs = p.linkTimeoutMs
    // Reading a file never stalls; a socket or a pipe can, forever.
    const watchdog = f.channel.kind === 'file' ? null : new LinkWatchdog(f, p.linkTimeoutMs, () => f.bytesRead, 'source')
    watchdog?.arm()
    let readySent = false
    let started = false
    let handover = false
    try {
      const res = await loadvm(f, registry, {
        machine: this.machine.machine,
        capabilities: validatedCapabilities(caps),
        optionalCapabilities: caps.handover ? [HANDOVER_CAPABILITY] : [],
        onSwitchoverAck: rp
          ? () => {
            rpOpen = true
            return rp.switchoverAck()
          }
          : undefined,
        onCommand: (c) => {
          if (!KNOWN_COMMANDS.has(c.cmd)) throw new BadCommandError(`command ${c.name} is not supported by this loader`, { section: 'command', offset: f.bytesRead })
          if (c.cmd === MigCmd.OPEN_RETURN_PATH) rpOpen = rp !== null
          // The source's heartbeat: answer it (QEMU does) without holding up the load.
          else if (c.cmd === MigCmd.PING && rp && rpOpen) rp.pong(c.data.readUInt32BE(0)).catch(() => undefined)
        },
      })
      watchdog?.disarm()
      const stray = f.channel.queuedFds ?? 0
      if (stray > 0) {
        f.channel.dropFds?.()
        throw new MigrationError(`${stray} file descriptor(s) arrived without a section that claims them; closed them`, 'EPROTO')
      }
      const loaded = now()
      await this.machine.vfio?.finishIncoming()
      await this.machine.checkIncoming?.()
      handover = res.capabilities?.includes(HANDOVER_CAPABILITY) === true
      let resolvedResult: IncomingResult | undefined
      if (handover) {
        if (!rp || !rpOpen) throw new MigrationError('the source declared the handover but opened no return path', 'EPROTO')
        if (f.error) throw f.error
        // From here the source may send GO: a lost link no longer means "not started there".
        readySent = true
        // Armed before READY is written: on a black-holed link even that write may never finish.
        watchdog?.arm()
        let timedOut = false
        const timer = setTimeout(() => {
          timedOut = true
          f.setError(new StreamError('ETIMEDOUT', `no GO from the source within handover-timeout (${p.handoverTimeoutMs} ms)`))
          f.channel.shutdown()
        }, p.handoverTimeoutMs)
        await rp.ready().catch(() => undefined)
        this.set('ready')
        const frame = await readHandoverFrame(f)
        clearTimeout(timer)
        watchdog?.stop()
        if (frame.kind === 'frame' && frame.type === HandoverFrame.ABORT) {
          readySent = false
          throw new MigrationError('the source withdrew the handover (ABORT): it runs the guest', 'ECANCELED')
        }
        if (frame.kind !== 'frame') {
          const why = timedOut ? `no GO from the source within handover-timeout (${p.handoverTimeoutMs} ms)` : `after READY: ${frame.why}`
          resolvedResult = await this.unknown(why, f, ticker, rp, { loadTimeMs: loaded - t0, loaded, sections: res.sections })
        }
      } else {
        watchdog?.stop()
      }
      if (resolvedResult) return resolvedResult
      await vm.vmStart()
      const startedMonoNs = process.hrtime.bigint()
      started = true
      const resumed = now()
      this.set('completed')
      const verificationMs = this.machine.verificationMs?.() ?? 0
      // The handover's STARTED; without it, what QEMU's source learns from SHUT.
      // The guest runs whatever becomes of this message: a stuck link must not hold up the result.
      if (rp && rpOpen) await bounded(rp.resumeOk({ loadTimeUs: (loaded - t0) * 1000, resumedAtMs: Date.now(), verificationUs: verificationMs * 1000, startedMonoNs }), this.lastWordMs())
      return { status: 'completed', loadTimeMs: loaded - t0, resumeTimeMs: resumed - loaded, verificationMs, sections: res.sections, handover }
    } catch (e) {
      if (started) throw e
      // A start after GO that failed was rolled back: the guest does not run
      // here, and the source, told so below, runs it again.
      const devices = await this.machine.vfio?.abortIncoming().catch(() => undefined)
      await this.letGoOfSource(f)
      // Say which devices kept the loaded image (stopped) and which were reset.
      if (devices?.length && e instanceof Error) e.message += `; devices now: ${describeDeviceOutcomes(devices)}`
      // Also before the source opened the return path (a configuration it
      // sent that we refuse comes first): a last word costs nothing if
      // nobody reads it, and tells our own source why.
      if (rp && !f.error) {
        await bounded(rp.failReason((e as Error).message ?? String(e)), this.lastWordMs())
        await bounded(rp.shut(errnoOf(e)), this.lastWordMs())
        await linger(f, 1000)
      }
      this.error = (e as Error).message ?? String(e)
      this.set('failed')
      throw e instanceof MigrationError ? e : new MigrationError(`incoming migration failed: ${this.error}`, (e as { code?: string }).code ?? 'EIO', { cause: e })
    } finally {
      clearInterval(ticker)
      watchdog?.stop()
      this.opts.signal?.removeEventListener('abort', onAbort)
      // close() flushes first, which a stuck link would never finish.
      if (!(await bounded(f.close(), this.lastWordMs()))) {
        f.shutdown('closing a stuck link')
        await f.close().catch(() => undefined)
      }
    }
  }

  /**
   * The guest will not run here: close every descriptor the source passed
   * (queued on the channel, or mapped as RAM), since the source runs the
   * guest on those very pages and this side must never write them.
   */
  private async letGoOfSource(f: MigStream | null): Promise<void> {
    f?.channel.dropFds?.()
    for (const e of this.machine.registry.entries()) await Promise.resolve(e.handlers.loadAbort?.()).catch(() => undefined)
  }

  /** How long a last message (STARTED, a failure) may take to leave before the link is given up. */
  private lastWordMs(): number {
    return this.parameters.linkTimeoutMs > 0 ? this.parameters.linkTimeoutMs : 5000
  }

  /**
   * READY went out and neither GO nor ABORT came back: the source may have
   * sent GO and died, so this may be the only copy. Keep it loaded and
   * paused, say so, and wait for the operator's resolve().
   */
  private unknown(
    why: string, f: MigStream, ticker: NodeJS.Timeout | undefined, rp: ReturnPathWriter | null,
    r: { loadTimeMs: number; loaded: number; sections: number },
  ): Promise<IncomingResult> {
    clearInterval(ticker)
    f.shutdown(`handover-unknown: ${why}`)
    this.unknownWhy = why
    return new Promise<IncomingResult>((done, fail) => {
      const result: IncomingResult = {
        status: 'completed', loadTimeMs: r.loadTimeMs, resumeTimeMs: 0, verificationMs: 0, sections: r.sections, handover: true,
      }
      this.pending = {
        done: (x) => done({ ...x, resumeTimeMs: now() - r.loaded, verificationMs: this.machine.verificationMs?.() ?? 0 }),
        fail, result, rp,
      }
      this.set('handover-unknown')
    })
  }
}

/** Accept one incoming migration on `source` (a URI, a Listener, or an accepted channel) into `machine`. */
export function incoming(machine: MigratableVm, source: string | Listener | Channel, opts: IncomingOptions = {}): Promise<IncomingResult> {
  return new IncomingMigration(machine, opts).start(source)
}
