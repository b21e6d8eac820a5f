export { RUN_STATES, type RunState, isRunState, transitionAllowed, allowedFrom } from './states.js'
export { Vm, InvalidTransitionError, TransitionError, ReentrantTransitionError, type ChangeStateHandler, type ChangeStateCallback, type VmEvents } from './vm.js'
