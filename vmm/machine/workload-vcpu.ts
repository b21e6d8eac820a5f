// What both vCPUs share: the guest's control block lives in guest memory, so
// the counter, checksum and the workload's knobs are read and written there
// the same way whichever engine runs the guest.
import type { GuestMemory } from './guest-memory.js'
import { CTL, readCounter, readCtl, validateParams, writeParams, type WorkloadParams } from './workload.js'

export abstract class WorkloadVcpu {
  abstract readonly memory: GuestMemory
  protected abstract p: WorkloadParams

  /** Iterations completed, from the control block. */
  counter(): bigint {
    return readCounter(this.memory.bytes)
  }

  /** The guest's running checksum, from the control block. */
  checksum(): number {
    return readCtl(this.memory.bytes, CTL.checksum)
  }

  /** Changes the knobs (dirty rate) of the running workload. */
  setParams(p: Partial<WorkloadParams>): void {
    const next = { ...this.p, ...p }
    validateParams(next, this.memory.size)
    writeParams(this.memory.bytes, next)
    this.p = next
  }

  params(): WorkloadParams {
    return { ...this.p }
  }
}
