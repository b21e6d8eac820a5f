// A channel over descriptors the native layer owns (NativeChannel,
// crates/vmm-native/src/channel/): TCP and UNIX sockets, an fd: socket or
// pipe, and the two pipes of an exec: command.
//
// Each read and write is first tried once without waiting, on this thread,
// as libuv does for Node's own sockets; only when the kernel has nothing
// (or no room) does the call wait, on the addon's runtime, where a waiting
// read holds no thread. Nothing is ever read ahead of the caller: a read
// takes at most what was asked, lend() at most one buffer that the caller
// then owns until its next read. So quiesce() has nothing to stop or hand
// back, and native transfers may use the fd between two reads at any time.
//
// A unix: channel also passes file descriptors (sendFds / acceptFds /
// takeFds, for a local migration); once it accepts them, every read waits
// on the runtime, so its recvmsg never runs on this thread.
import type { NativeChannel, TlsInfo } from '../../native/index.js'
import type { Channel, ChannelKind, LinkStats } from './types.js'
import { StreamError, toStreamError } from '../stream/errors.js'

/** The buffer lend() reads into: about what loopback TCP has ready per wake-up. */
export const LEND_SIZE = 1 << 20

/**
 * How long the kernel keeps a TCP connection whose peer went silent, for
 * `FdChannel.setTimeouts`. Omitted fields are left as they are.
 */
export interface ChannelTimeouts {
  /**
   * TCP_USER_TIMEOUT: sent data unacknowledged this long fails the
   * connection (reads and writes then fail ETIMEDOUT). 0 restores the
   * kernel's default (about 15 minutes of retransmissions).
   */
  userTimeoutMs?: number
  /**
   * Keepalive probes of an idle connection: the first after `idleS` seconds
   * of silence, then every `intervalS`; `count` unanswered ones fail the
   * connection. false turns probing off.
   */
  keepalive?: { idleS: number; intervalS: number; count: number } | false
  /**
   * TCP_RTO_MIN_US and TCP_DELACK_MAX_US (Linux 6.15+, ignored before):
   * how soon a lost segment is sent again when nothing after it reveals the
   * loss, and how long the peer may hold back an ACK. 200 is the kernel's
   * default; see LOSS_RECOVERY_MS.
   */
  lossRecoveryMs?: number
}

/**
 * A migration socket's floor of the retransmission timeout and ceiling of
 * the delayed ACK, ms (asked for; the kernel rounds up to two jiffies).
 * The kernel's 200 ms default is most of a 300 ms downtime limit: a single
 * lost segment at the end of the stream, or a lost READY or GO, would cost
 * it whole. The RTO also stays above the measured RTT plus four deviations,
 * so a long link does not retransmit early.
 */
export const LOSS_RECOVERY_MS = 5

/**
 * A TCP socket's keepalive until the migration sets its link timeout
 * (setLinkTimeout): the first probe after 5 s of silence, then one a
 * second, 10 unanswered ones fail it (what Node's setKeepAlive(true, 5000)
 * set on the sockets before they were native).
 */
export const DEFAULT_KEEPALIVE = { idleS: 5, intervalS: 1, count: 10 } as const

/**
 * The kernel's bounds on a TCP link for a migration link timeout of `ms`
 * (vmm/migration/watchdog.ts bounds the stream's progress by the same
 * figure): TCP_USER_TIMEOUT of `ms`, so data the peer does not acknowledge
 * for that long fails the socket (ETIMEDOUT) even while our writes wait in
 * its buffer; keepalive probes from a third of it, every ninth, so an idle
 * link is probed within the timeout (with a user timeout set, Linux fails
 * the socket once probes stay unanswered for the user timeout). 0 (no link
 * timeout) leaves the kernel's defaults and DEFAULT_KEEPALIVE.
 */
export function linkTimeouts(ms: number): ChannelTimeouts | null {
  if (!(ms > 0)) return null
  const s = (x: number) => Math.min(32767, Math.max(1, Math.ceil(x / 1000)))
  return { userTimeoutMs: ms, keepalive: { idleS: s(ms / 3), intervalS: s(ms / 9), count: 3 }, lossRecoveryMs: LOSS_RECOVERY_MS }
}

export interface FdChannelOptions {
  /** See Channel.duplex. */
  duplex?: boolean
  /** Runs after the descriptors are closed (an exec: channel waits for its command there). */
  onClose?: () => Promise<void>
  /**
   * The channel's TLS handshake (NativeChannel.startTls), settled or still
   * running: reads and writes wait for it and fail with its error.
   */
  tls?: Promise<TlsInfo>
}

