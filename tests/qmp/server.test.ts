// The QMP server over a real unix socket with real microVMs: the greeting
// and negotiation, bad input of every kind (each answered with QEMU's error
// class and the session going on), commands in the wrong state, a client
// that goes away mid-command, several clients and their events, and a
// migration between two servers in this process, paused before the
// switchover, with a parameter changed while it runs.
import t from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { QmpServer } from '../../vmm/qmp/index.js'
import { MicroVm } from '../../vmm/microvm/index.js'
import { Raw, type Msg } from './raw-client.js'

const errorOf = (r: Msg) => [r.error?.class, r.error?.desc]

/** Whether the guest's counter moves past `from` within `ms` (its vCPU reports at iteration boundaries; a loaded machine delays them). */
async function advances(vm: MicroVm, from: bigint, ms = 10000): Promise<boolean> {
  const deadline = Date.now() + ms
  while (vm.vcpuCounter() <= from) {
    if (Date.now() > deadline) return false
    await new Promise((r) => setTimeout(r, 10))
  }
  return true
}

const dir = await mkdtemp(join(tmpdir(), 'vmm-qmp-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

const RAM = 16 << 20
const src = await MicroVm.create({ role: 'source', ramSize: RAM, vcpu: 'soft', workingSet: 1 << 20, vfio: { stateSize: 256 << 10, dirtyRate: 64 << 10 } })
const dst = await MicroVm.create({ role: 'dest', ramSize: RAM, vcpu: 'soft', workingSet: 1 << 20, vfio: { stateSize: 256 << 10, dirtyRate: 64 << 10 } })
t.teardown(() => Promise.all([src.destroy(), dst.destroy()]))
let quits = 0
const srcQmp = await QmpServer.listen(join(dir, 'src.qmp'), { machine: src, ram: src.ram, onQuit: () => quits++, vfioMigrationEvents: true })
const incomingFailed: Error[] = []
const dstQmp = await QmpServer.listen(join(dir, 'dst.qmp'), { machine: dst, ram: dst.ram, incoming: 'defer', onIncomingFailed: (e) => incomingFailed.push(e) })
t.teardown(() => Promise.all([srcQmp.close(), dstQmp.close()]))

t.test('greeting and negotiation as QEMU', async (t) => {
  const c = await Raw.connect(srcQmp.path)
  const g = await c.next()
  t.match(g, { QMP: { version: { qemu: { major: Number, minor: Number, micro: Number }, package: String }, capabilities: [] } })
  t.same(errorOf(await c.x('query-status')), ['CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'"])
  t.same(errorOf(await c.x('qmp_capabilities', { enable: ['oob'] })), ['GenericError', 'This monitor does not support Out-Of-Band (OOB)'])
  t.same(errorOf(await c.x('qmp_capabilities', { enable: ['x'] })), ['GenericError', "Parameter 'enable[0]' does not accept value 'x'"])
  t.match(await c.x('qmp_capabilities'), { return: {} })
  t.same(errorOf(await c.x('qmp_capabilities')), ['CommandNotFound', 'Capabilities negotiation is already complete, command ignored'])
  t.match(await c.x('query-status'), { return: { status: 'running', running: true, singlestep: false } })
  t.match(await c.x('query-version'), { return: { qemu: { major: 9 } } })
  t.ok((await c.x('query-commands')).return.some((x: Msg) => x.name === 'migrate-set-parameters'))
  c.close()
})

t.test('bad input: each gets its error, the session and the VM go on', async (t) => {
  const c = await Raw.connect(srcQmp.path)
  await c.negotiate()
  const counter = src.vcpuCounter()
  c.send('{"execute": nope}')
  t.match(errorOf(await c.next()), ['GenericError', /^JSON parse error/])
  c.send('[1,2]')
  t.same(errorOf(await c.next()), ['GenericError', 'QMP input must be a JSON object'])
  c.send('{"arguments":{}}')
  t.same(errorOf(await c.next()), ['GenericError', "QMP input lacks member 'execute'"])
  c.send('{"execute":"query-status","foo":1,"id":9}')
  t.same(await c.next(), { error: { class: 'GenericError', desc: "QMP input member 'foo' is unexpected" }, id: 9 })
  t.same(await c.x('no-such-command'), { error: { class: 'CommandNotFound', desc: 'The command no-such-command has not been found' }, id: 'c2' })
  t.same(errorOf(await c.x('__proto__')), ['CommandNotFound', 'The command __proto__ has not been found'])
  // Arguments, as QAPI checks them.
  t.same(errorOf(await c.x('migrate', {})), ['GenericError', "Parameter 'uri' is missing"])
  t.same(errorOf(await c.x('migrate', { uri: 5 })), ['GenericError', "Invalid parameter type for 'uri', expected: string"])
  t.same(errorOf(await c.x('migrate', { uri: 'unix:/x', bogus: true })), ['GenericError', "Parameter 'bogus' is unexpected"])
  t.match(errorOf(await c.x('migrate', { uri: 'bogus://x' })), ['GenericError', /^Invalid migration URI 'bogus:\/\/x'/])
  t.same(errorOf(await c.x('migrate-set-parameters', { 'downtime-limit': 'x' })), ['GenericError', "Invalid parameter type for 'downtime-limit', expected: integer"])
  t.same(errorOf(await c.x('migrate-set-parameters', { 'downtime-limit': 3_000_000 })), ['GenericError', "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000000"])
  t.same(errorOf(await c.x('migrate-set-parameters', { 'max-bandwidth': -1 })), ['GenericError', "Parameter 'max-bandwidth' expects uint64"])
  t.same(errorOf(await c.x('migrate-set-parameters', { 'tls-creds': 7 })), ['GenericError', "Invalid parameter type for 'tls-creds', expected: string"])
  t.same(errorOf(await c.x('migrate-set-parameters', { 'block-incremental': true })), ['GenericError', "Parameter 'block-incremental' is unexpected"])
  t.same(errorOf(await c.x('migrate-set-capabilities', { capabilities: {} })), ['GenericError', "Invalid parameter type for 'capabilities', expected: array"])
  t.same(errorOf(await c.x('migrate-set-capabilities', { capabilities: [{ capability: 'nope', state: true }] })), ['GenericError', "Parameter 'capabilities[0].capability' does not accept value 'nope'"])
  t.same(errorOf(await c.x('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: 1 }] })), ['GenericError', "Invalid parameter type for 'capabilities[0].state', expected: boolean"])
  t.same(errorOf(await c.x('migrate-set-capabilities', { capabilities: [{ capability: 'events' }] })), ['GenericError', "Parameter 'capabilities[0].state' is missing"])
  t.same(errorOf(await c.x('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] })), ['GenericError', "Capability 'postcopy-ram' is not supported by this VMM"])
  t.same(errorOf(await c.x('migrate-set-capabilities', { capabilities: [{ capability: 'switchover-ack', state: true }] })), ['GenericError', "Capability 'switchover-ack' requires capability 'return-path'"])
  t.match(await c.x('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: false }] }), { return: {} })
  t.same(errorOf(await c.x('migrate-continue', { state: 'bogus' })), ['GenericError', "Parameter 'state' does not accept value 'bogus'"])
  t.same(errorOf(await c.x('migrate-continue', { state: 'pre-switchover' })), ['GenericError', 'Migration not in expected state: none'])
  t.same(errorOf(await c.x('migrate-incoming', { uri: 'unix:/x' })), ['GenericError', "'-incoming' was not specified on the command line"])
  t.same(errorOf(await c.x('x-migrate-resolve', { action: 'resume' })), ['GenericError', 'No migration is in status handover-unknown'])
  // Nothing above changed a setting.
  t.match((await c.x('query-migrate-parameters')).return, { 'downtime-limit': 300, 'max-bandwidth': 128 << 20 })
  t.same((await c.x('query-migrate')).return, {})
  t.match(await c.x('query-status'), { return: { status: 'running' } })
  t.ok(await advances(src, counter), 'the guest runs on')
  c.close()
})

t.test('a message of many megabytes: one error, no memory kept, the session goes on', async (t) => {
  const c = await Raw.connect(srcQmp.path)
  await c.negotiate()
  const heap = process.memoryUsage().heapUsed
  const chunk = Buffer.alloc(1 << 20, 'a')
  c.send('{"execute":"migrate","arguments":{"uri":"')
  for (let i = 0; i < 16; i++) c.send(chunk)
  c.send('"}}')
  t.same(errorOf(await c.next()), ['GenericError', `QMP input exceeds ${1 << 20} bytes`])
  t.match(await c.x('query-status'), { return: { status: 'running' } })
  t.same((await c.x('query-migrate')).return, {}, 'no migration was started by it')
  t.ok(process.memoryUsage().heapUsed - heap < 8 << 20, 'the 16 MiB message was not stored')
  // A line of garbage with no end in sight is bounded the same way.
  c.send(Buffer.alloc(3 << 20, 'z'))
  c.send(' ')
  t.same(errorOf(await c.next()), ['GenericError', `QMP input exceeds ${1 << 20} bytes`])
  t.match(await c.x('query-status'), { return: { status: 'running' } })
  c.close()
})

t.test('many commands at once are answered in order; several clients get the events', async (t) => {
  const a = await Raw.connect(srcQmp.path)
  const b = await Raw.connect(srcQmp.path)
  const silent = await Raw.connect(srcQmp.path)
  await a.negotiate()
  await b.negotiate()
  await silent.next((m) => 'QMP' in m)
  t.equal(srcQmp.clients >= 3, true)
  a.send(Array.from({ length: 100 }, (_, i) => JSON.stringify({ execute: 'query-status', id: i })).join(''))
  for (let i = 0; i < 100; i++) t.equal((await a.next((m) => 'id' in m)).id, i)
  t.match(await a.x('stop'), { return: {} })
  for (const c of [a, b]) t.match(await c.next((m) => m.event === 'STOP'), { event: 'STOP', timestamp: { seconds: Number, microseconds: Number } })
  t.match(await b.x('query-status'), { return: { status: 'paused', running: false } })
  t.match(await b.x('cont'), { return: {} })
  for (const c of [a, b]) await c.next((m) => m.event === 'RESUME')
  t.match(await a.x('cont'), { return: {} }, 'cont of a running VM: nothing to do, as QEMU')
  t.notOk(silent.got.some((m) => 'event' in m), 'a client that did not negotiate gets no events')
  for (const c of [a, b, silent]) c.close()
})

t.test('errors answer their place in the stream: a malformed message between commands does not overtake their replies', async (t) => {
  const a = await Raw.connect(srcQmp.path)
  await a.negotiate()
  a.send('{"execute":"query-status","id":1} } {"execute":"query-status","id":2} [1] {"execute":"query-version","id":3} {"execute":"nope","id":4}')
  const replies: Msg[] = []
  for (let i = 0; i < 6; i++) replies.push(await a.next((m) => !('event' in m)))
  t.same(replies.map((m) => ('return' in m ? `r${m.id}` : `e${m.id ?? ''}:${m.error.class}`)),
    ['r1', 'e:GenericError', 'r2', 'e:GenericError', 'r3', 'e4:CommandNotFound'], 'in the order sent, as QEMU answers')
  a.close()
})

t.test('a migration driven over QMP: wrong-state commands refused, a client leaving mid-command, pause-before-switchover', async (t) => {
  const s = await Raw.connect(srcQmp.path)
  const d = await Raw.connect(dstQmp.path)
  await s.negotiate()
  await d.negotiate()
  t.match(await d.x('query-status'), { return: { status: 'inmigrate' } })
  t.same(errorOf(await d.x('migrate', { uri: 'unix:/x' })), ['GenericError', 'Guest is waiting for an incoming migration'])
  t.match(errorOf(await d.x('cont')), ['GenericError', /^Guest is waiting for an incoming migration/])
  for (const c of [s, d]) t.same((await c.x('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] })).return, {})
  t.same((await s.x('migrate-set-capabilities', { capabilities: [{ capability: 'pause-before-switchover', state: true }, { capability: 'return-path', state: true }] })).return, {})
  t.same((await s.x('migrate-set-parameters', { 'max-bandwidth': 4 << 20 })).return, {})
  const uri = `unix:${join(dir, 'mig.sock')}`
  t.match(errorOf(await d.x('migrate-incoming', { uri: `unix:${join(dir, 'nodir', 'm.sock')}` })), ['GenericError', /^Failed to start the incoming migration: .*does not exist/])
  t.same(incomingFailed.length, 0, 'an address that cannot be bound leaves the destination waiting')
  t.same((await d.x('migrate-incoming', { uri })).return, {})
  t.same(errorOf(await d.x('migrate-incoming', { uri })), ['GenericError', 'The incoming migration has already been started'])
  await d.next((m) => m.event === 'MIGRATION' && m.data.status === 'setup')

  // A client that sends migrate and leaves at once: the migration goes on without it.
  const leaver = await Raw.connect(srcQmp.path)
  await leaver.negotiate()
  leaver.send(JSON.stringify({ execute: 'migrate', arguments: { uri } }))
  leaver.close()
  await s.next((m) => m.event === 'MIGRATION' && m.data.status === 'active')
  t.same(errorOf(await s.x('migrate', { uri })), ['GenericError', "There's a migration process in progress"])
  t.same(errorOf(await s.x('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] })), ['GenericError', "There's a migration process in progress"])
  t.same(errorOf(await s.x('migrate-continue', { state: 'pre-switchover' })), ['GenericError', 'Migration not in expected state: active'])
  const q = (await s.x('query-migrate')).return
  t.match(q, { status: 'active', 'total-time': Number, 'setup-time': Number, 'expected-downtime': Number, ram: { transferred: Number, total: RAM, 'page-size': 4096 }, vfio: { transferred: Number } })
  // While it runs: a parameter change reaches the running migration.
  t.same((await s.x('migrate-set-parameters', { 'max-bandwidth': 0, 'downtime-limit': 500 })).return, {})
  t.match((await s.x('query-migrate-parameters')).return, { 'max-bandwidth': 0, 'downtime-limit': 500 })
  await s.next((m) => m.event === 'MIGRATION' && m.data.status === 'pre-switchover', 30000)
  t.match(await s.x('query-status'), { return: { status: 'finish-migrate', running: false } })
  t.match(errorOf(await s.x('cont')), ['GenericError', "Cannot continue the VM while its migration is in status 'pre-switchover'"])
  t.ok(s.got.some((m) => m.event === 'MIGRATION_PASS'), 'MIGRATION_PASS events')
  t.match(s.got.find((m) => m.event === 'VFIO_MIGRATION' && m.data['device-state'] === 'pre-copy'),
    { data: { 'device-id': 'emu0', 'qom-path': '/machine/peripheral/emu0' } }, 'VFIO_MIGRATION events, with QEMU 9.1 names')
  t.ok(s.got.some((m) => m.event === 'VFIO_MIGRATION' && m.data['device-state'] === 'stop-copy'), 'the device in stop-copy at the switchover')
  t.same((await s.x('migrate-continue', { state: 'pre-switchover' })).return, {})
  await s.next((m) => m.event === 'MIGRATION' && m.data.status === 'completed', 30000)
  await d.next((m) => m.event === 'MIGRATION' && m.data.status === 'completed', 30000)
  await d.next((m) => m.event === 'RESUME')
  const done = (await s.x('query-migrate')).return
  t.match(done, { status: 'completed', downtime: Number, ram: { remaining: 0 } })
  t.notOk('expected-downtime' in done)
  await new Promise((r) => setTimeout(r, 30))
  t.same((await s.x('query-migrate')).return['total-time'], done['total-time'], 'total-time stops with the migration')
  t.match(await s.x('query-status'), { return: { status: 'postmigrate' } })
  t.match(await d.x('query-status'), { return: { status: 'running' } })
  t.same((await d.x('query-migrate')).return, { status: 'completed' })
  t.equal(incomingFailed.length, 0)
  t.match(await s.x('quit'), { return: {} })
  await s.next((m) => m.event === 'SHUTDOWN')
  await new Promise((r) => setImmediate(r))
  t.equal(quits, 1)
  s.close()
  d.close()
})

t.test('the destination migrates on: two clients race to migrate, one wins; a cancel while paused before the switchover runs the guest again', async (t) => {
  const third = await MicroVm.create({ role: 'dest', ramSize: RAM, vcpu: 'soft', workingSet: 1 << 20, vfio: { stateSize: 256 << 10, dirtyRate: 64 << 10 } })
  const failed: Error[] = []
  const thirdQmp = await QmpServer.listen(join(dir, 'third.qmp'), { machine: third, incoming: 'defer', onIncomingFailed: (e) => failed.push(e) })
  t.teardown(async () => {
    await thirdQmp.close()
    await third.destroy()
  })
  const a = await Raw.connect(dstQmp.path)
  const b = await Raw.connect(dstQmp.path)
  const c = await Raw.connect(thirdQmp.path)
  for (const x of [a, b, c]) await x.negotiate()
  t.match(await a.x('migrate-set-capabilities', { capabilities: [{ capability: 'pause-before-switchover', state: true }] }), { return: {} })
  const uri = `unix:${join(dir, 'mig3.sock')}`
  t.match(await c.x('migrate-incoming', { uri }), { return: {} })
  const [ra, rb] = await Promise.all([a.x('migrate', { uri }), b.x('migrate', { uri })])
  t.same([ra, rb].filter((r) => 'return' in r).length, 1, 'one migrate started')
  t.same(errorOf([ra, rb].find((r) => 'error' in r)!), ['GenericError', "There's a migration process in progress"])
  const deadline = Date.now() + 30000
  let st = ''
  while ((st = (await a.x('query-migrate')).return.status) !== 'pre-switchover') {
    if (Date.now() > deadline || st === 'failed') throw new Error(`migration ${st}, not paused`)
    await new Promise((r) => setTimeout(r, 20))
  }
  t.match(await b.x('query-status'), { return: { status: 'finish-migrate' } })
  const counter = dst.vcpuCounter()
  t.match(await b.x('migrate_cancel'), { return: {} })
  while ((st = (await a.x('query-migrate')).return.status) !== 'cancelled') {
    if (Date.now() > deadline) throw new Error(`migration still ${st} after the cancel`)
    await new Promise((r) => setTimeout(r, 20))
  }
  t.match(await a.x('query-status'), { return: { status: 'running' } })
  t.ok(await advances(dst, counter), 'the guest runs again where it was')
  while (failed.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  // With the guest paused every millisecond is downtime, so the library cuts
  // the stream at once (docs/cli.md): the destination sees a cut stream
  // (truncated, or EPIPE on its return path), not the cancel marker.
  t.equal(failed.length, 1, `the destination of the cancelled migration failed (${failed[0]?.message})`)
  t.not(third.vm.state, 'running', 'and does not run the guest')
  for (const x of [a, b, c]) x.close()
})

t.test('a client that stops reading is dropped once its unread output passes the bound; the others are served', async (t) => {
  const srv = await QmpServer.listen(join(dir, 'small.qmp'), { machine: src, maxPendingOutput: 64 << 10 })
  t.teardown(() => srv.close())
  const slow = await Raw.connect(srv.path)
  await slow.negotiate()
  const ok = await Raw.connect(srv.path)
  await ok.negotiate()
  slow.sock.pause()
  // Each reply is about 1 KiB: far more than the kernel's socket buffers and the bound together.
  const burst = JSON.stringify({ execute: 'query-commands' }).repeat(200)
  const deadline = Date.now() + 20000
  while (srv.clients > 1 && Date.now() < deadline) {
    slow.send(burst)
    await new Promise((r) => setTimeout(r, 10))
  }
  t.equal(srv.clients, 1, 'the reader that stopped was dropped')
  t.match(await ok.x('query-status'), { return: { status: String } })
  ok.close()
  slow.close()
})

t.test('incoming: URI listens at once, as qemu -incoming URI', async (t) => {
  const fourth = await MicroVm.create({ role: 'dest', ramSize: RAM, vcpu: 'soft', workingSet: 1 << 20, vfio: { stateSize: 256 << 10, dirtyRate: 64 << 10 } })
  const uri = `unix:${join(dir, 'mig4.sock')}`
  const failed: Error[] = []
  const fourthQmp = await QmpServer.listen(join(dir, 'fourth.qmp'), { machine: fourth, incoming: uri, onIncomingFailed: (e) => failed.push(e) })
  t.teardown(async () => {
    await fourthQmp.close()
    await fourth.destroy()
  })
  const c = await Raw.connect(fourthQmp.path)
  const from = await Raw.connect(dstQmp.path)
  await c.negotiate()
  await from.negotiate()
  t.same(errorOf(await c.x('migrate-incoming', { uri })), ['GenericError', 'The incoming migration has already been started'])
  t.match(await from.x('migrate-set-capabilities', { capabilities: [{ capability: 'pause-before-switchover', state: false }] }), { return: {} })
  // Bound before the server was handed out: migrate may come at once.
  t.match(await from.x('migrate', { uri }), { return: {} })
  const deadline = Date.now() + 30000
  let st = ''
  while ((st = (await c.x('query-migrate')).return.status) !== 'completed') {
    if (Date.now() > deadline || failed.length) throw new Error(`incoming ${st}: ${failed[0]?.message ?? ''}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  t.match(await c.x('query-status'), { return: { status: 'running' } })
  c.close()
  from.close()
})

t.test('a socket a live server holds is refused; a stale one is replaced', async (t) => {
  await t.rejects(QmpServer.listen(srcQmp.path, { machine: src }), { code: 'EADDRINUSE' })
  await t.rejects(QmpServer.listen(join(dir, 'nodir', 'x.qmp'), { machine: src }), { code: 'ENOENT' })
})
