// Run control of the microVM's vCPU: VM start/stop and auto-converge.
//
// The throttle duty-cycles the vCPU the way QEMU's cpu_throttle does: run a
// 10 ms slice, then sleep slice * p / (100 - p). The workload's `spin` knob
// was the other candidate, but its effect depends on the cost of one
// iteration, which differs between the vCPUs and (under KVM) is dominated by
// the host's write-protection faults; time slicing cuts the dirty rate by
// the requested share whatever the vCPU, which is what auto-converge needs.
// Every vCPU call goes through one queue, so a throttle tick can never race
// a VM stop.
import type { Vcpu } from '../machine/index.js'

export const THROTTLE_SLICE_MS = 10
export const MAX_THROTTLE = 99

export interface ThrottleStats {
  percent: number
  /** Duty cycles completed since the VM last started. */
  cycles: number
  /** Time the throttle kept the vCPU paused, ms. */
  pausedMs: number
}

export class VcpuRunner {
  private queue: Promise<unknown> = Promise.resolve()
  private vmRunning = false
  private pct = 0
  private gen = 0
  private timer: NodeJS.Timeout | undefined
  private pausedByThrottle = false
  private pausedAt = 0
  private st = { cycles: 0, pausedMs: 0 }

  constructor(private readonly vcpu: Vcpu, private readonly sliceMs = THROTTLE_SLICE_MS) {}

  private op<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn)
    this.queue = run.catch(() => undefined)
    return run
  }

  get percent(): number {
    return this.pct
  }

  stats(): ThrottleStats {
    return { percent: this.pct, ...this.st }
  }

  async vmStart(): Promise<void> {
    this.vmRunning = true
    this.st = { cycles: 0, pausedMs: 0 }
    await this.op(async () => {
      this.pausedByThrottle = false
      await this.vcpu.start()
    })
    this.schedule()
  }

  /** Stop at an iteration boundary, where RAM, counter and checksum agree. */
  async vmStop(): Promise<void> {
    this.vmRunning = false
    this.cancelTimer()
    await this.op(async () => {
      if (this.pausedByThrottle) this.st.pausedMs += performance.now() - this.pausedAt
      this.pausedByThrottle = false
      const s = await this.vcpu.quiesce()
      if (s.reason === 'error') throw new Error(`vCPU stopped with an error: ${s.error ?? 'unknown'}`)
    })
  }

  setThrottle(percent: number): void {
    if (!Number.isFinite(percent) || percent < 0 || percent > MAX_THROTTLE) {
      throw new RangeError(`throttle ${percent}% is outside 0..${MAX_THROTTLE}`)
    }
    this.pct = Math.round(percent)
    if (this.vmRunning) this.schedule()
  }

  private cancelTimer(): void {
    this.gen++
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
  }

  private schedule(): void {
    this.cancelTimer()
    const gen = this.gen
    if (this.pct === 0) {
      if (this.pausedByThrottle) void this.resume(gen)
      return
    }
    if (this.pausedByThrottle) {
      this.timer = setTimeout(() => void this.resume(gen).then(() => this.schedule2(gen)), this.sleepMs())
    } else {
      this.schedule2(gen)
    }
  }

  private sleepMs(): number {
    return (this.sliceMs * this.pct) / (100 - this.pct)
  }

  /** Run phase, then pause phase, then again, until the generation changes. */
  private schedule2(gen: number): void {
    if (gen !== this.gen || !this.vmRunning) return
    this.timer = setTimeout(() => {
      void this.op(async () => {
        if (gen !== this.gen || !this.vmRunning || this.pausedByThrottle) return
        await this.vcpu.pause()
        this.pausedByThrottle = true
        this.pausedAt = performance.now()
      }).then(() => {
        if (gen !== this.gen || !this.vmRunning) return
        this.timer = setTimeout(() => void this.resume(gen).then(() => {
          this.st.cycles++
          this.schedule2(gen)
        }), this.sleepMs())
      }, () => undefined)
    }, this.sliceMs)
  }

  private resume(gen: number): Promise<void> {
    return this.op(async () => {
      if (gen !== this.gen || !this.vmRunning || !this.pausedByThrottle) return
      this.st.pausedMs += performance.now() - this.pausedAt
      this.pausedByThrottle = false
      await this.vcpu.start()
    }).catch(() => undefined)
  }
}
