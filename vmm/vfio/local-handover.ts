// Kernel VFIO devices in a local migration (live update, docs/local.md): the
// device is not migrated at all. Its container, group and device fds (and
// its interrupt eventfds) go to the next VMM process over the unix socket,
// and its DMA mappings of guest RAM stay in the IOMMU: the source forgets
// their vaddr at switchover (VFIO_DMA_UNMAP_FLAG_VADDR), the successor,
// which maps the same memfd pages, gives its own when it starts the guest
// (VFIO_DMA_MAP_FLAG_VADDR). The device never leaves RUNNING: the guest's
// vCPUs are stopped, so nothing new is asked of it, and what it does on its
// own (DMA into pinned pages, raising an interrupt eventfd) lands in the
// same pages and eventfds whichever process holds them. Moving it to STOP
// would need migration support, which most devices lack, and would gain
// nothing: its state never leaves the kernel.
//
// The handover's rules (docs/flows.md) hold for the device as for RAM:
// before GO the source owns it (any failure: the destination closes every
// fd it got, the source takes its vaddrs back and runs on); after GO the
// source does not touch it, unless the destination says it did not start
// (then it rolled back its vaddrs first, and the source takes them back).
// The kernel itself refuses two owners: a vaddr can be given only to a
// mapping whose vaddr was forgotten.
import { close as closeFd } from 'node:fs'
import type { Container, DmaMapping, Device, Group, PassedVfio, PassedDeviceFd } from '../../native/index.js'
import { native } from '../native/addon.js'
import type { SaveVMRegistry, SaveStateEntry, SaveVMHandlers } from '../savevm/registry.js'
import type { MigStream } from '../stream/stream.js'
import type { RamBlock } from '../ram/blocks.js'
import type { Vm } from '../runstate/index.js'
import { need } from '../savevm/fail.js'
import { VfioMigrationError } from './device-migration.js'

/** The savevm section that carries the passed objects' description. */
export const VFIO_LOCAL_IDSTR = 'vfio-kernel-local'
/** Descriptors a local migration passes in all (RAM and VFIO): what the destination's channel accepts. */
export const MAX_HANDOVER_FDS = 16

/** What the source needs of a container: the napi `Container` is one. */
export interface HandoverContainer {
  readonly fd: number
  /** The DMA mappings made through it. */
  readonly mappings: DmaMapping[]
  supportsUpdateVaddr(): Promise<boolean>
  invalidateVaddr(): Promise<bigint>
  revalidateVaddr(): Promise<number>
}

/** One kernel device to hand over, as the source holds it. */
export interface HandoverDevice {
  /** The device (napi `Device`): its `fd` is passed; `name` is the kernel's ("0000:65:00.1", an mdev UUID). */
  device: { readonly fd: number | null; readonly name: string }
  /** Its group (napi `Group`). */
  group: { readonly fd: number }
  /** Its group's container (napi `Container`); devices may share one. */
  container: HandoverContainer
  /** A mediated device. Default: whether `name` is a UUID, as mdev names are. */
  mdev?: boolean
  /** Eventfds the device signals (VFIO_DEVICE_SET_IRQS); passed with it, they stay this process's too. */
  irqFds?: readonly number[]
}

/** What the destination calls to take the passed objects: the native `PassedVfio` (tests put a stand-in here). */
export interface HandoverKernel {
  adopt(containers: number[], groups: number[], devices: PassedDeviceFd[]): Promise<PassedSet>
}

/** The adopted objects: `PassedVfio`'s surface. */
export interface PassedSet {
  updateVaddr(container: number, buffer: Buffer, iova: bigint): Promise<void>
  invalidateVaddr(container: number): Promise<bigint>
  close(): Promise<boolean>
  /** Object `i` of its kind, sharing the passed fd; null past the end or once closed. */
  container(i: number): Container | null
  group(i: number): Group | null
  device(i: number): Device | null
}

