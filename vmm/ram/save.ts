// The source side of the "ram" section: QEMU's ram_save_setup /
// ram_save_iterate / ram_save_complete over one dirty bitmap.
//
// Pages go out by reference from guest memory (putBufferAsync). The stream
// reads them when it flushes, so a page the guest changes in between goes out
// newer than the bitmap thought; the dirty sources report that write at the
// next sync and the page is sent again, as in QEMU. Every sync reads-and-clears
// the sources before the pages it marked are read, so no write is lost.
import type { MigStream } from '../stream/stream.js'
import type { DirtyBitmap } from '../core/dirty-bitmap.js'
import type { RamDirtyLog } from '../savevm/registry.js'
import { RAM_PAGE_SIZE, RamFlag } from './format.js'
import type { RamBlock, RamLayout } from './blocks.js'
import { isZeroPage } from './zero.js'
import { DirectSender, type DirectLimits } from './direct-save.js'

/** Why `layout` cannot be handed over as descriptors: one line per block that is not fd-backed. */
export function localBlockers(layout: RamLayout): string[] {
  return layout.blocks
    .filter(b => !b.shared)
    .map(b => `RAM block '${b.name}' is not fd-backed (${b.backing ?? 'memory of this process only'}): a local migration passes RAM as file descriptors`)
}

function be64(n: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt(n))
  return b
}

/** ORs the pages dirtied since its previous call into `into` (and clears its own log). */
export type DirtySource = (into: DirtyBitmap) => Promise<void>

/** QEMU's MAX_WAIT: an iteration yields after this long even under the rate limit. */
const MAX_ITERATE_MS = 50
/** Pages between clock reads in the send loop. */
const CLOCK_EVERY = 64
/** The dirty rate is measured over periods of at least this long (QEMU's migration_bitmap_sync). */
const RATE_PERIOD_MS = 1000

export interface RamSaveStats {
  /** Pages sent with their bytes. */
  normalPages: number
  /** Pages sent as a ZERO flag. */
  zeroPages: number
  /** Bytes this section put on the stream (headers included). */
  bytes: number
  /** Syncs of the dirty sources. */
  dirtySyncCount: number
  /** Pages the sources reported at the last sync. */
  dirtyPagesLastSync: number
  /** Pages per second the sources reported, over the last period of >= 1 s (0 until one has passed). */
  dirtyPagesRate: number
  /** Bytes still dirty (not yet sent). */
  remaining: number
  /** PART sections written. */
  iterations: number
}

export class RamSaver {
  private send: DirtyBitmap | null = null
  private scratch: DirtyBitmap | null = null
  private dirty = 0
  private lastSent: RamBlock | null = null
  private cursorBlock = 0
  private cursorPage = 0
  private periodStart = 0
  private periodPages = 0
  private readonly now: () => number
  /** performance.now() is the clock native code reads too; any other is read here. */
  private readonly realClock: boolean
  private readonly direct: DirectSender
  /** The registry's dirty logs this migration started, which it syncs and must stop. */
  private started: RamDirtyLog[] = []
  /** This migration passes the blocks as descriptors (a local stream): no pages, no dirty tracking. */
  private local = false
  readonly stats: RamSaveStats = RamSaver.emptyStats()

  constructor(
    private readonly layout: RamLayout,
    private readonly sources: readonly DirtySource[],
    now?: () => number,
    private readonly logs: () => readonly RamDirtyLog[] = () => [],
  ) {
    this.now = now ?? (() => performance.now())
    this.realClock = now === undefined
    this.direct = new DirectSender(layout)
  }

  static emptyStats(): RamSaveStats {
    return { normalPages: 0, zeroPages: 0, bytes: 0, dirtySyncCount: 0, dirtyPagesLastSync: 0, dirtyPagesRate: 0, remaining: 0, iterations: 0 }
  }

  get remainingPages(): number {
    return this.dirty
  }

  /** START payload: the bulk stage (every page dirty), MEM_SIZE and the block list, EOS. */
  async setup(f: MigStream): Promise<void> {
    await this.stopLogs()
    Object.assign(this.stats, RamSaver.emptyStats())
    this.local = f.local
    if (this.local) return this.setupLocal(f)
    this.send = this.layout.bitmap()
    this.scratch = this.layout.bitmap()
    for (const b of this.layout.blocks) this.send.markPages(b.firstPage, b.pages)
    this.dirty = this.layout.totalPages
    this.lastSent = null
    this.cursorBlock = this.cursorPage = 0
    this.periodStart = this.now()
    this.periodPages = 0
    // Started before the sync below and after every page was marked: a write
    // from now on is either in the bulk stage's copy or in a later sync.
    for (const log of this.logs()) {
      this.started.push(log)
      await log.logStart(this.layout.blocks)
    }
    // Starts every source's log afresh; what it reports is already marked.
    await this.sync()
    const before = f.transferred
    this.putBlockList(f)
    f.putBe64n(RamFlag.EOS)
    this.stats.bytes += f.transferred - before
    this.stats.remaining = this.dirty * RAM_PAGE_SIZE
  }

