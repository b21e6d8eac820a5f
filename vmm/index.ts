/**
 * vmm-migration: live migration for userspace VMMs.
 *
 * The surface a VMM author needs:
 * - run state and change-state notifiers: {@link Vm};
 * - the table of migratable state: {@link SaveVMRegistry} (live handlers with
 *   QEMU's roles, or declarative {@link VMStateDescription}s);
 * - guest RAM in QEMU's RAM format: {@link registerRam}, with the vCPUs'
 *   dirty log as a dirty source ({@link vcpuDirtySource});
 * - VFIO devices (migration protocol v2): {@link VfioMigrationSet} over the
 *   native {@link Device} (kernel) or {@link EmulatedDevice}; the set tracks
 *   their DMA into guest RAM by itself;
 * - the migration itself: {@link migrate} / {@link incoming}, or
 *   {@link OutgoingMigration} for progress events and cancel;
 * - a QMP monitor that managers drive it with, as they drive QEMU:
 *   {@link QmpServer} (docs/qmp.md).
 *
 * See docs/embedding.md and examples/embed.ts.
 */
export { VmmError } from './core/errors.js'
export { Vm, TransitionError, InvalidTransitionError, ReentrantTransitionError, RUN_STATES } from './runstate/index.js'
export type { RunState, ChangeStateHandler, ChangeStateCallback, VmEvents } from './runstate/index.js'

export { SaveVMRegistry, SaveVM, loadvm, LoadError, SaveError } from './savevm/index.js'
export type { SaveVMHandlers, RegisterOptions, SaveStateEntry, PendingSize, LoadHandlerContext, RamDirtyLog } from './savevm/index.js'
export type { VMStateDescription, VMStateField, State } from './vmstate/index.js'

export { MigStream, StreamError } from './stream/index.js'
export { connect, listen, parseUri, loadTlsCreds } from './channel/index.js'
export type { Channel, Listener, ConnectOptions, ListenOptions, TlsCreds, TlsOptions } from './channel/index.js'

export { registerRam, vcpuDirtySource } from './ram/index.js'
export type { RamOptions, RamBlockConfig, RamBlock, DirtySource, RamMigration, RamStats, SharedRam } from './ram/index.js'

export {
  VfioMigrationSet, VfioDeviceMigration, VfioMigrationError, VfioDeviceBrokenError, DirtyBitmap,
  VFIO_TRACE_CHANNEL, KernelVfioHandover, VFIO_LOCAL_IDSTR,
} from './vfio/index.js'
export type {
  DeviceState, VfioDeviceStats, VfioTraceEvent, VfioSetOptions, DirtyTracker, DirtyTrackerKind, DmaMapping,
  HandoverDevice, HandoverContainer, HandoverKernel, PassedSet, ReceivedDevice, KernelVfioHandoverOptions,
} from './vfio/index.js'

export {
  migrate, incoming, OutgoingMigration, MigrationError, DEFAULT_PARAMETERS, DEFAULT_CAPABILITIES, localRefusal,
} from './migration/index.js'
export type {
  MigratableVm, MigrationParameters, MigrationCapabilities, MigrationStats, MigrationStatus, IncomingResult,
} from './migration/index.js'

export { MicroVm } from './microvm/index.js'

export { QmpServer, MigrationControl, QmpDecoder, QmpError, SUPPORTED_CAPABILITIES } from './qmp/index.js'
export type { QmpServerOptions, MigrationControlOptions, QmpCapability, QmpRamSource } from './qmp/index.js'

import { native } from './native/addon.js'
/** The native VFIO classes: kernel objects and the emulated device. */
export const { Container, Group, Device, DataFd, EmulatedDevice } = native
export type { Container as VfioContainer, Group as VfioGroup, Device as VfioDevice, DataFd as VfioDataFd } from '../native/index.js'
export type { EmulatedDeviceOptions } from '../native/index.js'
