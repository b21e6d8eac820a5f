// QEMU's VM run states and the transitions it allows (system/runstate.c,
// runstate_transitions_def).
export const RUN_STATES = [
  'debug', 'inmigrate', 'internal-error', 'io-error', 'paused', 'postmigrate', 'prelaunch', 'finish-migrate',
  'restore-vm', 'running', 'save-vm', 'shutdown', 'suspended', 'watchdog', 'guest-panicked', 'colo',
] as const
export type RunState = (typeof RUN_STATES)[number]

const T: [RunState, RunState[]][] = [
  ['prelaunch', ['inmigrate', 'running', 'finish-migrate']],
  ['debug', ['running', 'finish-migrate', 'prelaunch', 'suspended']],
  ['inmigrate', ['internal-error', 'io-error', 'paused', 'running', 'shutdown', 'suspended', 'watchdog',
    'guest-panicked', 'finish-migrate', 'prelaunch', 'postmigrate', 'colo']],
  ['internal-error', ['paused', 'finish-migrate', 'prelaunch']],
  ['io-error', ['running', 'finish-migrate', 'prelaunch']],
  ['paused', ['running', 'finish-migrate', 'postmigrate', 'prelaunch', 'colo']],
  ['postmigrate', ['running', 'finish-migrate', 'prelaunch']],
  ['finish-migrate', ['running', 'paused', 'postmigrate', 'prelaunch', 'colo', 'internal-error', 'io-error',
    'shutdown', 'suspended', 'watchdog', 'guest-panicked']],
  ['restore-vm', ['running', 'prelaunch']],
  ['colo', ['running', 'prelaunch', 'shutdown']],
  ['running', ['debug', 'internal-error', 'io-error', 'paused', 'finish-migrate', 'restore-vm', 'save-vm',
    'shutdown', 'watchdog', 'guest-panicked', 'colo', 'suspended']],
  ['save-vm', ['running']],
  ['shutdown', ['paused', 'finish-migrate', 'prelaunch', 'colo']],
  ['suspended', ['running', 'finish-migrate', 'prelaunch', 'colo']],
  ['watchdog', ['running', 'finish-migrate', 'prelaunch', 'colo']],
  ['guest-panicked', ['running', 'finish-migrate', 'prelaunch']],
]

const allowed = new Map<RunState, ReadonlySet<RunState>>(T.map(([from, to]) => [from, new Set(to)]))

export function isRunState(s: unknown): s is RunState {
  return typeof s === 'string' && (RUN_STATES as readonly string[]).includes(s)
}

/** Whether QEMU allows from -> to (staying in the same state is always allowed). */
export function transitionAllowed(from: RunState, to: RunState): boolean {
  return from === to || (allowed.get(from)?.has(to) ?? false)
}

export function allowedFrom(from: RunState): RunState[] {
  return [...(allowed.get(from) ?? [])]
}