export class FdChannel implements Channel {
  readonly kind: ChannelKind
  readonly description: string
  readonly duplex?: boolean
  private readonly nat: NativeChannel
  private readonly onClose?: () => Promise<void>
  private error: StreamError | null = null
  private closed = false
  /** Bytes writev() accepted that the kernel has not taken yet. */
  private pending = 0
  /** The last write queued: writes go out in call order. */
  private writing: Promise<void> = Promise.resolve()
  private writesQueued = 0
  private landing: Buffer | null = null
  /** Set by acceptFds: reads then all go through the runtime (recvmsg off this thread). */
  private fdReads = false
  /** Whether the bytes go through a TLS session (then no fd is handed out). */
  readonly tls: boolean
  /** What the handshake settled, once it did. */
  tlsInfo: TlsInfo | undefined
  private handshaking: Promise<void> | null = null

  constructor(kind: ChannelKind, description: string, nat: NativeChannel, opts: FdChannelOptions = {}) {
    this.kind = kind
    this.description = description
    this.nat = nat
    if (opts.duplex !== undefined) this.duplex = opts.duplex
    this.onClose = opts.onClose
    this.tls = opts.tls !== undefined
    if (opts.tls) {
      this.handshaking = opts.tls.then(
        (info) => { this.tlsInfo = info; this.handshaking = null },
        (e) => { this.error ??= toStreamError(e, description); this.handshaking = null },
      )
    }
    // The stream flushes whole records: no Nagle delay. False (ignored) on
    // a UNIX socket or a pipe.
    try {
      nat.setOptions({ noDelay: true, keepalive: DEFAULT_KEEPALIVE })
    } catch (e) {
      throw toStreamError(e, `${description}: setsockopt`)
    }
  }

  // Under TLS no descriptor is handed out, not even before the handshake
  // ends: a native transfer on it would put plaintext on the wire. The
  // native data paths get the channel itself instead (tlsNative).
  get fd(): number | undefined {
    return this.closed || this.tls ? undefined : this.nat.fd ?? undefined
  }

  get writeFd(): number | undefined {
    return this.closed || this.tls ? undefined : this.nat.writeFd ?? undefined
  }

  get tlsNative(): NativeChannel | undefined {
    return this.closed || !this.tlsInfo ? undefined : this.nat
  }

  /** Settles once the TLS handshake did (at once without TLS); rejects with its error. */
  async handshake(): Promise<void> {
    if (this.handshaking) await this.handshaking
    if (this.tls && !this.tlsInfo) throw this.error ?? new StreamError('EPROTO', `${this.description}: TLS handshake did not finish`)
  }

  get writableLength(): number {
    return this.pending
  }

  /** The channel's own error after shutdown(), else the native one with this channel's name. */
  private fail(e: unknown): StreamError {
    return this.error ?? toStreamError(e, this.description)
  }

  async read(buf: Uint8Array, offset: number, length: number): Promise<number> {
    if (length <= 0) return 0
    if (this.handshaking) await this.handshaking
    if (this.error) throw this.error
    if (this.closed) return 0
    try {
      const n = this.fdReads ? -1 : this.nat.tryRead(buf, offset, length)
      return n >= 0 ? n : await this.nat.read(buf, offset, length)
    } catch (e) {
      // Closed under a waiting read (the return path at the end of a
      // migration): the end of the stream, not a failure.
      if (this.closed && !this.error) return 0
      throw this.fail(e)
    }
  }

  /** Reads into the channel's own buffer; the view is the caller's until its next read or lend. */
  readonly lend = async (): Promise<Uint8Array | null> => {
    const b = (this.landing ??= Buffer.allocUnsafe(LEND_SIZE))
    const n = await this.read(b, 0, b.length)
    return n > 0 ? b.subarray(0, n) : null
  }

  writev(bufs: readonly Uint8Array[]): Promise<void> {
    if (this.handshaking) return this.handshaking.then(() => this.writev(bufs))
    if (this.error) return Promise.reject(this.error)
    if (this.closed) return Promise.reject(new StreamError('EPIPE', `${this.description}: write after close`))
    let total = 0
    for (const b of bufs) total += b.length
    if (total === 0) return Promise.resolve()
    const list = bufs as Uint8Array[]
    if (this.writesQueued === 0) {
      // Nothing queued before this one: the kernel may take it all at once.
      let took: number
      try {
        took = this.nat.tryWritev(list, 0)
      } catch (e) {
        return Promise.reject(this.fail(e))
      }
      if (took === total) return Promise.resolve()
      return this.queue(list, total, took)
    }
    return this.queue(list, total, 0)
  }

