// The VM's run state and its change-state notifiers (QEMU's runstate_set,
// vm_state_notify, vm_start, vm_stop, vm_stop_force_state).
//
// Beyond QEMU: notifiers are async and may fail. A failed transition rolls
// back every callback already applied (in reverse, called with the previous
// running flag and state), the run state does not change, and the caller gets
// a TransitionError.
//
// A notifier that asks for another transition (vmStop from inside a stop)
// would wait for the transition it is part of: it gets a
// ReentrantTransitionError at once, and requestStop is the way to ask
// (QEMU's qemu_system_vmstop_request: honoured once the current one is over).
import { AsyncLocalStorage } from 'node:async_hooks'
import { typedEmitter } from '../core/events.js'
import { transitionAllowed, isRunState, type RunState } from './states.js'
import { VmmError } from '../core/errors.js'

export type ChangeStateCallback = (running: boolean, state: RunState) => void | Promise<void>

export interface ChangeStateHandler {
  /** Main callback. */
  cb: ChangeStateCallback
  /** Runs in a first pass over all handlers, before any main callback. */
  prepare?: ChangeStateCallback
  /** Low priorities run first when the VM starts, last when it stops. */
  priority?: number
  name?: string
}

interface Entry extends ChangeStateHandler {
  priority: number
  seq: number
}

export class InvalidTransitionError extends VmmError {
  readonly code = 'ERR_RUNSTATE_TRANSITION'
  readonly errno = 22
  constructor(readonly from: RunState, readonly to: RunState) {
    super(`ERR_RUNSTATE_TRANSITION: invalid runstate transition: '${from}' -> '${to}'`)
    this.name = 'InvalidTransitionError'
  }
}

export class TransitionError extends VmmError {
  readonly code = 'ERR_RUNSTATE_NOTIFIER'
  readonly errno = 5
  constructor(
    readonly from: RunState, readonly to: RunState, readonly notifier: string, readonly phase: 'prepare' | 'main',
    cause: unknown, readonly rollbackErrors: unknown[],
  ) {
    super(`ERR_RUNSTATE_NOTIFIER: ${phase} notifier ${notifier} failed during '${from}' -> '${to}': ${(cause as Error)?.message ?? String(cause)}; rolled back${rollbackErrors.length ? ` with ${rollbackErrors.length} rollback error(s)` : ''}`, { cause })
    this.name = 'TransitionError'
  }
}

/** vmStart/vmStop called from inside a change-state notifier of the same VM. */
export class ReentrantTransitionError extends VmmError {
  readonly code = 'ERR_RUNSTATE_REENTRANT'
  readonly errno = 35 // EDEADLK: it would wait for itself
  constructor(readonly from: RunState, readonly to: RunState, readonly requested: RunState) {
    super(`ERR_RUNSTATE_REENTRANT: a change-state notifier asked for '${requested}' during '${from}' -> '${to}', which cannot finish before it; use requestStop()`)
    this.name = 'ReentrantTransitionError'
  }
}

export type VmEvents = {
  /** The run state changed (after every notifier succeeded). */
  'state-change': (e: { from: RunState; to: RunState; running: boolean }) => void
  /** A transition failed and was rolled back. */
  'transition-failed': (e: { from: RunState; to: RunState; error: TransitionError }) => void
  stop: (state: RunState) => void
  resume: () => void
  /** A stop asked for with requestStop could not be made. */
  'stop-request-failed': (e: { state: RunState; error: unknown }) => void
}

/** Which transition the notifiers running in this async context belong to. */
interface InTransition {
  from: RunState
  to: RunState
  /** False once the transition settled: work it left behind may start others. */
  active: boolean
}

export class Vm extends typedEmitter<VmEvents>() {
  private current: RunState
  private handlers: Entry[] = []
  private seq = 0
  private queue: Promise<unknown> = Promise.resolve()
  private readonly inside = new AsyncLocalStorage<InTransition>()

  constructor(initial: RunState = 'prelaunch') {
    super()
    if (!isRunState(initial)) throw new TypeError(`unknown run state ${String(initial)}`)
    this.current = initial
    // The first run() of an AsyncLocalStorage turns on Node's async tracking
    // (~0.7 ms here): pay it now, not in the first transition, which on a
    // migration's destination is the start of the guest, inside the downtime.
    this.inside.run({ from: initial, to: initial, active: false }, () => undefined)
  }

  get state(): RunState {
    return this.current
  }

  get isRunning(): boolean {
    return this.current === 'running'
  }

  /** Register a handler; returns a function that removes it. */
  addChangeStateHandler(h: ChangeStateHandler): () => void {
    const e: Entry = { ...h, priority: h.priority ?? 0, seq: this.seq++, name: h.name ?? `handler#${this.seq}` }
    this.handlers.push(e)
    // Ascending priority, stable: QEMU inserts before the first higher priority.
    this.handlers.sort((a, b) => a.priority - b.priority || a.seq - b.seq)
    return () => {
      this.handlers = this.handlers.filter(x => x !== e)
    }
  }

