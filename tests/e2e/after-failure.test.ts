// In process (for coverage and speed): the source's after-failure report on a
// running guest, and on one that is not running.
import t from 'tap'
import { MicroVm } from '../../vmm/microvm/index.js'
import { reportAfterFailure } from '../../vmm/cli/after-failure.js'
import { MigrationError } from '../../vmm/migration/index.js'
import { maxRssBytes } from '../../vmm/cli/commands.js'
import { sleep } from '../../vmm/cli/vm-options.js'

t.test('a running guest is reported alive and intact', async (t) => {
  const vm = await MicroVm.create({ role: 'source', ramSize: 8 << 20, vcpu: 'soft', vfio: false })
  t.teardown(() => vm.destroy())
  await sleep(50)
  const r = await reportAfterFailure(vm, new MigrationError('migration cancelled', 'ECANCELED'), 'active', 100)
  t.equal(r.status, 'cancelled')
  t.equal(r.phase, 'active')
  t.equal(r.runState, 'running')
  t.ok(r.verification?.checksumConsistent)
  t.ok(r.checksumConsistentAfter)
  t.ok(BigInt(r.counterAfter!) > BigInt(r.verification!.counter))
  t.ok(r.guestOk)
})

t.test('a guest that is not running is reported as such, not checked', async (t) => {
  const vm = await MicroVm.create({ role: 'source', ramSize: 8 << 20, vcpu: 'soft', vfio: false })
  t.teardown(() => vm.destroy())
  await vm.vm.vmStop('paused')
  const r = await reportAfterFailure(vm, new Error('boom'), 'device', 50)
  t.equal(r.status, 'failed')
  t.equal(r.runState, 'paused')
  t.notOk(r.verification)
  t.notOk(r.guestOk)
})

t.test('sleep ends early on abort; peak RSS is read', async (t) => {
  const ac = new AbortController()
  const t0 = performance.now()
  setTimeout(() => ac.abort(), 20)
  await sleep(10_000, ac.signal)
  t.ok(performance.now() - t0 < 5000)
  await sleep(10, ac.signal)
  t.ok((await maxRssBytes()) > 1 << 20)
})
