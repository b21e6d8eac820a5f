// The bench's three kinds of figure, drawn from its results.
import { barChart, lineChart, type BarGroup } from './svg.js'
import type { BenchResults } from './results.js'
import type { Summary } from './stats.js'

const bar = (label: string, s: Summary | undefined) => (s ? [{ label, value: s.median, min: s.min, max: s.max }] : [])
const mib = (n: number) => (n >= 1 << 30 ? `${n / (1 << 30)} GiB` : `${n / 2 ** 20} MiB`)

export function charts(r: BenchResults): Record<string, string> {
  const out: Record<string, string> = {}
  if (r.ram.length) {
    const groups: BarGroup[] = r.ram.map(row => ({
      label: mib(row.size),
      bars: [...bar('ours', row.ours?.MiBps), ...bar('QEMU 7.2', row.qemu?.MiBps), ...bar('raw loopback TCP', row.linkMiBps)],
    }))
    out['ram-throughput.svg'] = barChart({ title: 'RAM migration throughput (paused guest, loopback TCP)', yLabel: 'guest RAM MiB/s', groups })
  }
  if (r.device.throughput.length) {
    const groups: BarGroup[] = r.device.throughput.map(row => ({
      label: mib(row.size),
      bars: [...bar('ours (save/load)', row.oursMiBps), ...bar('ours, read/write data fds', row.oursCopyMiBps), ...bar('raw splice copy', row.spliceMiBps), ...bar('device alone', row.deviceOnlyMiBps)],
    }))
    out['device-throughput.svg'] = barChart({ title: 'VFIO device-state throughput', yLabel: 'MiB/s', groups })
  }
  const dt = r.device.downtime.filter(p => p.downtimeMs)
  if (dt.length) {
    const modes = [...new Set(dt.map(p => p.mode))]
    const limits = [...new Set(r.device.downtime.filter(p => p.mode !== 'stop-copy').map(p => p.downtimeLimitMs))]
    out['device-downtime.svg'] = lineChart({
      title: 'Downtime vs device-state size',
      xLabel: 'device state (MiB)', yLabel: 'downtime (ms)', xLog2: true,
      series: modes.map(m => ({ label: m, points: dt.filter(p => p.mode === m).map(p => ({ x: p.size / (1 << 20), y: p.downtimeMs!.median })) })),
      refLines: limits.map(l => ({ label: `pre-copy limit ${l} ms`, value: l })),
    })
    // STOP_COPY's seconds flatten the pre-copy lines above: the same without it.
    const pre = dt.filter(p => p.mode !== 'stop-copy')
    if (pre.length) {
      out['device-downtime-precopy.svg'] = lineChart({
        title: 'Downtime vs device-state size, pre-copy modes',
        xLabel: 'device state (MiB)', yLabel: 'downtime (ms)', xLog2: true,
        series: modes.filter(m => m !== 'stop-copy').map(m => ({ label: m, points: pre.filter(p => p.mode === m).map(p => ({ x: p.size / (1 << 20), y: p.downtimeMs!.median })) })),
        refLines: limits.map(l => ({ label: `limit ${l} ms`, value: l })),
      })
    }
  }
  const live = r.live.filter(l => l.pending.length)
  if (live.length) {
    out['live-pending.svg'] = lineChart({
      title: 'Pending bytes per pre-copy round (dirtying guest)',
      xLabel: 'round', yLabel: 'pending (MiB)',
      series: live.map(l => ({
        label: `ws ${l.workingSet / 2 ** 20} MiB${l.autoConverge ? ' +auto-conv' : ''}`,
        points: l.pending.map((p, i) => ({ x: i + 1, y: p / (1 << 20) })),
      })),
    })
  }
  return out
}
