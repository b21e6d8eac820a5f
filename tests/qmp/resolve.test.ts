// A manager settles the handover's ambiguous state over QMP (docs/flows.md):
// two microVMs, each with its QmpServer, a relay between them that loses
// the handover's messages at one step. The source (or both sides) end in
// 'handover-unknown'; the manager asks each side what it knows, and
// x-migrate-resolve makes exactly one copy of the guest run.
import t, { type Test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { QmpServer } from '../../vmm/qmp/index.js'
import { MicroVm } from '../../vmm/microvm/index.js'
import { Relay, type FaultAction, type FaultPoint } from '../migration/relay.js'
import { Raw, type Msg } from './raw-client.js'

const dir = await mkdtemp(join(tmpdir(), 'vmm-qmp-resolve-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

const shape = { ramSize: 8 << 20, vcpu: 'soft' as const, workingSet: 1 << 20, vfio: { stateSize: 64 << 10, dirtyRate: 16 << 10 } }

async function pair(t: Test, name: string, point: FaultPoint, action: FaultAction) {
  const src = await MicroVm.create({ role: 'source', ...shape })
  const dst = await MicroVm.create({ role: 'dest', ...shape })
  const srcQmp = await QmpServer.listen(join(dir, `${name}-src.qmp`), { machine: src, ram: src.ram })
  const dstQmp = await QmpServer.listen(join(dir, `${name}-dst.qmp`), { machine: dst, ram: dst.ram, incoming: 'defer', onIncomingFailed: () => undefined })
  const relay = await Relay.create(join(dir, `${name}-relay`), join(dir, `${name}-dst`), point, action)
  const a = await Raw.connect(srcQmp.path)
  const b = await Raw.connect(dstQmp.path)
  t.teardown(async () => {
    a.close()
    b.close()
    await relay.close()
    await Promise.all([srcQmp.close(), dstQmp.close()])
    await Promise.all([src.destroy(), dst.destroy()])
  })
  for (const c of [a, b]) {
    await c.negotiate()
    t.match(await c.x('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }, { capability: 'x-handover', state: true }] }), { return: {} })
    // A short handover wait, so a lost message turns into 'handover-unknown' quickly.
    t.match(await c.x('migrate-set-parameters', { 'x-handover-timeout': 1500, 'downtime-limit': 1000 }), { return: {} })
  }
  t.match(await b.x('migrate-incoming', { uri: `unix:${join(dir, `${name}-dst`)}` }), { return: {} })
  t.match(await a.x('migrate', { uri: `unix:${relay.path}` }), { return: {} })
  return { src, dst, a, b }
}

/** Poll query-migrate on `c` until its status is `want` (bounded). */
async function statusOf(c: Raw, want: string, ms = 20_000): Promise<Msg> {
  const deadline = Date.now() + ms
  for (;;) {
    const r = await c.x('query-migrate')
    if (r.return?.status === want || Date.now() > deadline) return r
    await new Promise((res) => setTimeout(res, 50))
  }
}

t.test('STARTED lost: the destination runs, the source does not know; the manager sees it and discards the source\'s copy', { timeout: 60_000 }, async (t) => {
  const { src, dst, a, b } = await pair(t, 'started', { at: 'before-started' }, 'cut')
  t.match(await statusOf(a, 'handover-unknown'), { return: { status: 'handover-unknown' } }, 'source: handover-unknown')
  t.equal(src.vm.state === 'running', false, 'source: its guest is not running')
  t.match(await a.next((m) => m.event === 'MIGRATION' && m.data?.status === 'handover-unknown'), { data: { status: 'handover-unknown' } }, 'source: a MIGRATION event says so')
  t.match(await a.x('cont'), { error: { class: 'GenericError', desc: /x-migrate-resolve/ } }, 'cont is refused until the manager settles it')
  // The manager asks the destination: its guest runs there.
  t.match(await b.x('query-status'), { return: { running: true, status: 'running' } }, 'destination: the guest runs there')
  t.match(await a.x('x-migrate-resolve', { action: 'discard' }), { return: {} })
  t.match(await statusOf(a, 'completed'), { return: { status: 'completed' } }, 'source: completed once discarded')
  t.match(await a.x('query-status'), { return: { running: false } }, 'source: still not running')
  t.equal([src, dst].filter((v) => v.vm.state === 'running').length, 1, 'one copy of the guest runs')
  t.match(await a.x('x-migrate-resolve', { action: 'resume' }), { error: { class: 'GenericError', desc: 'No migration is in status handover-unknown' } }, 'settled once only')
})

t.test('GO lost: neither side knows; the manager resumes the source and discards the destination', { timeout: 60_000 }, async (t) => {
  const { src, dst, a, b } = await pair(t, 'go', { at: 'before-go' }, 'blackhole')
  t.match(await statusOf(a, 'handover-unknown'), { return: { status: 'handover-unknown' } }, 'source: handover-unknown')
  t.match(await statusOf(b, 'handover-unknown'), { return: { status: 'handover-unknown' } }, 'destination: handover-unknown')
  t.equal(src.vm.state === 'running' || dst.vm.state === 'running', false, 'no copy runs while it is unknown')
  t.match(await b.x('x-migrate-resolve', { action: 'discard' }), { return: {} }, 'destination: discarded first, so two copies never run')
  t.match(await b.x('query-status'), { return: { running: false } })
  t.match(await a.x('x-migrate-resolve', { action: 'resume' }), { return: {} })
  t.match(await statusOf(a, 'failed'), { return: { status: 'failed' } }, 'source: the migration failed, resumed')
  t.match(await a.x('query-status'), { return: { running: true, status: 'running' } }, 'source: the guest runs there again')
  t.equal([src, dst].filter((v) => v.vm.state === 'running').length, 1, 'one copy of the guest runs')
})