  /**
   * A local migration's START payload: MEM_SIZE and the block list as
   * always (the destination checks them the same way), then one LOCAL_FDS
   * record carrying every block's descriptor, EOS. The guest goes on
   * writing the same pages the destination will map, so nothing is ever
   * dirty and no log is started.
   */
  private async setupLocal(f: MigStream): Promise<void> {
    const blockers = localBlockers(this.layout)
    if (blockers.length) throw new Error(`local migration refused: ${blockers.join('; ')}`)
    this.send = this.layout.bitmap()
    this.scratch = this.layout.bitmap()
    this.dirty = 0
    this.lastSent = null
    const before = f.transferred
    this.putBlockList(f)
    const blocks = this.layout.blocks
    const rec: Buffer[] = [be64(blocks.length * RAM_PAGE_SIZE + RamFlag.LOCAL_FDS)]
    for (const b of blocks) rec.push(Buffer.from([b.nameBytes.length]), b.nameBytes, be64(b.length))
    await f.putWithFds(Buffer.concat(rec), blocks.map(b => b.shared!.fd()))
    f.putBe64n(RamFlag.EOS)
    this.stats.bytes += f.transferred - before
  }

  private putBlockList(f: MigStream): void {
    f.putBe64n(this.layout.totalBytes + RamFlag.MEM_SIZE)
    for (const b of this.layout.blocks) {
      f.putU8(b.nameBytes.length)
      f.putBuffer(b.nameBytes)
      f.putBe64n(b.length)
    }
  }

  /** QEMU's migration_bitmap_sync: every source ORs its log into the bitmap. */
  async sync(): Promise<void> {
    if (this.local) return
    const send = this.need()
    const scratch = this.scratch!
    scratch.clear()
    for (const src of this.sources) await src(scratch)
    for (const log of this.started) await log.logSync(scratch)
    let reported = 0
    for (const b of this.layout.blocks) {
      reported += scratch.countRange(b.firstPage, b.pages)
      this.dirty += scratch.mergeInto(send, b.firstPage, b.pages)
    }
    const s = this.stats
    // The setup sync only starts the logs: what it reports predates the migration.
    if (s.dirtySyncCount > 0) this.periodPages += reported
    const t = this.now()
    if (t - this.periodStart >= RATE_PERIOD_MS) {
      s.dirtyPagesRate = Math.round(this.periodPages * 1000 / (t - this.periodStart))
      this.periodStart = t
      this.periodPages = 0
    }
    s.dirtySyncCount++
    s.dirtyPagesLastSync = reported
    s.remaining = this.dirty * RAM_PAGE_SIZE
  }

  /** One PART payload: dirty pages until the rate limit, MAX_WAIT or the end; EOS. Resolves true when none is left. */
  async iterate(f: MigStream): Promise<boolean> {
    this.need()
    if (this.local) {
      f.putBe64n(RamFlag.EOS)
      this.stats.iterations++
      return true
    }
    const before = f.transferred
    // A fresh section names its block again, so a reader can start at any section.
    this.lastSent = null
    const t0 = this.now()
    let n = 0
    // Pages before the next native attempt, after the stream declined one.
    let jsUntil = DirectSender.usable(f) ? 0 : Infinity
    while (this.dirty > 0 && !f.error && !f.rateLimitExceeded()) {
      if (n >= jsUntil) {
        const lim: DirectLimits = { maxPages: this.dirty, roundPages: n, stopAtClock: !this.realClock, rated: true }
        if (this.realClock) lim.timeLeftMs = MAX_ITERATE_MS - (this.now() - t0)
        const r = await this.sendDirect(f, lim)
        if (r === null) {
          jsUntil = n + CLOCK_EVERY
          continue
        }
        n += r.pages
        if (r.end === 'time') break
        if (r.end === 'clock' && this.now() - t0 > MAX_ITERATE_MS) break
        continue
      }
      if (!this.sendNext(f)) break
      if (f.flushNeeded) await f.flush()
      if (++n % CLOCK_EVERY === 0 && this.now() - t0 > MAX_ITERATE_MS) break
    }
    f.putBe64n(RamFlag.EOS)
    this.stats.iterations++
    this.stats.bytes += f.transferred - before
    this.stats.remaining = this.dirty * RAM_PAGE_SIZE
    return this.dirty === 0
  }

