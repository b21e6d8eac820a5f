// VFIO devices in a local migration: the emulated device (inside this
// process) moves its state by copying as in any migration, so it does not
// stand in the way; a device the kernel drives is refused by name when it
// is in a VfioMigrationSet (which copies state): a local migration hands
// such a device over through KernelVfioHandover (vfio-handover.test.ts).
import t from 'tap'
import { native } from '../../vmm/native/addon.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { VfioMigrationSet } from '../../vmm/vfio/vfio-set.js'
import { registerRam } from '../../vmm/ram/index.js'
import { localRefusal, OutgoingMigration } from '../../vmm/migration/index.js'

t.test('the emulated device is in-process and no blocker; a kernel device is refused by name', async (t) => {
  const vm = new Vm('running')
  const registry = new SaveVMRegistry()
  const memory = new Uint8Array(1 << 16)
  registerRam(registry, {
    blocks: [{ name: 'pc.ram', memory, shared: { fd: () => 0, adopt: async () => undefined, detach: async () => undefined } }],
    dirtySources: [],
  })
  const set = new VfioMigrationSet(vm, registry)
  const emu = new native.EmulatedDevice({ name: 'emu0', flags: 7, stateSize: 4096, regionSize: 4096, dirtyRate: 0 })
  t.teardown(() => emu.close?.())
  const d = emu.device()
  t.equal(d.inProcess, true, 'the emulated device lives in this process')
  await set.add(d, { idstr: 'emu0/vfio' })
  t.equal(localRefusal('unix:/tmp/x.sock', registry), null, 'RAM fd-backed, device emulated: a local migration may go')

  // What a kernel device answers (its state calls are not reached here).
  const kernel = {
    name: '0000:65:00.1',
    inProcess: false,
    migrationFlags: async () => 7,
    probe: async () => false,
    getState: async () => 'RUNNING',
    setState: async () => null,
    reset: async () => undefined,
    migDataSize: async () => 0n,
  }
  await set.add(kernel as never, { idstr: '0000:65:00.1/vfio' })
  const why = localRefusal('unix:/tmp/x.sock', registry)
  t.match(why, /^VFIO device 0000:65:00\.1 is driven by the kernel and is in a VfioMigrationSet, which copies device state: a local migration hands a kernel device over without its state \(register it with KernelVfioHandover instead\)/)
  t.notMatch(why, /emu0/, 'the emulated device is not named')
  const m = new OutgoingMigration({ vm, registry, machine: 'microvm-1' }, { local: true })
  await t.rejects(m.start('unix:/tmp/nobody-listens.sock'), { code: 'EINVAL', message: /local migration refused: VFIO device 0000:65:00\.1 is driven by the kernel and is in a VfioMigrationSet/ })
  t.equal(vm.state, 'running', 'the guest was never stopped')
})
