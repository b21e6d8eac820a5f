// The microVM's plain device: a periodic timer whose state is described
// declaratively (vmm/vmstate) and migrated as one FULL section. Ticks advance
// with host time only while the VM runs, like QEMU's virtual clock, so a
// stopped VM's timer reads the same on both sides of a switchover.
import type { State, VMStateDescription } from '../vmstate/types.js'

export const TIMER_SCRATCH_REGS = 4

/** The migrated fields (vmstate reads and writes these by name). */
export interface TimerRegs extends State {
  ticks: bigint
  /** bit 0: enabled, bit 1: alarm interrupt enabled. */
  config: number
  /** Tick period in microseconds. */
  periodUs: number
  /** Guest-visible scratch registers. */
  scratch: number[]
  /** Absolute tick of the armed alarm; 0 = none (the subsection is sent only when armed). */
  alarmAt: bigint
}

export const timerAlarmVmsd: VMStateDescription = {
  name: 'microvm-timer/alarm',
  versionId: 1,
  needed: (s) => (s as TimerRegs).alarmAt !== 0n,
  fields: [{ name: 'alarmAt', type: 'uint64' }],
}

export const timerVmsd: VMStateDescription = {
  name: 'microvm-timer',
  versionId: 1,
  fields: [
    { name: 'ticks', type: 'uint64' },
    // Only the two bits this timer has: anything else came from another device, or from a corrupted stream.
    { name: 'config', type: 'uint32', check: (v) => ((v as number) & ~0b11 ? `bits 0x${((v as number) & ~0b11).toString(16)} are not a timer config (only enabled 1, alarm 2)` : undefined) },
    // A period of 0 ticks infinitely often: the timer could never fold its time again, so the VM could never stop.
    { name: 'periodUs', type: 'uint32', min: 1 },
    { name: 'scratch', type: 'uint32', count: TIMER_SCRATCH_REGS },
  ],
  subsections: [timerAlarmVmsd],
}

export interface TimerSnapshot {
  ticks: string
  config: number
  periodUs: number
  scratch: number[]
  alarmAt: string
}

export class TimerDevice {
  readonly regs: TimerRegs
  /** Host time (ms, monotonic) when the VM last started running; undefined while stopped. */
  private runningSince: number | undefined
  /** Fraction of a tick carried between stops, in microseconds, so stop/start does not lose time. */
  private carryUs = 0
  readonly vmsd: VMStateDescription

  constructor(opts: { periodUs?: number; alarmInTicks?: number } = {}, private readonly now: () => number = () => performance.now()) {
    const periodUs = opts.periodUs ?? 1000
    if (!Number.isInteger(periodUs) || periodUs < 1 || periodUs > 0xffffffff) {
      throw new RangeError(`timer periodUs ${periodUs} must be an integer in 1..2^32-1`)
    }
    this.regs = {
      ticks: 0n,
      config: 0b11,
      periodUs,
      scratch: [0x1234, 0, 0, 0xfeedf00d],
      alarmAt: opts.alarmInTicks ? BigInt(opts.alarmInTicks) : 0n,
    }
    // preSave folds the running time in so a save while running is still exact.
    this.vmsd = { ...timerVmsd, preSave: () => this.fold() }
  }

  get running(): boolean {
    return this.runningSince !== undefined
  }

  /** Bring `ticks` up to date with the host time spent running. */
  private fold(): void {
    if (this.runningSince === undefined || (this.regs.config & 1) === 0) return
    const t = this.now()
    const us = (t - this.runningSince) * 1000 + this.carryUs
    const whole = Math.floor(us / this.regs.periodUs)
    this.regs.ticks += BigInt(whole)
    this.carryUs = us - whole * this.regs.periodUs
    this.runningSince = t
    if (this.regs.alarmAt !== 0n && this.regs.ticks >= this.regs.alarmAt) {
      // The alarm fired: a guest would take an interrupt; record it in scratch[1] and disarm.
      this.regs.scratch[1] = (this.regs.scratch[1]! + 1) >>> 0
      this.regs.alarmAt = 0n
    }
  }

  start(): void {
    if (this.runningSince === undefined) this.runningSince = this.now()
  }

  stop(): void {
    this.fold()
    this.runningSince = undefined
  }

  ticks(): bigint {
    this.fold()
    return this.regs.ticks
  }

  /** A JSON-friendly copy (bigints as decimal strings). */
  snapshot(): TimerSnapshot {
    this.fold()
    return {
      ticks: this.regs.ticks.toString(),
      config: this.regs.config,
      periodUs: this.regs.periodUs,
      scratch: [...this.regs.scratch],
      alarmAt: this.regs.alarmAt.toString(),
    }
  }
}
