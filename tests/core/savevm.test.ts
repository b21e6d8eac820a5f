import t from 'tap'
import { sourceRegistry, destRegistry, saveToBuffer, streamOf } from './helpers.js'
import { loadvm } from '../../vmm/savevm/load.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { SaveVM } from '../../vmm/savevm/save.js'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { MigCmd, QEMU_VM_FILE_MAGIC } from '../../vmm/savevm/constants.js'
import { writeCommand } from '../../vmm/savevm/writer.js'
import { SaveError } from '../../vmm/savevm/errors.js'

t.test('whole stream round trip with QEMU framing', async t => {
  const src = sourceRegistry()
  const { bytes, save } = await saveToBuffer(src, { switchover: true })
  // Header: magic, version 3, then the configuration section.
  t.equal(bytes.readUInt32BE(0), QEMU_VM_FILE_MAGIC)
  t.equal(bytes.readUInt32BE(4), 3)
  t.equal(bytes[8], 0x07)
  t.equal(bytes.readUInt32BE(9), 'pc-q35-9.0'.length)
  t.equal(bytes.subarray(13, 23).toString(), 'pc-q35-9.0')
  t.equal(bytes[23], 0x05, 'target-page-bits subsection')
  t.equal(bytes[24], 'configuration/target-page-bits'.length)
  // First section: START of ram (section id 1: QEMU's loader mistakes a live section 0), counted idstr, instance 0, version 4.
  const s = 25 + 30 + 4 + 4
  t.equal(bytes[s], 0x01)
  t.equal(bytes.readUInt32BE(s + 1), 1)
  t.equal(bytes[s + 5], 3)
  t.equal(bytes.subarray(s + 6, s + 9).toString(), 'ram')
  t.equal(bytes.readUInt32BE(s + 9), 0)
  t.equal(bytes.readUInt32BE(s + 13), 4)
  t.equal(bytes.readUInt32BE(s + 17), 0, 'setup payload')
  t.equal(bytes[s + 21], 0x7e, 'footer')
  t.equal(bytes.readUInt32BE(s + 22), 1)

  const dst = destRegistry()
  const cmds: string[] = []
  const res = await loadvm(await streamOf(bytes), dst.reg, { machine: 'pc-q35-9.0', targetPageBits: 12, strictEnd: true, onCommand: c => { cmds.push(c.name) } })
  t.equal(res.machine, 'pc-q35-9.0')
  t.equal(res.targetPageBits, 12)
  t.same(cmds, ['SWITCHOVER_START'])
  t.equal(dst.live.received.length, 3)
  t.equal(dst.live.received[2][0], 2)
  t.same(dst.uart, src.uart)
  t.equal(dst.old.value, 0x1234)
  t.equal(res.sections, 1 + 3 + 1 + 2)
  const vmdesc = res.vmdesc as any
  t.same(vmdesc, save.vmdesc)
  t.equal(vmdesc.page_size, 4096)
  t.equal(vmdesc.configuration.vmsd_name, 'configuration')
  t.same(vmdesc.devices.map((d: any) => [d.name, d.instance_id]), [['uart', 0], ['oldtimer', 0]])
  const uart = vmdesc.devices[0]
  t.equal(uart.vmsd_name, 'uart')
  t.equal(uart.version, 3)
  t.same(uart.fields.find((f: any) => f.name === 'regs'), { name: 'regs', array_len: 4, type: 'uint32', size: 4 })
  t.same(uart.fields.find((f: any) => f.name === 'fifo'), { name: 'fifo', type: 'buffer', size: 3 })
  t.same(uart.subsections[0].fields, [{ name: 'timeout', type: 'int32', size: 4 }])
  t.same(vmdesc.devices[1].fields, [{ name: 'data', size: 4, type: 'buffer' }])
})

t.test('pending sizes, veto, cleanup and handler failures', async t => {
  const src = sourceRegistry()
  const [a] = memoryPair(1 << 30)
  const save = new SaveVM(new MigStream(a), src.reg, { machine: 'm' })
  t.same(save.pendingEstimate(), { precopyOnly: 30000, postcopy: 0 })
  t.same(await save.pendingExact(), { precopyOnly: 30000, postcopy: 0 })
  t.same(await save.cleanup(), [])

  const reg = new SaveVMRegistry()
  reg.register({ idstr: 'vfio', versionId: 1, handlers: { savePrepare: () => { throw new Error('device not ready') }, saveCleanup: () => { throw new Error('c') } } })
  const s2 = new SaveVM(new MigStream(memoryPair()[0]), reg, { machine: 'm' })
  await t.rejects(s2.prepare(), { code: 'ERR_SAVEVM_VETO', message: /vfio\/0 vetoed migration: device not ready/ })
  t.equal((await s2.cleanup()).length, 1)

  const reg3 = new SaveVMRegistry()
  reg3.register({ idstr: 'bad', versionId: 1, handlers: { saveSetup: () => { throw new Error('boom') } } })
  const f3 = new MigStream(memoryPair()[0])
  const s3 = new SaveVM(f3, reg3, { machine: 'm' })
  await s3.header()
  await t.rejects(s3.setup(), { code: 'ERR_SAVEVM_HANDLER', message: /bad\/0 saveSetup failed: boom/ })
  t.ok(f3.error, 'stream carries the failure')

  const reg4 = new SaveVMRegistry()
  let active = false
  reg4.register({ idstr: 'inactive', versionId: 1, handlers: { isActive: () => active, saveSetup: () => {}, saveLiveIterate: () => true, saveComplete: () => {} } })
  reg4.register({ idstr: 'noiter', versionId: 1, handlers: { isActiveIterate: () => false, saveLiveIterate: () => false, statePendingExact: async () => ({ precopyOnly: 1, postcopy: 2 }) } })
  const s4 = new SaveVM(new MigStream(memoryPair(1 << 30)[0]), reg4, { machine: 'm', sendConfiguration: false, vmdesc: false })
  await s4.header()
  await s4.setup()
  t.equal(await s4.iterate(), true, 'inactive and non-iterating entries are skipped')
  t.same(await s4.pendingExact(), { precopyOnly: 1, postcopy: 2 })
  active = true
  t.equal(await s4.iterate(), true)
  t.throws(() => writeCommand(s4.f, 99), SaveError)
  t.throws(() => writeCommand(s4.f, MigCmd.PING, Buffer.alloc(3)), SaveError)
})

