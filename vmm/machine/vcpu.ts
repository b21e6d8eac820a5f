// The one vCPU interface both implementations (KVM, software) provide.
import type { GuestMemory } from './guest-memory.js'
import type { WorkloadParams } from './workload.js'
import type { SharedRam } from '../ram/blocks.js'

export type VcpuKind = 'kvm' | 'soft'

export interface StopInfo {
  /** paused: by the host; guest-exit: the workload saw its stop flag; error: see `error`. */
  reason: 'paused' | 'guest-exit' | 'error'
  error?: string
}

/** Everything needed to continue the vCPU elsewhere (RAM travels separately). */
export interface VcpuState {
  kind: VcpuKind
  bytes: Uint8Array
}

export interface Vcpu {
  readonly kind: VcpuKind
  readonly memory: GuestMemory
  /** The file behind `memory`, where there is one (a KVM VM's memfd): what a local migration passes. */
  readonly sharedRam?: SharedRam
  /** What `memory` is, for a refusal to name where it is not a file. */
  readonly ramBacking: string
  readonly running: boolean
  /** Starts or resumes the guest. */
  start(): Promise<void>
  /** Stops the guest wherever it is; resolves once it has stopped. */
  pause(): Promise<StopInfo>
  /**
   * Asks the workload to stop at an iteration boundary (where RAM, counter
   * and checksum agree) and waits for it; clears the request afterwards.
   */
  quiesce(timeoutMs?: number): Promise<StopInfo>
  /** The whole vCPU state; the vCPU must be stopped. */
  getState(): Promise<VcpuState>
  setState(state: VcpuState): Promise<void>
  /** Returns and clears the dirty bitmap: one bit per 4 KiB page, bit i%8 of byte i/8. */
  syncDirtyLog(): Promise<Uint8Array>
  /** Iterations completed, from the control block. */
  counter(): bigint
  /** The guest's running checksum, from the control block. */
  checksum(): number
  /** Changes the knobs (dirty rate) of the running workload. */
  setParams(p: Partial<WorkloadParams>): void
  params(): WorkloadParams
  destroy(): Promise<void>
}

export interface VcpuOptions {
  kind?: VcpuKind | 'auto'
  params?: Partial<WorkloadParams>
}

export const DEFAULT_QUIESCE_MS = 5000
