import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { native } from '../../vmm/native/addon.js'
import type { EmulatedDevice, EmulatedDeviceOptions } from '../../native/index.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { VfioMigrationSet } from '../../vmm/vfio/vfio-set.js'
import { listen } from '../../vmm/channel/connect.js'
import {
  migrate, incoming, OutgoingMigration, MigrationError, AutoConverge, BandwidthMeter, thresholdBytes, expectedDowntimeMs, handoverReserveMs,
  type MigratableVm, type MigrationCapabilities,
} from '../../vmm/migration/index.js'
import { CANCEL_GRACE_MS } from '../../vmm/migration/outgoing.js'

interface TestVm extends MigratableVm {
  emus: EmulatedDevice[]
  vfio: VfioMigrationSet
  throttles: number[]
}

async function makeVm(role: 'source' | 'dest', devices: EmulatedDeviceOptions[], caps: Partial<MigrationCapabilities> = {}): Promise<TestVm> {
  const vm = new Vm('prelaunch')
  if (role === 'source') await vm.vmStart()
  const registry = new SaveVMRegistry()
  const vfio = new VfioMigrationSet(vm, registry, { switchoverAck: () => caps.switchoverAck ?? false })
  const emus: EmulatedDevice[] = []
  for (const [i, o] of devices.entries()) {
    const emu = new native.EmulatedDevice({ name: `${role}${i}`, ...o })
    emus.push(emu)
    await vfio.add(emu.device(), { idstr: `dev${i}/vfio` })
  }
  const throttles: number[] = []
  return { vm, registry, machine: 'test-1', vfio, emus, throttles, setThrottle: p => throttles.push(p) }
}

const tmp = () => mkdtempSync(join(tmpdir(), 'mig-'))

async function pair(uri: string, src: TestVm, dst: TestVm, caps: Partial<MigrationCapabilities> = {}, params = {}) {
  const l = await listen(uri)
  const inc = incoming(dst, l, { capabilities: caps })
  inc.catch(() => undefined).finally(() => void l.close())
  const out = new OutgoingMigration(src, { capabilities: caps, parameters: { maxBandwidth: 0, ...params } })
  const result = out.start(l.address)
  result.catch(() => undefined)
  return { out, inc, result, close: () => l.close() }
}

for (const uri of ['unix:SOCK', 'tcp:127.0.0.1:0']) {
  t.test(`a VM with a VFIO device migrates over ${uri.split(':')[0]}`, async t => {
    const u = uri.replace('SOCK', join(tmp(), 's'))
    const src = await makeVm('source', [{ flags: 7, stateSize: 4 << 20, seed: 5 }])
    const dst = await makeVm('dest', [{ flags: 7, stateSize: 4 << 20, seed: 6 }])
    const before = await src.emus[0].digest()
    const { result, inc } = await pair(u, src, dst)
    const stats = await result
    const r = await inc
    t.equal(stats.status, 'completed')
    t.equal(r.status, 'completed')
    t.equal(await dst.emus[0].digest(), before, 'device state arrived byte-exact')
    t.equal(dst.vm.state, 'running')
    t.equal(dst.emus[0].state, 'RUNNING')
    t.equal(src.vm.state, 'postmigrate')
    t.equal(src.emus[0].state, 'STOP')
    t.equal(stats.downtimeMeasured, true, 'downtime measured end to end over the return path')
    t.ok(stats.downtime! >= 0)
    // A UNIX socket's peer shares this host's CLOCK_MONOTONIC: the downtime
    // ends at its start of the guest; over TCP, when STARTED got back here.
    t.equal(stats.downtimeClock, uri.startsWith('unix') ? 'shared' : 'return')
    const ph = stats.downtimePhases!
    t.ok(Math.abs(ph.stopMs + ph.sendMs + ph.readyMs + ph.startMs - stats.downtime!) < 0.01, 'the phases add up to the downtime')
    t.ok(stats.transferred >= 4 << 20)
    t.ok(stats.vfio?.source0.precopyBytes! > 0, 'pre-copy used')
    t.ok(stats.iterations >= 1)
  })
}

t.test('switchover-ack: the source waits for the destination before stopping', async t => {
  const caps = { switchoverAck: true }
  const src = await makeVm('source', [{ flags: 7, stateSize: 2 << 20 }], caps)
  const dst = await makeVm('dest', [{ flags: 7, stateSize: 2 << 20 }], caps)
  const { result, inc } = await pair(`unix:${join(tmp(), 's')}`, src, dst, caps)
  const stats = await result
  await inc
  t.equal(stats.status, 'completed')
  t.equal(await dst.emus[0].digest(), await src.emus[0].digest())
})