  /** END payload (VM stopped): sync, every dirty page regardless of the rate limit, EOS. */
  async complete(f: MigStream): Promise<void> {
    if (this.local) {
      f.putBe64n(RamFlag.EOS)
      return
    }
    await this.sync()
    const before = f.transferred
    this.lastSent = null
    let jsUntil = DirectSender.usable(f) ? 0 : Infinity
    let n = 0
    while (this.dirty > 0 && !f.error) {
      if (n >= jsUntil) {
        const r = await this.sendDirect(f, { maxPages: this.dirty, roundPages: n, stopAtClock: false, rated: false })
        if (r === null) jsUntil = n + CLOCK_EVERY
        else n += r.pages
        continue
      }
      if (!this.sendNext(f)) break
      if (f.flushNeeded) await f.flush()
      n++
    }
    f.putBe64n(RamFlag.EOS)
    this.stats.bytes += f.transferred - before
    this.stats.remaining = this.dirty * RAM_PAGE_SIZE
  }

  /** After success or failure: stops every started log (all of them, even if one fails; then throws the first error). */
  async cleanup(): Promise<void> {
    this.local = false
    this.send = this.scratch = null
    this.lastSent = null
    this.dirty = 0
    await this.stopLogs()
  }

  private async stopLogs(): Promise<void> {
    const started = this.started
    this.started = []
    const errors: unknown[] = []
    for (const log of started) await log.logStop().catch(e => errors.push(e))
    if (errors.length) throw errors[0]
  }

  private need(): DirtyBitmap {
    if (!this.send) throw new Error('ram: the section was not set up (saveSetup did not run)')
    return this.send
  }

  /**
   * Pages through native code, from the same cursor and under the same
   * limits as sendNext; null when the stream declined (nothing was sent).
   */
  private async sendDirect(f: MigStream, lim: DirectLimits): Promise<{ pages: number; end: string } | null> {
    const blocks = this.layout.blocks
    const last = this.lastSent ? blocks.indexOf(this.lastSent) : -1
    const r = await this.direct.send(f, this.send!, { block: this.cursorBlock, page: this.cursorPage, lastSent: last }, lim)
    if (r === null) return f.error ? { pages: 0, end: 'error' } : null
    const pages = r.normalPages + r.zeroPages
    this.cursorBlock = r.cursorBlock
    this.cursorPage = r.cursorPage
    this.lastSent = r.lastSent >= 0 ? blocks[r.lastSent] : null
    this.dirty -= pages
    this.stats.normalPages += r.normalPages
    this.stats.zeroPages += r.zeroPages
    // As in sendNext: the count and the bitmap disagree; trust the bitmap.
    if (r.end === 'exhausted') this.dirty = 0
    return { pages, end: r.end }
  }

  /** Send the next dirty page after the cursor (wrapping, like QEMU's last_seen_block/last_page). */
  private sendNext(f: MigStream): boolean {
    const send = this.send!
    const blocks = this.layout.blocks
    for (let tries = 0; tries <= blocks.length; tries++) {
      const b = blocks[this.cursorBlock]
      const i = send.findNext(b.firstPage + this.cursorPage, b.firstPage + b.pages)
      if (i >= 0) {
        send.clearPage(i)
        this.dirty--
        this.cursorPage = i - b.firstPage + 1
        this.sendPage(f, b, (i - b.firstPage) * RAM_PAGE_SIZE)
        return true
      }
      this.cursorBlock = (this.cursorBlock + 1) % blocks.length
      this.cursorPage = 0
    }
    // The count and the bitmap disagree; trust the bitmap.
    this.dirty = 0
    return false
  }

  private sendPage(f: MigStream, b: RamBlock, offset: number): void {
    const zero = isZeroPage(b.memory, offset)
    const cont = this.lastSent === b
    f.putBe64n(offset + (zero ? RamFlag.ZERO : RamFlag.PAGE) + (cont ? RamFlag.CONTINUE : 0))
    if (!cont) {
      f.putU8(b.nameBytes.length)
      f.putBuffer(b.nameBytes)
      this.lastSent = b
    }
    if (zero) {
      f.putU8(0)
      this.stats.zeroPages++
    } else {
      f.putBufferAsync(b.memory.subarray(offset, offset + RAM_PAGE_SIZE))
      this.stats.normalPages++
    }
  }
}
