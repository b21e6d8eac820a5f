// Bandwidth cap in QEMU's model: a budget of max/10 bytes per 100 ms window.
// Unlike QEMU, bytes over the budget are carried into the next windows, so a
// single large write cannot push the average above the cap.
import type { Clock } from './clock.js'

export const RATE_WINDOW_MS = 100

export class RateLimiter {
  private used = 0
  private windowStart: number
  private halted = false
  /** Every byte ever accounted, for statistics. */
  total = 0

  constructor(private readonly clock: Clock, private bytesPerSecond = 0) {
    if (!Number.isFinite(bytesPerSecond) || bytesPerSecond < 0) throw new RangeError(`max bandwidth must be >= 0 bytes/s, got ${bytesPerSecond}`)
    this.windowStart = clock.now()
  }

  get maxBandwidth(): number {
    return this.bytesPerSecond
  }

  set maxBandwidth(bps: number) {
    if (!Number.isFinite(bps) || bps < 0) throw new RangeError(`max bandwidth must be >= 0 bytes/s, got ${bps}`)
    this.bytesPerSecond = bps
  }

  /** Bytes allowed per window; Infinity when unlimited. */
  get budget(): number {
    return this.bytesPerSecond === 0 ? Infinity : this.bytesPerSecond * (RATE_WINDOW_MS / 1000)
  }

  account(n: number): void {
    this.used += n
    this.total += n
  }

  private roll(): void {
    const now = this.clock.now()
    const windows = Math.floor((now - this.windowStart) / RATE_WINDOW_MS)
    if (windows <= 0) return
    this.windowStart += windows * RATE_WINDOW_MS
    this.used = Math.max(0, this.used - windows * this.budget)
  }

  /**
   * No budget from now on, whatever the bandwidth: every loop that stops at
   * the limit (QEMU's rule for live handlers) ends its section at its next
   * check, so a cancelled migration reaches a section boundary soon.
   */
  halt(): void {
    this.halted = true
  }

  /**
   * Bytes that may still go out in the current window before exceeded()
   * turns true (Infinity when unlimited); for code that cuts its own writes
   * at the limit, such as the native RAM sender.
   */
  allowance(): number {
    if (this.halted) return 0
    if (this.bytesPerSecond === 0) return Infinity
    this.roll()
    return Math.max(0, this.budget - this.used)
  }

  /** True when the current window's budget is spent. */
  exceeded(): boolean {
    if (this.halted) return true
    if (this.bytesPerSecond === 0) return false
    this.roll()
    return this.used >= this.budget
  }

  /** Sleep until there is budget again; returns the time slept in ms. */
  async wait(): Promise<number> {
    let slept = 0
    // Halted, no budget ever comes back: waiting would never end.
    while (!this.halted && this.exceeded()) {
      const ms = this.windowStart + RATE_WINDOW_MS - this.clock.now()
      await this.clock.sleep(ms)
      slept += ms
    }
    return slept
  }
}
