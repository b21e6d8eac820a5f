// The shape of bench/results/*.json: everything the run measured, with the
// machine it ran on, so figures from different runs are never mixed up.
import type { Summary } from './stats.js'
import type { Skip } from './context.js'
import type { RamRow } from '../sections/ram.js'
import type { DeviceThroughputRow, DowntimePoint } from '../sections/device.js'
import type { LiveRow } from '../sections/live.js'
import type { CallResults } from '../sections/calls.js'
import type { QmpRow } from '../sections/qmp.js'
import type { LocalRow, LocalRatio } from '../sections/local.js'
import type { TlsRow } from '../sections/tls.js'

export interface MachineInfo {
  cpu: string
  cores: number
  memGiB: number
  kernel: string
  node: string
  qemu?: string
  kvm: string
  /** 1-minute load average at start and end: the machine may be shared, and load skews every figure. */
  loadavg: [number, number]
}

export interface BenchResults {
  bench: 'vmm-migration'
  quick: boolean
  date: string
  durationS: number
  repeats: number
  machine: MachineInfo
  limits: { memcpyMiBps?: Summary }
  ram: RamRow[]
  device: { throughput: DeviceThroughputRow[]; downtime: DowntimePoint[] }
  live: LiveRow[]
  calls?: CallResults
  /** One QMP client driving ours and QEMU alike (docs/qmp.md). */
  qmp?: QmpRow[]
  /** Local migration (memfd passed) against copying, over a unix socket, same run (docs/local.md). */
  local?: { rows: LocalRow[]; ratios: LocalRatio[] }
  /** TLS against plaintext, ours and QEMU's, same run (docs/tls.md). */
  tls?: TlsRow[]
  skipped: Skip[]
  errors: string[]
}