t.test('switchover-ack over a file channel is refused (no return path)', async t => {
  const caps = { switchoverAck: true }
  const src = await makeVm('source', [{ flags: 7, stateSize: 1 << 16 }], caps)
  await t.rejects(migrate(src, `file:${join(tmp(), 'f')}`, { capabilities: caps }), /needs a return path/)
  t.equal(src.vm.state, 'running')
  t.equal(src.emus[0].state, 'RUNNING')
})

t.test('save to a file and restore from it', async t => {
  const path = join(tmp(), 'vm.mig')
  const src = await makeVm('source', [{ flags: 5, stateSize: 3 << 20, seed: 9 }])
  const before = await src.emus[0].digest()
  const stats = await migrate(src, `file:${path}`, { parameters: { maxBandwidth: 0 } })
  t.equal(stats.status, 'completed')
  t.equal(stats.downtimeMeasured, false, 'no return path: source-side downtime only')
  const dst = await makeVm('dest', [{ flags: 5, stateSize: 3 << 20 }])
  const r = await incoming(dst, `file:${path}`)
  t.equal(r.status, 'completed')
  t.equal(await dst.emus[0].digest(), before)
  t.equal(dst.vm.state, 'running')
})

t.test('cancel during pre-copy: the source keeps running with its state', async t => {
  // A device that keeps dirtying over a throttled link never converges by itself.
  const src = await makeVm('source', [{ flags: 7, stateSize: 8 << 20, dirtyRate: 64 << 20 }])
  const dst = await makeVm('dest', [{ flags: 7, stateSize: 8 << 20 }])
  const { out, result, inc } = await pair(`unix:${join(tmp(), 's')}`, src, dst, {}, { maxBandwidth: 8 << 20, downtimeLimitMs: 1 })
  const statuses: string[] = []
  out.on('status', s => statuses.push(s))
  // Cancel once pre-copy reported progress: a fixed wait could still land in
  // setup on a loaded machine. Bounded; a migration that ends first fails here.
  let timer: NodeJS.Timeout | undefined
  await Promise.race([
    new Promise<void>(resolve => out.on('progress', s => { if (s.status === 'active') resolve() })),
    result.then(() => { throw new Error('completed before it could be cancelled') }),
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no pre-copy progress within 30 s (${statuses})`)), 30_000) }),
  ]).finally(() => clearTimeout(timer))
  out.cancel()
  await t.rejects(result, { name: 'MigrationError', code: 'ECANCELED' })
  // Not 'stream ends inside section type': the source said why the stream ended.
  await t.rejects(inc, { code: 'ERR_MIGRATION_CANCELLED', message: /the source cancelled the migration/ })
  t.same(statuses.slice(-2), ['cancelling', 'cancelled'])
  t.equal(src.vm.state, 'running')
  t.equal(src.emus[0].state, 'RUNNING')
  t.not(dst.vm.state, 'running')
  t.not(dst.emus[0].state, 'RESUMING')
})

t.test('a cancelled save ends its file with the cancel marker', async t => {
  const path = join(tmp(), 'cancelled.mig')
  const src = await makeVm('source', [{ flags: 7, stateSize: 8 << 20, dirtyRate: 64 << 20 }])
  const out = new OutgoingMigration(src, { parameters: { maxBandwidth: 4 << 20, downtimeLimitMs: 1 } })
  const result = out.start(`file:${path}`)
  await new Promise<void>(r => out.on('status', s => { if (s === 'active') r() }))
  await new Promise(r => setTimeout(r, 200))
  out.cancel()
  await t.rejects(result, { code: 'ECANCELED' })
  t.equal(src.vm.state, 'running')
  const dst = await makeVm('dest', [{ flags: 7, stateSize: 8 << 20 }])
  await t.rejects(incoming(dst, `file:${path}`), { code: 'ERR_MIGRATION_CANCELLED', message: /the source cancelled the migration/ })
})

t.test('a cancel while the destination does not read ends within the grace period', async t => {
  const src = await makeVm('source', [{ flags: 7, stateSize: 8 << 20, dirtyRate: 64 << 20 }])
  const l = await listen(`unix:${join(tmp(), 's')}`)
  t.teardown(() => l.close())
  const out = new OutgoingMigration(src, { parameters: { maxBandwidth: 0, downtimeLimitMs: 1 } })
  const result = out.start(l.address)
  result.catch(() => undefined)
  const stuck = await l.accept() // never read: the source's writes block once the socket is full
  t.teardown(() => stuck.close())
  await new Promise<void>(r => out.on('status', s => { if (s === 'active') r() }))
  await new Promise(r => setTimeout(r, 300))
  const t0 = performance.now()
  out.cancel()
  await t.rejects(result, { code: 'ECANCELED' })
  const took = performance.now() - t0
  t.ok(took < CANCEL_GRACE_MS + 2000, `cancelled in ${took.toFixed(0)} ms (grace ${CANCEL_GRACE_MS} ms)`)
  t.equal(src.vm.state, 'running')
  t.equal(src.emus[0].state, 'RUNNING')
})

t.test('non-convergence is reported, and x-max-iterations gives up cleanly', async t => {
  const src = await makeVm('source', [{ flags: 7, stateSize: 4 << 20, dirtyRate: 256 << 20 }])
  const dst = await makeVm('dest', [{ flags: 7, stateSize: 4 << 20 }])
  const { out, result, inc } = await pair(`unix:${join(tmp(), 's')}`, src, dst, { autoConverge: true },
    { maxBandwidth: 4 << 20, downtimeLimitMs: 1, xMaxIterations: 6 })
  let expected = 0
  out.on('progress', s => { expected = Math.max(expected, s.expectedDowntime) })
  const err = await result.then(() => null, e => e as MigrationError)
  await inc.catch(() => undefined)
  t.ok(err, 'failed')
  t.match(err!.message, /did not converge in 6 iterations/)
  t.ok(expected > 1, 'expected downtime above the limit was reported')
  t.ok(src.throttles.length > 0 && src.throttles.at(-1) === 0, 'auto-converge throttled, then released the throttle')
  t.equal(src.vm.state, 'running')
  t.equal(src.emus[0].state, 'RUNNING')
})

t.test('a destination that cannot start the VM makes the source resume (nothing lost)', async t => {
  const src = await makeVm('source', [{ flags: 7, stateSize: 1 << 20, seed: 1 }])
  const dst = await makeVm('dest', [{ flags: 7, stateSize: 1 << 20 }])
  const before = await src.emus[0].digest()
  src.emus[0].corruptStreamByte(70000)
  const { result, inc } = await pair(`unix:${join(tmp(), 's')}`, src, dst)
  const err = await result.then(() => null, e => e as MigrationError)
  t.ok(err)
  t.match(err!.message, /destination|ECONNRESET|closed/)
  t.equal(err!.stats?.status, 'failed')
  await t.rejects(inc)
  t.equal(src.vm.state, 'running', 'source resumed')
  t.equal(src.emus[0].state, 'RUNNING')
  t.equal(await src.emus[0].digest(), before)
  t.not(dst.vm.state, 'running')
  t.equal(dst.emus[0].state, 'RUNNING', 'destination device reset out of RESUMING')
})

t.test('blockers refuse before anything starts', async t => {
  const src = await makeVm('source', [{ flags: 5 }, { flags: 5 }])
  await t.rejects(migrate(src, `unix:${join(tmp(), 'nobody')}`), { code: 'EOPNOTSUPP', message: /P2P/ })
  t.equal(src.vm.state, 'running')
})

t.test('bad parameters and capabilities are named', async t => {
  const src = await makeVm('source', [])
  t.throws(() => new OutgoingMigration(src, { parameters: { downtimeLimitMs: -1 } }), /downtime-limit/)
  t.throws(() => new OutgoingMigration(src, { parameters: { maxCpuThrottle: 100 } }), /max-cpu-throttle/)
  t.throws(() => new OutgoingMigration(src, { parameters: { bogus: 1 } as never }), /unknown migration parameter 'bogus'/)
  t.throws(() => new OutgoingMigration(src, { capabilities: { postcopy: true } as never }), /unknown migration capability/)
  t.throws(() => new OutgoingMigration(src, { capabilities: { autoConverge: 'yes' } as never }), /true or false/)
  const m = new OutgoingMigration(src)
  t.equal(m.parameters.downtimeLimitMs, 300, "QEMU's default downtime limit")
  t.equal(m.parameters.maxBandwidth, 128 << 20, "QEMU's default max-bandwidth")
  await t.rejects(migrate(src, 'bogus:x'), /URI|scheme|bogus/i)
  t.equal(src.vm.state, 'running')
  const paused = await makeVm('dest', [])
  await t.rejects(migrate({ ...paused }, 'unix:/nonexistent/x'), /run state 'prelaunch'/)
})

t.test('the switchover and throttle rules on numbers', async t => {
  t.equal(thresholdBytes({ pending: 0, bytesPerMs: 1000, downtimeLimitMs: 300, availSwitchoverBandwidth: 0 }), 300000)
  t.equal(thresholdBytes({ pending: 0, bytesPerMs: 1000, downtimeLimitMs: 300, availSwitchoverBandwidth: 2000000 }), 600000)
  t.equal(expectedDowntimeMs({ pending: 5000, bytesPerMs: 1000, downtimeLimitMs: 300, availSwitchoverBandwidth: 0 }), 5)
  t.equal(expectedDowntimeMs({ pending: 5000, bytesPerMs: 0, downtimeLimitMs: 300, availSwitchoverBandwidth: 0 }), Infinity)
  // The destination's checks take their share of the limit before any data.
  t.equal(thresholdBytes({ pending: 0, bytesPerMs: 1000, downtimeLimitMs: 300, availSwitchoverBandwidth: 0, reserveMs: 40 }), 260000)
  t.equal(thresholdBytes({ pending: 0, bytesPerMs: 1000, downtimeLimitMs: 300, availSwitchoverBandwidth: 0, reserveMs: 400 }), 0, 'a reserve past the limit leaves no room')
  t.equal(expectedDowntimeMs({ pending: 5000, bytesPerMs: 1000, downtimeLimitMs: 300, availSwitchoverBandwidth: 0, reserveMs: 40 }), 45)
  t.equal(expectedDowntimeMs({ pending: 0, bytesPerMs: 1000, downtimeLimitMs: 300, availSwitchoverBandwidth: 0, reserveMs: 40 }), 40, 'nothing to send still costs the checks')
  // The handover's messages: two round trips with four deviations each, plus
  // an RTO for the stream's tail, READY and GO once the link has lost a segment.
  t.equal(handoverReserveMs(null), 0, 'no TCP underneath: nothing measured')
  t.equal(handoverReserveMs({ rttUs: 1000, rttVarUs: 500, rtoUs: 12000, totalRetrans: 0 }), 6, 'a clean link: two round trips')
  t.equal(handoverReserveMs({ rttUs: 1000, rttVarUs: 500, rtoUs: 12000, totalRetrans: 3 }), 42, 'a lossy one: and three RTOs')
  const a = new AutoConverge({ cpuThrottleInitial: 20, cpuThrottleIncrement: 10, maxCpuThrottle: 35 })
  t.equal(a.period(100, 1000), 0, 'dirtying slower than half the link: no throttle')
  t.equal(a.period(600, 1000), 0, 'first high period')
  t.equal(a.period(600, 1000), 20, 'second: initial throttle')
  a.period(600, 1000)
  t.equal(a.period(600, 1000), 30)
  a.period(600, 1000)
  t.equal(a.period(600, 1000), 35, 'capped at max-cpu-throttle')
})

t.test('capabilities are checked on both ends through the configuration section', async t => {
  for (const [srcCaps, dstCaps, msg] of [
    [{ switchoverAck: true }, {}, /capability 'switchover-ack' is on at the source but off here/],
    [{}, { switchoverAck: true }, /capability 'switchover-ack' is on here but off at the source/],
  ] as const) {
    const src = await makeVm('source', [{ flags: 7, stateSize: 1 << 16 }], srcCaps)
    const dst = await makeVm('dest', [{ flags: 7, stateSize: 1 << 16 }], dstCaps)
    const l = await listen(`unix:${join(tmp(), 's')}`)
    const inc = incoming(dst, l, { capabilities: dstCaps })
    const out = migrate(src, l.address, { capabilities: srcCaps, parameters: { maxBandwidth: 0 } })
    await t.rejects(inc, msg)
    await t.rejects(out)
    void l.close()
    t.equal(src.vm.state, 'running')
    t.equal(src.emus[0].state, 'RUNNING')
    t.not(dst.vm.state, 'running')
  }
})

t.test("the source reports the destination's own reason when it refuses", async t => {
  const src = await makeVm('source', [{ flags: 7, stateSize: 8 << 20 }])
  const dst = await makeVm('dest', [{ flags: 7, stateSize: 8 << 20 }])
  const other = { ...dst, machine: 'other-machine' }
  const l = await listen(`unix:${join(tmp(), 's')}`)
  const inc = incoming(other, l)
  inc.catch(() => undefined)
  const err = await migrate(src, l.address, { parameters: { maxBandwidth: 0 } }).then(() => null, e => e as MigrationError)
  await t.rejects(inc, /machine type received is 'test-1', local is 'other-machine'/)
  void l.close()
  t.ok(err)
  t.match(err!.message, /destination failed: .*machine type received is 'test-1', local is 'other-machine'/)
  t.equal(err!.code, 'EREMOTEIO')
  t.equal(src.vm.state, 'running')
})

t.test('a cancel after the whole stream was sent is not honoured (no split brain)', async t => {
  const src = await makeVm('source', [{ flags: 7, stateSize: 1 << 20 }])
  const dst = await makeVm('dest', [{ flags: 7, stateSize: 1 << 20 }])
  const { out, result, inc } = await pair(`unix:${join(tmp(), 's')}`, src, dst)
  let cancelledAt = ''
  // 'device' is the switchover; cancel right after the destination has the whole stream.
  dst.vm.on('resume', () => { out.cancel(); cancelledAt = out.status })
  const stats = await result
  await inc
  t.equal(cancelledAt, 'device')
  t.equal(stats.status, 'completed', 'the destination runs the guest, so the source does not')
  t.equal(src.vm.state, 'postmigrate')
  t.equal(dst.vm.state, 'running')
})

t.test('state that can only move with the VM stopped, over a link never measured: a clear error, not a hang', async t => {
  const src = await makeVm('source', [{ flags: 1, stateSize: 4 << 20 }])
  const dst = await makeVm('dest', [{ flags: 1, stateSize: 4 << 20 }])
  const { result, inc } = await pair(`unix:${join(tmp(), 's')}`, src, dst)
  await t.rejects(result, /can only move with the VM stopped.*avail-switchover-bandwidth/)
  await t.rejects(inc)
  t.equal(src.vm.state, 'running')
  t.equal(src.emus[0].state, 'RUNNING')
  // With the bandwidth given, the same migration completes within the limit.
  const src2 = await makeVm('source', [{ flags: 1, stateSize: 4 << 20, seed: 3 }])
  const dst2 = await makeVm('dest', [{ flags: 1, stateSize: 4 << 20 }])
  const p2 = await pair(`unix:${join(tmp(), 's')}`, src2, dst2, {}, { availSwitchoverBandwidth: 1 << 30 })
  const stats = await p2.result
  await p2.inc
  t.equal(stats.status, 'completed')
  t.equal(await dst2.emus[0].digest(), await src2.emus[0].digest())
})

t.test('pings over an idle link are not a link rate: the same clear error when they come before it', async t => {
  // linkTimeoutMs 2000: a PING every 500 ms and the destination's progress
  // reports as often, well before the 200 idle rounds (at least 1 s) that
  // end the migration. Counted as link rate, the pings' bytes made the
  // source wait forever for a switchover that could never fit.
  const src = await makeVm('source', [{ flags: 1, stateSize: 4 << 20 }])
  const dst = await makeVm('dest', [{ flags: 1, stateSize: 4 << 20 }])
  const l = await listen(`unix:${join(tmp(), 's')}`)
  const inc = incoming(dst, l, { parameters: { linkTimeoutMs: 2000 } })
  inc.catch(() => undefined).finally(() => void l.close())
  const out = new OutgoingMigration(src, { parameters: { maxBandwidth: 0, linkTimeoutMs: 2000 } })
  let activeAt = 0
  out.on('status', s => { if (s === 'active') activeAt = performance.now() })
  let timer: NodeJS.Timeout | undefined
  const hung = new Promise<never>((_, reject) => { timer = setTimeout(() => { out.cancel(); reject(new Error('no error within 60 s: the migration waits for a switchover that cannot fit')) }, 60_000) })
  await t.rejects(Promise.race([out.start(l.address), hung]).finally(() => clearTimeout(timer)), /can only move with the VM stopped.*avail-switchover-bandwidth/)
  const activeMs = performance.now() - activeAt
  await t.rejects(inc)
  t.ok(activeMs > 500, `pre-copy lasted past the first ping (${Math.round(activeMs)} ms)`)
  t.equal(src.vm.state, 'running')
})
