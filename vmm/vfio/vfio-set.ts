// Every VFIO device of one VM, and the rules that span devices: several
// devices migrate together only if all of them support P2P (otherwise one
// could DMA into another already stopped); one dirty tracker for all.
import type { Container, Device } from '../../native/index.js'
import type { SaveVMRegistry, SaveStateEntry } from '../savevm/registry.js'
import type { Vm } from '../runstate/index.js'
import {
  realizeVfioMigration, VfioMigrationError, type VfioDeviceMigration, type VfioDeviceMigrationOptions, type VfioDeviceStats,
} from './device-migration.js'
import { startDirtyTracker, type DirtyTracker, type DmaMapping } from './dirty-tracking.js'

export interface VfioSetOptions {
  /** Whether the current migration uses switchover-ack. */
  switchoverAck?: () => boolean
  /** Priority of the devices' savevm entries (QEMU saves VFIO after RAM by default: 0). */
  priority?: number
}

interface Member {
  dev: VfioDeviceMigration
  entry: SaveStateEntry
  removeHandler: () => void
}

export class VfioMigrationSet {
  private members: Member[] = []

  constructor(private readonly vm: Vm, private readonly registry: SaveVMRegistry, private readonly opts: VfioSetOptions = {}) {}

  /**
   * Realize a device's migration and register it: savevm handlers (one live
   * section per device) and its run-state notifier. A device that cannot
   * migrate is still added, with its blocker.
   */
  async add(device: Device, opts: Omit<VfioDeviceMigrationOptions, 'switchoverAck' | 'onBroken'> = {}): Promise<VfioDeviceMigration> {
    const dev = await realizeVfioMigration(device, {
      ...opts,
      switchoverAck: () => this.opts.switchoverAck?.() ?? false,
      onBroken: async () => {
        // The device's state is unknown: the guest must not run on it.
        if (this.vm.state === 'running') await this.vm.vmStop('internal-error').catch(() => undefined)
      },
    })
    const handlers = dev.handlers()
    const ownPrepare = handlers.savePrepare
    handlers.savePrepare = () => {
      const b = this.blockers()
      if (b.length) throw new VfioMigrationError(b.join('; '), 'EOPNOTSUPP')
      return ownPrepare?.()
    }
    const entry = this.registry.register({ idstr: dev.idstr, versionId: 1, priority: this.opts.priority ?? 0, handlers })
    const removeHandler = this.vm.addChangeStateHandler(dev.changeStateHandler())
    this.members.push({ dev, entry, removeHandler })
    return dev
  }

  remove(dev: VfioDeviceMigration): void {
    const m = this.members.find(x => x.dev === dev)
    if (!m) return
    m.removeHandler()
    this.registry.unregister(m.entry)
    this.members = this.members.filter(x => x !== m)
  }

  get devices(): VfioDeviceMigration[] {
    return this.members.map(m => m.dev)
  }

  /** Every reason the VM cannot migrate now because of its VFIO devices. */
  blockers(): string[] {
    const out: string[] = []
    for (const m of this.members) if (m.dev.blocker) out.push(m.dev.blocker)
    for (const m of this.members) if (m.dev.isBroken) out.push(`${m.dev.name}: device is broken (reset failed)`)
    if (this.members.length > 1) {
      const noP2p = this.members.filter(m => !m.dev.hasP2p).map(m => m.dev.name)
      if (noP2p.length) {
        out.push(`migration of ${this.members.length} VFIO devices needs P2P support on all of them; lacking: ${noP2p.join(', ')}`)
      }
    }
    return out
  }

  /** Start the best dirty tracker over `mappings` (guest memory mapped for DMA). */
  startDirtyTracker(mappings: readonly DmaMapping[], container?: Container): Promise<DirtyTracker> {
    return startDirtyTracker(this.devices, mappings, container)
  }

  /** Destination: the stream loaded; every device leaves RESUMING (its image is validated now). */
  async finishIncoming(): Promise<void> {
    for (const m of this.members) await m.dev.finishIncoming()
  }

  /** Destination: the migration failed; devices abandon RESUMING by reset. */
  async abortIncoming(): Promise<void> {
    const errors: unknown[] = []
    for (const m of this.members) await m.dev.abortIncoming().catch(e => errors.push(e))
    if (errors.length) throw errors[0]
  }

  stats(): Record<string, VfioDeviceStats & { state: string }> {
    const out: Record<string, VfioDeviceStats & { state: string }> = {}
    for (const m of this.members) out[m.dev.name] = { ...m.dev.stats, state: m.dev.deviceState }
    return out
  }
}
