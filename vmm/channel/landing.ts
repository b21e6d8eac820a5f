// Reads from a net.Socket into one buffer of the channel's own, through the
// path Node uses for its `onread` option, instead of a Readable that allocates
// a fresh 64 KiB Buffer per read and keeps them queued: no allocation or GC per
// read, and each read(2) takes as much as the landing buffer holds. The kernel
// reads only while a caller waits for data (backpressure as in paused mode).
//
// Node exposes `onread` only for sockets it creates from options, not for the
// ones a server accepts or a child's pipes, so this switches an existing
// socket over through the same per-instance slots the option fills. When
// those slots are not there (another Node), `attach` returns null and the
// channel keeps reading through the Readable.
import { Socket } from 'node:net'
import type { Readable } from 'node:stream'

interface ReadHandle {
  reading?: boolean
  readStart(): number
  readStop(): number
  useUserBuffer(b: Uint8Array): void
}

type Slots = { kBuffer: symbol; kBufferCb: symbol; kBufferGen: symbol }

/** Default landing buffer size: about what loopback TCP has ready per wake-up. */
export const LANDING_SIZE = 1 << 20

function slotsOf(s: Socket): Slots | null {
  const find = (name: string) => Object.getOwnPropertySymbols(s).find(x => x.description === name)
  const kBuffer = find('kBuffer')
  const kBufferCb = find('kBufferCb')
  const kBufferGen = find('kBufferGen')
  return kBuffer && kBufferCb && kBufferGen ? { kBuffer, kBufferCb, kBufferGen } : null
}

export class LandingReader {
  private readonly landing: Buffer
  private start = 0
  private end = 0
  private waiter: ((n: number) => void) | null = null

  private constructor(private readonly socket: Socket, private readonly handle: ReadHandle, size: number) {
    this.landing = Buffer.allocUnsafe(size)
  }

  /**
   * Switch `input` to landing-buffer reads. Chunks the Readable already holds
   * are handed back in `queued` (they come before anything read later).
   */
  static attach(input: Readable, size = LANDING_SIZE): { reader: LandingReader; queued: Buffer[] } | null {
    if (!(input instanceof Socket)) return null
    const s = input as Socket & Record<symbol, unknown> & { _handle?: Partial<ReadHandle> | null }
    const h = s._handle
    if (!h || typeof h.useUserBuffer !== 'function' || typeof h.readStart !== 'function' || typeof h.readStop !== 'function') return null
    const slots = slotsOf(s)
    if (!slots || s[slots.kBuffer]) return null
    const queued: Buffer[] = []
    for (let c = s.read() as Buffer | null; c; c = s.read() as Buffer | null) queued.push(c)
    const r = new LandingReader(s, h as ReadHandle, size)
    s[slots.kBuffer] = r.landing
    s[slots.kBufferCb] = (n: number) => r.arrived(n)
    s[slots.kBufferGen] = null
    h.useUserBuffer(r.landing)
    r.stop()
    return { reader: r, queued }
  }

  /** Bytes read ahead and not yet taken. */
  get buffered(): number {
    return this.end - this.start
  }

  /** Copy up to `length` buffered bytes into buf; 0 when none are buffered. */
  take(buf: Uint8Array, offset: number, length: number): number {
    const n = Math.min(length, this.end - this.start)
    if (n <= 0) return 0
    this.landing.copy(buf, offset, this.start, this.start + n)
    this.start += n
    return n
  }

  /** Everything buffered, in place: valid until the next wait(). */
  lendAll(): Buffer | null {
    if (this.end === this.start) return null
    const b = this.landing.subarray(this.start, this.end)
    this.start = this.end
    return b
  }

  /** Everything buffered, as a copy (for a caller about to read the fd itself). */
  takeAll(): Buffer | null {
    if (this.end === this.start) return null
    const b = Buffer.from(this.landing.subarray(this.start, this.end))
    this.start = this.end = 0
    return b
  }

  /**
   * Resolves once the landing buffer holds data (n > 0), or 0 when the socket
   * ended, closed or failed (the channel tells which from its own state).
   * One waiter at a time.
   */
  wait(): Promise<number> {
    if (this.end > this.start) return Promise.resolve(this.end - this.start)
    return new Promise(resolve => {
      this.waiter = resolve
      if (!this.handle.reading && !this.socket.destroyed) {
        this.handle.reading = true
        const err = this.handle.readStart()
        if (err) this.wake(0)
      }
    })
  }

  /** Resolve a waiter with nothing (end, close, error). */
  wake(n = 0): void {
    const w = this.waiter
    this.waiter = null
    w?.(n)
  }

  /** Stop reading from the kernel until the next wait(). */
  stop(): void {
    if (this.handle.reading) {
      this.handle.reading = false
      this.handle.readStop()
    }
  }

  private arrived(n: number): boolean {
    // Reads run only while the buffer is empty, so the data sits at offset 0.
    this.start = 0
    this.end = n
    this.wake(n)
    // false: Node stops the handle; the next wait() starts it again.
    return false
  }
}
