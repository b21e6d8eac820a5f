// The microVM the CLI migrates: guest RAM and one vCPU (vmm/machine) running
// the dirtying workload, a timer device described with vmm/vmstate, an
// emulated VFIO device whose DMA engine writes into guest RAM, and the
// sections that carry all of it. Implements MigratableVm for the orchestrator.
import type { EmulatedDevice, EmulatedDeviceOptions } from '../../native/index.js'
import { native } from '../native/addon.js'
import { createVcpu, regionChecksum, readCtl, CTL, type Vcpu, type VcpuKind, type WorkloadParams } from '../machine/index.js'
import { Vm } from '../runstate/index.js'
import { SaveVMRegistry } from '../savevm/registry.js'
import { VfioMigrationSet } from '../vfio/vfio-set.js'
import type { DirtyTracker } from '../vfio/dirty-tracking.js'
import type { DirtyBitmap } from '../vfio/dirty-pages.js'
import { registerRam } from '../ram/index.js'
import type { MigratableVm } from '../migration/types.js'
import { TimerDevice, type TimerSnapshot } from './timer.js'
import { cpuSectionHandlers } from './cpu-section.js'
import { VcpuRunner, type ThrottleStats } from './throttle.js'
import { planLayout, fillCold, type MicroVmLayout } from './layout.js'
import { sha256Chunked } from './digest.js'

export const MICROVM_MACHINE = 'microvm-1'
export const VFIO_IDSTR = '0000:00:02.0/vfio'

export interface MicroVmOptions {
  role: 'source' | 'dest'
  ramSize: number
  vcpu?: VcpuKind | 'auto'
  workload?: Partial<WorkloadParams>
  /** Bytes of RAM the workload keeps dirtying (its hot set); default 8 MiB. */
  workingSet?: number
  /** The emulated VFIO device's options, or false for none. */
  vfio?: EmulatedDeviceOptions | false
  /** Pages per second the device's DMA engine writes into guest RAM (0 = no DMA). */
  dmaPagesPerSec?: number
  timer?: { periodUs?: number; alarmInTicks?: number }
  /** Source: start the VM right away (default true). */
  autostart?: boolean
  /** Destination: record a verification just before the first start (its hashing adds to the downtime). */
  verifyBeforeStart?: boolean
}

/** What the demo compares between the two sides. */
export interface Verification {
  ramDigest: string
  deviceDigest: string
  counter: string
  checksum: number
  /** The guest's checksum equals the sum over its region (it stopped at an iteration boundary). */
  checksumConsistent: boolean
  timer: TimerSnapshot
  /** Time spent hashing, ms. */
  hashMs: number
}

export const DEFAULT_DEVICE: EmulatedDeviceOptions = {
  flags: 7,
  stateSize: 4 << 20,
  regionSize: 64 << 10,
  dirtyRate: 1 << 20,
}

export class MicroVm implements MigratableVm {
  readonly machine = MICROVM_MACHINE
  readonly vm: Vm
  readonly registry = new SaveVMRegistry()
  readonly vfio: VfioMigrationSet
  readonly timer: TimerDevice
  /** Whether the migration in progress uses switchover-ack (read by the VFIO devices at save/load time). */
  switchoverAck = false
  private runner: VcpuRunner
  private tracker: DirtyTracker | undefined
  /** The tracker of the last migration, still reported after it stopped. */
  private lastTracker: DirtyTracker | undefined
  private dmaStarted = false
  private destroyed = false
  private verified: Promise<Verification> | undefined
  private removeHandlers: (() => void)[] = []

