// The migration stream: QEMU's QEMUFile in TypeScript, over a channel that
// carries both directions: the migration's puts one way and its gets the
// other (the return path reads and writes through the same MigStream on
// each side), each with its own buffer.
//
// Errors are sticky: the first failure is kept (with its cause) and every put
// or get after it does nothing (gets return 0 / empty), so callers check
// `stream.error` once after a batch of operations.
//
// Writing: puts are synchronous and append to a small buffer; large buffers
// given to putBufferAsync() are queued by reference and written with writev
// (QEMU's put_buffer_async). THE CALLER MUST NOT MODIFY A BUFFER PASSED TO
// putBufferAsync() UNTIL THE NEXT flush() HAS RESOLVED. Call `await
// maybeFlush()` regularly (the savevm driver does after every section).
//
// Reading: `await fill(n)` makes n bytes available, then the synchronous
// getters (u8, be16, be32, be64, ...) consume them without awaiting. The
// async get*() helpers do both for code that is not hot.
import type { Channel } from '../channel/types.js'
import { StreamError, toStreamError } from './errors.js'
import { RateLimiter } from './rate-limit.js'
import { realClock, type Clock } from './clock.js'
import { readFd, writeAllFd } from './fdio.js'
import { nativeFdTransfer, type FdTransfer, type DirectTarget } from './transfer.js'

export const IO_BUF_SIZE = 32768
export type { DirectTarget }

function describeTarget(t: DirectTarget): string {
  return typeof t === 'number' ? `fd ${t}` : 'TLS channel'
}

const READ_BUF_SIZE = 256 << 10
const BOUNCE_SIZE = 1 << 20
/** Hard cap on bytes queued but not flushed: a caller that never flushes gets ENOBUFS, not an OOM. */
const DEFAULT_MAX_PENDING = 256 << 20
/** maybeFlush() writes once this much is queued (or IOV_MAX buffers). */
const FLUSH_THRESHOLD = 512 << 10
const IOV_MAX = 1024
/** The largest single fill(); bigger reads go through getBuffer/readInto. */
const MAX_FILL = 16 << 20

export interface StreamOptions {
  clock?: Clock
  /** Bytes per second, 0 = unlimited. */
  maxBandwidth?: number
  /** Bytes queued without a flush before the stream fails with ENOBUFS. */
  maxPending?: number
  /** Override the fd-to-fd transfer: null forces the bounce buffer. */
  fdTransfer?: FdTransfer | null
  /** A local migration: RAM goes as file descriptors (see `local`). */
  local?: boolean
}

export class MigStream {
  readonly channel: Channel
  /**
   * A local migration (same host, a unix: channel): guest RAM is passed as
   * file descriptors, not pages, and nothing may read the socket behind
   * the stream's back (a plain read(2) would drop passed descriptors).
   */
  local: boolean
  /**
   * The migration's link timeout, ms (0: none): how long native code moving
   * this stream's bytes may wait for the channel before it gives up.
   */
  linkTimeoutMs = 0
  readonly rateLimiter: RateLimiter
  private err: StreamError | null = null
  private readonly maxPending: number
  private readonly transfer: FdTransfer | null

  // write side
  private wbuf: Buffer = Buffer.allocUnsafe(IO_BUF_SIZE)
  private wstart = 0
  private wpos = 0
  private iov: Uint8Array[] = []
  private iovBytes = 0
  private spent: Buffer[] = []
  private pool: Buffer[] = []
  private written = 0
  private flushing: Promise<void> | null = null

  // read side
  private own: Buffer = Buffer.allocUnsafe(READ_BUF_SIZE)
  /** The bytes being read: `own`, or a view the channel lent (read in place, never written). */
  private rbuf: Buffer = this.own
  private lent = false
  private rpos = 0
  private rend = 0
  private consumedBefore = 0
  private eof = false

  private bounce: Buffer | null = null

