// A channel over a regular file (or any fd the kernel reads and writes
// without readiness, e.g. a blocking pipe). I/O runs on libuv's threadpool.
import * as fs from 'node:fs'
import type { Channel, ChannelKind } from './types.js'
import { StreamError, toStreamError } from '../stream/errors.js'

function readAsync(fd: number, buf: Uint8Array, off: number, len: number): Promise<number> {
  return new Promise((res, rej) => fs.read(fd, buf, off, len, null, (e, n) => (e ? rej(e) : res(n))))
}
function writevAsync(fd: number, bufs: Uint8Array[]): Promise<number> {
  return new Promise((res, rej) => fs.writev(fd, bufs, null, (e, n) => (e ? rej(e) : res(n))))
}
function closeAsync(fd: number): Promise<void> {
  return new Promise((res, rej) => fs.close(fd, e => (e ? rej(e) : res())))
}

/** Drop `n` written bytes from the front of an iovec list. */
export function advanceIov(bufs: Uint8Array[], n: number): Uint8Array[] {
  let i = 0
  while (i < bufs.length && n >= bufs[i].length) n -= bufs[i++].length
  const rest = bufs.slice(i)
  if (rest.length && n > 0) rest[0] = rest[0].subarray(n)
  return rest
}

export class FileChannel implements Channel {
  readonly kind: ChannelKind
  readonly description: string
  private fdNum: number
  private readonly ownsFd: boolean
  private err: StreamError | null = null
  private pending = 0

  constructor(kind: ChannelKind, description: string, fd: number, ownsFd: boolean) {
    this.kind = kind
    this.description = description
    this.fdNum = fd
    this.ownsFd = ownsFd
  }

  get fd(): number | undefined {
    return this.fdNum >= 0 ? this.fdNum : undefined
  }

  get writeFd(): number | undefined {
    return this.fd
  }

  get writableLength(): number {
    return this.pending
  }

  private check(): number {
    if (this.err) throw this.err
    if (this.fdNum < 0) throw new StreamError('EBADF', `${this.description}: channel closed`)
    return this.fdNum
  }

  async read(buf: Uint8Array, offset: number, length: number): Promise<number> {
    const fd = this.check()
    try {
      return await readAsync(fd, buf, offset, length)
    } catch (e) {
      throw toStreamError(e, `${this.description}: read`)
    }
  }

  async writev(bufs: readonly Uint8Array[]): Promise<void> {
    const fd = this.check()
    let rest = bufs.filter(b => b.length > 0)
    let total = 0
    for (const b of rest) total += b.length
    this.pending += total
    try {
      while (rest.length) {
        // Linux caps one writev at IOV_MAX (1024) entries.
        const batch = rest.length > 1024 ? rest.slice(0, 1024) : rest
        const n = await writevAsync(fd, batch)
        if (n === 0) throw new StreamError('EIO', `${this.description}: write made no progress`)
        this.pending -= n
        rest = advanceIov(rest, n)
      }
    } catch (e) {
      this.pending = 0
      throw toStreamError(e, `${this.description}: write`)
    }
  }

  async quiesce(): Promise<Uint8Array[]> {
    return []
  }

  resumeReads(): void {}

  async endWrites(): Promise<void> {
    // A file has no peer to signal; data is already with the kernel.
  }

  shutdown(): void {
    this.err ??= new StreamError('ECANCELED', `${this.description}: channel shut down`)
  }

  async close(): Promise<void> {
    const fd = this.fdNum
    this.fdNum = -1
    if (fd >= 0 && this.ownsFd) await closeAsync(fd)
  }
}
