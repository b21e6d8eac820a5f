// A running microVM dirtying its working set while it migrates: iterations,
// total time, downtime, bytes sent per byte of RAM, with and without
// auto-converge. The dirty rate is set by the size of the set the guest
// keeps rewriting (its vCPU writes as fast as it can).
import { runPair } from '../lib/pair.js'
import { summarize, type Summary } from '../lib/stats.js'
import type { BenchContext } from '../lib/context.js'

export interface LiveRow {
  ramSize: number
  workingSet: number
  autoConverge: boolean
  downtimeLimitMs: number
  completed: number
  runs: number
  iterations?: Summary
  totalTimeMs?: Summary
  downtimeMs?: Summary
  transferredPerRam?: Summary
  dirtyPagesRate?: Summary
  finalThrottle?: Summary
  rssSourceMiB?: Summary
  rssDestMiB?: Summary
  /** Bytes still to send after each pre-copy round, from the last run. */
  pending: number[]
  errors: string[]
}

export const LIVE_LIMIT_MS = 50

export async function runLive(ctx: BenchContext, ramSize: number, workingSets: number[], reps: number): Promise<LiveRow[]> {
  const rows: LiveRow[] = []
  for (const ws of workingSets) {
    for (const autoConverge of [false, true]) {
      const row: LiveRow = { ramSize, workingSet: ws, autoConverge, downtimeLimitMs: LIVE_LIMIT_MS, completed: 0, runs: reps, pending: [], errors: [] }
      const acc = { it: [] as number[], tt: [] as number[], dt: [] as number[], tr: [] as number[], dr: [] as number[], th: [] as number[], rs: [] as number[], rd: [] as number[] }
      for (let i = 0; i < reps; i++) {
        try {
          const r = await runPair({ kind: 'live', size: ramSize, workingSet: ws, autoConverge, downtimeLimitMs: LIVE_LIMIT_MS, maxIterations: 40 }, 10 * 60 * 1000)
          row.pending = r.src.pending
          const s = r.src.stats
          acc.it.push(s.iterations)
          acc.tt.push(s.totalTime)
          acc.tr.push(s.transferred / ramSize)
          acc.dr.push(s.dirtyPagesRate)
          acc.rs.push(r.src.maxRss / (1 << 20))
          if (r.src.error || !r.dst) throw new Error(r.src.error ?? 'no destination result')
          row.completed++
          if (s.downtime !== undefined) acc.dt.push(s.downtime)
          acc.th.push(s.cpuThrottlePercentage)
          acc.rd.push(r.dst.maxRss / (1 << 20))
        } catch (e) {
          row.errors.push((e as Error).message)
        }
      }
      const S = (a: number[]) => (a.length ? summarize(a) : undefined)
      Object.assign(row, {
        iterations: S(acc.it), totalTimeMs: S(acc.tt), downtimeMs: S(acc.dt), transferredPerRam: S(acc.tr),
        dirtyPagesRate: S(acc.dr), finalThrottle: S(acc.th), rssSourceMiB: S(acc.rs), rssDestMiB: S(acc.rd),
      })
      ctx.log(`  live ws ${ws / 2 ** 20} MiB auto-converge ${autoConverge ? 'on ' : 'off'}: ${row.completed}/${reps} completed` +
        (row.downtimeMs ? `, downtime ${row.downtimeMs.median.toFixed(1)} ms, ${row.iterations!.median} iterations` : '') +
        (row.errors.length ? ` (${row.errors[0]})` : ''))
      rows.push(row)
    }
  }
  return rows
}
