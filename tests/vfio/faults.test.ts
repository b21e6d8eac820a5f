// The fault matrix: every injected failure at every phase leaves the source
// running with its device RUNNING and its state intact, or, where the device
// was reset, back in its power-on state and reported as reset; and the
// destination device out of RESUMING.
import t from 'tap'
import { makeSide, migrate, type Side } from './harness.js'
import type { EmulatedDevice } from '../../native/index.js'

interface Case {
  name: string
  flags?: number
  /** Arm faults before the migration starts. */
  arm?: (src: EmulatedDevice, dst: EmulatedDevice) => void
  /** Act at a hook point. */
  at?: string
  act?: (src: EmulatedDevice, dst: EmulatedDevice, srcSide: Side) => void | Promise<void>
  /** Expected error text (of the source or the loader). */
  error: RegExp
  /** The source device gets reset on the way: its state is lost, and the set says so. */
  sourceReset?: boolean
}

const sleep = (ms: number) => new Promise(r => setTimeout(r, ms))

const cases: Case[] = [
  { name: 'source PRE_COPY entry fails, recovered to RUNNING', arm: s => s.failNextMove('PRE_COPY', 'EIO'), error: /RUNNING -> PRE_COPY/ },
  // The device stays in RUNNING, the recover state: no SET is needed, so the armed recovery fault never fires.
  { name: 'source PRE_COPY entry fails where its recovery would fail too: nothing to recover', arm: s => s.failNextMove('PRE_COPY', 'EIO', true), error: /PRE_COPY/ },
  { name: 'source P2P quiesce fails at stop: the stop rolls back', arm: s => s.failNextMove('PRE_COPY_P2P', 'EIO'), error: /PRE_COPY_P2P/ },
  { name: 'source STOP_COPY fails at stop', arm: s => s.failNextMove('STOP_COPY', 'EIO'), error: /STOP_COPY/ },
  // The stop's rollback (PRE_COPY_P2P -> PRE_COPY) is the SET that fails: reset.
  { name: 'source STOP_COPY and recovery fail at stop: reset', arm: s => s.failNextMove('STOP_COPY', 'EIO', true), error: /STOP_COPY/, sourceReset: true },
  { name: 'STOP_COPY fails on a device without PRE_COPY', flags: 3, arm: s => s.failNextMove('STOP_COPY', 'EIO'), error: /STOP_COPY/ },
  { name: 'destination cannot enter RESUMING', arm: (_s, d) => d.failNextMove('RESUMING', 'EIO'), error: /RESUMING/ },
  { name: 'corrupted device data is rejected by the destination driver', arm: s => s.corruptStreamByte(5000), error: /STOP|EFAULT|EINVAL|checksum|fail/i },
  { name: 'destination fails leaving RESUMING', at: 'finish', act: (_s, d) => d.failNextMove('STOP', 'EIO'), error: /RESUMING -> STOP/ },
  {
    name: 'asynchronous reset of the source during pre-copy: data fd out of sync',
    // The reset comes from the device's own thread: wait (bounded) until it has happened.
    at: 'stop', act: async s => { s.asyncReset(0); for (let i = 0; i < 200 && s.state !== 'RUNNING'; i++) await sleep(25) }, error: /out of sync|ENODEV|reset/,
    sourceReset: true,
  },
  { name: 'EAGAIN and short reads are survived', arm: s => { s.eagain(3); s.shortIo(5, 777) }, error: /^$/ },
  ...['prepare', 'setup', 'iterate', 'stop', 'complete', 'finish', 'loaded'].map(p => ({
    name: `cancel at ${p}`, at: p, act: () => { throw new Error(`cancelled at ${p}`) }, error: new RegExp(`cancelled at ${p}`),
  })),
]

for (const c of cases) {
  t.test(c.name, async t => {
    const flags = c.flags ?? 7
    const src = await makeSide('source', [{ flags, stateSize: 256 << 10, seed: 3 }])
    const dst = await makeSide('dest', [{ flags, stateSize: 256 << 10, seed: 4 }])
    // Unlike its power-on state, which is what a reset leaves.
    const powerOn = await src.emus[0].digest()
    src.emus[0].dirtyRegion(1)
    const before = await src.emus[0].digest()
    t.not(before, powerOn)
    c.arm?.(src.emus[0], dst.emus[0])
    const r = await migrate(src, dst, {
      hook: async p => { if (p === c.at) await c.act!(src.emus[0], dst.emus[0], src) },
    })
    if (c.error.source === '^$') {
      t.ok(r.ok, r.error?.message)
      t.equal(await dst.emus[0].digest(), before)
      return
    }
    t.notOk(r.ok, 'the migration failed')
    t.match(`${r.error?.message} ${r.loadError?.message}`, c.error)
    t.equal(src.vm.state, 'running', 'source VM runs again')
    t.equal(src.emus[0].state, 'RUNNING', 'source device RUNNING')
    t.equal(src.devs[0].deviceState, 'RUNNING', 'tracked state agrees with the device')
    t.notOk(src.devs[0].isBroken)
    if (c.sourceReset) {
      t.same(src.set.devicesReset(), ['source0'], 'the reset is reported')
      t.equal(await src.emus[0].digest(), powerOn, 'a reset device holds its power-on state, not what it had')
    } else {
      t.same(src.set.devicesReset(), [], 'no device was reset')
      t.equal(await src.emus[0].digest(), before, 'no source device state lost')
    }
    t.not(dst.emus[0].state, 'RESUMING', 'destination left RESUMING')
    t.not(dst.emus[0].state, 'ERROR')
    t.not(dst.vm.state, 'running', 'destination VM never started')
  })
}

t.test('a device whose reset fails is declared broken and the VM stops in internal-error', async t => {
  const { VfioMigrationSet } = await import('../../vmm/vfio/vfio-set.js')
  const { Vm } = await import('../../vmm/runstate/index.js')
  const { SaveVMRegistry } = await import('../../vmm/savevm/registry.js')
  const vm = new Vm('prelaunch')
  await vm.vmStart()
  const set = new VfioMigrationSet(vm, new SaveVMRegistry())
  let state = 'RUNNING'
  const failing = {
    name: 'flaky',
    migrationFlags: async () => 7,
    probe: async () => false,
    getState: async () => 'ERROR',
    setState: async (s: string) => {
      if (s === 'PRE_COPY') throw Object.assign(new Error('EIO'), { code: 'EIO' })
      state = s
      return null
    },
    reset: async () => { throw Object.assign(new Error('reset failed'), { code: 'EIO' }) },
    migDataSize: async () => 0n,
  }
  const dev = await set.add(failing as never)
  let broken = 0
  dev.on('broken', () => broken++)
  await t.rejects(dev.setState('PRE_COPY', 'RUNNING'), { name: 'VfioDeviceBrokenError' })
  t.equal(broken, 1)
  t.ok(dev.isBroken)
  // The stop is requested, not awaited: it runs once nothing else is in transition.
  for (let i = 0; i < 200 && vm.state !== 'internal-error'; i++) await sleep(5)
  t.equal(vm.state, 'internal-error')
  await t.rejects(vm.vmStart(), { code: 'ERR_RUNSTATE_TRANSITION' }, "QEMU's table: internal-error cannot go straight to running")
  await vm.vmStop('paused')
  await t.rejects(vm.vmStart(), { name: 'TransitionError', message: /broken|reset failed/ }, 'nor can the VM run on a broken device from paused')
  t.match(set.blockers().join(), /broken/)
  t.equal(state, 'RUNNING')
})