t.test('switchover ack is reported once every device approved', async t => {
  const src = sourceRegistry()
  const [a, b] = memoryPair(1 << 30)
  const f = new MigStream(a)
  const save = new SaveVM(f, src.reg, { machine: 'm' })
  await save.header()
  await save.command(MigCmd.OPEN_RETURN_PATH)
  await save.setup()
  while (!(await save.iterate())) { /* */ }
  await save.command(MigCmd.PING, Buffer.from([0, 0, 0, 1]))
  await save.complete()
  await save.nonIterable()
  await save.finish()
  await a.endWrites()
  const dst = destRegistry(true)
  let acks = 0
  let ackAtReceived = -1
  const res = await loadvm(new MigStream(b), dst.reg, { onSwitchoverAck: () => { acks++; ackAtReceived = dst.live.received.length } })
  t.equal(acks, 1)
  t.equal(ackAtReceived, 1, 'acked after the first chunk was loaded')
  t.same(res.commands.map(c => c.name), ['OPEN_RETURN_PATH', 'PING'])
})

t.test('saveAll and a stream without vmdesc or configuration', async t => {
  const src = sourceRegistry()
  const [a, b] = memoryPair(1 << 30)
  const save = new SaveVM(new MigStream(a), src.reg, { machine: 'x', sendConfiguration: false, vmdesc: false })
  await save.saveAll()
  await a.endWrites()
  const dst = destRegistry()
  const res = await loadvm(new MigStream(b), dst.reg, { expectConfiguration: false, vmdesc: false, strictEnd: true })
  t.equal(res.vmdesc, undefined)
  t.equal(dst.old.value, 0x1234)
})

t.test('registry validation', async t => {
  const reg = new SaveVMRegistry()
  t.throws(() => reg.register({ idstr: '', versionId: 1, handlers: {} }), TypeError)
  t.throws(() => reg.register({ idstr: 'x'.repeat(256), versionId: 1, handlers: {} }), TypeError)
  t.throws(() => reg.register({ idstr: 'a', handlers: {} }), /versionId/)
  t.throws(() => reg.register({ idstr: 'a', versionId: 1 }), /handlers or a vmsd/)
  t.throws(() => reg.register({ idstr: 'a', vmsd: { name: 'a', versionId: 1, fields: [] } }), /without state/)
  const e0 = reg.register({ idstr: 'a', versionId: 1, handlers: {} })
  const e1 = reg.register({ idstr: 'a', versionId: 1, handlers: {} })
  t.equal(e1.instanceId, 1)
  t.throws(() => reg.register({ idstr: 'a', instanceId: 0, versionId: 1, handlers: {} }), /already registered/)
  t.throws(() => reg.register({ idstr: 'b', instanceId: -1, versionId: 1, handlers: {} }), /instanceId/)
  const hi = reg.register({ idstr: 'iommu', versionId: 1, handlers: {}, priority: 5 })
  t.equal(reg.entries()[0], hi, 'higher priority first')
  reg.unregister(e0)
  t.equal(reg.find('a', 0), undefined)
  t.throws(() => reg.register({ idstr: 'v', vmsd: { name: 'v', versionId: 1, fields: [{ name: 'b', type: 'buffer', length: 'n' }] }, state: {} }), /must come earlier/)
})

t.test('iterate stops a round when the bandwidth window is spent', async t => {
  const { FakeClock } = await import('../../vmm/stream/clock.js')
  const clock = new FakeClock()
  const src = sourceRegistry()
  const [a, b] = memoryPair(1 << 30)
  const f = new MigStream(a, { clock, maxBandwidth: 100_000 })
  const save = new SaveVM(f, src.reg, { machine: 'm' })
  await save.header()
  await save.setup()
  let rounds = 0
  while (!(await save.iterate())) {
    rounds++
    await save.f.throttle()
  }
  t.ok(rounds >= 2, `throttled rounds: ${rounds}`)
  t.ok(clock.now() >= 200, 'fake time passed while throttled')
  await save.complete()
  await save.nonIterable()
  await save.finish()
  await a.endWrites()
  const dst = destRegistry()
  await loadvm(new MigStream(b), dst.reg, { strictEnd: true })
  t.equal(dst.live.received.length, 3)
})
