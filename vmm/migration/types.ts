// The orchestrator's public types: parameters and capabilities with QEMU's
// names and defaults, the status machine, and the stats of query-migrate.
import type { Vm } from '../runstate/index.js'
import type { SaveVMRegistry } from '../savevm/registry.js'
import type { VfioMigrationSet } from '../vfio/vfio-set.js'
import type { SwitchoverStartSetting } from './switchover-start.js'

/**
 * QEMU's MigrationStatus values used here ('pre-switchover' only with the
 * pauseBeforeSwitchover capability), and one of this project's:
 * 'handover-unknown', the source gave the destination the go-ahead (or, without
 * the handover, sent the whole stream) and then lost it before it heard back;
 * the guest stays paused here until `resolve()` (docs/flows.md).
 */
export type MigrationStatus =
  | 'none' | 'setup' | 'active' | 'pre-switchover' | 'device' | 'completed' | 'failed' | 'cancelling' | 'cancelled' | 'handover-unknown'

/**
 * The destination's status. 'ready': everything loaded and checked, READY
 * sent, the guest not started, waiting for the source's GO.
 * 'handover-unknown': READY was sent and the link ended before GO or ABORT;
 * the loaded guest stays paused until `resolve()`.
 */
export type IncomingStatus = 'none' | 'setup' | 'active' | 'ready' | 'completed' | 'failed' | 'handover-unknown'

/** The operator's decision for a side in 'handover-unknown': run the guest here, or give this copy up. */
export type ResolveAction = 'resume' | 'discard'

export interface MigrationParameters {
  /** Longest acceptable VM pause, ms (QEMU: downtime-limit, default 300). */
  downtimeLimitMs: number
  /** Bytes per second, 0 = unlimited (QEMU: max-bandwidth, default 128 MiB/s). */
  maxBandwidth: number
  /** Bandwidth to assume for the switchover decision, 0 = measure it (QEMU: avail-switchover-bandwidth). */
  availSwitchoverBandwidth: number
  /**
   * Send MIG_CMD_SWITCHOVER_START before the switchover (QEMU:
   * send-switchover-start). QEMU before 10.0 refuses the command and fails
   * the load. 'auto' (default): for a versioned QEMU machine type as QEMU
   * does (from 10.0 on), for other machine types only when a registered
   * entry has a `switchoverStart` handler (vmm/migration/switchover-start.ts).
   */
  sendSwitchoverStart: SwitchoverStartSetting
  /** Auto-converge: first throttle, percent (QEMU: cpu-throttle-initial, 20). */
  cpuThrottleInitial: number
  /** Auto-converge: step, percent (QEMU: cpu-throttle-increment, 10). */
  cpuThrottleIncrement: number
  /** Auto-converge: ceiling, percent (QEMU: max-cpu-throttle, 99). */
  maxCpuThrottle: number
  /** Give up after this many pre-copy rounds without converging, 0 = never (x-max-iterations). */
  xMaxIterations: number
  /**
   * Longest silence from the peer while this side waits for it, ms (link-timeout,
   * 0 = none): the link is then declared dead. The destination reports its
   * progress or a heartbeat at least every quarter of it, and the source pings
   * when it has nothing to send, so a live peer is never this quiet.
   */
  linkTimeoutMs: number
  /**
   * Each wait of the handover, ms (handover-timeout): the source for READY after
   * it sent the stream, the destination for GO after READY, the source for
   * STARTED after GO (and, without the handover, for the destination's report).
   */
  handoverTimeoutMs: number
  /** Destination: an accepted peer must send a stream header within this, ms, or it is dropped (handshake-timeout). */
  handshakeTimeoutMs: number
  /** Destination: longest wait for a source to connect, ms, 0 = no limit (incoming-timeout). */
  incomingTimeoutMs: number
  /**
   * TLS 1.3 with mutual x509 authentication (tls-creds): a directory in
   * QEMU's tls-creds-x509 layout, '' = plaintext. The source reads
   * ca-cert.pem, client-cert.pem, client-key.pem; the destination ca-cert.pem,
   * server-cert.pem, server-key.pem; both ca-crl.pem when present
   * (docs/tls.md). Only for tcp: and unix: URIs.
   */
  tlsCreds: string
  /**
   * Source: the name the destination's certificate must carry (tls-hostname),
   * '' = the host of the URI (a unix: URI has none: then it is required).
   */
  tlsHostname: string
  /**
   * Destination: the client certificate subject DNs let in (tls-authz, RFC
   * 4514: "CN=src,O=Example"); empty = any client the CA signed.
   */
  tlsAuthz: readonly string[]
}