export interface KernelVfioHandoverOptions {
  /** Guest RAM (a `RamMigration` has `blocks`): DMA mappings are found in it at iova = guest-physical address. */
  ram?: { readonly blocks: readonly RamBlock[] }
  /** Default: the native layer. */
  kernel?: HandoverKernel
}

/** One device as the destination received it (after a completed migration, `passed` holds the objects). */
export interface ReceivedDevice {
  name: string
  mdev: boolean
  /** Indexes into `passed.container()`, `passed.group()`, `passed.device()`. */
  container: number
  group: number
  device: number
  /** The interrupt eventfds, owned by the destination once the guest started here. */
  irqFds: number[]
}

interface WireMapping { iova: bigint; size: number; block: string; offset: number }
interface WireContainer { mappings: WireMapping[] }
interface WireDevice { name: string; group: number; mdev: boolean; irqs: number }

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
const MAX_MAPPINGS = 1024

const closeAll = (fds: readonly number[]) => Promise.all(fds.map(fd => new Promise<void>(r => closeFd(fd, () => r()))))

function defaultKernel(): HandoverKernel {
  return { adopt: (c, g, d) => native.PassedVfio.adopt(c, g, d) as Promise<PassedVfio> }
}

/**
 * The kernel VFIO devices of one VM that a local migration hands over
 * (the source adds them; the destination only registers, and receives).
 * A device here does not also belong in a `VfioMigrationSet`: that set
 * copies a device's state, which a local migration does not do.
 *
 * @example
 * ```ts
 * const kv = new KernelVfioHandover(vm, registry, { ram })   // both sides
 * await kv.add({ device, group, container })                 // the source
 * await migrate(machine, 'unix:/run/vm.sock', { local: true })
 * // the destination, once incoming() resolved:
 * const dev = kv.passed!.device(kv.received[0].device)
 * ```
 */
export class KernelVfioHandover {
  private readonly devices: { d: HandoverDevice; mdev: boolean }[] = []
  /** Per container: whether its IOMMU has VFIO_UPDATE_VADDR, or why that could not be asked. */
  private readonly vaddrOk = new Map<HandoverContainer, boolean | string>()
  readonly entry: SaveStateEntry
  private readonly handlers: SaveVMHandlers
  private readonly kernel: HandoverKernel
  /** Source: vaddrs forgotten at switchover, not yet taken back. */
  private invalidated: HandoverContainer[] = []
  /** Destination: what arrived, until the guest starts here or the migration fails. */
  private incoming: { set: PassedSet; containers: WireContainer[]; irqFds: number[] } | null = null
  /** Destination: containers whose vaddrs this process gave (by index). */
  private updated = new Set<number>()
  /** Destination: the start pass gave the vaddrs; the start may still be rolled back until the VM runs. */
  private startingHere = false
  /** Destination: the objects the source passed, once a migration completed here. */
  passed: PassedSet | null = null
  /** Destination: the devices received, in the source's order. */
  received: ReceivedDevice[] = []
  private removeHandler: () => void

  constructor(vm: Vm, private readonly registry: SaveVMRegistry, private readonly opts: KernelVfioHandoverOptions = {}) {
    this.kernel = opts.kernel ?? defaultKernel()
    this.handlers = {
      localBlockers: () => this.blockers(),
      loadSetup: () => this.dropIncoming(),
      loadState: (f) => this.load(f),
      loadAbort: () => this.dropIncoming(),
    }
    // No saveState until a device is added: a VM with nothing to hand over
    // sends no section, so any destination (one without this class, QEMU)
    // takes its stream; `optional` lets a destination with it take that stream.
    this.entry = registry.register({ idstr: VFIO_LOCAL_IDSTR, versionId: 1, optional: true, handlers: this.handlers })
    // First when the VM starts (its vaddrs valid before anything runs), last when it stops.
    const removeHandler = vm.addChangeStateHandler({ name: 'vfio-kernel-local', priority: -1000, cb: (running) => this.runState(running) })
    const settle = () => this.settle()
    vm.on('resume', settle)
    this.removeHandler = () => {
      removeHandler()
      vm.off('resume', settle)
    }
  }

