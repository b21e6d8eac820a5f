// The two decisions of the pre-copy loop, kept free of I/O so they can be
// tested on numbers: when to switch over, and when to throttle the guest.

/**
 * Bytes per millisecond the link moved over a window, smoothed so one slow
 * round (a GC pause, a busy core) does not swing the switchover decision.
 */
export class BandwidthMeter {
  private rate = 0

  /** Record `bytes` sent in `ms`; returns the current estimate (bytes/ms). */
  sample(bytes: number, ms: number): number {
    if (ms <= 0 || bytes <= 0) return this.rate
    const r = bytes / ms
    this.rate = this.rate === 0 ? r : 0.5 * this.rate + 0.5 * r
    return this.rate
  }

  get bytesPerMs(): number {
    return this.rate
  }
}

export interface SwitchoverInput {
  /** Bytes still to send. */
  pending: number
  /** Link estimate, bytes/ms (0 = unknown yet). */
  bytesPerMs: number
  downtimeLimitMs: number
  /** User-set bandwidth for the switchover, bytes/s (0 = use the estimate). */
  availSwitchoverBandwidth: number
  /**
   * Downtime that is not sending data, ms: the destination's own checks
   * before READY, as it announced them (0: none announced).
   */
  reserveMs?: number
}

const perMsOf = (i: SwitchoverInput) => (i.availSwitchoverBandwidth > 0 ? i.availSwitchoverBandwidth / 1000 : i.bytesPerMs)

/**
 * The largest pending size that still fits in the downtime limit: QEMU's
 * threshold_size, less what the reserve takes of the limit (QEMU gives the
 * whole limit to data, so the destination's work after the stream breaks it).
 */
export function thresholdBytes(i: SwitchoverInput): number {
  return perMsOf(i) * Math.max(0, i.downtimeLimitMs - (i.reserveMs ?? 0))
}

/** What the downtime would be if the VM stopped now, ms. */
export function expectedDowntimeMs(i: SwitchoverInput): number {
  const perMs = perMsOf(i)
  const reserve = i.reserveMs ?? 0
  if (i.pending === 0) return reserve
  return perMs > 0 ? i.pending / perMs + reserve : Number.POSITIVE_INFINITY
}

/** What the kernel measured of a TCP link (Channel.linkStats): µs, and a count. */
export interface LinkMeasure {
  rttUs: number
  rttVarUs: number
  rtoUs: number
  totalRetrans: number
}

/**
 * Downtime the handover's messages cost beyond the data, ms, from what the
 * kernel measured of the link: two round trips (READY back; GO out and
 * STARTED back), each with four deviations as TCP's own timer allows; and,
 * once the link has lost a segment (a retransmission so far), one
 * retransmission timeout for each place a loss has nothing behind it to be
 * noticed by: the stream's last bytes, READY and GO. 0 without a measure
 * (no TCP underneath). On a clean LAN this is well under a millisecond; at
 * 1% loss with an RTO of 12 ms, about 45 ms.
 */
export function handoverReserveMs(s: LinkMeasure | null | undefined): number {
  if (!s) return 0
  const roundTrip = (s.rttUs + 4 * s.rttVarUs) / 1000
  return 2 * roundTrip + (s.totalRetrans > 0 ? (3 * s.rtoUs) / 1000 : 0)
}

export interface ThrottleParams {
  cpuThrottleInitial: number
  cpuThrottleIncrement: number
  maxCpuThrottle: number
}

/**
 * QEMU's auto-converge rule (migration/ram.c, migration_trigger_throttle):
 * when the guest dirtied more than half of what the link moved in a sync
 * period, twice, raise the throttle (first to the initial value, then by the
 * increment, up to the maximum).
 */
export class AutoConverge {
  private highCount = 0
  private percent = 0

  constructor(private readonly p: ThrottleParams) {}

  get throttle(): number {
    return this.percent
  }

  /** One sync period: bytes dirtied and bytes sent in it. Returns the new throttle, percent. */
  period(dirtied: number, sent: number): number {
    if (dirtied > sent / 2) {
      if (++this.highCount >= 2) {
        this.highCount = 0
        this.percent = this.percent === 0
          ? Math.min(this.p.cpuThrottleInitial, this.p.maxCpuThrottle)
          : Math.min(this.percent + this.p.cpuThrottleIncrement, this.p.maxCpuThrottle)
      }
    }
    return this.percent
  }
}
