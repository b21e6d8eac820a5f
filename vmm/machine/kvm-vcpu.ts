// The vCPU on real KVM, through the native KvmMachine.
import { native } from '../native/addon.js'
import type { KvmMachine } from '../../native/index.js'
import { GuestMemory } from './guest-memory.js'
import type { StopInfo, Vcpu, VcpuState } from './vcpu.js'
import type { SharedRam } from '../ram/blocks.js'
import { WorkloadVcpu } from './workload-vcpu.js'
import { DEFAULT_QUIESCE_MS } from './vcpu.js'
import {
  CTL, EINVAL, MachineError, defaultParams, validateParams, validateRamSize, writeCtl,
  type WorkloadParams,
} from './workload.js'

const ETIMEDOUT = 110
const EIO = 5

/**
 * The addon's errors carry `errno`, `code` and `syscall` (vmm-native's
 * js_error); keep errno and syscall on the MachineError, the native error as
 * its cause. Anything else is EIO.
 */
export function fromNative(e: unknown): MachineError {
  if (e instanceof MachineError) return e
  const ne = e as { errno?: unknown; syscall?: unknown } | null | undefined
  const errno = typeof ne?.errno === 'number' && Number.isInteger(ne.errno) && ne.errno > 0 ? ne.errno : EIO
  const syscall = typeof ne?.syscall === 'string' ? ne.syscall : undefined
  return new MachineError(e instanceof Error ? e.message : String(e), errno, { syscall, cause: e })
}

async function call<T>(p: () => Promise<T>): Promise<T> {
  try {
    return await p()
  } catch (e) {
    throw fromNative(e)
  }
}

export interface KvmProbeResult {
  available: boolean
  reason: string
}

/** Whether the KVM vCPU can be used here, and why not. */
export async function kvmAvailable(): Promise<KvmProbeResult> {
  try {
    const p = await native.kvmProbe()
    return { available: p.available, reason: p.reason }
  } catch (e) {
    return { available: false, reason: `probe failed: ${(e as Error).message}` }
  }
}

export class KvmVcpu extends WorkloadVcpu implements Vcpu {
  readonly kind = 'kvm' as const
  readonly memory: GuestMemory
  readonly ramBacking = 'a memfd of the KVM VM'
  readonly sharedRam: SharedRam
  private readonly m: KvmMachine
  protected p: WorkloadParams

  private constructor(m: KvmMachine, p: WorkloadParams) {
    super()
    this.m = m
    this.p = p
    this.memory = new GuestMemory(m.memory())
    // adopt and detach map over the same address, so `memory` stays valid.
    this.sharedRam = {
      fd: () => m.ramFd,
      adopt: (fd) => call(() => m.adoptRam(fd)),
      detach: () => call(() => m.detachRam()),
    }
  }

  static async create(ramSize: number, params: Partial<WorkloadParams> = {}): Promise<KvmVcpu> {
    validateRamSize(ramSize)
    const p = { ...defaultParams(ramSize), ...params }
    validateParams(p, ramSize)
    const m = await call(() => native.createKvmMachine(ramSize, p))
    return new KvmVcpu(m, p)
  }

  get running(): boolean {
    return this.m.running
  }

  start(): Promise<void> {
    try {
      this.m.start()
      return Promise.resolve()
    } catch (e) {
      return Promise.reject(fromNative(e))
    }
  }

  async pause(): Promise<StopInfo> {
    const s = await call(() => this.m.pause())
    return toStop(s)
  }

  async quiesce(timeoutMs = DEFAULT_QUIESCE_MS): Promise<StopInfo> {
    const mem = this.memory.bytes
    writeCtl(mem, CTL.stop, 1)
    try {
      if (!this.m.running) await this.start()
      const s = await call(() => this.m.waitStopped(timeoutMs))
      if (s === null) {
        await this.pause()
        throw new MachineError(`guest did not reach its stop point within ${timeoutMs} ms`, ETIMEDOUT)
      }
      return toStop(s)
    } finally {
      writeCtl(mem, CTL.stop, 0)
    }
  }

  async getState(): Promise<VcpuState> {
    const b = await call(() => this.m.getState())
    return { kind: 'kvm', bytes: new Uint8Array(b.buffer, b.byteOffset, b.byteLength) }
  }

  setState(state: VcpuState): Promise<void> {
    if (state.kind !== 'kvm') {
      return Promise.reject(new MachineError(`cannot load a ${state.kind} vCPU state into a KVM vCPU`, EINVAL))
    }
    return call(async () => this.m.setState(Buffer.from(state.bytes.buffer, state.bytes.byteOffset, state.bytes.byteLength)))
  }

  async syncDirtyLog(): Promise<Uint8Array> {
    const b = await call(() => this.m.syncDirtyLog())
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength)
  }

  destroy(): Promise<void> {
    return call(() => this.m.destroy())
  }
}

function toStop(s: { reason: string; error?: string | null }): StopInfo {
  const reason = s.reason === 'guest-exit' || s.reason === 'error' ? s.reason : 'paused'
  return s.error ? { reason, error: s.error } : { reason }
}