  /**
   * Source: a device to hand over. Asks the IOMMU once whether it can keep
   * mappings across the handover (VFIO_UPDATE_VADDR); a device that cannot
   * go is still added, and `blockers()` says why.
   */
  async add(d: HandoverDevice): Promise<void> {
    if (typeof d.device.fd !== 'number') throw new VfioMigrationError(`VFIO device ${d.device.name} has no device fd (an emulated device moves its state by copying; it does not belong here)`, 'EINVAL')
    const len = Buffer.byteLength(d.device.name)
    if (len < 1 || len > 255) throw new VfioMigrationError(`VFIO device name ${JSON.stringify(d.device.name)} is ${len} bytes; the handover record carries 1..255`, 'EINVAL')
    if (this.devices.some(x => x.d.device.fd === d.device.fd)) throw new VfioMigrationError(`VFIO device ${d.device.name} (fd ${d.device.fd}) was added already`, 'EINVAL')
    if (!this.vaddrOk.has(d.container)) {
      this.vaddrOk.set(d.container, await d.container.supportsUpdateVaddr().catch((e: Error) => e.message ?? String(e)))
    }
    this.devices.push({ d, mdev: d.mdev ?? UUID.test(d.device.name) })
    this.handlers.saveState = (f) => this.save(f)
  }

  /** Why a local migration cannot hand these devices over now (empty when it can). */
  blockers(): string[] {
    const out: string[] = []
    const containers = this.containers()
    for (const { d, mdev } of this.devices) {
      const maps = d.container.mappings
      if (!maps.length) continue
      if (mdev) {
        out.push(`VFIO device ${d.device.name} is a mediated device whose container has ${maps.length} DMA mapping(s): on a type1 container an mdev pins guest pages on demand and needs their vaddr valid at every moment, which a handover through VFIO_DMA_UNMAP_FLAG_VADDR cannot give (only an mdev that pins no guest pages, with no mappings, can be handed over)`)
      } else {
        const ok = this.vaddrOk.get(d.container)
        if (typeof ok === 'string') out.push(`VFIO device ${d.device.name}: whether its IOMMU has VFIO_UPDATE_VADDR could not be asked (${ok}), so its DMA mappings cannot be handed over`)
        else if (!ok) out.push(`VFIO device ${d.device.name}: its IOMMU lacks VFIO_UPDATE_VADDR (type1 has it since Linux 5.12, and since 6.2 withholds it from a container that also holds a mediated device), so its DMA mappings cannot outlive this process's vaddr`)
      }
    }
    for (const c of containers) {
      for (const m of c.mappings) {
        const where = this.ramAt(m.iova, m.size)
        if (typeof where === 'string') out.push(where)
      }
    }
    // The destination's channel takes 16 descriptors in all, RAM's memfds included.
    const fds = this.fdCount()
    const ram = this.opts.ram?.blocks.length ?? 0
    if (fds + ram > MAX_HANDOVER_FDS) out.push(`the kernel VFIO devices need ${fds} descriptors passed besides ${ram} RAM block(s), at most ${MAX_HANDOVER_FDS} in all go in one local migration`)
    return out
  }

  private containers(): HandoverContainer[] {
    return [...new Set(this.devices.map(x => x.d.container))]
  }

  private groups(): { fd: number }[] {
    return [...new Set(this.devices.map(x => x.d.group))]
  }

  private fdCount(): number {
    return this.containers().length + this.groups().length + this.devices.length + this.devices.reduce((n, x) => n + (x.d.irqFds?.length ?? 0), 0)
  }

