// Human output of vmm-migrate: sizes, the stats table, the progress line.
import type { MigrationStats } from '../migration/types.js'

export function bytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (Math.abs(v) >= 1024 && i < u.length - 1) {
    v /= 1024
    i++
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${u[i]}`
}

const ms = (v: number | undefined) => (v === undefined ? '-' : `${v.toFixed(v < 10 ? 2 : 0)} ms`)

export function table(rows: [string, string][]): string {
  const w = Math.max(...rows.map(([k]) => k.length))
  return rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n')
}

/**
 * The downtime against its limit, split into what the migration took and
 * what the destination's own verification (hashing RAM and device before
 * its guest ran) added: both happen while the guest is stopped.
 */
export interface DowntimeReport {
  /** The downtime limit the migration ran with, ms. */
  limitMs: number
  /** The downtime, ms (absent when the migration never stopped the VM). */
  totalMs?: number
  /** totalMs measured end to end (true) or the source's own estimate, which ends before the destination starts (false). */
  measured?: boolean
  /** The part of totalMs that is the migration's: totalMs - verificationMs. */
  migrationMs?: number
  /** The part of a measured totalMs the destination spent verifying, as it reported (0: it verified nothing). */
  verificationMs?: number
  /** totalMs <= limitMs. */
  withinLimit?: boolean
}

const r3 = (v: number) => Math.round(v * 1000) / 1000

export function downtimeReport(s: MigrationStats, limitMs: number): DowntimeReport {
  if (s.downtime === undefined) return { limitMs }
  const measured = s.downtimeMeasured === true
  const verificationMs = measured ? s.downtimeVerification ?? 0 : undefined
  return {
    limitMs,
    totalMs: s.downtime,
    measured,
    migrationMs: r3(s.downtime - (verificationMs ?? 0)),
    verificationMs,
    withinLimit: s.downtime <= limitMs,
  }
}

/** One line: "62 ms (limit 300 ms): migration 38 ms + destination's verification 24 ms". */
export function downtimeText(d: DowntimeReport): string {
  if (d.totalMs === undefined) return `- (limit ${d.limitMs} ms)`
  const limit = d.withinLimit ? `limit ${d.limitMs} ms` : `OVER the ${d.limitMs} ms limit`
  if (!d.measured) return `${ms(d.totalMs)} (source estimate, ${limit})`
  return `${ms(d.totalMs)} (${limit}): migration ${ms(d.migrationMs)} + destination's verification ${ms(d.verificationMs)}`
}

/** The stats table; with `limitMs`, the downtime row shows the limit and the split. */
export function statsRows(s: MigrationStats, limitMs?: number): [string, string][] {
  const rows: [string, string][] = [
    ['status', s.status],
    ['total time', ms(s.totalTime)],
    ['setup time', ms(s.setupTime)],
    ['downtime', limitMs !== undefined ? downtimeText(downtimeReport(s, limitMs))
      : s.downtime === undefined ? '-' : `${ms(s.downtime)}${s.downtimeMeasured ? '' : ' (source estimate)'}`],
    ['expected downtime', ms(s.expectedDowntime)],
    ['transferred', bytes(s.transferred)],
    ['throughput', `${s.mbps.toFixed(0)} Mbps`],
    ['iterations', String(s.iterations)],
    ['dirty rate', `${Math.round(s.dirtyPagesRate)} pages/s`],
    ['cpu throttle', `${s.cpuThrottlePercentage}%`],
  ]
  for (const [name, d] of Object.entries(s.vfio ?? {})) {
    rows.push([`vfio ${name}`, `${bytes(d.bytesSaved)} (pre-copy ${bytes(d.precopyBytes)}, stop-copy ${bytes(d.stopCopyBytes)}), ${d.state}`])
  }
  rows.push(['dirty tracker', s.dirtyTracker ?? '-'])
  if (s.error) rows.push(['error', s.error])
  return rows
}

/** One line: a bar while on a TTY, plain text otherwise. */
export function progressLine(s: MigrationStats, width = 30): string {
  const total = s.transferred + s.remaining
  const frac = total > 0 ? Math.min(1, s.transferred / total) : 0
  const filled = Math.round(frac * width)
  const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`
  return `${bar} ${(frac * 100).toFixed(0).padStart(3)}%  iter ${s.iterations}  sent ${bytes(s.transferred)}  left ${bytes(s.remaining)}  ${s.mbps.toFixed(0)} Mbps  dirty ${Math.round(s.dirtyPagesRate)} p/s  throttle ${s.cpuThrottlePercentage}%`
}
