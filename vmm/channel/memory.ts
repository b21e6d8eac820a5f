// An in-process channel pair for tests: what one end writes the other reads.
// Writes copy (the caller may reuse its buffers once writev resolves) and wait
// while the peer holds more than `highWaterMark` unread bytes.
import type { Channel, ChannelKind } from './types.js'
import { StreamError } from '../stream/errors.js'

class Pipe {
  chunks: Uint8Array[] = []
  bytes = 0
  eof = false
  error: StreamError | null = null
  private readers: (() => void)[] = []
  private writers: (() => void)[] = []
  constructor(readonly highWaterMark: number) {}

  wakeReaders(): void {
    const r = this.readers
    this.readers = []
    for (const f of r) f()
  }
  wakeWriters(): void {
    const w = this.writers
    this.writers = []
    for (const f of w) f()
  }
  waitData(): Promise<void> {
    return new Promise(r => this.readers.push(r))
  }
  waitSpace(): Promise<void> {
    return new Promise(r => this.writers.push(r))
  }
}

export class MemoryChannel implements Channel {
  readonly kind: ChannelKind = 'memory'
  readonly fd = undefined
  readonly writeFd = undefined
  constructor(readonly description: string, private readonly rx: Pipe, private readonly tx: Pipe) {}

  get writableLength(): number {
    return this.tx.bytes
  }

  async read(buf: Uint8Array, offset: number, length: number): Promise<number> {
    if (length <= 0) return 0
    for (;;) {
      if (this.rx.error) throw this.rx.error
      if (this.rx.chunks.length) {
        const c = this.rx.chunks[0]
        const n = Math.min(length, c.length)
        buf.set(c.subarray(0, n), offset)
        if (n === c.length) this.rx.chunks.shift()
        else this.rx.chunks[0] = c.subarray(n)
        this.rx.bytes -= n
        this.rx.wakeWriters()
        return n
      }
      if (this.rx.eof) return 0
      await this.rx.waitData()
    }
  }

  async writev(bufs: readonly Uint8Array[]): Promise<void> {
    for (const b of bufs) {
      if (this.tx.error) throw this.tx.error
      if (this.tx.eof) throw new StreamError('EPIPE', `${this.description}: write after end`)
      if (b.length === 0) continue
      this.tx.chunks.push(Uint8Array.prototype.slice.call(b))
      this.tx.bytes += b.length
      this.tx.wakeReaders()
    }
    while (this.tx.bytes > this.tx.highWaterMark && !this.tx.error && !this.tx.eof) await this.tx.waitSpace()
    if (this.tx.error) throw this.tx.error
  }

  async quiesce(): Promise<Uint8Array[]> {
    return []
  }

  resumeReads(): void {}

  async endWrites(): Promise<void> {
    this.tx.eof = true
    this.tx.wakeReaders()
  }

  shutdown(): void {
    const e = new StreamError('ECANCELED', `${this.description}: channel shut down`)
    for (const p of [this.rx, this.tx]) {
      p.error ??= e
      p.wakeReaders()
      p.wakeWriters()
    }
  }

  async close(): Promise<void> {
    // The peer sees end of stream in both directions.
    for (const p of [this.rx, this.tx]) {
      p.eof = true
      p.wakeReaders()
      p.wakeWriters()
    }
  }
}

/** Two connected channels: a[write] -> b[read] and b[write] -> a[read]. */
export function memoryPair(highWaterMark = 1 << 20): [MemoryChannel, MemoryChannel] {
  const ab = new Pipe(highWaterMark)
  const ba = new Pipe(highWaterMark)
  return [new MemoryChannel('memory:a', ba, ab), new MemoryChannel('memory:b', ab, ba)]
}
