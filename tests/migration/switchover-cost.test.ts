// The destination announces what its checks before starting the guest cost
// (SWITCHOVER_COST on the return path); the source counts it as downtime.
import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { listen } from '../../vmm/channel/connect.js'
import { OutgoingMigration, IncomingMigration, type MigratableVm } from '../../vmm/migration/index.js'
import { makeVm } from './small-vm.js'

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

t.test("the source's own switchover work (expectedSaveMs): counted in the expected downtime too", { timeout: 60_000 }, async (t) => {
  const l = await listen(`unix:${join(mkdtempSync(join(tmpdir(), 'cost-')), 'l')}`)
  t.teardown(() => l.close())
  const src = await makeVm('source')
  const out = new OutgoingMigration({ ...src, expectedSaveMs: async () => 150 }, { parameters })
  let most = 0
  out.on('progress', (s) => { most = Math.max(most, s.expectedDowntime) })
  const [r, s] = await Promise.all([new IncomingMigration(await makeVm('dest'), { parameters }).start(l), out.start(l.address)])
  t.equal(r.status, 'completed')
  t.equal(s.status, 'completed')
  t.ok(most >= 150, `expected downtime ${most} ms counts the source's 150 ms`)
})
