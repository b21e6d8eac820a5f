// A channel over Node stream sockets: TCP, UNIX, pipes of an exec'd child, or an
// inherited socket/pipe fd. Reads are pulled (paused mode), so Node stops
// reading from the kernel once its buffer is full: backpressure to the peer.
import type { Readable, Writable } from 'node:stream'
import type { Channel, ChannelKind } from './types.js'
import { StreamError, toStreamError } from '../stream/errors.js'
import { wakeSocket } from './wake.js'
import { LandingReader } from './landing.js'

interface HandleLike { fd?: number; reading?: boolean; readStop?: () => number; readStart?: () => number }
type Internal = { _handle?: HandleLike | null; _read: (n: number) => void }

function fdOf(s: unknown): number | undefined {
  const fd = (s as Internal)._handle?.fd
  return typeof fd === 'number' && fd >= 0 ? fd : undefined
}

export class SocketChannel implements Channel {
  readonly kind: ChannelKind
  readonly description: string
  private readonly input: Readable
  private readonly output: Writable
  private leftover: Buffer | null = null
  /** Chunks read before the switch to landing-buffer reads, consumed first. */
  private queued: Buffer[] = []
  private readonly landing: LandingReader | null = null
  private error: StreamError | null = null
  private ended = false
  private closed = false
  private quiesced: ((n: number) => void) | null = null
  private readonly onExtraClose?: () => Promise<void>

  constructor(kind: ChannelKind, description: string, input: Readable, output: Writable, onExtraClose?: () => Promise<void>) {
    this.kind = kind
    this.description = description
    this.input = input
    this.output = output
    this.onExtraClose = onExtraClose
    const onErr = (e: Error) => { this.error ??= toStreamError(e, description) }
    input.on('error', onErr)
    if ((output as unknown) !== input) output.on('error', onErr)
    input.on('end', () => { this.ended = true })
    input.pause()
    const l = LandingReader.attach(input)
    if (l) {
      this.landing = l.reader
      this.queued = l.queued
      const wake = () => l.reader.wake(0)
      input.on('end', wake)
      input.on('close', wake)
      input.on('error', wake)
    }
  }

  get fd(): number | undefined {
    return fdOf(this.input)
  }

  get writeFd(): number | undefined {
    return fdOf(this.output)
  }

  get writableLength(): number {
    return this.output.writableLength
  }

  async read(buf: Uint8Array, offset: number, length: number): Promise<number> {
    if (length <= 0) return 0
    if (this.landing) return this.readLanding(buf, offset, length)
    for (;;) {
      let chunk = this.leftover
      this.leftover = null
      if (!chunk) chunk = this.input.read() as Buffer | null
      if (chunk && chunk.length > 0) {
        const n = Math.min(length, chunk.length)
        buf.set(chunk.subarray(0, n), offset)
        if (n < chunk.length) this.leftover = chunk.subarray(n)
        return n
      }
      if (this.error) throw this.error
      if (this.ended || this.input.readableEnded || this.closed) return 0
      await this.waitReadable()
    }
  }

  /** Only with landing-buffer reads; the stream then reads pages in place. */
  get lend(): (() => Promise<Uint8Array | null>) | undefined {
    return this.landing ? this.lendLanding : undefined
  }

  private readonly lendLanding = async (): Promise<Uint8Array | null> => {
    const l = this.landing!
    for (;;) {
      const q = this.queued.shift()
      if (q) return q
      const v = l.lendAll()
      if (v) return v
      if (this.error) throw this.error
      if (this.ended || this.input.readableEnded || this.closed || this.input.destroyed) return null
      await l.wait()
    }
  }

  private async readLanding(buf: Uint8Array, offset: number, length: number): Promise<number> {
    const l = this.landing!
    for (;;) {
      const q = this.queued[0]
      if (q) {
        const n = Math.min(length, q.length)
        buf.set(n === q.length ? q : q.subarray(0, n), offset)
        if (n < q.length) this.queued[0] = q.subarray(n)
        else this.queued.shift()
        return n
      }
      const n = l.take(buf, offset, length)
      if (n > 0) return n
      if (this.error) throw this.error
      if (this.ended || this.input.readableEnded || this.closed || this.input.destroyed) return 0
      await l.wait()
    }
  }

