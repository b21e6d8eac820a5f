import t from 'tap'
import { runsAndPauses, dirtyLogIsExact, stateMoves, stateMovesToChild, exitsWhileRunning } from './helpers.js'
import { native } from '../../vmm/native/addon.js'
import {
  KvmVcpu, MachineError, kvmAvailable, fromNative, CTL, CTL_ADDR, CODE_ADDR, FIRST_DATA_PAGE, MAX_RAM, PAGE_SIZE, RAM_ALIGN,
} from '../../vmm/machine/index.js'

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
})

t.test('KVM errors from the addon are structured, and fromNative keeps that structure', async (t) => {
  // Refused before any ioctl, so this runs without /dev/kvm too.
  let raw: unknown
  try {
    await native.createKvmMachine(-1, { regionStart: 16, regionPages: 1, pagesPerIter: 1, spin: 0, seed: 1 })
  } catch (e) {
    raw = e
  }
  t.type(raw, Error)
  t.match(raw, {
    code: 'EINVAL',
    errno: 22,
    syscall: 'createKvmMachine',
    message: /^microVM: createKvmMachine: EINVAL \(ramSize -1 must be a positive integer/,
  })
  const m = fromNative(raw)
  t.type(m, MachineError)
  t.match(m, { code: 'EINVAL', errno: 22, syscall: 'createKvmMachine', message: (raw as Error).message })
  t.equal(m.cause, raw, 'the native error is the cause')
  t.equal(fromNative(m), m, 'a MachineError passes through')
  // Only a number is an errno: the message is never parsed for one.
  t.match(fromNative(new Error('x (errno 16)')), { errno: 5, code: 'EIO', syscall: undefined })
  t.match(fromNative('odd'), { errno: 5, code: 'EIO' })
})

const probe = await kvmAvailable()
const skip = probe.available ? false : `KVM unavailable: ${probe.reason}`
if (skip) t.comment(`skipping KVM vCPU tests: ${skip}`)

t.test('KVM vCPU runs, pauses promptly, keeps its checksum', { skip }, (t) => runsAndPauses(t, 'kvm'))
t.test('KVM vCPU dirty log reports exactly the written pages', { skip }, (t) => dirtyLogIsExact(t, 'kvm'))
t.test('KVM vCPU state and RAM move to a new VM mid-iteration', { skip }, (t) => stateMoves(t, 'kvm'))
t.test('KVM vCPU continues in a child process', { skip }, (t) => stateMovesToChild(t, 'kvm'))

t.test('a process with a running KVM vCPU still exits', { skip }, (t) => exitsWhileRunning(t, 'kvm'))

t.test('KVM vCPU errors carry errno, code and the call that failed', { skip }, async (t) => {
  await t.rejects(KvmVcpu.create(3 << 20), { errno: 22 })
  const v = await KvmVcpu.create(2 << 20)
  t.throws(() => native.createKvmMachine(-1, { regionStart: 16, regionPages: 1, pagesPerIter: 1, spin: 0, seed: 1 }))
  await t.rejects(v.setState({ kind: 'kvm', bytes: new Uint8Array(16) }), {
    errno: 22,
    code: 'EINVAL',
    syscall: 'VcpuState::from_bytes',
    message: /^microVM vCPU 0: VcpuState::from_bytes: EINVAL \(vCPU state does not start with magic KVMVCPU1\)$/,
  })
  await t.rejects(v.setState({ kind: 'soft', bytes: new Uint8Array(16) }), { errno: 22 })
  await v.start()
  await t.rejects(v.start(), { name: 'MachineError', errno: 16, code: 'EBUSY', syscall: 'Machine::start' })
  await t.rejects(v.getState(), { errno: 16, code: 'EBUSY', syscall: 'Machine::save_state' })
  await v.destroy()
  await t.rejects(v.start(), { errno: 19, code: 'ENODEV', syscall: 'Machine::start', message: /microVM was destroyed/ })
  await t.rejects(v.syncDirtyLog(), { errno: 19, code: 'ENODEV', syscall: 'Machine::sync_dirty_log' })
  t.equal(v.memory.size, 2 << 20, 'memory Buffer outlives destroy()')
  t.equal(v.memory.bytes[CODE_ADDR], 0xbb)
})
