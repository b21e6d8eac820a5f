// The link watchdog: a migration's bound on silence. A side that expects
// bytes from its peer and receives none for `timeoutMs` declares the link
// dead and fails the stream, which wakes every wait on it (socket reads and
// writes, native transfers, return-path reads). TCP alone would notice a
// black-holed peer only after its retransmission timeout (many minutes with
// Linux defaults), and a peer that is alive but stopped (SIGSTOP) never.
import type { MigStream } from '../stream/stream.js'
import { StreamError } from '../stream/errors.js'

export class LinkWatchdog {
  private timer: NodeJS.Timeout | undefined
  private last: number
  private armed = false
  private period = 0
  private checkedAt = 0
  /** ms of silence counted so far (see check). */
  private silent = 0
  /** Set once it fired: the message the stream failed with. */
  fired: string | undefined

  /**
   * `progress` returns a count that grows whenever bytes arrive from the peer
   * (the stream's read offset). `onFire` runs once, after the stream failed.
   */
  constructor(
    private readonly f: MigStream, private readonly timeoutMs: number, private readonly progress: () => number,
    private readonly what: string, private readonly onFire?: (why: string) => void,
  ) {
    this.last = progress()
  }

  /** Start (or restart) counting silence from now. */
  arm(): void {
    if (this.fired || this.timeoutMs <= 0) return
    this.armed = true
    this.last = this.progress()
    this.silent = 0
    this.checkedAt = performance.now()
    if (!this.timer) {
      // A quarter of the bound: the stream fails at most 1.25 x timeoutMs after the last byte.
      this.period = Math.max(10, Math.min(1000, this.timeoutMs / 4))
      this.timer = setInterval(() => this.check(), this.period)
      this.timer.unref?.()
    }
  }

  /** Stop counting: this side is busy with its own work, not waiting for the peer. */
  disarm(): void {
    this.armed = false
  }

  stop(): void {
    this.armed = false
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
  }

  private check(): void {
    if (!this.armed || this.fired) return
    const p = this.progress()
    const t = performance.now()
    // Silence is counted in this process's running time: a tick that came
    // late (CPU starvation, a long GC, a SIGSTOP of this side) counts as at
    // most two periods, since the peer's bytes may have been waiting unread.
    this.silent += Math.min(t - this.checkedAt, 2 * this.period)
    this.checkedAt = t
    if (p !== this.last) {
      this.last = p
      this.silent = 0
      return
    }
    if (this.silent < this.timeoutMs) return
    // Timers run before the event loop polls for I/O: after a busy stretch
    // the peer's bytes may be ready but not read yet. Decide after the poll.
    setImmediate(() => this.confirm())
  }

  private confirm(): void {
    if (!this.armed || this.fired) return
    const p = this.progress()
    if (p !== this.last) {
      this.last = p
      this.silent = 0
      return
    }
    const why = `no data from the ${this.what} for ${Math.round(this.silent)} ms (link-timeout ${this.timeoutMs} ms): the link or the peer is down`
    this.fired = why
    this.stop()
    this.f.setError(new StreamError('ETIMEDOUT', why))
    this.f.channel.shutdown()
    this.onFire?.(why)
  }
}