  constructor(channel: Channel, opts: StreamOptions = {}) {
    this.channel = channel
    this.local = opts.local ?? false
    this.rateLimiter = new RateLimiter(opts.clock ?? realClock, opts.maxBandwidth ?? 0)
    this.maxPending = opts.maxPending ?? DEFAULT_MAX_PENDING
    this.transfer = opts.fdTransfer === undefined ? nativeFdTransfer() : opts.fdTransfer
  }

  /**
   * Whether native code may move this stream's bytes without JavaScript
   * buffers: the channel has an fd, or a TLS session native code encrypts
   * through (see writeDirect), and the addon is there.
   */
  get zeroCopy(): boolean {
    // A local stream's socket may carry descriptors, which only the channel's recvmsg keeps.
    return this.transfer !== null && (this.channel.fd !== undefined || this.channel.tlsNative !== undefined) && !this.local
  }

  // ---- errors -------------------------------------------------------------

  get error(): StreamError | null {
    return this.err
  }

  /** Record an error; only the first one sticks. */
  setError(e: unknown, what = 'stream'): void {
    if (!this.err) this.err = toStreamError(e, what)
  }

  // ---- statistics ---------------------------------------------------------

  /** Bytes put so far (including those still buffered), like qemu_file_transferred. */
  get transferred(): number {
    return this.rateLimiter.total
  }

  /** Bytes the channel has accepted. */
  get bytesWritten(): number {
    return this.written
  }

  /** Stream offset of the next byte a get will return. */
  get bytesRead(): number {
    return this.consumedBefore + this.rpos
  }

  /** Bytes queued by puts and not yet flushed. */
  get pendingBytes(): number {
    return this.iovBytes + (this.wpos - this.wstart)
  }

  // ---- write side ---------------------------------------------------------

  private account(n: number): void {
    this.rateLimiter.account(n)
    if (this.pendingBytes > this.maxPending) {
      this.setError(new StreamError('ENOBUFS', `more than ${this.maxPending} bytes queued without flush()`))
    }
  }

  private queueSmall(): void {
    if (this.wpos > this.wstart) {
      this.iov.push(this.wbuf.subarray(this.wstart, this.wpos))
      this.iovBytes += this.wpos - this.wstart
      this.wstart = this.wpos
    }
  }

  private room(n: number): Buffer {
    if (this.wpos + n > this.wbuf.length) {
      this.queueSmall()
      this.spent.push(this.wbuf)
      this.wbuf = this.pool.pop() ?? Buffer.allocUnsafe(IO_BUF_SIZE)
      this.wstart = this.wpos = 0
    }
    return this.wbuf
  }

  putU8(v: number): void {
    if (this.err) return
    this.room(1)[this.wpos++] = v & 0xff
    this.account(1)
  }

  putBe16(v: number): void {
    if (this.err) return
    this.room(2).writeUInt16BE(v & 0xffff, this.wpos)
    this.wpos += 2
    this.account(2)
  }

  putBe32(v: number): void {
    if (this.err) return
    this.room(4).writeUInt32BE(v >>> 0, this.wpos)
    this.wpos += 4
    this.account(4)
  }

  putBe64(v: bigint): void {
    if (this.err) return
    this.room(8).writeBigUInt64BE(BigInt.asUintN(64, v), this.wpos)
    this.wpos += 8
    this.account(8)
  }

  /** be64 from a JS number; must be a safe non-negative integer. */
  putBe64n(v: number): void {
    if (this.err) return
    if (!Number.isSafeInteger(v) || v < 0) {
      this.setError(new StreamError('EINVAL', `putBe64n: ${v} is not a safe non-negative integer`))
      return
    }
    const b = this.room(8)
    b.writeUInt32BE(Math.floor(v / 0x100000000), this.wpos)
    b.writeUInt32BE(v >>> 0, this.wpos + 4)
    this.wpos += 8
    this.account(8)
  }

  /** Copy a buffer into the stream (for small buffers). */
  putBuffer(b: Uint8Array): void {
    if (this.err || b.length === 0) return
    if (b.length > IO_BUF_SIZE / 4) {
      // Large: copying twice is pointless, and the caller keeps ownership.
      this.putBufferAsync(Buffer.from(b))
      return
    }
    this.room(b.length).set(b, this.wpos)
    this.wpos += b.length
    this.account(b.length)
  }

