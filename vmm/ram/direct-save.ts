// RamSaver's pages through native code (ramSendPages, crates/vmm-native/src/ram.rs)
// when the stream's channel is a socket: the bitmap walk, the records and
// the writev run on a worker thread, straight from guest memory, instead
// of costing the event loop a header, two iovecs and an allocation per
// 4 KiB page. The walk, the records and every stop condition are
// RamSaver.sendNext's, so the wire bytes are the same on either path.
import { native } from '../native/addon.js'
import type { RamSendBlock, RamSendResult } from '../../native/index.js'
import type { MigStream } from '../stream/stream.js'
import type { RateLimiter } from '../stream/rate-limit.js'
import type { DirtyBitmap } from '../core/dirty-bitmap.js'
import type { RamLayout } from './blocks.js'

export type { RamSendResult }

export interface DirectCursor {
  block: number
  page: number
  /** Index of the block named last in this section, -1 for none. */
  lastSent: number
}

export interface DirectLimits {
  /** Pages counted dirty. */
  maxPages: number
  /** Pages this round sent so far (the phase of the clock test). */
  roundPages: number
  /** MAX_ITERATE_MS left; omitted: no time limit. */
  timeLeftMs?: number
  /** Return at every 64th page of the round (a clock native code cannot read). */
  stopAtClock: boolean
  /** Apply the stream's rate limit. */
  rated: boolean
}

/** The words the native walk reads and clears; null while every page counts as dirty (the JS path handles that). */
function bitmapWords(b: DirtyBitmap): Uint32Array | null {
  return b.allDirty ? null : b.wordView
}

/** Bytes a page may still start under; Infinity when unlimited. */
function rateAllowance(r: RateLimiter): number {
  // A page starts while used < budget, so with whole bytes the allowance is the ceiling.
  return Math.ceil(r.allowance())
}

export class DirectSender {
  private readonly blocks: RamSendBlock[]

  constructor(layout: RamLayout) {
    this.blocks = layout.blocks.map(b => ({ memory: b.memory, name: b.nameBytes, firstPage: b.firstPage, pages: b.pages }))
  }

  /** Whether `f` can take pages from native code at all (a socket with an fd). */
  static usable(f: MigStream): boolean {
    const k = f.channel.kind
    return typeof native.ramSendPages === 'function' && f.zeroCopy && (k === 'tcp' || k === 'unix')
  }

  /**
   * Send pages until a limit; resolves what went out, or null when the
   * stream declined (it still holds unwritten bytes, or the limiter's state
   * is unknown): the caller then sends through the stream. A native failure
   * fails the stream and resolves null too (`f.error` tells).
   */
  async send(f: MigStream, bitmap: DirtyBitmap, cur: DirectCursor, lim: DirectLimits): Promise<RamSendResult | null> {
    const words = bitmapWords(bitmap)
    const allowance = lim.rated ? rateAllowance(f.rateLimiter) : Infinity
    if (!words) return null
    let res: RamSendResult | null = null
    const ran = await f.writeDirect(async fd => {
      res = await native.ramSendPages(fd, this.blocks, words, {
        cursorBlock: cur.block,
        cursorPage: cur.page,
        lastSent: cur.lastSent,
        maxPages: lim.maxPages,
        maxBytes: allowance === Infinity ? undefined : allowance,
        timeLeftMs: lim.timeLeftMs,
        roundPages: lim.roundPages,
        stopAtClock: lim.stopAtClock,
      })
      return res.bytes
    })
    return ran ? res : null
  }
}
