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

export function statsRows(s: MigrationStats): [string, string][] {
  const rows: [string, string][] = [
    ['status', s.status],
    ['total time', ms(s.totalTime)],
    ['setup time', ms(s.setupTime)],
    ['downtime', s.downtime === undefined ? '-' : `${ms(s.downtime)}${s.downtimeMeasured ? '' : ' (source estimate)'}`],
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