  /**
   * Queue a buffer by reference (no copy). It must stay unmodified until the
   * next flush() resolves.
   */
  putBufferAsync(b: Uint8Array): void {
    if (this.err || b.length === 0) return
    this.queueSmall()
    this.iov.push(b)
    this.iovBytes += b.length
    this.account(b.length)
  }

  /** u8 length + bytes (QEMU's counted string); at most 255 bytes of UTF-8. */
  putCountedString(s: string): void {
    if (this.err) return
    const b = Buffer.from(s, 'utf8')
    if (b.length > 255) {
      this.setError(new StreamError('EINVAL', `counted string of ${b.length} bytes exceeds 255: ${s.slice(0, 40)}...`))
      return
    }
    this.putU8(b.length)
    this.putBuffer(b)
  }

  /** Write everything queued; resolves once the channel has it all. */
  flush(): Promise<void> {
    // Flushes are serialized so writes stay in put order.
    const prev = this.flushing
    const run = (prev ? prev.then(() => this.doFlush()) : this.doFlush()).finally(() => {
      if (this.flushing === run) this.flushing = null
    })
    this.flushing = run
    return run
  }

  private async doFlush(): Promise<void> {
    this.queueSmall()
    const iov = this.iov
    const bytes = this.iovBytes
    const spent = this.spent
    this.iov = []
    this.iovBytes = 0
    this.spent = []
    if (!this.err && iov.length) {
      try {
        for (let i = 0; i < iov.length; i += IOV_MAX) {
          await this.channel.writev(i === 0 && iov.length <= IOV_MAX ? iov : iov.slice(i, i + IOV_MAX))
        }
        this.written += bytes
      } catch (e) {
        this.setError(e, `write to ${this.channel.description}`)
      }
    }
    // Buffers are free again only now that the channel is done with them.
    for (const b of spent) if (this.pool.length < 64) this.pool.push(b)
    if (this.wstart === this.wpos && this.iov.length === 0) this.wstart = this.wpos = 0
  }

  /**
   * Whether enough is queued to make a write worthwhile. Hot loops test this
   * synchronously (`if (f.flushNeeded) await f.flush()`) to avoid an await
   * per item.
   */
  get flushNeeded(): boolean {
    return this.iovBytes + (this.wpos - this.wstart) >= FLUSH_THRESHOLD || this.iov.length >= IOV_MAX
  }

  /** Flush if enough is queued to make a write worthwhile. */
  maybeFlush(): Promise<void> {
    return this.flushNeeded ? this.flush() : Promise.resolve()
  }

  /** True when this window's bandwidth budget is spent (QEMU's rate_limit_exceeded). */
  rateLimitExceeded(): boolean {
    return this.rateLimiter.exceeded()
  }

  /** Sleep until the bandwidth budget allows more data. */
  throttle(): Promise<number> {
    return this.rateLimiter.wait()
  }

  // ---- read side ----------------------------------------------------------

  /** Bytes buffered and readable synchronously. */
  get available(): number {
    return this.rend - this.rpos
  }

  private compact(need: number): void {
    if (this.lent || need > this.own.length) {
      // A lent view goes back to the channel: what is unread moves into our own buffer.
      if (need > this.own.length) this.own = Buffer.allocUnsafe(Math.max(need, this.own.length * 2))
      this.rbuf.copy(this.own, 0, this.rpos, this.rend)
      this.rbuf = this.own
      this.lent = false
    } else {
      this.rbuf.copy(this.rbuf, 0, this.rpos, this.rend)
    }
    this.consumedBefore += this.rpos
    this.rend -= this.rpos
    this.rpos = 0
  }

