import t from 'tap'
import { runsAndPauses, dirtyLogIsExact, stateMoves, stateMovesToChild, exitsWhileRunning } from './helpers.js'
import { SoftVcpu, MachineError } from '../../vmm/machine/index.js'

t.test('soft vCPU runs, pauses promptly, keeps its checksum', (t) => runsAndPauses(t, 'soft'))
t.test('soft vCPU dirty log reports exactly the written pages', (t) => dirtyLogIsExact(t, 'soft'))
t.test('soft vCPU state and RAM move to a new vCPU mid-iteration', (t) => stateMoves(t, 'soft'))
t.test('soft vCPU continues in a child process', (t) => stateMovesToChild(t, 'soft'))

t.test('soft vCPU rejects bad configuration with EINVAL', async (t) => {
  await t.rejects(SoftVcpu.create(3 << 20), { errno: 22 })
  await t.rejects(SoftVcpu.create(0), { errno: 22 })
  await t.rejects(SoftVcpu.create(2 << 20, { regionStart: 3 }), { errno: 22 })
  await t.rejects(SoftVcpu.create(2 << 20, { regionPages: 0 }), { errno: 22 })
  await t.rejects(SoftVcpu.create(2 << 20, { pagesPerIter: -1 }), MachineError)
  const v = await SoftVcpu.create(2 << 20)
  const s = await v.getState()
  const bad = s.bytes.slice()
  new DataView(bad.buffer).setUint32(8, 9, true)
  await t.rejects(v.setState({ kind: 'soft', bytes: bad }), { errno: 22 })
  t.throws(() => v.memory.load(new Uint8Array(4096)), { errno: 22 })
  t.throws(() => v.memory.page(v.memory.pages), { errno: 22 })
  t.equal(v.memory.page(1).byteLength, 4096)
  await v.destroy()
  await v.destroy()
  await t.rejects(v.syncDirtyLog(), { errno: 19 })
})

t.test('a process with a running soft vCPU still exits', (t) => exitsWhileRunning(t, 'soft'))