  private constructor(
    readonly role: 'source' | 'dest',
    readonly vcpu: Vcpu,
    readonly layout: MicroVmLayout,
    readonly emu: EmulatedDevice | undefined,
    private readonly dmaRate: number,
    opts: MicroVmOptions,
  ) {
    this.vm = new Vm(role === 'source' ? 'prelaunch' : 'inmigrate')
    this.vfio = new VfioMigrationSet(this.vm, this.registry, { switchoverAck: () => this.switchoverAck })
    // An alarm far ahead keeps the timer's subsection in the stream without firing during a demo.
    this.timer = new TimerDevice(opts.timer ?? { alarmInTicks: 1_000_000_000 })
    this.runner = new VcpuRunner(vcpu)
  }

  static async create(opts: MicroVmOptions): Promise<MicroVm> {
    if (opts.role !== 'source' && opts.role !== 'dest') throw new TypeError(`microvm role must be 'source' or 'dest', got ${String(opts.role)}`)
    const dmaRate = opts.dmaPagesPerSec ?? 0
    if (!Number.isFinite(dmaRate) || dmaRate < 0) throw new RangeError(`dmaPagesPerSec ${dmaRate} must be a non-negative number`)
    const withDevice = opts.vfio !== false
    const layout = planLayout(opts.ramSize, { workingSet: opts.workingSet, workload: opts.workload, dma: withDevice })
    const vcpu = await createVcpu(opts.ramSize, { kind: opts.vcpu ?? 'auto', params: layout.workload })
    let emu: EmulatedDevice | undefined
    try {
      if (opts.role === 'source') fillCold(vcpu.memory.bytes, layout, layout.workload.seed)
      if (withDevice) {
        emu = new native.EmulatedDevice({ name: 'emu0', ...DEFAULT_DEVICE, ...(opts.vfio || {}) })
        const mem = vcpu.memory.bytes
        emu.attachGuestMemory(Buffer.from(mem.buffer, mem.byteOffset + layout.dmaBase, layout.dmaSize), layout.dmaBase)
      }
      const m = new MicroVm(opts.role, vcpu, layout, emu, dmaRate, opts)
      await m.wire(opts)
      if (opts.role === 'source' && opts.autostart !== false) await m.vm.vmStart()
      return m
    } catch (e) {
      emu?.detachGuestMemory()
      await vcpu.destroy().catch(() => undefined)
      throw e
    }
  }

  private async wire(opts: MicroVmOptions): Promise<void> {
    const reg = this.registry
    reg.register({ idstr: 'microvm-timer', instanceId: 0, vmsd: this.timer.vmsd, state: this.timer.regs })
    reg.register({ idstr: 'cpu', instanceId: 0, versionId: 1, handlers: cpuSectionHandlers(this.vcpu) })
    if (this.emu) await this.vfio.add(this.emu.device(), { idstr: VFIO_IDSTR })
    // Writes nothing to the stream: starts the trackers before RAM's bulk stage
    // so no page written after its copy can be missed, and stops them after.
    reg.register({
      idstr: 'microvm-dirty-log',
      instanceId: 0,
      versionId: 1,
      handlers: {
        savePrepare: () => this.startDirtyTracking(),
        saveCleanup: () => this.stopDirtyTracking(),
      },
    })
    registerRam(reg, {
      blocks: [{ name: 'pc.ram', memory: this.vcpu.memory.bytes }],
      dirtySources: [(into) => this.syncVcpuDirty(into), (into) => this.syncDmaDirty(into)],
    })
    this.removeHandlers.push(this.vm.addChangeStateHandler({
      name: 'microvm-vcpu',
      // Devices start before the vCPU and stop after it, as in QEMU.
      priority: 100,
      cb: (running) => (running ? this.onStart() : this.onStop()),
    }))
    if (opts.verifyBeforeStart) {
      this.removeHandlers.push(this.vm.addChangeStateHandler({
        name: 'microvm-verify',
        priority: -1000,
        // The prepare pass runs before any device resumes, so nothing has moved yet.
        prepare: async (running) => {
          if (running && !this.verified) this.verified = this.verify()
          if (this.verified) await this.verified
        },
        cb: () => undefined,
      }))
    }
  }