export interface MigrationCapabilities {
  /** Destination must ack before switchover (VFIO devices with PRE_COPY use it). */
  switchoverAck: boolean
  /** Throttle the vCPU when dirtying outpaces the link. */
  autoConverge: boolean
  /**
   * The handover (x-handover, on by default): the destination starts the guest
   * only on the source's explicit GO, and a side that cannot know what the
   * other did stays paused in 'handover-unknown'. Used when the channel has a
   * return path and both sides have it on; turn it off for a QEMU peer.
   */
  handover: boolean
  /**
   * QEMU's pause-before-switchover: once pre-copy converged and the VM is
   * stopped, stay in 'pre-switchover' until `OutgoingMigration.continue()`
   * (QMP migrate-continue) or a cancel, so that a manager can act (hand over
   * storage, say) before the final state leaves. The pause counts as downtime.
   */
  pauseBeforeSwitchover: boolean
}

export const DEFAULT_PARAMETERS: Readonly<MigrationParameters> = Object.freeze({
  downtimeLimitMs: 300,
  maxBandwidth: 128 * 1024 * 1024,
  availSwitchoverBandwidth: 0,
  sendSwitchoverStart: 'auto',
  cpuThrottleInitial: 20,
  cpuThrottleIncrement: 10,
  maxCpuThrottle: 99,
  xMaxIterations: 0,
  linkTimeoutMs: 15000,
  handoverTimeoutMs: 30000,
  handshakeTimeoutMs: 5000,
  incomingTimeoutMs: 600000,
  tlsCreds: '',
  tlsHostname: '',
  tlsAuthz: Object.freeze([]) as readonly string[],
})

export const DEFAULT_CAPABILITIES: Readonly<MigrationCapabilities> = Object.freeze({
  switchoverAck: false,
  autoConverge: false,
  handover: true,
  pauseBeforeSwitchover: false,
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
  /**
   * Destination: the VMM's own checks of the loaded guest, after the stream
   * and the VFIO devices' images were accepted and before READY (or, without
   * the handover, the start). A rejection fails the migration; the guest never ran.
   */
  checkIncoming?(): Promise<void>
  /** Which tracker covers device DMA in the current migration, for the stats. */
  dirtyTrackerKind?(): string | undefined
  /**
   * Destination: ms the VMM's own checks held the guest back while it
   * started (the microVM's digests of RAM and device). Sent to the source
   * with RESUME_OK, so its stats can tell that part of the downtime from
   * the migration's.
   */
  verificationMs?(): number | undefined
  /**
   * Destination: how long checkIncoming is expected to take, ms. Announced
   * to the source early (RpMsg.SWITCHOVER_COST), whose switchover budget
   * then keeps that much of the downtime limit free of data.
   */
  expectedCheckMs?(): Promise<number>
  /**
   * Source: how long this VMM's own work in the switchover takes beyond
   * sending state, ms (the microVM hashes its RAM for the proof section).
   * The switchover budget keeps that much of the downtime limit free of data.
   */
  expectedSaveMs?(): Promise<number>
}

/**
 * The switchover on the source's clock, ms; the parts add up to `downtime`.
 * A budget that leaves out the last three is what makes a downtime limit fail.
 */
export interface DowntimePhases {
  /** Stopping the VM: vCPUs and the change-state handlers (VFIO devices to STOP_COPY). */
  stopMs: number
  /** The rest of the state written to the channel: the last RAM round, device stop-copy data, EOF. */
  sendMs: number
  /**
   * EOF handed to the kernel until READY arrived: the link draining, the
   * destination loading and checking what it got, READY crossing back.
   */
  readyMs: number
  /**
   * READY until the guest ran there: GO crossing, the destination starting
   * the guest, and, unless the clocks are shared (downtimeClock), STARTED
   * crossing back.
   */
  startMs: number
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
  /**
   * Where a measured `downtime` ends: 'shared' at the destination's own
   * start of the guest, on the host's CLOCK_MONOTONIC that a UNIX socket's
   * peer shares; 'return' when STARTED (or QEMU's SHUT) reached the source,
   * which adds that message's trip.
   */
  downtimeClock?: 'shared' | 'return'
  /**
   * The part of a measured `downtime` the destination spent on its own
   * verification before the guest ran, ms, as it reported (0: none); the
   * rest is the migration's.
   */
  downtimeVerification?: number
  /** Where a measured `downtime` went, once the destination reported the guest started. */
  downtimePhases?: DowntimePhases
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
  /**
   * VFIO devices reset during this migration (a failed state change whose
   * recovery failed too, or the device's own reset): back in their power-on
   * state, so after a failure the VM runs again but not intact.
   */
  devicesReset?: string[]
  error?: string
}

export type MigrationEvents = {
  status: (s: MigrationStatus) => void
  /** After every pre-copy round. */
  progress: (s: MigrationStats) => void
}
