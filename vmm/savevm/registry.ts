// The table of everything that has state to migrate, with QEMU's handler roles
// (SaveVMHandlers). Entries are kept in save order: higher priority first,
// then registration order.
import type { MigStream } from '../stream/stream.js'
import type { DirtyBitmap } from '../core/dirty-bitmap.js'
import type { RamBlock } from '../ram/blocks.js'
import type { State, VMStateDescription } from '../vmstate/types.js'
import { validateVmsd } from '../vmstate/layout.js'

export interface PendingSize {
  /** Bytes only precopy can move. */
  precopyOnly: number
  /** Bytes that postcopy could move too. */
  postcopy: number
}

/** Passed to load handlers. */
export interface LoadHandlerContext {
  sectionId: number
  versionId: number
  /** Tell the loader this device has what it needs to allow switchover (QEMU's qemu_loadvm_approve_switchover). */
  approveSwitchover(): void
}

type Maybe<T> = T | Promise<T>

/** QEMU's SaveVMHandlers, camelCased. Every member is optional. */
export interface SaveVMHandlers {
  /** Before anything is sent; throw to veto the migration. */
  savePrepare?(): Maybe<void>
  /** Write the START section's payload. */
  saveSetup?(f: MigStream): Maybe<void>
  /** False: skip this entry for setup, iteration and completion. */
  isActive?(): boolean
  /** False: skip this entry in iteration rounds only. */
  isActiveIterate?(): boolean
  /** Write one PART section's payload; resolve true when nothing is left to send. */
  saveLiveIterate?(f: MigStream): Maybe<boolean>
  /** Cheap guess of what is left. */
  statePendingEstimate?(): PendingSize
  /** Accurate figure of what is left (may sync dirty logs; slower). */
  statePendingExact?(): Maybe<PendingSize>
  /** Write the END section's payload (VM stopped). */
  saveComplete?(f: MigStream): Maybe<void>
  /** Non-iterable state as one FULL section (when there is no vmsd). */
  saveState?(f: MigStream): Maybe<void>
  /** After success or failure on the source. */
  saveCleanup?(): Maybe<void>
  /** Destination: before the first section. */
  loadSetup?(): Maybe<void>
  /** Destination: read one section's payload (exactly what the source wrote). */
  loadState?(f: MigStream, ctx: LoadHandlerContext): Maybe<void>
  /** Destination: after success or failure. */
  loadCleanup?(): Maybe<void>
  /**
   * Destination: the migration failed and the guest never ran here: let go
   * of anything taken from the source that it goes on using (the RAM a
   * local migration passed), so this side can never write it.
   */
  loadAbort?(): Maybe<void>
  /**
   * Source, before a local migration starts: why this entry cannot be
   * handed over by passing descriptors (one line each); empty when it can.
   */
  localBlockers?(): string[]
  /** Destination: whether switchover must wait for this device's approval. */
  switchoverAckNeeded?(): boolean
  /** Destination: MIG_CMD_SWITCHOVER_START arrived. */
  switchoverStart?(): Maybe<void>
  /**
   * Destination, after EOF, before anything starts: throw if what arrived
   * cannot run (the way QEMU's post_load can fail, for a whole live
   * section: RAM with pages never sent, say). Only for entries that were in
   * the stream; a missing one is refused by the loader itself.
   */
  loadVerify?(): Maybe<void>
}

/**
 * Writes into guest RAM that the RAM section's own dirty sources do not see,
 * such as device DMA: QEMU's memory-listener log_global_start / log_sync /
 * log_global_stop. The "ram" section drives every log in its registry, so
 * whoever owns such writes (a `VfioMigrationSet`) registers here and no
 * embedder has to wire it into `registerRam`'s dirty sources.
 */
export interface RamDirtyLog {
  /** The RAM migration starts (its setup, before the first sync): log writes into `ram` from now on. */
  logStart(ram: readonly RamBlock[]): Promise<void>
  /** OR the pages written since the last sync into `into` and clear them (every sync of the RAM section). */
  logSync(into: DirtyBitmap): Promise<void>
  /** The RAM migration ended, completed or failed: stop logging. Called even if `logStart` failed. */
  logStop(): Promise<void>
}

