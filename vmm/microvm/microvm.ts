// The microVM the CLI migrates: guest RAM and one vCPU (vmm/machine) running
// the dirtying workload, a timer device described with vmm/vmstate, an
// emulated VFIO device whose DMA engine writes into guest RAM, and the
// sections that carry all of it. Implements MigratableVm for the orchestrator.
import type { EmulatedDevice, EmulatedDeviceOptions } from '../../native/index.js'
import { native } from '../native/addon.js'
import { createVcpu, readCtl, CTL, PAGE_SIZE, MachineError, type Vcpu, type VcpuKind, type VcpuState, type WorkloadParams } from '../machine/index.js'
import { Vm } from '../runstate/index.js'
import { SaveVMRegistry } from '../savevm/registry.js'
import { VfioMigrationSet } from '../vfio/vfio-set.js'
import type { DirtyBitmap } from '../core/dirty-bitmap.js'
import { registerRam, type RamMigration } from '../ram/index.js'
import type { MigratableVm } from '../migration/types.js'
import { TimerDevice, type TimerSnapshot } from './timer.js'
import { cpuSectionHandlers } from './cpu-section.js'
import { VcpuRunner, type ThrottleStats } from './throttle.js'
import { planLayout, fillCold, type MicroVmLayout } from './layout.js'
import { blake3Digest } from './digest.js'
import { PROOF_IDSTR, checkProof, proofSectionHandlers, type Proof } from './proof.js'

export const MICROVM_MACHINE = 'microvm-1'

