// Local migration (live update on one host) against a copying migration,
// both over a UNIX socket between two `vmm-migrate` processes, in the same
// run: a KVM microVM of each size, no VFIO device (RAM alone decides), no
// bandwidth limit, neither the source's RAM proof nor the destination's
// verification (each hashes all of RAM in the downtime, which would
// measure BLAKE3, not the handover). Downtime and total
// time are the source's own figures (the destination reports its start);
// peak RSS is each process's VmHWM, which for the local destination counts
// only the shared pages it touched (no page is copied into it); and PSS of
// both, read from /proc/PID/smaps_rollup the moment the source reports
// completion (both alive, the destination running the guest), which splits
// the pages both map between them, so the two add up to what the host holds.
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { JsonChild, pss } from '../lib/proc.js'
import { summarize, ratio, type Summary } from '../lib/stats.js'
import type { BenchContext } from '../lib/context.js'

/** Whole MiB of `n` bytes (>> 20 would wrap at 2 GiB). */
const mib = (n: number) => Math.floor(n / 2 ** 20)

export interface LocalRow {
  ramSize: number
  mode: 'local' | 'copy'
  runs: number
  completed: number
  downtimeMs?: Summary
  totalTimeMs?: Summary
  rssSourceMiB?: Summary
  rssDestMiB?: Summary
  /** PSS of each process when the source completed, and their sum. */
  pssSourceMiB?: Summary
  pssDestMiB?: Summary
  pssSumMiB?: Summary
  errors: string[]
}

export interface LocalRatio {
  ramSize: number
  /** local / copy, medians. */
  downtime: number
  totalTime: number
}

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../vmm/cli/main.js')

/** Events until one named `name` (or an error/failed one, which throws). */
async function until(c: JsonChild, name: string, timeoutMs: number, who: string): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const e = await c.next(Math.max(1, deadline - Date.now()))
    if (e.event === name) return e
    if (e.event === 'error' || e.event === 'failed') throw new Error(`${who}: ${String(e.message ?? (e.report as { error?: string })?.error ?? JSON.stringify(e)).slice(0, 300)}`)
  }
}

async function once(size: number, local: boolean, dir: string, timeoutMs: number): Promise<{ downtime: number; total: number; rssSrc: number; rssDst: number; pssSrc: number; pssDst: number }> {
  const common = ['--events', '--vcpu', 'kvm', '--ram', `${mib(size)}M`, '--device-state', '0', ...(local ? ['--local'] : [])]
  const sock = path.join(dir, `${local ? 'local' : 'copy'}-${mib(size)}.sock`)
  const dst = new JsonChild(MAIN, ['incoming', `unix:${sock}`, '--no-verify', '--run-after', '100', ...common])
  let src: JsonChild | undefined
  try {
    await until(dst, 'listening', 60_000, 'destination')
    src = new JsonChild(MAIN, ['migrate', `unix:${sock}`, '--run', '300', '--max-bandwidth', '0', '--no-ram-proof', ...common])
    const done = await until(src, 'completed', timeoutMs, 'source')
    const [ps, pd] = await Promise.all([pss(src.child.pid!), pss(dst.child.pid!)])
    const fin = await until(dst, 'completed', 60_000, 'destination')
    const stats = done.stats as { downtime?: number; totalTime: number }
    if (stats.downtime === undefined) throw new Error('source reported no downtime')
    const report = fin.report as { maxRssBytes?: number }
    return { downtime: stats.downtime, total: stats.totalTime, rssSrc: Number(done.maxRssBytes) / (1 << 20), rssDst: Number(report?.maxRssBytes) / (1 << 20), pssSrc: Number(ps) / (1 << 20), pssDst: Number(pd) / (1 << 20) }
  } finally {
    await src?.stop()
    await dst.stop()
  }
}

export async function runLocal(ctx: BenchContext, sizes: number[], reps: number): Promise<{ rows: LocalRow[]; ratios: LocalRatio[] }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-bench-local-'))
  const rows: LocalRow[] = []
  const ratios: LocalRatio[] = []
  try {
    for (const size of sizes) {
      const pair: Partial<Record<'local' | 'copy', LocalRow>> = {}
      // Alternated, so a drift of the machine's load touches both modes alike.
      const acc = { local: { dt: [] as number[], tt: [] as number[], rs: [] as number[], rd: [] as number[], ps: [] as number[], pd: [] as number[], sum: [] as number[] }, copy: { dt: [] as number[], tt: [] as number[], rs: [] as number[], rd: [] as number[], ps: [] as number[], pd: [] as number[], sum: [] as number[] } }
      for (const mode of ['local', 'copy'] as const) pair[mode] = { ramSize: size, mode, runs: reps, completed: 0, errors: [] }
      for (let i = 0; i < reps; i++) {
        for (const mode of ['local', 'copy'] as const) {
          try {
            const r = await once(size, mode === 'local', dir, 10 * 60 * 1000)
            const a = acc[mode]
            a.dt.push(r.downtime)
            a.tt.push(r.total)
            if (Number.isFinite(r.rssSrc)) a.rs.push(r.rssSrc)
            if (Number.isFinite(r.rssDst)) a.rd.push(r.rssDst)
            if (Number.isFinite(r.pssSrc) && Number.isFinite(r.pssDst)) {
              a.ps.push(r.pssSrc)
              a.pd.push(r.pssDst)
              a.sum.push(r.pssSrc + r.pssDst)
            }
            pair[mode]!.completed++
          } catch (e) {
            pair[mode]!.errors.push((e as Error).message)
          }
        }
      }
      const S = (a: number[]) => (a.length ? summarize(a) : undefined)
      for (const mode of ['local', 'copy'] as const) {
        const row = pair[mode]!
        const a = acc[mode]
        Object.assign(row, { downtimeMs: S(a.dt), totalTimeMs: S(a.tt), rssSourceMiB: S(a.rs), rssDestMiB: S(a.rd), pssSourceMiB: S(a.ps), pssDestMiB: S(a.pd), pssSumMiB: S(a.sum) })
        ctx.log(`  ${mode} ${mib(size)} MiB: ${row.completed}/${reps}` +
          (row.downtimeMs ? `, downtime ${row.downtimeMs.median.toFixed(1)} ms, total ${row.totalTimeMs!.median.toFixed(0)} ms` : '') +
          (row.rssDestMiB ? `, peak RSS src ${row.rssSourceMiB?.median.toFixed(0)} MiB dst ${row.rssDestMiB.median.toFixed(0)} MiB` : '') +
          (row.pssSumMiB ? `, PSS src ${row.pssSourceMiB!.median.toFixed(0)} + dst ${row.pssDestMiB!.median.toFixed(0)} = ${row.pssSumMiB.median.toFixed(0)} MiB` : '') +
          (row.errors.length ? ` (${row.errors[0]})` : ''))
        rows.push(row)
      }
      const l = pair.local!
      const c = pair.copy!
      if (l.downtimeMs && c.downtimeMs) {
        const r = { ramSize: size, downtime: ratio(l.downtimeMs, c.downtimeMs), totalTime: ratio(l.totalTimeMs!, c.totalTimeMs!) }
        ratios.push(r)
        ctx.log(`  ${mib(size)} MiB local/copy: downtime ${r.downtime.toFixed(3)}, total time ${r.totalTime.toFixed(3)}`)
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return { rows, ratios }
}
