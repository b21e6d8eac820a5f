export {
  realizeVfioMigration, VfioDeviceMigration, VfioMigrationError, VfioDeviceBrokenError,
  type DeviceState, type VfioDeviceMigrationOptions, type VfioDeviceConfigHooks, type VfioDeviceStats, type VfioDeviceEvents,
  type IncomingDeviceOutcome,
} from './device-migration.js'
export { VfioMigrationSet, describeDeviceOutcomes, type VfioSetOptions, type VfioSetEvents } from './vfio-set.js'
export { startDirtyTracker, type DirtyTracker, type DirtyTrackerKind, type DmaMapping } from './dirty-tracking.js'
export { DirtyBitmap } from '../core/dirty-bitmap.js'
export { VFIO_TRACE_CHANNEL, type VfioTraceEvent } from './trace.js'
export * as markers from './markers.js'
export {
  KernelVfioHandover, VFIO_LOCAL_IDSTR, MAX_HANDOVER_FDS,
  type HandoverDevice, type HandoverContainer, type HandoverKernel, type PassedSet, type ReceivedDevice, type KernelVfioHandoverOptions,
} from './local-handover.js'
