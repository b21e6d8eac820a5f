import t from 'tap'
import { Vm, InvalidTransitionError, TransitionError, ReentrantTransitionError } from '../../vmm/runstate/vm.js'
import { transitionAllowed, allowedFrom, RUN_STATES, isRunState, type RunState } from '../../vmm/runstate/states.js'

t.test('QEMU transition table', async t => {
  t.equal(RUN_STATES.length, 16)
  t.ok(transitionAllowed('running', 'finish-migrate'))
  t.ok(transitionAllowed('finish-migrate', 'postmigrate'))
  t.ok(transitionAllowed('inmigrate', 'running'))
  t.notOk(transitionAllowed('postmigrate', 'paused'))
  t.notOk(transitionAllowed('save-vm', 'paused'))
  t.ok(transitionAllowed('paused', 'paused'))
  t.same(allowedFrom('save-vm'), ['running'])
  t.notOk(isRunState('bogus'))
  t.throws(() => new Vm('bogus' as RunState), TypeError)
})

function recorder(vm: Vm, names: string[], log: string[], failAt?: string) {
  names.forEach((n, i) => {
    vm.addChangeStateHandler({
      name: n,
      priority: i,
      prepare: async (running, state) => {
        if (failAt === `${n}.prepare:${running}`) throw new Error(`${n} prepare failed`)
        log.push(`${n}.prepare(${running},${state})`)
      },
      cb: async (running, state) => {
        if (failAt === `${n}.cb:${running}`) throw new Error(`${n} failed`)
        log.push(`${n}.cb(${running},${state})`)
      },
    })
  })
}

t.test('start runs prepares then mains ascending; stop runs both reversed', async t => {
  const vm = new Vm()
  const log: string[] = []
  recorder(vm, ['a', 'b', 'c'], log)
  const events: string[] = []
  vm.on('state-change', e => events.push(`${e.from}->${e.to}`))
  await vm.vmStart()
  t.same(log, ['a.prepare(true,running)', 'b.prepare(true,running)', 'c.prepare(true,running)', 'a.cb(true,running)', 'b.cb(true,running)', 'c.cb(true,running)'])
  log.length = 0
  await vm.vmStop('finish-migrate')
  t.same(log, ['c.prepare(false,finish-migrate)', 'b.prepare(false,finish-migrate)', 'a.prepare(false,finish-migrate)', 'c.cb(false,finish-migrate)', 'b.cb(false,finish-migrate)', 'a.cb(false,finish-migrate)'])
  log.length = 0
  await vm.vmStopForceState('postmigrate')
  t.same(log, [], 'already stopped: state changes, no notifiers')
  t.equal(vm.state, 'postmigrate')
  t.same(events, ['prelaunch->running', 'running->finish-migrate', 'finish-migrate->postmigrate'])
  await t.rejects(vm.vmStop('paused'), InvalidTransitionError)
  await t.rejects(vm.vmStop('running'), InvalidTransitionError)
  t.throws(() => vm.runstateSet('save-vm'), InvalidTransitionError)
  await vm.vmStart()
  await vm.vmStart()
  t.equal(vm.isRunning, true)
})

const points: string[] = []
for (const n of ['a', 'b', 'c']) for (const p of ['prepare', 'cb']) points.push(`${n}.${p}`)

for (const dir of ['start', 'stop'] as const) {
  for (const p of points) {
    t.test(`${dir} fails at ${p}: rolled back, state unchanged`, async t => {
      const vm = new Vm('paused')
      const running = dir === 'start'
      const log: string[] = []
      const failAt = `${p}:${running}`
      if (dir === 'stop') {
        recorder(vm, ['a', 'b', 'c'], [])
      }
      const vm2 = dir === 'stop' ? vm : vm
      if (dir === 'stop') {
        // Fresh VM so only the failing recorder is registered.
        const v = new Vm('paused')
        recorder(v, ['a', 'b', 'c'], log, failAt)
        await v.vmStart().catch(() => {})
        // start with failAt for stop direction never fails; now running
        t.equal(v.state, 'running')
        log.length = 0
        const failed: TransitionError[] = []
        v.on('transition-failed', e => failed.push(e.error))
        const err = await v.vmStop('paused').then(() => null, e => e)
        t.ok(err instanceof TransitionError)
        t.equal(v.state, 'running', 'still running')
        t.equal(failed.length, 1)
        // Every applied callback was called again with running=true, in reverse.
        const applied = log.filter(l => l.includes('(false,paused)'))
        const undone = log.filter(l => l.includes('(true,running)'))
        t.same(undone, applied.map(l => l.replace('(false,paused)', '(true,running)')).reverse())
        return
      }
      recorder(vm2, ['a', 'b', 'c'], log, failAt)
      const err = await vm2.vmStart().then(() => null, e => e)
      t.ok(err instanceof TransitionError, String(err))
      t.equal(err.code, 'ERR_RUNSTATE_NOTIFIER')
      t.equal(vm2.state, 'paused')
      const applied = log.filter(l => l.includes('(true,running)'))
      const undone = log.filter(l => l.includes('(false,paused)'))
      t.same(undone, applied.map(l => l.replace('(true,running)', '(false,paused)')).reverse())
      // The VM still works after the failure.
      const ok = new Vm('paused')
      await ok.vmStart()
      t.equal(ok.state, 'running')
    })
  }
}