  /** The RAM block holding `iova..iova+size` (an identity map: iova = guest-physical address), or why there is none. */
  private ramAt(iova: bigint, size: bigint): { block: RamBlock; offset: number } | string {
    const what = `DMA mapping at iova 0x${iova.toString(16)} (${size} bytes)`
    const blocks = this.opts.ram?.blocks ?? []
    for (const b of blocks) {
      const start = BigInt(b.base)
      if (iova >= start && iova + size <= start + BigInt(b.length)) {
        if (!b.shared) return `${what} lies in RAM block '${b.name}', which is not fd-backed, so the next process cannot map the same pages`
        return { block: b, offset: Number(iova - start) }
      }
    }
    return `${what} is not inside one guest RAM block (${blocks.length ? blocks.map(b => `'${b.name}'`).join(', ') : 'none registered with this KernelVfioHandover'}): the next process could not give it a vaddr`
  }

  /** Source, at switchover (guest stopped): forget the vaddrs, then pass every fd with the description. */
  private async save(f: MigStream): Promise<void> {
    if (!this.devices.length) {
      f.putBe16(0)
      return
    }
    if (!f.local) throw new VfioMigrationError(`VFIO device(s) ${this.devices.map(x => x.d.device.name).join(', ')} are registered for a local handover (KernelVfioHandover), which moves no device state: a copying migration cannot take them`, 'EOPNOTSUPP')
    const why = this.blockers()
    if (why.length) throw new VfioMigrationError(`local migration refused: ${why.join('; ')}`, 'EOPNOTSUPP')
    const containers = this.containers()
    const groups = this.groups()
    const parts: Buffer[] = []
    const u16 = (n: number) => { const b = Buffer.alloc(2); b.writeUInt16BE(n); parts.push(b) }
    const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); parts.push(b) }
    const u64 = (n: bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(n); parts.push(b) }
    const name = (s: string) => { const b = Buffer.from(s, 'utf8'); parts.push(Buffer.from([b.length]), b) }
    const irqFds = this.devices.flatMap(x => x.d.irqFds ?? [])
    u16(containers.length); u16(groups.length); u16(this.devices.length); u16(irqFds.length)
    for (const c of containers) {
      u32(c.mappings.length)
      for (const m of c.mappings) {
        const at = this.ramAt(m.iova, m.size) as { block: RamBlock; offset: number }
        u64(m.iova); u64(m.size); name(at.block.name); u64(BigInt(at.offset))
      }
    }
    for (const g of groups) u16(containers.indexOf(this.devices.find(x => x.d.group === g)!.d.container))
    for (const { d, mdev } of this.devices) {
      name(d.device.name); u16(groups.indexOf(d.group)); parts.push(Buffer.from([mdev ? 1 : 0])); u16(d.irqFds?.length ?? 0)
    }
    // Forgotten before the fds leave: the successor can give its vaddr only
    // to a mapping whose vaddr was forgotten. Containers without mappings
    // (an mdev that pins nothing) have nothing to forget.
    for (const c of containers) {
      if (!c.mappings.length) continue
      await c.invalidateVaddr()
      this.invalidated.push(c)
    }
    const fds = [...containers.map(c => c.fd), ...groups.map(g => g.fd), ...this.devices.map(x => x.d.device.fd!), ...irqFds]
    const record = Buffer.concat(parts)
    f.putBe16(0xffff)
    await f.putWithFds(record, fds)
    if (f.error) throw f.error
  }

  /** Destination: the description, checked whole before any fd is taken; then the fds, adopted together. */
  private async load(f: MigStream): Promise<void> {
    await this.dropIncoming()
    await need(f, 2, VFIO_LOCAL_IDSTR, 'marker')
    const marker = f.be16()
    if (marker === 0) return
    const refuse = (why: string): never => {
      f.channel.dropFds?.()
      throw new VfioMigrationError(`${VFIO_LOCAL_IDSTR}: ${why}`, 'EPROTO')
    }
    if (marker !== 0xffff) refuse(`unknown marker 0x${marker.toString(16)}`)
    if (!f.local || !f.channel.takeFds) refuse(`the source passed kernel VFIO devices (a local migration), but this destination ${f.local ? `has a ${f.channel.kind}: channel, which passes none` : 'was not started for one (--local)'}`)
    try {
      await need(f, 8, VFIO_LOCAL_IDSTR, 'counts')
    } catch (e) {
      f.channel.dropFds?.()
      throw e
    }
    const nc = f.be16(), ng = f.be16(), nd = f.be16(), ni = f.be16()
    const total = nc + ng + nd + ni
    if (nc < 1 || ng < 1 || nd < 1 || total > MAX_HANDOVER_FDS) refuse(`${nc} container(s), ${ng} group(s), ${nd} device(s), ${ni} eventfd(s): 1 or more of the first three and at most ${MAX_HANDOVER_FDS} descriptors in all may be passed`)
    const containers: WireContainer[] = []
    const devices: WireDevice[] = []
    const groups: number[] = []
    try {
      const str = async (what: string) => {
        await need(f, 1, VFIO_LOCAL_IDSTR, what)
        const len = f.u8()
        await need(f, len, VFIO_LOCAL_IDSTR, what)
        return f.view(len).toString('utf8')
      }
      for (let i = 0; i < nc; i++) {
        await need(f, 4, VFIO_LOCAL_IDSTR, 'mapping count')
        const n = f.be32()
        if (n > MAX_MAPPINGS) refuse(`container ${i} claims ${n} DMA mappings, at most ${MAX_MAPPINGS}`)
        const mappings: WireMapping[] = []
        for (let k = 0; k < n; k++) {
          await need(f, 16, VFIO_LOCAL_IDSTR, 'mapping')
          const iova = f.be64(), size = f.be64()
          const block = await str('mapping block name')
          await need(f, 8, VFIO_LOCAL_IDSTR, 'mapping offset')
          const offset = f.be64()
          const b = this.opts.ram?.blocks.find(x => x.name === block)
          if (!b) refuse(`DMA mapping at iova 0x${iova.toString(16)} lies in RAM block '${block}', which this side does not have`)
          if (!b!.shared) refuse(`DMA mapping at iova 0x${iova.toString(16)} lies in RAM block '${block}', which is not fd-backed here`)
          if (size === 0n || offset + size > BigInt(b!.length)) refuse(`DMA mapping at iova 0x${iova.toString(16)}: ${size} bytes at offset ${offset} do not fit RAM block '${block}' (${b!.length} bytes)`)
          mappings.push({ iova, size: Number(size), block, offset: Number(offset) })
        }
        containers.push({ mappings })
      }
      for (let i = 0; i < ng; i++) {
        await need(f, 2, VFIO_LOCAL_IDSTR, 'group container')
        const c = f.be16()
        if (c >= nc) refuse(`group ${i} is in container ${c}, of ${nc}`)
        groups.push(c)
      }
      let irqs = 0
      for (let i = 0; i < nd; i++) {
        const name = await str('device name')
        await need(f, 5, VFIO_LOCAL_IDSTR, 'device')
        const group = f.be16(), mdev = f.u8() === 1, n = f.be16()
        if (!name) refuse(`device ${i} has no name`)
        if (group >= ng) refuse(`device ${name} is in group ${group}, of ${ng}`)
        if (mdev && containers[groups[group]!]!.mappings.length) refuse(`mediated device ${name} comes with DMA mappings, which a type1 container cannot hand over (the mdev needs its vaddr valid at all times)`)
        irqs += n
        devices.push({ name, group, mdev, irqs: n })
      }
      if (irqs !== ni) refuse(`the devices list ${irqs} eventfd(s), the record ${ni}`)
    } catch (e) {
      f.channel.dropFds?.()
      throw e
    }
    let fds: number[]
    try {
      fds = f.channel.takeFds!(total)
    } catch (e) {
      return refuse(`kernel VFIO devices passed as file descriptors: ${(e as Error).message}`)
    }
    const cfds = fds.slice(0, nc), gfds = fds.slice(nc, nc + ng), dfds = fds.slice(nc + ng, nc + ng + nd), ifds = fds.slice(nc + ng + nd)
    let set: PassedSet
    try {
      set = await this.kernel.adopt(cfds, gfds, devices.map((d, i) => ({ fd: dfds[i]!, name: d.name })))
    } catch (e) {
      await closeAll(ifds)
      throw new VfioMigrationError(`${VFIO_LOCAL_IDSTR}: the passed VFIO objects were refused (all closed): ${(e as Error).message}`, (e as { code?: string }).code ?? 'EPROTO', { cause: e })
    }
    this.incoming = { set, containers, irqFds: ifds }
    let next = 0
    this.received = devices.map((d, i) => {
      const mine = ifds.slice(next, next + d.irqs)
      next += d.irqs
      return { name: d.name, mdev: d.mdev, container: groups[d.group]!, group: d.group, device: i, irqFds: mine }
    })
  }

  /** Destination: give up whatever arrived (failure before the guest ran here). */
  private async dropIncoming(): Promise<void> {
    const inc = this.incoming
    this.incoming = null
    if (!inc) return
    this.received = []
    this.startingHere = false
    for (const i of this.updated) await inc.set.invalidateVaddr(i).catch(() => undefined)
    this.updated.clear()
    await inc.set.close().catch(() => undefined)
    await closeAll(inc.irqFds)
  }

  private async runState(running: boolean): Promise<void> {
    if (running) {
      if (this.incoming) return this.startHere()
      // The source runs the guest again: a handover that failed before GO
      // (or one the destination did not start, which rolled its vaddrs back).
      const list = this.invalidated
      this.invalidated = []
      for (let i = 0; i < list.length; i++) {
        try {
          await list[i]!.revalidateVaddr()
        } catch (e) {
          this.invalidated = list.slice(i)
          throw new VfioMigrationError(`VFIO DMA mappings could not be taken back after the failed handover (did the destination keep them?): ${(e as Error).message}`, (e as { code?: string }).code ?? 'EIO', { cause: e })
        }
      }
      return
    }
    // A start here that failed later is rolled back: the vaddrs go back to forgotten, so the source can take them.
    if (this.incoming && this.startingHere) {
      this.startingHere = false
      for (const i of this.updated) await this.incoming.set.invalidateVaddr(i)
      this.updated.clear()
    }
  }

  /** Destination, the guest about to run here: give every kept mapping this process's vaddr. */
  private async startHere(): Promise<void> {
    const inc = this.incoming!
    if (this.startingHere) return
    try {
      for (let ci = 0; ci < inc.containers.length; ci++) {
        const maps = inc.containers[ci]!.mappings
        if (!maps.length) continue
        this.updated.add(ci)
        for (const m of maps) {
          const b = this.opts.ram!.blocks.find(x => x.name === m.block)!
          const mem = b.memory
          await inc.set.updateVaddr(ci, Buffer.from(mem.buffer, mem.byteOffset + m.offset, m.size), m.iova)
        }
      }
    } catch (e) {
      for (const i of this.updated) await inc.set.invalidateVaddr(i).catch(() => undefined)
      this.updated.clear()
      throw new VfioMigrationError(`the passed VFIO DMA mappings could not take this process's vaddr: ${(e as Error).message}`, (e as { code?: string }).code ?? 'EIO', { cause: e })
    }
    this.startingHere = true
  }

  /** Destination: the guest runs here; the set is this process's and nothing is rolled back any more. */
  private settle(): void {
    if (!this.incoming || !this.startingHere) return
    this.passed = this.incoming.set
    this.incoming = null
    this.updated.clear()
    this.startingHere = false
  }

  /** Unregister the section and the run-state handler. */
  remove(): void {
    this.removeHandler()
    this.registry.unregister(this.entry)
  }
}