  private waitReadable(): Promise<void> {
    return new Promise(resolve => {
      const done = () => {
        this.input.off('readable', done)
        this.input.off('end', done)
        this.input.off('error', done)
        this.input.off('close', done)
        resolve()
      }
      this.input.on('readable', done)
      this.input.on('end', done)
      this.input.on('error', done)
      this.input.on('close', done)
    })
  }

  writev(bufs: readonly Uint8Array[]): Promise<void> {
    if (this.error) return Promise.reject(this.error)
    if (this.output.writableEnded || this.output.destroyed) {
      return Promise.reject(new StreamError('EPIPE', `${this.description}: write after close`))
    }
    if (bufs.length === 0) return Promise.resolve()
    return new Promise((resolve, reject) => {
      // Corking makes Node hand all buffers to one writev(2).
      this.output.cork()
      for (let i = 0; i < bufs.length - 1; i++) this.output.write(bufs[i])
      this.output.write(bufs[bufs.length - 1], err => {
        if (err) reject(this.error ?? toStreamError(err, this.description))
        else resolve()
      })
      this.output.uncork()
    })
  }

  async quiesce(): Promise<Uint8Array[]> {
    if (this.landing) {
      // Reads run only while read() waits, so stopping the handle is enough;
      // everything already read is handed back in order.
      if (this.quiesced) return []
      this.quiesced = (this.input as unknown as Internal)._read
      this.landing.stop()
      const out: Uint8Array[] = this.queued.splice(0)
      const rest = this.landing.takeAll()
      if (rest) out.push(rest)
      return out
    }
    if (this.quiesced) return []
    const h = (this.input as unknown as Internal)._handle
    if (!h || typeof h.readStop !== 'function') {
      // The handle is gone (a pipe at EOF): nothing reads any more, but what
      // was read before still belongs to the caller.
      const out: Uint8Array[] = []
      if (this.leftover) out.push(this.leftover)
      this.leftover = null
      for (let c = this.input.read() as Buffer | null; c; c = this.input.read() as Buffer | null) out.push(c)
      return out
    }
    const inst = this.input as unknown as Internal
    // While quiesced nothing may read the fd behind the caller's back, and
    // Readable.read() would restart the handle through _read.
    this.quiesced = inst._read
    inst._read = () => {}
    if (h.reading) {
      h.reading = false
      h.readStop()
    }
    const out: Uint8Array[] = []
    if (this.leftover) out.push(this.leftover)
    this.leftover = null
    for (let c = this.input.read() as Buffer | null; c; c = this.input.read() as Buffer | null) out.push(c)
    return out
  }

  resumeReads(): void {
    if (!this.quiesced) return
    if (this.landing) {
      this.quiesced = null
      return
    }
    const inst = this.input as unknown as Internal
    inst._read = this.quiesced
    this.quiesced = null
    // A read() while quiesced called the no-op _read, which left the stream
    // marked as reading: it would never ask the handle for data again.
    const rs = (this.input as unknown as { _readableState?: { reading: boolean } })._readableState
    if (rs) rs.reading = false
    if (!this.input.destroyed) this.input.read(0)
  }

  endWrites(): Promise<void> {
    if (this.output.writableFinished || this.output.destroyed) return Promise.resolve()
    return new Promise(resolve => this.output.end(() => resolve()))
  }

  shutdown(): void {
    this.error ??= new StreamError('ECANCELED', `${this.description}: channel shut down`)
    // Before the fds close: native transfers on them hold references of their own.
    wakeSocket(this.fd)
    if (this.writeFd !== this.fd) wakeSocket(this.writeFd)
    this.input.destroy()
    if ((this.output as unknown) !== this.input) this.output.destroy()
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    const waitClose = (s: Readable | Writable) =>
      s.closed ? Promise.resolve() : new Promise<void>(r => s.once('close', () => r()))
    const ws = [waitClose(this.input)]
    if ((this.output as unknown) !== this.input) ws.push(waitClose(this.output))
    this.input.destroy()
    if ((this.output as unknown) !== this.input) this.output.destroy()
    await Promise.all(ws)
    if (this.onExtraClose) await this.onExtraClose()
  }
}
