// The vCPU's registers as their own non-iterable section ("cpu"): a be32
// length, then the vCPU's state blob (its own magic says KVM or software).
// RAM travels in the "ram" section; this is only what the vCPU holds.
import type { MigStream } from '../stream/stream.js'
import type { SaveVMHandlers } from '../savevm/registry.js'
import type { Vcpu, VcpuKind, VcpuState } from '../machine/index.js'
import { VmmError } from '../core/errors.js'

/** Far above both blobs (KVM's with xsave is a few KiB); a larger length means a corrupt stream. */
export const MAX_CPU_STATE = 1 << 20

const MAGICS: Record<string, VcpuKind> = { KVMVCPU1: 'kvm', SOFTCPU1: 'soft' }

export class CpuSectionError extends VmmError {
  readonly code = 'ERR_CPU_SECTION'
  constructor(message: string) {
    super(message)
    this.name = 'CpuSectionError'
  }
}

/** Which vCPU a state blob belongs to, from its magic. */
export function stateKind(bytes: Uint8Array): VcpuKind | undefined {
  if (bytes.length < 8) return undefined
  return MAGICS[Buffer.from(bytes.buffer, bytes.byteOffset, 8).toString('latin1')]
}

/**
 * `taken`: the state already being read since the VM stopped, if it is
 * (the vCPU does not run again before the section is saved).
 */
export function cpuSectionHandlers(vcpu: Vcpu, taken?: () => Promise<VcpuState> | undefined): SaveVMHandlers {
  return {
    async saveState(f: MigStream) {
      const s = await (taken?.() ?? vcpu.getState())
      f.putBe32(s.bytes.length)
      f.putBuffer(s.bytes)
    },
    async loadState(f: MigStream) {
      const len = await f.getBe32()
      if (f.error) throw f.error
      if (len > MAX_CPU_STATE) {
        throw new CpuSectionError(`cpu state of ${len} bytes exceeds the ${MAX_CPU_STATE}-byte limit`)
      }
      const bytes = await f.getBuffer(len)
      if (f.error) throw f.error
      const kind = stateKind(bytes)
      if (!kind) throw new CpuSectionError('cpu state has an unknown magic (neither KVMVCPU1 nor SOFTCPU1)')
      if (kind !== vcpu.kind) {
        throw new CpuSectionError(`cpu state is for a ${kind} vCPU but this VM runs a ${vcpu.kind} vCPU (use --vcpu ${kind})`)
      }
      await vcpu.setState({ kind, bytes })
    },
  }
}
