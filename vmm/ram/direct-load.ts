// RamLoader's pages through native code (ramLoadPages, crates/vmm-native/src/ram.rs)
// when the stream's channel is a socket: records are parsed and copied
// into guest memory on a worker thread instead of one parse, one await
// check and one copy per 4 KiB page on the event loop. Native code takes
// from the socket only records it checked and applied; any other record
// (and every error but two that only show inside a payload) stays in the
// socket for RamLoader to read through the stream, so errors are the same
// on either path.
import { native } from '../native/addon.js'
import type { RamLoadBlock, RamLoadResult, RamPendingPage } from '../../native/index.js'
import type { MigStream } from '../stream/stream.js'
import type { RamBlock, RamLayout } from './blocks.js'

export type { RamLoadResult, RamPendingPage }

export class DirectLoader {
  private readonly blocks: RamLoadBlock[]
  private readonly index = new Map<RamBlock, number>()

  /** `received[i]`: block i's bitmap of pages applied, which native code sets too. */
  constructor(private readonly layout: RamLayout, received: readonly Uint8Array[]) {
    this.blocks = layout.blocks.map((b, i) => ({ memory: b.memory, name: b.nameBytes, received: received[i] }))
    layout.blocks.forEach((b, i) => this.index.set(b, i))
  }

  /** Whether pages on `f` can be read by native code at all (a socket with an fd). */
  static usable(f: MigStream): boolean {
    const k = f.channel.kind
    return typeof native.ramLoadPages === 'function' && f.zeroCopy && (k === 'tcp' || k === 'unix')
  }

  indexOf(b: RamBlock): number {
    return this.index.get(b)!
  }

  block(i: number): RamBlock | null {
    return i >= 0 ? this.layout.blocks[i] : null
  }

  /**
   * Load records until EOS or one for the caller; resolves what happened,
   * or null when the stream declined (it had read ahead). A native failure
   * fails the stream and resolves null too (`f.error` tells).
   */
  async load(f: MigStream, last: RamBlock | null, pending?: RamPendingPage): Promise<RamLoadResult | null> {
    let res: RamLoadResult | null = null
    const base = f.bytesRead
    const ran = await f.readDirect(async fd => {
      res = await native.ramLoadPages(fd, this.blocks, { last: last ? this.indexOf(last) : -1, base, pending })
      return res.consumed
    })
    return ran ? res : null
  }
}
