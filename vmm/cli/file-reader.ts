// Sequential big-endian reads from a file through a FileHandle (reads run on
// the libuv pool), with a window buffer and cheap skips. Every read names
// what it was reading so a truncated file gives a useful error.
import type { FileHandle } from 'node:fs/promises'
import { VmmError } from '../core/errors.js'

const WINDOW = 1 << 20

export class AnalyzeError extends VmmError {
  readonly code = 'ERR_ANALYZE'
  constructor(message: string, readonly offset?: number) {
    super(offset === undefined ? message : `${message} (at byte ${offset})`)
    this.name = 'AnalyzeError'
  }
}

export class FileReader {
  private buf: Buffer = Buffer.alloc(0)
  private window: Buffer | undefined
  /** File offset of buf[0]. */
  private bufAt = 0
  pos = 0

  constructor(private readonly fh: FileHandle, readonly size: number) {}

  get remaining(): number {
    return this.size - this.pos
  }

  /** Make `n` bytes at pos available in the window (n <= WINDOW). */
  async need(n: number, what: string): Promise<void> {
    if (this.pos + n > this.size) throw new AnalyzeError(`file ends inside ${what}: needs ${n} bytes, ${this.size - this.pos} left`, this.pos)
    if (this.pos >= this.bufAt && this.pos + n <= this.bufAt + this.buf.length) return
    const len = Math.min(Math.max(n, WINDOW), this.size - this.pos)
    // One window, refilled: everything handed out of it is a copy, and a
    // fresh megabyte per window left gigabytes of garbage for the collector.
    if (!this.window || this.window.length < len) this.window = Buffer.allocUnsafe(len)
    const b = this.window.subarray(0, len)
    let got = 0
    while (got < len) {
      const { bytesRead } = await this.fh.read(b, got, len - got, this.pos + got)
      if (bytesRead === 0) throw new AnalyzeError(`file shrank while reading ${what}`, this.pos + got)
      got += bytesRead
    }
    this.buf = b
    this.bufAt = this.pos
  }

  private take(n: number): number {
    const at = this.pos - this.bufAt
    this.pos += n
    return at
  }

  async u8(what: string): Promise<number> {
    await this.need(1, what)
    return this.buf[this.take(1)]!
  }

  async peekU8(what: string): Promise<number> {
    await this.need(1, what)
    return this.buf[this.pos - this.bufAt]!
  }

  async be16(what: string): Promise<number> {
    await this.need(2, what)
    return this.buf.readUInt16BE(this.take(2))
  }

  async be32(what: string): Promise<number> {
    await this.need(4, what)
    return this.buf.readUInt32BE(this.take(4))
  }

  async be64(what: string): Promise<bigint> {
    await this.need(8, what)
    return this.buf.readBigUInt64BE(this.take(8))
  }

  /** A copy of `n` bytes (n bounded by the caller). */
  async bytes(n: number, what: string): Promise<Buffer> {
    if (n > WINDOW) throw new AnalyzeError(`${what} of ${n} bytes is larger than the ${WINDOW}-byte limit`, this.pos)
    await this.need(n, what)
    const at = this.take(n)
    return Buffer.from(this.buf.subarray(at, at + n))
  }

  async skip(n: number, what: string): Promise<void> {
    if (n < 0 || this.pos + n > this.size) throw new AnalyzeError(`file ends inside ${what}: needs ${n} bytes, ${this.size - this.pos} left`, this.pos)
    this.pos += n
  }

  async readAt(at: number, n: number): Promise<Buffer> {
    const b = Buffer.alloc(n)
    let got = 0
    while (got < n) {
      const { bytesRead } = await this.fh.read(b, got, n - got, at + got)
      if (bytesRead === 0) break
      got += bytesRead
    }
    return b.subarray(0, got)
  }
}