const EBUSY = 16
/** What expectedCheckMs times its hash on: enough to keep the threads' start-up a small part of it. */
const CHECK_SAMPLE_BYTES = 8 << 20
/** Device states in which the emulated device's DMA engine writes guest RAM. */
const DMA_STATES = new Set(['RUNNING', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P'])
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
  /**
   * Destination: hash RAM and device state after loading, before reporting
   * ready, and refuse a guest whose digests differ from the source's proof
   * (its hashing adds to the downtime). The result is kept as the
   * verification before the first start.
   */
  verifyBeforeStart?: boolean
  /**
   * Source: the proof section carries the BLAKE3 of all guest RAM (default
   * true). Hashing it costs about a second per GiB of the downtime, which a
   * local migration (whose destination maps the very same pages) may not
   * want to pay; without it a destination that verifies refuses the guest,
   * having nothing to compare its RAM with.
   */
  ramProof?: boolean
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
  /** Time spent hashing RAM and device state, ms. */
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
  private dmaStarted = false
  private destroyed = false
  private verified: Promise<Verification> | undefined
  /** How long the verification before the first start held that start back, ms. */
  private verifyMs: number | undefined
  /** Destination: the source's digests at the switchover, from its proof section. */
  private proof: Proof | undefined
  private readonly verifyBeforeStart: boolean
  private readonly ramProof: boolean
  private removeHandlers: (() => void)[] = []
  private ramMigration: RamMigration | undefined
  /** Source: the verification taken for the proof section, with the guest stopped before the handover. */
  private atSwitchover: Verification | undefined
  /**
   * Source: what the switchover's sections will ask for, started the moment
   * the VM stopped for it (vCPU and devices both), so that these native
   * calls overlap the RAM section's end instead of following it, one round
   * trip through the thread pool after another, in the downtime.
   */
  private atStop: { cpu: Promise<VcpuState>; check: Promise<Verification> } | undefined

  private constructor(
    readonly role: 'source' | 'dest',
    readonly vcpu: Vcpu,
    readonly layout: MicroVmLayout,
    readonly emu: EmulatedDevice | undefined,
    private readonly dmaRate: number,
    opts: MicroVmOptions,
  ) {
    this.vm = new Vm(role === 'source' ? 'prelaunch' : 'inmigrate')
    // The device's DMA reaches only its window, so only the window is all-dirty without DMA logging.
    this.vfio = new VfioMigrationSet(this.vm, this.registry, { switchoverAck: () => this.switchoverAck, dmaMappings: () => this.dmaMappings() })
    // An alarm far ahead keeps the timer's subsection in the stream without firing during a demo.
    this.timer = new TimerDevice(opts.timer ?? { alarmInTicks: 1_000_000_000 })
    this.runner = new VcpuRunner(vcpu)
    this.verifyBeforeStart = opts.verifyBeforeStart ?? false
    this.ramProof = opts.ramProof ?? true
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
    reg.register({ idstr: 'cpu', instanceId: 0, versionId: 1, handlers: cpuSectionHandlers(this.vcpu, () => this.atStop?.cpu) })
    if (this.emu) await this.vfio.add(this.emu.device(), { idstr: VFIO_IDSTR })
    // Device DMA is the VFIO set's own dirty log of this RAM section.
    this.ramMigration = registerRam(reg, {
      blocks: [{ name: 'pc.ram', memory: this.vcpu.memory.bytes, shared: this.vcpu.sharedRam, backing: this.vcpu.ramBacking }],
      dirtySources: [(into) => this.syncVcpuDirty(into)],
    })
    // Saved with the non-iterable sections, after RAM's last pages.
    reg.register({
      idstr: PROOF_IDSTR,
      instanceId: 0,
      versionId: 1,
      handlers: proofSectionHandlers(
        async (f) => {
          this.atSwitchover = undefined
          const check = this.atStop?.check
          if (!f.local) {
            const [ramDigest, deviceDigest] = await Promise.all([this.ramProof ? this.ramDigest() : '', check ? check.then(v => v.deviceDigest) : this.deviceDigest()])
            return { ramDigest, deviceDigest }
          }
          // All of verify(), kept: after a local migration's GO the
          // destination runs on these very pages, so this side may not read
          // them again to report what it sent. Its checksum region costs
          // this downtime some ms (a copying migration reads it after).
          let v = await (check ?? this.verify(false))
          if (this.ramProof) {
            const t0 = performance.now()
            v = { ...v, ramDigest: await this.ramDigest(), hashMs: v.hashMs + performance.now() - t0 }
          }
          this.atSwitchover = v
          return { ramDigest: v.ramDigest, deviceDigest: v.deviceDigest }
        },
        (p) => (this.proof = p),
      ),
    })
    this.removeHandlers.push(this.vm.addChangeStateHandler({
      name: 'microvm-vcpu',
      // Devices start before the vCPU and stop after it, as in QEMU.
      priority: 100,
      cb: (running) => (running ? this.onStart() : this.onStop()),
    }))
    // After every handler of the stop, devices included: their digest is
    // only meaningful once they stopped too.
    const onVmStop = (state: string) => {
      if (state !== 'finish-migrate') return
      const atStop = { cpu: this.vcpu.getState(), check: this.verify(false) }
      // Awaited by the sections, or never if the migration fails first.
      atStop.cpu.catch(() => undefined)
      atStop.check.catch(() => undefined)
      this.atStop = atStop
    }
    this.vm.on('stop', onVmStop)
    this.removeHandlers.push(() => this.vm.off('stop', onVmStop))
    if (opts.verifyBeforeStart) {
      this.removeHandlers.push(this.vm.addChangeStateHandler({
        name: 'microvm-verify',
        priority: -1000,
        // The prepare pass runs before any device resumes, so nothing has moved yet.
        prepare: async (running) => {
          const t0 = performance.now()
          if (running && !this.verified) this.verified = this.verify()
          if (!this.verified) return
          try {
            await this.verified
          } finally {
            this.verifyMs ??= performance.now() - t0
          }
        },
        cb: () => undefined,
      }))
    }
  }

  private async onStart(): Promise<void> {
    this.atStop = undefined
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

  /** Guest RAM's section: its layout and the figures of the last migration (QMP's query-migrate reads them). */
  get ram(): RamMigration {
    return this.ramMigration!
  }

  /** Dirty source: pages the vCPU wrote since the last call (KVM_GET_DIRTY_LOG or the soft vCPU's log). */
  async syncVcpuDirty(into: DirtyBitmap): Promise<void> {
    into.markBitmap(0, await this.vcpu.syncDirtyLog())
  }

  dmaMappings(): { iova: number; size: number }[] {
    return this.emu ? [{ iova: this.layout.dmaBase, size: this.layout.dmaSize }] : []
  }

  /** Which dirty tracker covers device DMA in the migration in progress (or the last one). */
  get dirtyTracker(): { kind: string; reason: string } | undefined {
    return this.vfio.dirtyTracker
  }

  dirtyTrackerKind(): string | undefined {
    return this.vfio.dirtyTracker?.kind
  }

  setThrottle(percent: number): void {
    this.runner.setThrottle(percent)
  }

  throttleStats(): ThrottleStats {
    return this.runner.stats()
  }

  /** BLAKE3 (hex) of all guest RAM; refused while the vCPU or the device's DMA may write it. */
  async ramDigest(): Promise<string> {
    // Native threads read RAM without a lock: a guest still writing it
    // would give a digest of no moment at all.
    if (this.vcpu.running) throw new MachineError('guest RAM can be hashed only with the vCPU stopped', EBUSY)
    if (this.emu && this.dmaStarted && DMA_STATES.has(this.emu.state)) throw new MachineError(`guest RAM can be hashed only with the device's DMA stopped (device in ${this.emu.state})`, EBUSY)
    return blake3Digest(this.vcpu.memory.bytes)
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
  async verify(withRam = true): Promise<Verification> {
    const t0 = performance.now()
    const [ramDigest, deviceDigest] = await Promise.all([withRam ? this.ramDigest() : '', this.deviceDigest()])
    const hashMs = performance.now() - t0
    const mem = this.vcpu.memory.bytes
    const start = readCtl(mem, CTL.regionStart)
    const pages = readCtl(mem, CTL.regionPages)
    const checksum = this.vcpu.checksum()
    // Off the event loop where the addon has it: with the guest stopped
    // this is downtime, which a local migration's source pays before GO.
    const inRam = start + pages <= this.layout.pages ? await native.wordSumOf(mem.subarray(start * PAGE_SIZE, (start + pages) * PAGE_SIZE)) : -1
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

  /** Source: the verification of the guest as the last migration's proof section sent it (stopped, before GO). */
  switchoverVerification(): Verification | undefined {
    return this.atSwitchover
  }

  /** The verification recorded before the first start (verifyBeforeStart), once it ran. */
  verificationBeforeStart(): Promise<Verification> | undefined {
    return this.verified
  }

  /**
   * MigratableVm, destination: with verifyBeforeStart, hash what was loaded
   * and compare it with the source's proof before the destination reports
   * ready; an IntegrityError fails the migration and the source resumes.
   */
  async checkIncoming(): Promise<void> {
    if (!this.verifyBeforeStart) return
    const t0 = performance.now()
    this.verified = this.verify()
    let v: Verification
    try {
      v = await this.verified
    } finally {
      this.verifyMs = performance.now() - t0
    }
    // The proof section is required, so a loaded stream always had one.
    if (this.proof) checkProof(this.proof, v)
  }

  /**
   * MigratableVm, destination: what checkIncoming will cost, ms. Its bulk
   * is hashing guest RAM, whose cost does not depend on the contents: timed
   * on a scratch buffer (guest RAM itself is being loaded now, and may be
   * unmapped under a native hash if the migration fails at once) and scaled
   * to the RAM's size. The faster of two runs, so a moment's load on the
   * machine does not hold a share of the downtime budget for good; plus a
   * quarter for what the real run meets.
   */
  async expectedCheckMs(): Promise<number> {
    if (!this.verifyBeforeStart) return 0
    return this.ramHashMs()
  }

  /**
   * MigratableVm, source: what the switchover costs here beyond sending, ms:
   * the proof section's digest of all guest RAM (ramProof), taken with the
   * VM stopped, so in the downtime. Estimated as expectedCheckMs is.
   */
  async expectedSaveMs(): Promise<number> {
    return this.ramProof ? this.ramHashMs() : 0
  }

  private async ramHashMs(): Promise<number> {
    const ram = this.vcpu.memory.bytes.byteLength
    const sample = Buffer.alloc(Math.min(ram, CHECK_SAMPLE_BYTES))
    let best = Infinity
    for (let i = 0; i < 2; i++) {
      const t0 = performance.now()
      await blake3Digest(sample)
      best = Math.min(best, performance.now() - t0)
    }
    return best * (ram / sample.length) * 1.25
  }

  /** MigratableVm: how long that verification held the first start back, ms (undefined before it ran). */
  verificationMs(): number | undefined {
    return this.verifyMs
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    for (const r of this.removeHandlers) r()
    await this.vfio.logStop().catch(() => undefined)
    if (this.emu) {
      this.emu.stopDma()
      this.emu.detachGuestMemory()
      for (const d of this.vfio.devices) this.vfio.remove(d)
    }
    await this.vcpu.destroy()
  }
}