  /** Set the state without notifiers (QEMU's runstate_set). */
  runstateSet(to: RunState): void {
    if (!isRunState(to)) throw new TypeError(`unknown run state ${String(to)}`)
    if (!transitionAllowed(this.current, to)) throw new InvalidTransitionError(this.current, to)
    const from = this.current
    if (from === to) return
    this.current = to
    this.emit('state-change', { from, to, running: to === 'running' })
  }

  private serialize<T>(requested: RunState, fn: () => Promise<T>): Promise<T> {
    const t = this.inside.getStore()
    if (t?.active) return Promise.reject(new ReentrantTransitionError(t.from, t.to, requested))
    const run = this.queue.then(fn, fn)
    this.queue = run.catch(() => undefined)
    return run
  }

  /**
   * Run both notifier passes for a change to `running`/`to`; on failure undo
   * what ran and throw. Start runs handlers in ascending priority, stop in
   * descending, prepare pass first in both.
   */
  private async notify(running: boolean, to: RunState): Promise<void> {
    const from = this.current
    const wasRunning = from === 'running'
    const order = running ? [...this.handlers] : [...this.handlers].reverse()
    const passes: ['prepare' | 'main', (e: Entry) => ChangeStateCallback | undefined][] = [
      ['prepare', e => e.prepare],
      ['main', e => e.cb],
    ]
    const mark: InTransition = { from, to, active: true }
    try {
      await this.inside.run(mark, () => this.passes(passes, order, running, to, from, wasRunning))
    } finally {
      mark.active = false
    }
  }

  private async passes(
    passes: ['prepare' | 'main', (e: Entry) => ChangeStateCallback | undefined][], order: Entry[],
    running: boolean, to: RunState, from: RunState, wasRunning: boolean,
  ): Promise<void> {
    const applied: { fn: ChangeStateCallback; name: string }[] = []
    for (const [phase, pick] of passes) {
      for (const e of order) {
        const fn = pick(e)
        if (!fn) continue
        try {
          await fn(running, to)
          applied.push({ fn, name: e.name! })
        } catch (err) {
          const rollbackErrors: unknown[] = []
          for (const a of applied.reverse()) {
            try {
              await a.fn(wasRunning, from)
            } catch (re) {
              rollbackErrors.push(re)
            }
          }
          const te = new TransitionError(from, to, e.name!, phase, err, rollbackErrors)
          this.emit('transition-failed', { from, to, error: te })
          throw te
        }
      }
    }
  }

  /** QEMU's vm_start: notify (running=true) then enter 'running'. */
  vmStart(): Promise<void> {
    return this.serialize('running', async () => {
      if (this.current === 'running') return
      if (!transitionAllowed(this.current, 'running')) throw new InvalidTransitionError(this.current, 'running')
      await this.notify(true, 'running')
      this.runstateSet('running')
      this.emit('resume')
    })
  }

  /**
   * QEMU's vm_stop: if running, notify (running=false) and enter `state`. When
   * already stopped, only the state changes (no notifiers), like QEMU.
   */
  vmStop(state: RunState = 'paused'): Promise<void> {
    return this.serialize(state, () => this.stop(state, false))
  }

  private async stop(state: RunState, onlyIfRunning: boolean): Promise<void> {
    if (onlyIfRunning && this.current !== 'running') return
    if (state === 'running') throw new InvalidTransitionError(this.current, state)
    if (!transitionAllowed(this.current, state)) throw new InvalidTransitionError(this.current, state)
    if (this.current !== 'running') {
      this.runstateSet(state)
      return
    }
    await this.notify(false, state)
    this.runstateSet(state)
    this.emit('stop', state)
  }

  /**
   * Ask for a stop to `state` without waiting for it (QEMU's
   * qemu_system_vmstop_request): it runs once any transition in progress is
   * over, and only if the VM is running then. The one way a change-state
   * notifier can stop the VM it belongs to; a failure is reported with the
   * 'stop-request-failed' event.
   */
  requestStop(state: RunState = 'paused'): void {
    // Outside the notifier's context: this stop is not part of its transition.
    this.inside.exit(() => {
      this.serialize(state, () => this.stop(state, true)).catch(error => this.emit('stop-request-failed', { state, error }))
    })
  }

  /**
   * QEMU's vm_stop_force_state, used by migration: stop if running, otherwise
   * move to `state` anyway (e.g. paused -> finish-migrate).
   */
  vmStopForceState(state: RunState = 'finish-migrate'): Promise<void> {
    return this.vmStop(state)
  }
}
