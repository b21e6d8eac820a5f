// The orchestrator's public types: parameters and capabilities with QEMU's
// names and defaults, the status machine, and the stats of query-migrate.
import type { Vm } from '../runstate/index.js'
import type { SaveVMRegistry } from '../savevm/registry.js'
import type { VfioMigrationSet } from '../vfio/vfio-set.js'

/** QEMU's MigrationStatus values used here. */
export type MigrationStatus =
  | 'none' | 'setup' | 'active' | 'device' | 'completed' | 'failed' | 'cancelling' | 'cancelled'

export interface MigrationParameters {
  /** Longest acceptable VM pause, ms (QEMU: downtime-limit, default 300). */
  downtimeLimitMs: number
  /** Bytes per second, 0 = unlimited (QEMU: max-bandwidth, default 128 MiB/s). */
  maxBandwidth: number
  /** Bandwidth to assume for the switchover decision, 0 = measure it (QEMU: avail-switchover-bandwidth). */
  availSwitchoverBandwidth: number
  /** Auto-converge: first throttle, percent (QEMU: cpu-throttle-initial, 20). */
  cpuThrottleInitial: number
  /** Auto-converge: step, percent (QEMU: cpu-throttle-increment, 10). */
  cpuThrottleIncrement: number
  /** Auto-converge: ceiling, percent (QEMU: max-cpu-throttle, 99). */
  maxCpuThrottle: number
  /** Give up after this many pre-copy rounds without converging, 0 = never (x-max-iterations). */
  xMaxIterations: number
  /** How long the source waits for the destination's "resumed" report before it resumes itself, ms. */
  xResumeTimeoutMs: number
}

export interface MigrationCapabilities {
  /** Destination must ack before switchover (VFIO devices with PRE_COPY use it). */
  switchoverAck: boolean
  /** Throttle the vCPU when dirtying outpaces the link. */
  autoConverge: boolean
}

export const DEFAULT_PARAMETERS: Readonly<MigrationParameters> = Object.freeze({
  downtimeLimitMs: 300,
  maxBandwidth: 128 * 1024 * 1024,
  availSwitchoverBandwidth: 0,
  cpuThrottleInitial: 20,
  cpuThrottleIncrement: 10,
  maxCpuThrottle: 99,
  xMaxIterations: 0,
  xResumeTimeoutMs: 30000,
})

export const DEFAULT_CAPABILITIES: Readonly<MigrationCapabilities> = Object.freeze({
  switchoverAck: false,
  autoConverge: false,
})

/** What the orchestrator needs from a VMM: its run state, its sections, its VFIO devices, a throttle. */
export interface MigratableVm {
  readonly vm: Vm
  readonly registry: SaveVMRegistry
  /** Machine type sent in the configuration section and checked by the destination. */
  readonly machine: string
  readonly vfio?: VfioMigrationSet
  /** Auto-converge: slow the guest's vCPUs to `percent` (0 = full speed). */
  setThrottle?(percent: number): void
  /** Which tracker covers device DMA in the current migration, for the stats. */
  dirtyTrackerKind?(): string | undefined
}

export interface MigrationStats {
  status: MigrationStatus
  /** ms since start. */
  totalTime: number
  /** ms from start to the first iteration. */
  setupTime: number
  /** ms from VM stop on the source to VM start on the destination (reported back), or the source's own estimate. */
  downtime?: number
  /** Whether `downtime` was measured end to end (true) or only on the source side (false). */
  downtimeMeasured?: boolean
  /** What the last round predicted: pending / bandwidth, ms. */
  expectedDowntime: number
  transferred: number
  remaining: number
  /** Megabits per second over the last round. */
  mbps: number
  /** Pages per second dirtied, measured at the last sync. */
  dirtyPagesRate: number
  iterations: number
  /** Current auto-converge throttle, percent. */
  cpuThrottlePercentage: number
  /** Per VFIO device: bytes saved in pre-copy and stop-copy, state. */
  vfio?: Record<string, { bytesSaved: number; precopyBytes: number; stopCopyBytes: number; state: string }>
  /** Which dirty tracker covered device DMA. */
  dirtyTracker?: string
  error?: string
}

export type MigrationEvents = {
  status: (s: MigrationStatus) => void
  /** After every pre-copy round. */
  progress: (s: MigrationStats) => void
}
