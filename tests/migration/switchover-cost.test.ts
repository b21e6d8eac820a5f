// The destination announces what its checks before starting the guest cost
// (SWITCHOVER_COST on the return path); the source counts it as downtime.
import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { native } from '../../vmm/native/addon.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { VfioMigrationSet } from '../../vmm/vfio/vfio-set.js'
import { listen } from '../../vmm/channel/connect.js'
import { OutgoingMigration, IncomingMigration, type MigratableVm } from '../../vmm/migration/index.js'

async function makeVm(role: 'source' | 'dest', checkMs?: number): Promise<MigratableVm> {
  const vm = new Vm('prelaunch')
  if (role === 'source') await vm.vmStart()
  const registry = new SaveVMRegistry()
  const vfio = new VfioMigrationSet(vm, registry, { switchoverAck: () => false })
  const emu = new native.EmulatedDevice({ name: `${role}0`, flags: 7, stateSize: 64 << 10, seed: 5 })
  await vfio.add(emu.device(), { idstr: 'dev0/vfio' })
  return { vm, registry, machine: 'test-1', vfio, ...(checkMs === undefined ? {} : { expectedCheckMs: async () => checkMs }) }
}

const parameters = { linkTimeoutMs: 2000, handoverTimeoutMs: 5000, maxBandwidth: 0, downtimeLimitMs: 300 }

for (const checkMs of [120, 10_000]) {
  t.test(`checks of ${checkMs} ms at the destination: counted in the expected downtime, and the migration still ends`, { timeout: 60_000 }, async (t) => {
    const l = await listen(`unix:${join(mkdtempSync(join(tmpdir(), 'cost-')), 'l')}`)
    t.teardown(() => l.close())
    const out = new OutgoingMigration(await makeVm('source'), { parameters })
    let most = 0
    out.on('progress', (s) => { most = Math.max(most, s.expectedDowntime) })
    const [r, s] = await Promise.all([new IncomingMigration(await makeVm('dest', checkMs), { parameters }).start(l), out.start(l.address)])
    t.equal(r.status, 'completed')
    t.equal(s.status, 'completed', 'checks longer than the limit do not hold pre-copy back for ever')
    t.ok(most >= checkMs, `expected downtime ${most} ms counts the ${checkMs} ms of checks`)
  })
}