export interface RegisterOptions {
  idstr: string
  /** Omitted: the next free instance of this idstr (QEMU's VMSTATE_INSTANCE_ID_ANY). */
  instanceId?: number
  /** Section version; defaults to vmsd.versionId. */
  versionId?: number
  priority?: number
  handlers?: SaveVMHandlers
  /** Declarative state, saved in a FULL section. */
  vmsd?: VMStateDescription
  /** The object vmsd describes. */
  state?: State
  /**
   * The stream may leave this entry out (QEMU's sections whose needed() says
   * no). Default false: a destination refuses a stream without it, since it
   * would start the device as it happens to be instead of as the source had
   * it. A vmsd with its own `needed` is optional by that alone.
   */
  optional?: boolean
}

export interface SaveStateEntry {
  readonly idstr: string
  readonly instanceId: number
  readonly versionId: number
  readonly priority: number
  readonly sectionId: number
  readonly handlers: SaveVMHandlers
  readonly vmsd?: VMStateDescription
  readonly state?: State
  readonly optional: boolean
}

/**
 * Whether a destination must find `e` in the stream: it loads something
 * (a vmsd or a loadState handler) and may not be left out.
 */
export function requiredInStream(e: SaveStateEntry): boolean {
  return !e.optional && !e.vmsd?.needed && (e.vmsd !== undefined || e.handlers.loadState !== undefined)
}

export class SaveVMRegistry {
  private list: SaveStateEntry[] = []
  // Never 0: QEMU's loader finds the entry of a PART/END section by the id
  // its START carried, comparing against every entry's last loaded id, which
  // is 0 for entries not loaded yet; a live section with id 0 goes to the
  // first such entry instead (e.g. "timer" on x86). QEMU's own ids start at 0
  // too, but there a non-live entry always takes 0.
  private nextSectionId = 1
  private logs: RamDirtyLog[] = []

  register(o: RegisterOptions): SaveStateEntry {
    if (typeof o.idstr !== 'string' || o.idstr.length === 0 || Buffer.byteLength(o.idstr) > 255) {
      throw new TypeError(`savevm register: idstr must be 1..255 bytes, got ${JSON.stringify(o.idstr)}`)
    }
    if (o.vmsd) {
      validateVmsd(o.vmsd)
      if (!o.state) throw new TypeError(`savevm register ${o.idstr}: vmsd given without state`)
    }
    const versionId = o.versionId ?? o.vmsd?.versionId
    if (versionId === undefined || !Number.isInteger(versionId) || versionId < 0 || versionId > 0xffffffff) {
      throw new TypeError(`savevm register ${o.idstr}: versionId must be a u32`)
    }
    if (!o.vmsd && !o.handlers) throw new TypeError(`savevm register ${o.idstr}: needs handlers or a vmsd`)
    let instanceId = o.instanceId
    if (instanceId === undefined) {
      instanceId = 0
      for (const e of this.list) if (e.idstr === o.idstr && e.instanceId >= instanceId) instanceId = e.instanceId + 1
    }
    if (!Number.isInteger(instanceId) || instanceId < 0 || instanceId > 0xffffffff) {
      throw new TypeError(`savevm register ${o.idstr}: instanceId must be a u32`)
    }
    if (this.find(o.idstr, instanceId)) throw new TypeError(`savevm register: ${o.idstr} instance ${instanceId} already registered`)
    const e: SaveStateEntry = {
      idstr: o.idstr, instanceId, versionId, priority: o.priority ?? 0, sectionId: this.nextSectionId++,
      handlers: o.handlers ?? {}, vmsd: o.vmsd, state: o.state, optional: o.optional ?? false,
    }
    let at = this.list.findIndex(x => x.priority < e.priority)
    if (at < 0) at = this.list.length
    this.list.splice(at, 0, e)
    return e
  }

  unregister(e: SaveStateEntry): void {
    this.list = this.list.filter(x => x !== e)
  }

  /** Entries in save order. */
  entries(): readonly SaveStateEntry[] {
    return this.list
  }

  find(idstr: string, instanceId: number): SaveStateEntry | undefined {
    return this.list.find(e => e.idstr === idstr && e.instanceId === instanceId)
  }

  /** Have the RAM migration start, sync and stop `log` with its own dirty sources. Returns the removal. */
  addDirtyLog(log: RamDirtyLog): () => void {
    this.logs.push(log)
    return () => { this.logs = this.logs.filter(x => x !== log) }
  }

  /** The logs the RAM migration drives, in registration order. */
  dirtyLogs(): readonly RamDirtyLog[] {
    return this.logs
  }
}
