// Trace points for the VFIO migration path, published on node's
// diagnostics_channel so a user can subscribe without us paying for it when
// nobody listens (hasSubscribers is checked before building the message).
import diagnostics_channel from 'node:diagnostics_channel'

export type VfioTraceEvent =
  | { event: 'set-state'; device: string; from: string; to: string; recover: string; ok: boolean; error?: string }
  | { event: 'reset'; device: string; reason: string; ok: boolean }
  | { event: 'save-setup'; device: string; bufferSize: number; precopy: boolean }
  | { event: 'save-iterate'; device: string; initialBytes: number; dirtyBytes: number; sent: number }
  /** One block read from the device; `frames` > 1 when the native path cut it into several frames. */
  | { event: 'save-block'; device: string; size: number; frames?: number }
  | { event: 'save-complete'; device: string; bytes: number }
  | { event: 'save-cleanup'; device: string }
  /** VFIO_MIG_GET_PRECOPY_INFO failed: the pre-copy sizes are unknown until it succeeds or the device says ENOMSG. */
  | { event: 'precopy-info'; device: string; ok: false; error: string }
  | { event: 'pending'; device: string; exact: boolean; bytes: number; stopCopySize?: number; initialBytes: number; dirtyBytes: number }
  | { event: 'load-tag'; device: string; tag: string }
  | { event: 'load-data'; device: string; size: number; frames?: number }
  | { event: 'load-cleanup'; device: string }
  | { event: 'dirty-sync'; tracker: string; pages: number }

/** Channel name: subscribe with `diagnostics_channel.subscribe('vmm-migration:vfio', fn)`. */
export const VFIO_TRACE_CHANNEL = 'vmm-migration:vfio'

const channel = diagnostics_channel.channel(VFIO_TRACE_CHANNEL)

/**
 * Whether anybody listens: the native data path then moves one block per
 * call, so every block gets its event, instead of a whole run per call.
 */
export function tracing(): boolean {
  return channel.hasSubscribers
}

export function trace(make: () => VfioTraceEvent): void {
  if (channel.hasSubscribers) channel.publish(make())
}
