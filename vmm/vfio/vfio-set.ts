// Every VFIO device of one VM, and the rules that span devices: several
// devices migrate together only if all of them support P2P (otherwise one
// could DMA into another already stopped); one dirty tracker for all, which
// the set runs itself as a dirty log of the RAM migration (QEMU's VFIO memory
// listener: log_global_start / log_sync / log_global_stop), because a VMM
// that forgot to wire it would lose every page a device wrote after its copy.
import type { Container, Device } from '../../native/index.js'
import type { SaveVMRegistry, SaveStateEntry, RamDirtyLog } from '../savevm/registry.js'
import type { RamBlock } from '../ram/blocks.js'
import type { DirtyBitmap } from '../core/dirty-bitmap.js'
import type { Vm } from '../runstate/index.js'
import { typedEmitter } from '../core/events.js'
import {
  realizeVfioMigration, VfioMigrationError, type IncomingDeviceOutcome, type VfioDeviceBrokenError, type VfioDeviceMigration,
  type VfioDeviceMigrationOptions, type VfioDeviceStats,
} from './device-migration.js'
import { startDirtyTracker, type DirtyTracker, type DmaMapping } from './dirty-tracking.js'

export interface VfioSetOptions {
  /** Whether the current migration uses switchover-ack. */
  switchoverAck?: () => boolean
  /** Priority of the devices' savevm entries (QEMU saves VFIO after RAM by default: 0). */
  priority?: number
  /**
   * Guest memory the devices may write by DMA, as mapped in their IOMMU, read
   * when a migration starts. Default: every RAM block being migrated, at its
   * guest-physical address (a VMM without a vIOMMU maps all guest RAM for
   * VFIO). Narrower mappings only matter without DMA dirty tracking, where
   * every mapped page is resent on every sync.
   */
  dmaMappings?: () => readonly DmaMapping[]
  /** The IOMMU container, whose dirty tracker is used when not every device logs its own DMA. */
  container?: Container
}

interface Member {
  dev: VfioDeviceMigration
  entry: SaveStateEntry
  removeHandler: () => void
}

export type VfioSetEvents = {
  /**
   * A device was reset: it is back in its power-on state and whatever it
   * held is gone (QEMU reports it as "Resetting device"). The guest's driver
   * has to recover it; the guest is not intact.
   */
  'device-reset': (e: { device: string; reason: string }) => void
  /** A device's reset failed too: its state is unknown, and the VM is stopped in internal-error. */
  'device-broken': (e: { device: string; error: VfioDeviceBrokenError }) => void
}

/** "dev0 STOP (recovered), dev1 RUNNING (reset)". */
export function describeDeviceOutcomes(list: readonly IncomingDeviceOutcome[]): string {
  return list.map(o => `${o.device} ${o.state} (${o.outcome})`).join(', ')
}

/**
 * The VFIO devices of one VM, migrated with its RAM and other sections.
 *
 * Device DMA into guest RAM is tracked without the embedder's help: the set
 * registers itself as a dirty log of `registry`, so the "ram" section (from
 * `registerRam` on the same registry) starts the best DMA dirty tracker when a
 * migration starts, ORs it into its bitmap at every sync, and stops it when
 * the migration ends or fails.
 *
 * @example
 * ```ts
 * const vfio = new VfioMigrationSet(vm, registry, { switchoverAck: () => true })
 * await vfio.add(await (await Group.open(42)).getDevice('0000:65:00.1'))
 * if (vfio.blockers().length) console.log(vfio.blockers())
 * const stats = await migrate({ vm, registry, machine: 'my-vmm-1', vfio }, 'tcp:10.0.0.2:4444')
 * console.log(stats.dirtyTracker)   // 'device-dma-logging', 'container' or 'none'
 * ```
 */
export class VfioMigrationSet extends typedEmitter<VfioSetEvents>() implements RamDirtyLog {
  private members: Member[] = []
  private tracker: DirtyTracker | undefined
  private lastTracker: DirtyTracker | undefined
  /** Devices reset since the current (or last) migration began, in order. */
  private reset: string[] = []

  constructor(private readonly vm: Vm, private readonly registry: SaveVMRegistry, private readonly opts: VfioSetOptions = {}) {
    super()
    registry.addDirtyLog(this)
  }

