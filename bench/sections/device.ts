// VFIO device state: throughput of the full save/load path against a raw
// splice copy of the same bytes and against what the emulated device alone
// produces; and downtime against device-state size for STOP_COPY only,
// PRE_COPY, and PRE_COPY with switchover-ack, each against its limit.
import * as path from 'node:path'
import { runJson } from '../lib/proc.js'
import { WORKERS_DIR } from '../lib/paths.js'
import { runPair } from '../lib/pair.js'
import { spliceOnce } from './limits.js'
import { mibps, ratio, summarize, type Summary } from '../lib/stats.js'
import { repeat, type BenchContext } from '../lib/context.js'

export interface DeviceThroughputRow {
  size: number
  oursMiBps: Summary
  /**
   * Ours with the data fds read and written, never spliced: the path a
   * kernel VFIO data fd takes (its file has no splice_read/splice_write).
   */
  oursCopyMiBps: Summary
  spliceMiBps: Summary
  /** The emulated device alone (data fd -> /dev/null through the transfer engine): how fast it produces its state. */
  deviceOnlyMiBps: Summary
  rssMiB: Summary
  /** Peak RSS of the same migration with a 4 KiB state: what the state size adds is measured against it. */
  rssBaselineMiB: number
  /** Median peak RSS minus the baseline (target <= 64 MiB for any state size). */
  rssOverBaselineMiB: number
  oursOverSplice: number
  oursCopyOverSplice: number
  oursOverDeviceOnly: number
}

export type DowntimeMode = 'stop-copy' | 'pre-copy' | 'pre-copy+switchover-ack'

export interface DowntimePoint {
  mode: DowntimeMode
  size: number
  downtimeLimitMs: number
  downtimeMs?: Summary
  totalTimeMs?: Summary
  stopCopyBytes?: number
  withinLimit?: boolean
  errors: string[]
}

async function worker(size: number, mode: string): Promise<{ bytes: number; ms: number; maxRss: number }> {
  const r = await runJson(process.execPath, [path.join(WORKERS_DIR, 'device-throughput.js'), String(size), mode], 30 * 60 * 1000)
  const o = r.lines[0] as { bytes?: number; ms?: number; maxRss?: number }
  if (typeof o?.ms !== 'number' || typeof o.bytes !== 'number') throw new Error(`device-throughput: unexpected output ${r.stdout.slice(0, 200)}`)
  return o as { bytes: number; ms: number; maxRss: number }
}

export async function runDeviceThroughput(ctx: BenchContext, size: number): Promise<DeviceThroughputRow> {
  ctx.log(`  device state ${size / 2 ** 20} MiB: ours, ours by read/write, raw splice, device alone, rotating order, x${ctx.repeats}`)
  const ours: number[] = []
  const copy: number[] = []
  const only: number[] = []
  const raw: number[] = []
  const rss: number[] = []
  const who4 = ['ours', 'copy', 'splice', 'device']
  await repeat(ctx.repeats, async i => {
    for (const who of [...who4.slice(i % 4), ...who4.slice(0, i % 4)]) {
      if (who === 'ours') {
        const r = await worker(size, i === 0 ? 'verify' : 'migrate')
        ours.push(mibps(size, r.ms))
        rss.push(r.maxRss / (1 << 20))
      } else if (who === 'copy') {
        copy.push(mibps(size, (await worker(size, i === 0 ? 'verify-copy' : 'migrate-copy')).ms))
      } else if (who === 'splice') raw.push(await spliceOnce(size))
      else only.push(mibps(size, (await worker(size, 'source-only')).ms))
    }
  })
  const splice = summarize(raw)
  const o = summarize(ours)
  const c = summarize(copy)
  const d = summarize(only)
  const base = (await worker(4096, 'migrate')).maxRss / (1 << 20)
  const r = summarize(rss)
  return {
    size, oursMiBps: o, oursCopyMiBps: c, spliceMiBps: splice, deviceOnlyMiBps: d, rssMiB: r, rssBaselineMiB: base, rssOverBaselineMiB: r.median - base,
    oursOverSplice: ratio(o, splice), oursCopyOverSplice: ratio(c, splice), oursOverDeviceOnly: ratio(o, d),
  }
}

/**
 * STOP_COPY only moves everything while the VM is stopped, so it gets a limit
 * the whole state fits in at the measured path speed (pre-copy has nothing
 * to measure the link with, so that speed is passed as avail-switchover-bandwidth);
 * the PRE_COPY modes keep QEMU's default 300 ms while the device dirties.
 */
export async function runDowntime(ctx: BenchContext, sizes: number[], pathMiBps: number, reps: number): Promise<DowntimePoint[]> {
  const out: DowntimePoint[] = []
  const modes: DowntimeMode[] = ['stop-copy', 'pre-copy', 'pre-copy+switchover-ack']
  const bw = pathMiBps * (1 << 20)
  for (const size of sizes) {
    for (const mode of modes) {
      const stopCopy = mode === 'stop-copy'
      const limit = stopCopy ? Math.max(300, Math.ceil(((size / bw) * 1000 * 1.5) / 100) * 100) : 300
      const pt: DowntimePoint = { mode, size, downtimeLimitMs: limit, errors: [] }
      const dts: number[] = []
      const tts: number[] = []
      for (let i = 0; i < reps; i++) {
        try {
          const r = await runPair({
            kind: 'device', size, flags: stopCopy ? 1 : 5, switchoverAck: mode === 'pre-copy+switchover-ack',
            downtimeLimitMs: limit, dirtyRate: stopCopy ? 0 : 4 << 20,
            ...(stopCopy ? { availSwitchoverBandwidth: bw } : {}), verify: i === 0 && stopCopy,
          }, Math.max(120000, (size / bw) * 1000 * 20))
          if (r.src.error || !r.dst) throw new Error(r.src.error ?? 'no destination result')
          if (r.src.digest !== undefined && r.src.digest !== r.dst.digest) throw new Error('destination device state differs from the source')
          if (r.src.stats.downtime === undefined) throw new Error('no downtime in the stats')
          dts.push(r.src.stats.downtime)
          tts.push(r.src.stats.totalTime)
          const v = Object.values(r.src.stats.vfio ?? {})[0] as { stopCopyBytes?: number } | undefined
          pt.stopCopyBytes = v?.stopCopyBytes
        } catch (e) {
          pt.errors.push((e as Error).message)
        }
      }
      if (dts.length) {
        pt.downtimeMs = summarize(dts)
        pt.totalTimeMs = summarize(tts)
        pt.withinLimit = pt.downtimeMs.median <= limit
      }
      ctx.log(`  downtime ${mode} ${size / 2 ** 20} MiB: ${pt.downtimeMs ? pt.downtimeMs.median.toFixed(1) + ' ms' : 'failed: ' + pt.errors[0]} (limit ${limit} ms)`)
      out.push(pt)
    }
  }
  return out
}