  /**
   * Buffer at least n bytes without treating end of stream as an error.
   * Resolves the number of bytes available (less than n only at end of stream).
   */
  async tryFill(n: number): Promise<number> {
    if (this.rend - this.rpos >= n) return this.rend - this.rpos
    if (this.err) return this.rend - this.rpos
    if (n > MAX_FILL) {
      this.setError(new StreamError('EMSGSIZE', `fill(${n}) exceeds ${MAX_FILL} bytes; use getBuffer`))
      return this.rend - this.rpos
    }
    if (this.rend === this.rpos && this.channel.lend && !this.eof) {
      // Nothing unread: read in place from the channel's own buffer instead
      // of copying into ours (a record cut at the end of the view is then
      // copied into ours below).
      let v: Uint8Array | null
      try {
        v = await this.channel.lend()
      } catch (e) {
        this.setError(e, `read from ${this.channel.description}`)
        return 0
      }
      this.consumedBefore += this.rpos
      this.rpos = this.rend = 0
      if (v === null || v.length === 0) {
        this.eof = true
        this.rbuf = this.own
        this.lent = false
        return 0
      }
      this.rbuf = Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength)
      this.rend = v.length
      this.lent = this.rbuf !== this.own
      if (this.rend >= n) return this.rend
    }
    // Move the unread tail to the front when n would not fit, and also when
    // little room is left and little is to move, so reads stay large.
    const len = this.own.length
    if (this.lent || this.rpos + n > len || (len - this.rend < len / 4 && this.rend - this.rpos <= len / 8)) this.compact(n)
    while (this.rend - this.rpos < n && !this.eof) {
      let got: number
      try {
        got = await this.channel.read(this.rbuf, this.rend, this.rbuf.length - this.rend)
      } catch (e) {
        this.setError(e, `read from ${this.channel.description}`)
        break
      }
      if (got === 0) this.eof = true
      this.rend += got
    }
    return this.rend - this.rpos
  }

  /** Buffer at least n bytes; at end of stream sets ENODATA and resolves false. */
  async fill(n: number): Promise<boolean> {
    if (this.rend - this.rpos >= n) return true
    const have = await this.tryFill(n)
    if (have >= n) return true
    this.setError(new StreamError('ENODATA', `end of stream at offset ${this.bytesRead + have}, needed ${n - have} more bytes`))
    return false
  }

  /** True when the peer closed and every byte was consumed. */
  async atEnd(): Promise<boolean> {
    return (await this.tryFill(1)) === 0 && !this.err
  }

  private need(n: number): boolean {
    if (this.err) return false
    if (this.rend - this.rpos >= n) return true
    this.setError(new StreamError('EINVAL', `read of ${n} bytes at offset ${this.bytesRead} past the ${this.rend - this.rpos} filled`))
    return false
  }

  u8(): number {
    if (!this.need(1)) return 0
    return this.rbuf[this.rpos++]
  }

  be16(): number {
    if (!this.need(2)) return 0
    const v = this.rbuf.readUInt16BE(this.rpos)
    this.rpos += 2
    return v
  }

  be32(): number {
    if (!this.need(4)) return 0
    const v = this.rbuf.readUInt32BE(this.rpos)
    this.rpos += 4
    return v
  }

  be64(): bigint {
    if (!this.need(8)) return 0n
    const v = this.rbuf.readBigUInt64BE(this.rpos)
    this.rpos += 8
    return v
  }

  /** be64 as a number; values above 2^53-1 set EOVERFLOW-style EINVAL. */
  be64n(): number {
    if (!this.need(8)) return 0
    const hi = this.rbuf.readUInt32BE(this.rpos)
    const lo = this.rbuf.readUInt32BE(this.rpos + 4)
    this.rpos += 8
    if (hi > 0x1fffff) {
      this.setError(new StreamError('EINVAL', `be64 at offset ${this.bytesRead - 8} does not fit a safe integer`))
      return 0
    }
    return hi * 0x100000000 + lo
  }

  /** Copy n filled bytes out. */
  bytes(n: number): Buffer {
    if (!this.need(n)) return Buffer.alloc(0)
    const b = Buffer.from(this.rbuf.subarray(this.rpos, this.rpos + n))
    this.rpos += n
    return b
  }

  /** A view of n filled bytes, valid only until the next fill. */
  view(n: number): Buffer {
    if (!this.need(n)) return Buffer.alloc(0)
    const b = this.rbuf.subarray(this.rpos, this.rpos + n)
    this.rpos += n
    return b
  }

  /**
   * Copy n filled bytes into dest at destOffset and consume them: a page
   * goes from the stream buffer into its place without a view in between.
   */
  takeInto(dest: Uint8Array, destOffset: number, n: number): boolean {
    if (!this.need(n)) return false
    if (destOffset < 0 || destOffset + n > dest.length) {
      this.setError(new StreamError('EINVAL', `takeInto: ${n} bytes at ${destOffset} do not fit a destination of ${dest.length}`))
      return false
    }
    this.rbuf.copy(dest, destOffset, this.rpos, this.rpos + n)
    this.rpos += n
    return true
  }

  /** Byte at `offset` past the read position, without consuming. */
  peekU8(offset = 0): number {
    if (!this.need(offset + 1)) return 0
    return this.rbuf[this.rpos + offset]
  }

  /** A view of filled bytes without consuming them. */
  peek(n: number, offset = 0): Buffer {
    if (!this.need(offset + n)) return Buffer.alloc(0)
    return this.rbuf.subarray(this.rpos + offset, this.rpos + offset + n)
  }

  async getU8(): Promise<number> {
    return (await this.fill(1)) ? this.u8() : 0
  }
  async getBe16(): Promise<number> {
    return (await this.fill(2)) ? this.be16() : 0
  }
  async getBe32(): Promise<number> {
    return (await this.fill(4)) ? this.be32() : 0
  }
  async getBe64(): Promise<bigint> {
    return (await this.fill(8)) ? this.be64() : 0n
  }
  async getBe64n(): Promise<number> {
    return (await this.fill(8)) ? this.be64n() : 0
  }

  async getCountedString(): Promise<string> {
    if (!(await this.fill(1))) return ''
    const len = this.peekU8()
    if (!(await this.fill(1 + len))) return ''
    this.rpos += 1
    return this.view(len).toString('utf8')
  }

  /**
   * Read exactly dest.length bytes into dest. Large reads go straight from
   * the channel into dest instead of through the stream buffer.
   */
  async readInto(dest: Uint8Array): Promise<boolean> {
    if (this.err) return false
    const take = Math.min(dest.length, this.rend - this.rpos)
    dest.set(this.rbuf.subarray(this.rpos, this.rpos + take), 0)
    this.rpos += take
    let off = take
    while (off < dest.length) {
      if (dest.length - off < this.own.length / 2) {
        if (!(await this.fill(dest.length - off))) return false
        dest.set(this.rbuf.subarray(this.rpos, this.rpos + dest.length - off), off)
        this.rpos += dest.length - off
        return true
      }
      let got: number
      try {
        got = this.eof ? 0 : await this.channel.read(dest, off, dest.length - off)
      } catch (e) {
        this.setError(e, `read from ${this.channel.description}`)
        return false
      }
      if (got === 0) {
        this.eof = true
        this.setError(new StreamError('ENODATA', `end of stream at offset ${this.bytesRead}, needed ${dest.length - off} more bytes`))
        return false
      }
      this.consumedBefore += got
      off += got
    }
    return true
  }

  /** Read n bytes into a new buffer. Bound n before calling: it is allocated. */
  async getBuffer(n: number): Promise<Buffer> {
    if (this.err) return Buffer.alloc(0)
    if (n <= this.rend - this.rpos) return this.bytes(n)
    const b = Buffer.allocUnsafe(n)
    return (await this.readInto(b)) ? b : Buffer.alloc(0)
  }

  /** Discard n bytes. */
  async skip(n: number): Promise<boolean> {
    while (n > 0 && !this.err) {
      const step = Math.min(n, this.own.length)
      if (!(await this.fill(step))) return false
      this.rpos += step
      n -= step
    }
    return !this.err
  }

  private bounceBuf(): Buffer {
    return (this.bounce ??= Buffer.allocUnsafe(BOUNCE_SIZE))
  }

  /**
   * Move n bytes from the stream into fd (QEMU's qemu_file_get_to_fd). Uses the
   * native zero-copy transfer when both ends are fds, after first writing out
   * whatever the stream had already buffered. `allowSplice: false` makes
   * that transfer read and write even where splice would work.
   */
  async getToFd(fd: number, n: number, opts?: { allowSplice?: boolean }): Promise<boolean> {
    if (this.err) return false
    if (!Number.isSafeInteger(n) || n < 0) {
      this.setError(new StreamError('EINVAL', `getToFd: bad length ${n}`))
      return false
    }
    if (!Number.isInteger(fd) || fd < 0) {
      this.setError(new StreamError('EBADF', `getToFd: bad fd ${fd}`))
      return false
    }
    let left = n
    try {
      const take = Math.min(left, this.rend - this.rpos)
      if (take > 0) {
        await writeAllFd(fd, this.rbuf.subarray(this.rpos, this.rpos + take))
        this.rpos += take
        left -= take
      }
      const src = this.channel.fd ?? this.channel.tlsNative
      if (left > 0 && this.transfer && src !== undefined && !this.eof) {
        const ahead = await this.channel.quiesce()
        try {
          for (const chunk of ahead) {
            const t = Math.min(left, chunk.length)
            if (t > 0) {
              await writeAllFd(fd, chunk.subarray(0, t))
              this.consumedBefore += t
              left -= t
            }
            if (t < chunk.length) this.unread(chunk.subarray(t))
          }
          while (left > 0) {
            const moved = await this.transfer(src, fd, left, opts)
            if (moved === 0) break
            this.consumedBefore += moved
            left -= moved
          }
        } finally {
          this.channel.resumeReads()
        }
      } else {
        const bounce = this.bounceBuf()
        while (left > 0 && !this.eof) {
          const got = await this.channel.read(bounce, 0, Math.min(left, bounce.length))
          if (got === 0) {
            this.eof = true
            break
          }
          await writeAllFd(fd, bounce.subarray(0, got))
          this.consumedBefore += got
          left -= got
        }
      }
    } catch (e) {
      this.setError(e, `getToFd(fd ${fd})`)
      return false
    }
    if (left > 0) {
      this.setError(new StreamError('ENODATA', `getToFd: end of stream at offset ${this.bytesRead}, ${left} of ${n} bytes missing`))
      return false
    }
    return true
  }

  /** Put bytes read ahead back in front of the read buffer (the buffer is empty here). */
  private unread(b: Uint8Array): void {
    this.compact(this.rend - this.rpos + b.length)
    this.rbuf.copy(this.rbuf, b.length, 0, this.rend)
    this.rbuf.set(b, 0)
    this.rend += b.length
    this.consumedBefore -= b.length
  }

  /**
   * Move up to n bytes (default: until fd's end) from fd into the stream.
   * Resolves the number of bytes moved, which is less than n only if fd
   * reached its end. Zero-copy when the channel has an fd.
   */
  async putFromFd(fd: number, n = Number.MAX_SAFE_INTEGER): Promise<number> {
    if (this.err) return 0
    if (!Number.isSafeInteger(n) || n < 0) {
      this.setError(new StreamError('EINVAL', `putFromFd: bad length ${n}`))
      return 0
    }
    if (!Number.isInteger(fd) || fd < 0) {
      this.setError(new StreamError('EBADF', `putFromFd: bad fd ${fd}`))
      return 0
    }
    await this.flush()
    if (this.err) return 0
    let moved = 0
    try {
      const dst = this.channel.writeFd ?? this.channel.tlsNative
      if (this.transfer && dst !== undefined && this.channel.writableLength === 0) {
        while (moved < n) {
          const m = await this.transfer(fd, dst, Math.min(n - moved, 1 << 30))
          if (m === 0) break
          moved += m
          this.rateLimiter.account(m)
          this.written += m
        }
      } else {
        const bounce = this.bounceBuf()
        while (moved < n) {
          const got = await readFd(fd, bounce, 0, Math.min(n - moved, bounce.length))
          if (got === 0) break
          await this.channel.writev([bounce.subarray(0, got)])
          moved += got
          this.rateLimiter.account(got)
          this.written += got
        }
      }
    } catch (e) {
      this.setError(e, `putFromFd(fd ${fd})`)
    }
    return moved
  }

  /**
   * Writes `data` with `fds` attached (SCM_RIGHTS) after everything queued,
   * accounted like puts; a failure fails the stream.
   */
  async putWithFds(data: Uint8Array, fds: readonly number[]): Promise<void> {
    if (!this.channel.sendFds) {
      this.setError(new StreamError('ENOTSUP', `${this.channel.description} cannot pass file descriptors`), 'putWithFds')
      return
    }
    await this.flush()
    if (this.err) return
    try {
      await this.channel.sendFds(fds, data)
      this.rateLimiter.account(data.length)
      this.written += data.length
    } catch (e) {
      this.setError(e, `send file descriptors to ${this.channel.description}`)
    }
  }

  /**
   * Let `fn` write straight to the channel's fd (native code, off the JS
   * thread) after everything queued is flushed, or under TLS through the
   * channel's session (`fn` gets the native channel); `fn` resolves the
   * bytes it wrote, which are accounted like puts. Resolves false, without
   * calling `fn`, when the channel has neither or still holds unwritten bytes: the
   * caller then writes through the stream instead. A throw from `fn` fails
   * the stream (true: the bytes may be half out, so there is no falling back).
   */
  async writeDirect(fn: (target: DirectTarget) => Promise<number>): Promise<boolean> {
    if (this.err || this.transfer === null) return false
    const target = this.channel.writeFd ?? this.channel.tlsNative
    if (target === undefined) return false
    await this.flush()
    if (this.err || this.channel.writableLength !== 0) return false
    try {
      const n = await fn(target)
      this.rateLimiter.account(n)
      this.written += n
    } catch (e) {
      this.setError(e, `writeDirect(${describeTarget(target)})`)
    }
    return true
  }

  /**
   * Let `fn` read straight from the channel's fd (native code, off the JS
   * thread), or under TLS through its session (`fn` gets the native
   * channel), while the stream holds nothing read ahead; `fn` resolves how many
   * bytes it took from the fd, which then count as read. Resolves false,
   * without calling `fn`, when the channel has no fd or bytes were already
   * read ahead of the caller: the caller then reads through the stream. A
   * throw from `fn` fails the stream (true: bytes may be half taken).
   */
  async readDirect(fn: (target: DirectTarget) => Promise<number>): Promise<boolean> {
    if (this.err || this.transfer === null || this.local || this.eof || this.rend > this.rpos) return false
    const fd = this.channel.fd ?? this.channel.tlsNative
    if (fd === undefined) return false
    const ahead = await this.channel.quiesce()
    try {
      if (ahead.some(c => c.length > 0)) {
        // unread() puts bytes in front, so the last chunk goes back first.
        for (let i = ahead.length - 1; i >= 0; i--) if (ahead[i].length) this.unread(ahead[i])
        return false
      }
      try {
        this.consumedBefore += await fn(fd)
      } catch (e) {
        this.setError(e, `readDirect(${describeTarget(fd)})`)
      }
      return true
    } finally {
      this.channel.resumeReads()
    }
  }

  // ---- lifecycle ----------------------------------------------------------

  /** Fail the stream (ECANCELED) and stop the channel at once. */
  shutdown(reason = 'stream shut down'): void {
    this.setError(new StreamError('ECANCELED', reason))
    this.channel.shutdown()
  }

  /** Flush, close the channel, and resolve the stream's first error (or null). */
  async close(): Promise<StreamError | null> {
    if (!this.err) await this.flush()
    try {
      await this.channel.close()
    } catch (e) {
      this.setError(e, `close ${this.channel.description}`)
    }
    return this.err
  }
}