  /**
   * Realize a device's migration and register it: savevm handlers (one live
   * section per device) and its run-state notifier. A device that cannot
   * migrate is still added, with its blocker.
   */
  async add(device: Device, opts: Omit<VfioDeviceMigrationOptions, 'switchoverAck' | 'onBroken'> = {}): Promise<VfioDeviceMigration> {
    const dev = await realizeVfioMigration(device, {
      ...opts,
      switchoverAck: () => this.opts.switchoverAck?.() ?? false,
      onBroken: () => {
        // The device's state is unknown: the guest must not run on it. A
        // request, not a stop: this may run inside the very transition
        // (a stop for the switchover) that the stop would have to wait for.
        this.vm.requestStop('internal-error')
      },
    })
    dev.on('reset', e => {
      if (!this.reset.includes(e.device)) this.reset.push(e.device)
      this.emit('device-reset', e)
    })
    dev.on('broken', e => this.emit('device-broken', e))
    const handlers = dev.handlers()
    const ownPrepare = handlers.savePrepare
    handlers.savePrepare = () => {
      const b = this.blockers()
      if (b.length) throw new VfioMigrationError(b.join('; '), 'EOPNOTSUPP')
      this.reset = []
      return ownPrepare?.()
    }
    // An emulated device lives in this process: its state moves by copying,
    // as in any migration. A kernel device stays open across a local
    // migration instead (KernelVfioHandover passes its fds and keeps its DMA
    // mappings), and this set, which copies state, would stop it and move
    // its state besides: it is refused here, by name, pointing there.
    handlers.localBlockers = () => dev.device.inProcess
      ? []
      : [`VFIO device ${dev.name} is driven by the kernel and is in a VfioMigrationSet, which copies device state: a local migration hands a kernel device over without its state (register it with KernelVfioHandover instead), or migrate by copying`]
    const ownLoadSetup = handlers.loadSetup
    handlers.loadSetup = () => {
      this.reset = []
      return ownLoadSetup?.()
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

  /** The tracker covering device DMA in the migration in progress, else in the last one. */
  get dirtyTracker(): Pick<DirtyTracker, 'kind' | 'reason'> | undefined {
    const t = this.tracker ?? this.lastTracker
    return t ? { kind: t.kind, reason: t.reason } : undefined
  }

  /** Called by the RAM migration as it starts: the best tracker over the DMA mappings. */
  async logStart(ram: readonly RamBlock[]): Promise<void> {
    await this.logStop()
    const mappings = this.opts.dmaMappings?.() ?? ram.map(b => ({ iova: b.base, size: b.length }))
    this.tracker = this.lastTracker = await startDirtyTracker(this.devices, mappings, this.opts.container)
  }

  /** Called by the RAM migration at every sync: the pages devices wrote since the last one. */
  async logSync(into: DirtyBitmap): Promise<void> {
    await this.tracker?.sync(into)
  }

  /** Called by the RAM migration when it ends, completed or failed. */
  async logStop(): Promise<void> {
    const t = this.tracker
    this.tracker = undefined
    await t?.stop()
  }

  /** Destination: the stream loaded; every device leaves RESUMING (its image is validated now). */
  async finishIncoming(): Promise<void> {
    for (const m of this.members) await m.dev.finishIncoming()
  }

  /**
   * Destination: the migration failed, in loading or in starting the VM.
   * Every device ends stopped (recovered) or reset; the answer says which,
   * per device (describeDeviceOutcomes words it).
   */
  async abortIncoming(): Promise<IncomingDeviceOutcome[]> {
    const out: IncomingDeviceOutcome[] = []
    for (const m of this.members) out.push(await m.dev.abortIncoming())
    return out
  }

  /**
   * Names of the devices reset since the current (or last) migration began:
   * their state went back to power-on, so the VM did not come through the
   * failure intact even though it runs.
   */
  devicesReset(): string[] {
    return [...this.reset]
  }

  stats(): Record<string, VfioDeviceStats & { state: string }> {
    const out: Record<string, VfioDeviceStats & { state: string }> = {}
    for (const m of this.members) out[m.dev.name] = { ...m.dev.stats, state: m.dev.deviceState }
    return out
  }
}
