// The byte transport under a migration stream (QEMU's QIOChannel). A channel is
// full duplex: the stream writes one way, the return path reads the other.
import type { NativeChannel } from '../../native/index.js'

export type ChannelKind = 'tcp' | 'unix' | 'file' | 'exec' | 'fd' | 'memory'

export interface Channel {
  readonly kind: ChannelKind
  /** Human-readable address, for error messages. */
  readonly description: string
  /**
   * Whether the peer can answer on this channel (the return path). Set by
   * channels whose kind alone does not say: fd: (a socket is duplex, a pipe
   * or a file is not) and exec: (the command's stdout). See hasReturnPath.
   */
  readonly duplex?: boolean
  /**
   * The OS file descriptor the channel reads from, when there is one (for
   * zero-copy transfers), or undefined (memory channels). Only usable for
   * direct reads between `quiesce()` and `resumeReads()`.
   */
  readonly fd: number | undefined
  /**
   * The OS file descriptor the channel writes to: the same as `fd` for a
   * socket or a file, another one for an exec channel (the command's stdin,
   * where `fd` is its stdout). Only usable for direct writes while
   * `writableLength` is 0.
   */
  readonly writeFd: number | undefined
  /**
   * A TLS channel, once its handshake is done: the native channel whose
   * session the native data paths (RAM pages, device-state frames) are
   * handed instead of an fd, so that they encrypt and decrypt on a worker
   * thread. Undefined without TLS (those paths take `fd`/`writeFd`). The
   * same rules apply as to the fds: writes only while `writableLength` is
   * 0, reads only between `quiesce()` and `resumeReads()`.
   */
  readonly tlsNative?: NativeChannel
  /** Bytes accepted by write() that the OS has not taken yet: backpressure. */
  readonly writableLength: number
  /** Read up to `length` bytes into buf at offset. Resolves 0 at end of stream. */
  read(buf: Uint8Array, offset: number, length: number): Promise<number>
  /**
   * Optional zero-copy read: a view of the next bytes in the channel's own
   * buffer (at least one), or null at end of stream. The view is the
   * caller's to read until its next read(), lend() or quiesce() on this
   * channel, which may overwrite it.
   */
  lend?(): Promise<Uint8Array | null>
  /**
   * Write all buffers in order. Resolves when the OS has them, so the caller
   * may reuse the buffers afterwards.
   */
  writev(bufs: readonly Uint8Array[]): Promise<void>
  /**
   * Stop reading ahead from the fd and hand back whatever was read ahead but
   * not yet consumed, so that someone else may read the fd directly.
   * Channels without an fd return [] and stay usable via read().
   */
  quiesce(): Promise<Uint8Array[]>
  /** Undo quiesce(). */
  resumeReads(): void
  /** Close the write side (the peer sees end of stream); reads stay open. */
  endWrites(): Promise<void>
  /** Stop both directions now; pending and later I/O fail. */
  shutdown(): void
  /**
   * Lets the kernel bound a dead link too: a TCP channel sets
   * TCP_USER_TIMEOUT and keepalive from the migration's link timeout (see
   * linkTimeouts in fd-channel.ts). True when applied; absent or false
   * where there is no network to time out.
   */
  setLinkTimeout?(ms: number): boolean
  /**
   * What the kernel measured of the connection (TCP_INFO): round trip, its
   * deviation, the retransmission timeout (all µs) and the retransmissions
   * so far. Null or absent where there is no TCP underneath.
   */
  linkStats?(): LinkStats | null
  /** Release the channel. Idempotent. */
  close(): Promise<void>
  /**
   * File descriptor passing (SCM_RIGHTS), on channels that can: a UNIX
   * socket. See FdChannel.sendFds / acceptFds / takeFds / dropFds.
   */
  sendFds?(fds: readonly number[], data: Uint8Array): Promise<void>
  acceptFds?(max: number): void
  takeFds?(count: number): number[]
  dropFds?(): void
  /** Descriptors passed and not taken yet. */
  readonly queuedFds?: number
}

/**
 * Whether the destination can send messages back on `c`: tcp, unix and memory
 * channels always; fd: and exec: channels when they say so. A file never: a
 * save is not a handover.
 */
export function hasReturnPath(c: Channel): boolean {
  return c.duplex ?? (c.kind === 'tcp' || c.kind === 'unix' || c.kind === 'memory')
}

/** See Channel.linkStats. */
export interface LinkStats {
  rttUs: number
  rttVarUs: number
  rtoUs: number
  totalRetrans: number
}
