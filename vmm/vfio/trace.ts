// Trace points for the VFIO migration path, published on node's
// diagnostics_channel so a user can subscribe without us paying for it when
// nobody listens (hasSubscribers is checked before building the message).
import diagnostics_channel from 'node:diagnostics_channel'

export type VfioTraceEvent =
  | { event: 'set-state'; device: string; from: string; to: string; recover: string; ok: boolean; error?: string }
  | { event: 'reset'; device: string; reason: string; ok: boolean }
  | { event: 'save-setup'; device: string; bufferSize: number; precopy: boolean }
  | { event: 'save-iterate'; device: string; initialBytes: number; dirtyBytes: number; sent: number }
  | { event: 'save-block'; device: string; size: number }
  | { event: 'save-complete'; device: string; bytes: number }
  | { event: 'save-cleanup'; device: string }
  | { event: 'pending'; device: string; exact: boolean; bytes: number; stopCopySize?: number; initialBytes: number; dirtyBytes: number }
  | { event: 'load-tag'; device: string; tag: string }
  | { event: 'load-data'; device: string; size: number }
  | { event: 'load-cleanup'; device: string }
  | { event: 'dirty-sync'; tracker: string; pages: number }

/** Channel name: subscribe with `diagnostics_channel.subscribe('vmm-migration:vfio', fn)`. */
export const VFIO_TRACE_CHANNEL = 'vmm-migration:vfio'

const channel = diagnostics_channel.channel(VFIO_TRACE_CHANNEL)

export function trace(make: () => VfioTraceEvent): void {
  if (channel.hasSubscribers) channel.publish(make())
}