  private async onStart(): Promise<void> {
    this.timer.start()
    await this.runner.vmStart()
    if (this.emu && this.dmaRate > 0 && !this.dmaStarted) {
      this.emu.startDma(this.dmaRate)
      this.dmaStarted = true
    }
  }

  private async onStop(): Promise<void> {
    await this.runner.vmStop()
    this.timer.stop()
  }

  /** Dirty source: pages the vCPU wrote since the last call (KVM_GET_DIRTY_LOG or the soft vCPU's log). */
  async syncVcpuDirty(into: DirtyBitmap): Promise<void> {
    into.markBitmap(0, await this.vcpu.syncDirtyLog())
  }

  /** Dirty source: pages the device wrote by DMA since the last call, through the chosen tracker. */
  async syncDmaDirty(into: DirtyBitmap): Promise<void> {
    if (this.tracker) await this.tracker.sync(into)
  }

  /** What a migration's savePrepare does: clear the vCPU log and start the best DMA tracker. */
  async startDirtyTracking(): Promise<void> {
    await this.stopDirtyTracking()
    // Everything logged so far predates the bulk stage, which sends every page anyway.
    await this.vcpu.syncDirtyLog()
    this.tracker = await this.vfio.startDirtyTracker(this.dmaMappings())
    this.lastTracker = this.tracker
  }

  async stopDirtyTracking(): Promise<void> {
    const t = this.tracker
    this.tracker = undefined
    await t?.stop()
  }

  dmaMappings(): { iova: number; size: number }[] {
    return this.emu ? [{ iova: this.layout.dmaBase, size: this.layout.dmaSize }] : []
  }

  /** Which dirty tracker covers device DMA in the migration in progress (or the last one). */
  get dirtyTracker(): { kind: string; reason: string } | undefined {
    const t = this.tracker ?? this.lastTracker
    return t ? { kind: t.kind, reason: t.reason } : undefined
  }

  dirtyTrackerKind(): string | undefined {
    return this.tracker?.kind ?? this.lastTracker?.kind
  }

  setThrottle(percent: number): void {
    this.runner.setThrottle(percent)
  }

  throttleStats(): ThrottleStats {
    return this.runner.stats()
  }

  ramDigest(): Promise<string> {
    return sha256Chunked(this.vcpu.memory.bytes)
  }

  deviceDigest(): Promise<string> {
    return this.emu ? this.emu.digest() : Promise.resolve('')
  }

  vcpuCounter(): bigint {
    return this.vcpu.counter()
  }

  timerState(): TimerSnapshot {
    return this.timer.snapshot()
  }

  /** Digests and counters; meaningful when the vCPU is stopped (at a boundary). */
  async verify(): Promise<Verification> {
    const t0 = performance.now()
    const [ramDigest, deviceDigest] = await Promise.all([this.ramDigest(), this.deviceDigest()])
    const hashMs = performance.now() - t0
    const mem = this.vcpu.memory.bytes
    const start = readCtl(mem, CTL.regionStart)
    const pages = readCtl(mem, CTL.regionPages)
    const checksum = this.vcpu.checksum()
    const inRam = start + pages <= this.layout.pages ? regionChecksum(mem, start, pages) : -1
    return {
      ramDigest,
      deviceDigest,
      counter: this.vcpu.counter().toString(),
      checksum,
      checksumConsistent: inRam === checksum,
      timer: this.timer.snapshot(),
      hashMs,
    }
  }

  /** The verification recorded before the first start (verifyBeforeStart), once it ran. */
  verificationBeforeStart(): Promise<Verification> | undefined {
    return this.verified
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    for (const r of this.removeHandlers) r()
    await this.stopDirtyTracking().catch(() => undefined)
    if (this.emu) {
      this.emu.stopDma()
      this.emu.detachGuestMemory()
      for (const d of this.vfio.devices) this.vfio.remove(d)
    }
    await this.vcpu.destroy()
  }
}