  private queue(bufs: Uint8Array[], total: number, done: number): Promise<void> {
    this.pending += total - done
    this.writesQueued++
    const run = async () => {
      try {
        if (this.error) throw this.error
        const skip = done > 0 ? done : this.nat.tryWritev(bufs, 0)
        if (skip < total) await this.nat.writev(bufs, skip)
      } catch (e) {
        throw this.fail(e)
      } finally {
        this.pending -= total - done
        this.writesQueued--
      }
    }
    const p = this.writing.then(run, run)
    // The next write waits for this one whatever its outcome.
    this.writing = p.then(() => undefined, () => undefined)
    return p
  }

  /**
   * Writes `data` with `fds` attached (SCM_RIGHTS; 1..16, at least one
   * byte), in order with the writes queued before it. The numbers stay the
   * caller's and must stay open until it resolves. UNIX sockets only.
   */
  sendFds(fds: readonly number[], data: Uint8Array): Promise<void> {
    if (this.error) return Promise.reject(this.error)
    if (this.closed) return Promise.reject(new StreamError('EPIPE', `${this.description}: write after close`))
    if (this.kind !== 'unix') return Promise.reject(new StreamError('ENOTSUP', `${this.description}: only a unix: channel passes file descriptors`))
    this.pending += data.length
    this.writesQueued++
    const run = async () => {
      try {
        if (this.error) throw this.error
        await this.nat.sendFds([...fds], data)
      } catch (e) {
        throw this.fail(e)
      } finally {
        this.pending -= data.length
        this.writesQueued--
      }
    }
    const p = this.writing.then(run, run)
    this.writing = p.then(() => undefined, () => undefined)
    return p
  }

  /**
   * Lets the peer pass up to `max` descriptors (at most 16) in all; they
   * wait for takeFds. Any other descriptor fails the next read with EPROTO
   * and is closed. From here every read waits on the runtime, so recvmsg
   * and the closes never run on this thread.
   */
  acceptFds(max: number): void {
    if (this.kind !== 'unix') throw new StreamError('ENOTSUP', `${this.description}: only a unix: channel passes file descriptors`)
    try {
      this.nat.acceptFds(max)
    } catch (e) {
      throw toStreamError(e, this.description)
    }
    this.fdReads = true
  }

  /** The first `count` descriptors passed, now the caller's to close; throws (taking none) if fewer came. */
  takeFds(count: number): number[] {
    try {
      return this.nat.takeFds(count)
    } catch (e) {
      throw toStreamError(e, this.description)
    }
  }

  /** Closes the descriptors passed and not taken, and accepts no more. */
  dropFds(): void {
    if (!this.closed) this.nat.dropFds()
  }

  get queuedFds(): number {
    return this.closed ? 0 : this.nat.queuedFds
  }

  async quiesce(): Promise<Uint8Array[]> {
    // Nothing was read ahead: the fd holds every byte no caller took.
    return []
  }

  resumeReads(): void {}

  async endWrites(): Promise<void> {
    if (this.handshaking) await this.handshaking
    await this.writing
    if (this.closed) return
    try {
      // The peer must tell our end from a cut (which an attacker can make).
      if (this.tlsInfo) await this.nat.closeNotify()
      this.nat.endWrites()
    } catch (e) {
      throw this.fail(e)
    }
  }

  shutdown(): void {
    this.error ??= new StreamError('ECANCELED', `${this.description}: channel shut down`)
    if (!this.closed) this.nat.shutdown()
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.nat.close()
    if (this.onClose) await this.onClose()
  }

  /**
   * Bounds how long the kernel keeps the connection when the peer goes
   * silent (see ChannelTimeouts). True when applied: a TCP socket; false for
   * a UNIX socket or pipes, which have no network to time out.
   */
  setTimeouts(t: ChannelTimeouts): boolean {
    if (this.closed) return false
    try {
      return this.nat.setOptions({ userTimeoutMs: t.userTimeoutMs, keepalive: t.keepalive, lossRecoveryMs: t.lossRecoveryMs })
    } catch (e) {
      throw toStreamError(e, `${this.description}: setsockopt`)
    }
  }

  /**
   * What the kernel keeps as the socket's TCP_RTO_MIN_US and
   * TCP_DELACK_MAX_US; null for a UNIX socket, pipes, or a kernel without them.
   */
  lossRecovery(): { rtoMinUs: number; delackMaxUs: number } | null {
    if (this.closed) return null
    try {
      return this.nat.lossRecovery()
    } catch (e) {
      throw toStreamError(e, `${this.description}: getsockopt`)
    }
  }

  /** See Channel.linkStats. */
  linkStats(): LinkStats | null {
    if (this.closed) return null
    try {
      return this.nat.linkStats()
    } catch (e) {
      throw toStreamError(e, `${this.description}: getsockopt`)
    }
  }

  /** See Channel.setLinkTimeout. */
  setLinkTimeout(ms: number): boolean {
    const t = linkTimeouts(ms)
    return t !== null && this.setTimeouts(t)
  }
}
