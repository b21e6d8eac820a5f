// Guest RAM as QEMU's live "ram" section. registerRam() puts it in a savevm
// registry on either side: the source sends pages (bulk stage, then what the
// dirty sources report), the destination loads them into its own blocks.
import type { SaveVMRegistry, SaveStateEntry, PendingSize } from '../savevm/registry.js'
import { MigPriority } from '../savevm/constants.js'
import type { MigStream } from '../stream/stream.js'
import { RamLayout, type RamBlockConfig, type RamBlock } from './blocks.js'
import { RamSaver, localBlockers, type DirtySource, type RamSaveStats } from './save.js'
import { RamLoader, type RamLoadStats } from './load.js'
import { RAM_IDSTR, RAM_PAGE_SIZE, RAM_VERSION } from './format.js'

export { RamLayout, MAX_SPAN, type RamBlockConfig, type RamBlock, type SharedRam } from './blocks.js'
export { RamSaver, localBlockers, type DirtySource, type RamSaveStats } from './save.js'
export { RamLoader, MAX_LOCAL_BLOCKS, type RamLoadStats } from './load.js'
export { vcpuDirtySource } from './sources.js'
export { isZeroPage } from './zero.js'
export * from './format.js'
export * from './errors.js'

export interface RamOptions {
  blocks: RamBlockConfig[]
  /**
   * Called in order on every sync; each ORs the pages dirtied since its last
   * call (the vCPUs' dirty log). Empty on a destination. Device DMA is not
   * listed here: a `VfioMigrationSet` on the same registry is synced by itself
   * (see `SaveVMRegistry.addDirtyLog`).
   */
  dirtySources: DirtySource[]
  pageSize?: 4096
  /** Milliseconds clock for the dirty rate (default performance.now). */
  now?: () => number
}

export interface RamStats extends RamSaveStats {
  /** Destination: pages and zero pages loaded, sections read. */
  load: RamLoadStats
}

export class RamMigration {
  readonly layout: RamLayout
  readonly entry: SaveStateEntry
  private readonly saver: RamSaver
  private readonly loader: RamLoader

  constructor(private readonly registry: SaveVMRegistry, opts: RamOptions) {
    if (!opts || typeof opts !== 'object') throw new TypeError('registerRam: options are required')
    if (!Array.isArray(opts.dirtySources) || opts.dirtySources.some(s => typeof s !== 'function')) {
      throw new TypeError('registerRam: dirtySources must be an array of functions')
    }
    this.layout = new RamLayout(opts.blocks, opts.pageSize ?? RAM_PAGE_SIZE)
    // The registry's dirty logs (device DMA) are read when a migration starts,
    // so a VFIO set created after registerRam is still tracked.
    this.saver = new RamSaver(this.layout, [...opts.dirtySources], opts.now, () => registry.dirtyLogs())
    this.loader = new RamLoader(this.layout)
    const pending = (): PendingSize => ({ precopyOnly: this.saver.remainingPages * RAM_PAGE_SIZE, postcopy: 0 })
    this.entry = registry.register({
      idstr: RAM_IDSTR,
      instanceId: 0,
      versionId: RAM_VERSION,
      // QEMU registers RAM before any device, so it is saved (and loaded) first.
      priority: MigPriority.MAX,
      handlers: {
        saveSetup: (f: MigStream) => this.saver.setup(f),
        saveLiveIterate: (f: MigStream) => this.saver.iterate(f),
        statePendingEstimate: pending,
        statePendingExact: async () => {
          await this.saver.sync()
          return pending()
        },
        saveComplete: (f: MigStream) => this.saver.complete(f),
        saveCleanup: () => this.saver.cleanup(),
        loadSetup: () => this.loader.reset(),
        loadState: (f, ctx) => this.loader.load(f, ctx.versionId),
        loadVerify: () => this.loader.checkComplete(),
        loadAbort: () => this.loader.detachLocal(),
        localBlockers: () => localBlockers(this.layout),
      },
    })
  }

  get blocks(): readonly RamBlock[] {
    return this.layout.blocks
  }

  /** Bytes still to send (what the last sync or send left dirty). */
  get remainingBytes(): number {
    return this.saver.remainingPages * RAM_PAGE_SIZE
  }

  /** Force a sync of every dirty source now (the orchestrator's statePendingExact does it too). */
  sync(): Promise<void> {
    return this.saver.sync()
  }

  stats(): RamStats {
    return { ...this.saver.stats, remaining: this.remainingBytes, load: { ...this.loader.stats } }
  }

  unregister(): void {
    this.registry.unregister(this.entry)
  }
}

/** Register guest RAM as the "ram" section (instance 0, version 4). */
export function registerRam(registry: SaveVMRegistry, opts: RamOptions): RamMigration {
  return new RamMigration(registry, opts)
}
