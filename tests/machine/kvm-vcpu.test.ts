import t from 'tap'
import { runsAndPauses, dirtyLogIsExact, stateMoves, stateMovesToChild, exitsWhileRunning } from './helpers.js'
import { native } from '../../vmm/native/addon.js'
import { KvmVcpu, kvmAvailable, fromNative, CTL, CTL_ADDR, CODE_ADDR, FIRST_DATA_PAGE, MAX_RAM, PAGE_SIZE, RAM_ALIGN } from '../../vmm/machine/index.js'

t.test('TypeScript layout mirrors kvm-core', async (t) => {
  const l = native.kvmLayout()
  t.same(
    [l.pageSize, l.ramAlign, l.maxRam, l.codeAddr, l.ctlAddr, l.firstDataPage],
    [PAGE_SIZE, RAM_ALIGN, MAX_RAM, CODE_ADDR, CTL_ADDR, FIRST_DATA_PAGE],
  )
  t.same(
    [l.ctlCounter, l.ctlChecksum, l.ctlRng, l.ctlCursor, l.ctlRegionStart, l.ctlRegionPages, l.ctlPagesPerIter, l.ctlSpin, l.ctlStop],
    [CTL.counter, CTL.checksum, CTL.rng, CTL.cursor, CTL.regionStart, CTL.regionPages, CTL.pagesPerIter, CTL.spin, CTL.stop],
  )
  t.equal(fromNative(new Error('kvm: x (errno 16)')).errno, 16)
  t.equal(fromNative('odd').errno, 5)
})

const probe = await kvmAvailable()
const skip = probe.available ? false : `KVM unavailable: ${probe.reason}`
if (skip) t.comment(`skipping KVM vCPU tests: ${skip}`)

t.test('KVM vCPU runs, pauses promptly, keeps its checksum', { skip }, (t) => runsAndPauses(t, 'kvm'))
t.test('KVM vCPU dirty log reports exactly the written pages', { skip }, (t) => dirtyLogIsExact(t, 'kvm'))
t.test('KVM vCPU state and RAM move to a new VM mid-iteration', { skip }, (t) => stateMoves(t, 'kvm'))
t.test('KVM vCPU continues in a child process', { skip }, (t) => stateMovesToChild(t, 'kvm'))

t.test('a process with a running KVM vCPU still exits', { skip }, (t) => exitsWhileRunning(t, 'kvm'))

t.test('KVM vCPU errors carry errno', { skip }, async (t) => {
  await t.rejects(KvmVcpu.create(3 << 20), { errno: 22 })
  const v = await KvmVcpu.create(2 << 20)
  t.throws(() => native.createKvmMachine(-1, { regionStart: 16, regionPages: 1, pagesPerIter: 1, spin: 0, seed: 1 }))
  await t.rejects(v.setState({ kind: 'kvm', bytes: new Uint8Array(16) }), { errno: 22 })
  await t.rejects(v.setState({ kind: 'soft', bytes: new Uint8Array(16) }), { errno: 22 })
  await v.destroy()
  await t.rejects(v.start(), { errno: 19 })
  await t.rejects(v.syncDirtyLog(), { errno: 19 })
  t.equal(v.memory.size, 2 << 20, 'memory Buffer outlives destroy()')
  t.equal(v.memory.bytes[CODE_ADDR], 0xbb)
})
