// Typed events over Node's own EventEmitter. The classes that emit (Vm, the
// VFIO set and devices, the migrations) are real EventEmitters, so
// listenerCount, once(emitter, name), instanceof EventEmitter and every other
// tool that takes an emitter work on them; typed-emitter only adds the types
// that tie each event name to its payload.
import { EventEmitter } from 'node:events'
// typed-emitter is a CommonJS types package; from an ES module its default
// export is reached through the namespace.
import type * as typed from 'typed-emitter'

export type EventMap = typed.EventMap
/** An EventEmitter whose on/once/off/emit know `Events`. */
export type TypedEventEmitter<Events extends EventMap> = typed.default<Events>

/**
 * The base class of an emitter of `Events`.
 *
 * @example
 * type JobEvents = { done: (ms: number) => void }
 * class Job extends typedEmitter<JobEvents>() {
 *   finish(): void { this.emit('done', 12) }
 * }
 * new Job().on('done', (ms) => console.log(ms))
 */
export function typedEmitter<Events extends EventMap>(): new () => TypedEventEmitter<Events> {
  return EventEmitter as unknown as new () => TypedEventEmitter<Events>
}
