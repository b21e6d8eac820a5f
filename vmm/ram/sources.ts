// Adapters from the VMM's dirty logs to dirty sources. Device DMA has none:
// the VFIO set is a dirty log of the RAM section by itself.
import type { DirtySource } from './save.js'

/**
 * A vCPU's dirty log (KVM_GET_DIRTY_LOG or the software vCPU's bitmap: bit
 * i%8 of byte i/8 = page i from `base`), read-and-cleared on every sync.
 */
export function vcpuDirtySource(vcpu: { syncDirtyLog(): Promise<Uint8Array> }, base = 0): DirtySource {
  return async into => into.markBitmap(base, await vcpu.syncDirtyLog())
}
