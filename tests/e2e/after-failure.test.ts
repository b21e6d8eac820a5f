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
  // The report judges the guest by its counter moving; a vCPU thread that has
  // not run yet (a fixed 50 ms on a loaded machine) would look dead. Wait for
  // it, bounded.
  const deadline = Date.now() + 10_000
  while (vm.vcpuCounter() === 0n && Date.now() < deadline) await sleep(5)
  const r = await reportAfterFailure(vm, new MigrationError('migration cancelled', 'ECANCELED'), 'active', 100)
  t.equal(r.status, 'cancelled')
  t.equal(r.phase, 'active')
  t.equal(r.runState, 'running')
  t.ok(r.verification?.checksumConsistent)
  t.ok(r.checksumConsistentAfter)
  t.ok(BigInt(r.counterAfter!) > BigInt(r.verification!.counter))
  t.same(r.devicesReset, [])
  t.ok(r.guestOk)
})

t.test('a guest whose device was reset on the way runs on, but is not reported intact', async (t) => {
  const vm = await MicroVm.create({ role: 'source', ramSize: 8 << 20, vcpu: 'soft', vfio: { stateSize: 64 << 10 } })
  t.teardown(() => vm.destroy())
  // A failed move whose recovery fails too: the device is reset, as in a migration that gave up.
  vm.emu!.failNextMove('PRE_COPY', 'EIO')
  await t.rejects(vm.vfio.devices[0].setStateOrReset('PRE_COPY'))
  const r = await reportAfterFailure(vm, new MigrationError('migration failed', 'EIO'), 'setup', 50)
  t.equal(r.runState, 'running')
  t.ok(r.checksumConsistentAfter, 'the guest itself runs on')
  t.same(r.devicesReset, ['emu0'])
  t.notOk(r.guestOk, 'a device lost its state: not intact')
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
