// The microVM's vCPU: KVM where /dev/kvm works, the software vCPU otherwise.
import { KvmVcpu, kvmAvailable } from './kvm-vcpu.js'
import { SoftVcpu } from './soft-vcpu.js'
import type { Vcpu, VcpuOptions } from './vcpu.js'

export { KvmVcpu, kvmAvailable, fromNative } from './kvm-vcpu.js'
export { SoftVcpu } from './soft-vcpu.js'
export { GuestMemory, dirtyPages } from './guest-memory.js'
export * from './vcpu.js'
export * from './workload.js'

export async function createVcpu(ramSize: number, opts: VcpuOptions = {}): Promise<Vcpu> {
  const kind = opts.kind ?? 'auto'
  if (kind === 'soft') return SoftVcpu.create(ramSize, opts.params)
  if (kind === 'kvm') return KvmVcpu.create(ramSize, opts.params)
  const probe = await kvmAvailable()
  return probe.available ? KvmVcpu.create(ramSize, opts.params) : SoftVcpu.create(ramSize, opts.params)
}
