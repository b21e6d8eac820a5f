// MIG_CMD_SWITCHOVER_START is sent only where the destination understands it
// (QEMU 10.0 and later machine types, or our own destination when a device
// there has a switchoverStart handler), or where the send-switchover-start
// parameter says so. QEMU 7.2 refusing it is checked in
// tests/interop/qemu-stream.test.ts.
import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry, type SaveVMHandlers } from '../../vmm/savevm/registry.js'
import { listen } from '../../vmm/channel/connect.js'
import { analyzeFile } from '../../vmm/cli/analyze.js'
import { migrate, incoming, OutgoingMigration, type MigratableVm, type MigrationParameters } from '../../vmm/migration/index.js'
import { sendsSwitchoverStart, qemuMachineVersion } from '../../vmm/migration/switchover-start.js'
import type { VMStateDescription } from '../../vmm/vmstate/types.js'

const tmp = () => mkdtempSync(join(tmpdir(), 'mig-sws-'))
const devVmsd: VMStateDescription = { name: 'dev', versionId: 1, fields: [{ name: 'x', type: 'uint32' }] }

function registry(handlers?: SaveVMHandlers, x = 0): SaveVMRegistry {
  const reg = new SaveVMRegistry()
  reg.register({ idstr: 'dev', vmsd: devVmsd, state: { x }, handlers })
  return reg
}

async function source(machine: string, handlers?: SaveVMHandlers): Promise<MigratableVm> {
  const vm = new Vm('prelaunch')
  await vm.vmStart()
  return { vm, registry: registry(handlers, 42), machine }
}

/** migrate() into a file; the commands the stream holds, and whether they come before the device state. */
async function commandsOf(machine: string, parameters: Partial<MigrationParameters> = {}, handlers?: SaveVMHandlers): Promise<{ cmds: string[]; beforeDevices: boolean }> {
  const file = join(tmp(), 'out.mig')
  await migrate(await source(machine, handlers), `file:${file}`, { parameters })
  const a = await analyzeFile(file)
  const dev = a.sections.find(s => s.idstr === 'dev')!
  return { cmds: a.commands.map(c => c.cmd), beforeDevices: a.commands.every(c => c.offset < dev.offset) }
}

t.test('the rule: QEMU\'s by machine version, else only for a destination hook', async t => {
  t.same(qemuMachineVersion('pc-i440fx-7.2'), [7, 2])
  t.same(qemuMachineVersion('pc-q35-10.0'), [10, 0])
  t.equal(qemuMachineVersion('microvm'), undefined)
  t.equal(qemuMachineVersion('microvm-1'), undefined)
  const hook = registry({ switchoverStart: () => undefined })
  const plain = registry()
  const cases: [boolean | 'auto', string, SaveVMRegistry, boolean][] = [
    ['auto', 'pc-i440fx-7.2', plain, false],
    ['auto', 'pc-i440fx-9.2', hook, false],
    ['auto', 'pc-q35-10.0', plain, true],
    ['auto', 'virt-10.1', plain, true],
    ['auto', 'microvm', plain, false],
    ['auto', 'microvm-1', plain, false],
    ['auto', 'microvm-1', hook, true],
    [true, 'pc-i440fx-7.2', plain, true],
    [false, 'microvm-1', hook, false],
  ]
  for (const [setting, machine, reg, want] of cases) {
    t.equal(sendsSwitchoverStart(setting, machine, reg), want, `${setting} ${machine} ${reg === hook ? 'with' : 'without'} a switchoverStart handler`)
  }
})

t.test('a bad value is refused by name', async t => {
  const vm = await source('pc-i440fx-7.2')
  t.throws(() => new OutgoingMigration(vm, { parameters: { sendSwitchoverStart: 'yes' as unknown as boolean } }),
    /parameter send-switchover-start must be true, false or 'auto', got "yes"/)
})

t.test('what migrate() puts in the stream', async t => {
  t.same((await commandsOf('pc-i440fx-7.2')).cmds, [], 'a QEMU 7.2 machine type: no command')
  t.same((await commandsOf('pc-i440fx-7.2', { sendSwitchoverStart: true })).cmds, ['SWITCHOVER_START'], 'asked for: sent')
  const q10 = await commandsOf('pc-q35-10.0')
  t.same(q10.cmds, ['SWITCHOVER_START'], 'a QEMU 10.0 machine type: sent, as QEMU does')
  t.ok(q10.beforeDevices, 'before the device state, where QEMU sends it')
  t.same((await commandsOf('microvm-1')).cmds, [], 'our machine, nothing at the destination uses it: not sent')
  t.same((await commandsOf('microvm-1', {}, { switchoverStart: () => undefined })).cmds, ['SWITCHOVER_START'], 'our machine with a device that has the hook: sent')
  t.same((await commandsOf('pc-q35-10.0', { sendSwitchoverStart: false })).cmds, [], 'turned off: not sent')
})

t.test('our destination runs its switchoverStart handlers once, before the device state loads', async t => {
  const seen: string[] = []
  const src = await source('test-1', { switchoverStart: () => undefined })
  const dstState = { x: 0 }
  const reg = new SaveVMRegistry()
  reg.register({
    idstr: 'dev', state: dstState, handlers: { switchoverStart: () => { seen.push(`switchoverStart x=${dstState.x}`) } },
    vmsd: { ...devVmsd, postLoad: (o) => { seen.push(`loaded x=${o.x}`) } },
  })
  const dst: MigratableVm = { vm: new Vm('inmigrate'), registry: reg, machine: 'test-1' }
  const l = await listen(`unix:${join(tmp(), 's')}`)
  try {
    const inc = incoming(dst, l)
    const stats = await migrate(src, l.address, { parameters: { maxBandwidth: 0 } })
    await inc
    t.equal(stats.status, 'completed')
    t.same(seen, ['switchoverStart x=0', 'loaded x=42'])
    t.equal(dst.vm.state, 'running')
  } finally {
    await l.close()
  }
})
