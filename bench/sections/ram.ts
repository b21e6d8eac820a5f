// RAM migration throughput, ours against QEMU 7.2, same RAM size and content,
// both over loopback TCP, both paused, alternating which goes first; and both
// against the raw loopback limit for the same number of bytes.
import { makeRandomFile, removeRamFile } from '../lib/ramfile.js'
import { qemuMigrate, type QemuMigration } from '../lib/qemu.js'
import { runPair } from '../lib/pair.js'
import { loopbackOnce } from './limits.js'
import { mibps, ratio, summarize, type Summary } from '../lib/stats.js'
import type { BenchContext } from '../lib/context.js'

export interface SideFigures {
  MiBps: Summary
  totalTimeMs: Summary
  downtimeMs: Summary
  /** Bytes on the wire / RAM size. */
  transferredPerRam: number
  rssSourceMiB: Summary
  rssDestMiB: Summary
}

export interface RamRow {
  size: number
  linkMiBps: Summary
  ours?: SideFigures
  qemu?: SideFigures
  oursOverQemu?: number
  oursOverLink?: number
  qemuOverLink?: number
  errors: string[]
}

interface Run { ms: number; downtime: number; transferred: number; rssSrc: number; rssDst: number }

function figures(size: number, runs: Run[]): SideFigures {
  const M = 1 << 20
  return {
    MiBps: summarize(runs.map(r => mibps(size, r.ms))),
    totalTimeMs: summarize(runs.map(r => r.ms)),
    downtimeMs: summarize(runs.map(r => r.downtime)),
    transferredPerRam: runs[runs.length - 1].transferred / size,
    rssSourceMiB: summarize(runs.map(r => r.rssSrc / M)),
    rssDestMiB: summarize(runs.map(r => r.rssDst / M)),
  }
}

async function ours(size: number, file: string, verify: boolean): Promise<Run> {
  const r = await runPair({ kind: 'ram', size, file, verify }, 30 * 60 * 1000)
  if (r.src.error || !r.dst) throw new Error(`our migration failed: ${r.src.error ?? 'no destination result'}`)
  if (verify && r.src.digest !== r.dst.digest) throw new Error(`our migration of ${size} bytes: destination RAM differs from the source`)
  return { ms: r.src.stats.totalTime, downtime: r.src.stats.downtime ?? NaN, transferred: r.src.stats.transferred, rssSrc: r.src.maxRss, rssDst: r.dst.maxRss }
}

function fromQemu(q: QemuMigration): Run {
  return { ms: q.totalTimeMs, downtime: q.downtimeMs, transferred: q.transferred, rssSrc: q.rssSource, rssDst: q.rssDest }
}

export async function runRam(ctx: BenchContext, sizes: number[], qemuOk: boolean): Promise<RamRow[]> {
  const rows: RamRow[] = []
  for (const size of sizes) {
    const reps = size >= 1 << 30 ? Math.min(ctx.repeats, 3) : ctx.repeats
    ctx.log(`  RAM ${size / 2 ** 20} MiB: ours, QEMU and raw loopback, rotating order, x${reps}`)
    const row: RamRow = { size, linkMiBps: summarize([0]), errors: [] }
    let file: string
    try {
      file = await makeRandomFile(size)
    } catch (e) {
      ctx.skip(`ram/${size / 2 ** 20}MiB`, `cannot write the RAM content file: ${(e as Error).message}`)
      continue
    }
    const o: Run[] = []
    const q: Run[] = []
    const link: number[] = []
    const who3 = ['ours', 'qemu', 'link']
    try {
      for (let i = 0; i < reps; i++) {
        // Rotate the order so no one always gets the warmer caches, and so a
        // burst of load from elsewhere on the machine hits all three alike.
        const order = [...who3.slice(i % 3), ...who3.slice(0, i % 3)]
        for (const who of order) {
          try {
            if (who === 'ours') o.push(await ours(size, file, i === 0))
            else if (who === 'link') link.push(await loopbackOnce(size))
            else if (qemuOk) q.push(fromQemu(await qemuMigrate(size, file, 30 * 60 * 1000)))
          } catch (e) {
            row.errors.push(`${who}: ${(e as Error).message}`)
            ctx.log(`    ${who} failed: ${(e as Error).message}`)
          }
        }
      }
    } finally {
      removeRamFile(file)
    }
    if (!link.length) {
      ctx.skip(`ram/${size / 2 ** 20}MiB`, `the loopback limit could not be measured: ${row.errors.join('; ')}`)
      continue
    }
    row.linkMiBps = summarize(link)
    if (o.length) row.ours = figures(size, o)
    if (q.length) row.qemu = figures(size, q)
    if (row.ours && row.qemu) row.oursOverQemu = ratio(row.ours.MiBps, row.qemu.MiBps)
    if (row.ours) row.oursOverLink = ratio(row.ours.MiBps, row.linkMiBps)
    if (row.qemu) row.qemuOverLink = ratio(row.qemu.MiBps, row.linkMiBps)
    rows.push(row)
  }
  return rows
}
