// A small machine for migration tests: a Vm, its registry and one emulated
// VFIO device with 64 KiB of state; a source one runs. `checkMs`: what the
// destination says its checks before starting the guest cost.
import { native } from '../../vmm/native/addon.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { VfioMigrationSet } from '../../vmm/vfio/vfio-set.js'
import type { MigratableVm } from '../../vmm/migration/index.js'

export async function makeVm(role: 'source' | 'dest', checkMs?: number): Promise<MigratableVm> {
  const vm = new Vm('prelaunch')
  if (role === 'source') await vm.vmStart()
  const registry = new SaveVMRegistry()
  const vfio = new VfioMigrationSet(vm, registry, { switchoverAck: () => false })
  const emu = new native.EmulatedDevice({ name: `${role}0`, flags: 7, stateSize: 64 << 10, seed: 5 })
  await vfio.add(emu.device(), { idstr: 'dev0/vfio' })
  return { vm, registry, machine: 'test-1', vfio, ...(checkMs === undefined ? {} : { expectedCheckMs: async () => checkMs }) }
}
