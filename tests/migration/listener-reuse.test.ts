// One listener, several incoming migrations in turn (a VMM that migrates a
// guest back and forth keeps listening): a source that connects between two
// migrations belongs to the next one. The fault lab's ping-pong found the
// first migration's leftover accept taking such a source and resetting it.
import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import v8 from 'node:v8'
import { runInNewContext } from 'node:vm'
import { listen } from '../../vmm/channel/connect.js'
import { OutgoingMigration, IncomingMigration, type MigratableVm } from '../../vmm/migration/index.js'
import { makeVm } from './small-vm.js'

const parameters = { linkTimeoutMs: 2000, handoverTimeoutMs: 5000, maxBandwidth: 0 }

t.test('a source that connects between two migrations on one listener is the next one\'s', { timeout: 60_000 }, async (t) => {
  const l = await listen(`unix:${join(mkdtempSync(join(tmpdir(), 'reuse-')), 'l')}`)
  t.teardown(() => l.close())
  for (let i = 0; i < 3; i++) {
    const dst = await makeVm('dest')
    const inc = new IncomingMigration(dst, { parameters })
    const got = inc.start(l)
    const sent = new OutgoingMigration(await makeVm('source'), { parameters }).start(l.address)
    const [r, s] = await Promise.all([got, sent])
    t.equal(r.status, 'completed', `migration ${i}: destination completed`)
    t.equal(s.status, 'completed', `migration ${i}: source completed`)
    t.equal(dst.vm.state, 'running', `migration ${i}: the guest runs there`)
  }
  // Between migrations: connect first, accept later.
  const early = new OutgoingMigration(await makeVm('source'), { parameters }).start(l.address)
  await new Promise((r) => setTimeout(r, 200))
  const dst = await makeVm('dest')
  const [r, s] = await Promise.all([new IncomingMigration(dst, { parameters }).start(l), early])
  t.equal(r.status, 'completed', 'a source that connected before the destination accepted: completed')
  t.equal(s.status, 'completed')
})

t.test('a finished incoming migration is not kept alive by the listener\'s next accept', { timeout: 60_000 }, async (t) => {
  // The pingpong lab saw a destroyed guest's RAM stay until the next
  // migration: the accept left pending for it held the finished one.
  v8.setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const l = await listen(`unix:${join(mkdtempSync(join(tmpdir(), 'reuse-')), 'l')}`)
  t.teardown(() => l.close())
  let dst: MigratableVm | undefined = await makeVm('dest')
  const gone = new WeakRef(dst)
  const [r] = await Promise.all([
    new IncomingMigration(dst, { parameters }).start(l),
    new OutgoingMigration(await makeVm('source'), { parameters }).start(l.address),
  ])
  t.equal(r.status, 'completed')
  await dst.vm.vmStop().catch(() => undefined)
  dst = undefined
  for (let i = 0; i < 10 && gone.deref(); i++) {
    await new Promise((r) => setTimeout(r, 50))
    gc()
  }
  t.equal(gone.deref(), undefined, 'the destination machine was collected while the listener still accepts')
})