t.test('rollback errors are reported; removal and serialization', async t => {
  const vm = new Vm('paused')
  let n = 0
  let undoFails = true
  vm.addChangeStateHandler({ name: 'flaky', cb: async running => { if (!running && undoFails) { undoFails = false; throw new Error('cannot undo') } } })
  const remove = vm.addChangeStateHandler({ name: 'bad', priority: 1, cb: async () => { n++; throw new Error('no') } })
  const err = await vm.vmStart().then(() => null, e => e)
  t.equal(err.rollbackErrors.length, 1)
  t.match(err.message, /bad failed/)
  remove()
  await Promise.all([vm.vmStart(), vm.vmStop('paused'), vm.vmStart()])
  t.equal(vm.state, 'running')
  t.equal(n, 1)
  const states: string[] = []
  vm.once('stop', s => states.push(s)).on('resume', () => states.push('resume'))
  await vm.vmStop('save-vm')
  await vm.vmStart()
  t.same(states, ['save-vm', 'resume'])
})

t.test('a notifier that starts another transition of its VM gets an error at once, not a wait for itself', async t => {
  const vm = new Vm('prelaunch')
  await vm.vmStart()
  let inner: unknown
  vm.addChangeStateHandler({
    name: 'reentrant',
    cb: async (running) => {
      if (!running) inner = await vm.vmStop('internal-error').then(() => 'stopped', e => e)
    },
  })
  await vm.vmStop('paused')
  t.type(inner, ReentrantTransitionError)
  t.match((inner as Error).message, /'internal-error' during 'running' -> 'paused'.*requestStop/)
  t.equal((inner as ReentrantTransitionError).code, 'ERR_RUNSTATE_REENTRANT')
  t.equal(vm.state, 'paused')
})

t.test('requestStop from inside a failing transition: the stop runs once the transition is over', async t => {
  const vm = new Vm('prelaunch')
  await vm.vmStart()
  const log: string[] = []
  vm.on('state-change', e => log.push(`${e.from}->${e.to}`))
  let fail = true
  vm.addChangeStateHandler({
    name: 'dies',
    cb: async (running) => {
      if (running || !fail) return
      fail = false
      vm.requestStop('internal-error')
      throw new Error('device lost')
    },
  })
  await t.rejects(vm.vmStop('finish-migrate'), TransitionError)
  t.equal(vm.state, 'running', 'the failed stop rolled back')
  // Work an earlier notifier left behind may still ask for transitions.
  await new Promise(r => setTimeout(r, 10))
  t.equal(vm.state, 'internal-error')
  t.same(log, ['running->internal-error'])
})

t.test('requestStop does nothing to a VM that is not running, and reports a stop it could not make', async t => {
  const vm = new Vm('prelaunch')
  vm.requestStop('internal-error')
  await new Promise(r => setTimeout(r, 10))
  t.equal(vm.state, 'prelaunch')
  await vm.vmStart()
  vm.addChangeStateHandler({ name: 'refuses', cb: async (running) => { if (!running) throw new Error('no') } })
  const failed = new Promise<{ state: string; error: unknown }>(r => vm.on('stop-request-failed', r))
  vm.requestStop('paused')
  const f = await failed
  t.equal(f.state, 'paused')
  t.type(f.error, TransitionError)
  t.equal(vm.state, 'running')
})

t.test('a Vm is a real EventEmitter: instanceof, listenerCount, events.once', async t => {
  const { EventEmitter, once } = await import('node:events')
  const vm = new Vm('prelaunch')
  t.ok(vm instanceof EventEmitter)
  const fn = (): void => undefined
  vm.on('state-change', fn)
  t.equal(vm.listenerCount('state-change'), 1)
  vm.off('state-change', fn)
  t.equal(vm.listenerCount('state-change'), 0)
  const seen = once(vm, 'state-change')
  await vm.vmStart()
  const [ev] = await seen
  t.same(ev, { from: 'prelaunch', to: 'running', running: true })
})
