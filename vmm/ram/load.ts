// The destination side of the "ram" section: QEMU's ram_load_precopy. Pages
// are written straight into the destination's block memory; every name,
// length, offset and flag is checked before anything is written.
import { close } from 'node:fs'
import type { MigStream } from '../stream/stream.js'
import { need, streamFailure } from '../savevm/fail.js'
import { TruncatedError } from '../savevm/errors.js'
import type { RamBlock, RamLayout } from './blocks.js'
import { RAM_FLAGS_MASK, RAM_PAGE_SIZE, RAM_VERSION, RamFlag, SUPPORTED_FLAGS, describeFlags } from './format.js'
import {
  RamBadFlagsError, RamBlockSizeError, RamLocalError, RamMemSizeError, RamMissingPagesError, RamNoBlockError, RamOffsetError,
  RamUnknownBlockError, RamVersionError, RamZeroPageError,
} from './errors.js'
import { isZeroPage } from './zero.js'
import { DirectLoader, type RamPendingPage } from './direct-load.js'

export interface RamLoadStats {
  /** Pages loaded with their bytes. */
  normalPages: number
  /** ZERO pages loaded. */
  zeroPages: number
  /** Sections (START/PART/END) read. */
  sections: number
  /** Blocks the source passed as file descriptors (a local migration): mapped here, no page of them sent. */
  passedBlocks: number
}

/** Most blocks one LOCAL_FDS record may pass: the channel's bound on descriptors per message. */
export const MAX_LOCAL_BLOCKS = 16

/** Why a flag is refused: the capability that would have produced it. */
const UNSUPPORTED: Record<number, string> = {
  [RamFlag.FULL]: 'obsolete since QEMU 2.x',
  [RamFlag.XBZRLE]: 'the xbzrle capability is not supported',
  [RamFlag.HOOK]: 'RDMA migration is not supported',
  [RamFlag.COMPRESS_PAGE]: 'the compress capability is not supported',
  [RamFlag.MULTIFD_FLUSH]: 'the multifd capability is not supported',
}

function zeroFillError(b: RamBlock, addr: number, ch: number, at: number): RamZeroPageError {
  return new RamZeroPageError(`zero page at 0x${addr.toString(16)} of '${b.name}' has fill byte ${ch}`, { offset: at })
}

export class RamLoader {
  /** QEMU keeps the last block across sections (mis->last_recv_block), so CONTINUE may open a section. */
  private last: RamBlock | null = null
  private readonly direct: DirectLoader
  readonly stats: RamLoadStats = { normalPages: 0, zeroPages: 0, sections: 0, passedBlocks: 0 }
  /** Blocks now mapping the source's RAM, until `detachLocal`. */
  private adopted: RamBlock[] = []
  /**
   * Per block, one bit per page (page i: bit i % 8 of byte i / 8), set once a
   * PAGE or ZERO record for it was applied: sized by this side's blocks,
   * whatever the stream says.
   */
  private readonly received = new Map<RamBlock, Uint8Array>()

  constructor(private readonly layout: RamLayout) {
    for (const b of layout.blocks) this.received.set(b, new Uint8Array(Math.ceil(b.pages / 8)))
    this.direct = new DirectLoader(layout, layout.blocks.map(b => this.received.get(b)!))
  }

  reset(): void {
    this.last = null
    Object.assign(this.stats, { normalPages: 0, zeroPages: 0, sections: 0, passedBlocks: 0 })
    for (const bits of this.received.values()) bits.fill(0)
  }

  private applied(b: RamBlock, addr: number): void {
    const p = addr / RAM_PAGE_SIZE
    this.received.get(b)![p >>> 3] |= 1 << (p & 7)
  }

  /**
   * After the stream's end: every page of every block arrived at least once
   * (a QEMU source sends them all in its first round, zero pages as ZERO
   * records). A page never sent holds whatever this side had, not the
   * guest's: refuse, naming each block and how many.
   */
  checkComplete(): void {
    const short: string[] = []
    for (const b of this.layout.blocks) {
      const bits = this.received.get(b)!
      // This runs in the downtime: a memcmp, not a walk over a million bits
      // in JavaScript that has not been compiled yet (3 ms at 4 GiB).
      if (allReceived(bits, b.pages)) continue
      let missing = 0
      let first = -1
      for (let i = 0; i < bits.length; i++) {
        const byte = bits[i]
        if (byte === 0xff) continue
        for (let j = 0; j < 8; j++) {
          const p = i * 8 + j
          if (p < b.pages && (byte & (1 << j)) === 0) {
            missing++
            if (first < 0) first = p
          }
        }
      }
      if (missing) short.push(`'${b.name}': ${missing} of ${b.pages} pages (the first at offset 0x${(first * RAM_PAGE_SIZE).toString(16)})`)
    }
    if (short.length) throw new RamMissingPagesError(`pages never sent: ${short.join('; ')}`)
  }

  /** Read one section's RAM records up to and including EOS. */
  async load(f: MigStream, versionId: number): Promise<void> {
    if (versionId !== RAM_VERSION) throw new RamVersionError(`section version ${versionId}, only ${RAM_VERSION} exists`, { offset: f.bytesRead })
    this.stats.sections++
    const direct = DirectLoader.usable(f) ? this.direct : null
    // Native code takes over at a record boundary once the stream's buffer is
    // used up; after it hands a record back, that record goes through here.
    let handOver = direct !== null
    for (;;) {
      if (handOver && f.available === 0) {
        if ((await this.loadDirect(f, direct!)) === 'eos') return
      }
      handOver = direct !== null
      const at = f.bytesRead
      if (f.available < 8) await need(f, 8, 'ram', 'RAM record header')
      const hi = f.be32()
      const lo = f.be32()
      const flags = lo & RAM_FLAGS_MASK
      const unsupported = flags & ~SUPPORTED_FLAGS
      if (unsupported) {
        const why = UNSUPPORTED[unsupported] ?? 'unknown flag'
        throw new RamBadFlagsError(`flags ${describeFlags(flags)} (0x${flags.toString(16)}): ${describeFlags(unsupported)}: ${why}`, { offset: at })
      }
      // Above 2^53 no block can hold the offset (and no RAM is that big).
      if (hi > 0x1fffff) throw new RamOffsetError(`offset word 0x${hi.toString(16)}${(lo >>> 0).toString(16).padStart(8, '0')} is out of any range`, { offset: at })
      const addr = hi * 0x100000000 + (lo >>> 0) - flags
      switch (flags & ~RamFlag.CONTINUE) {
        case RamFlag.ZERO:
        case RamFlag.PAGE: {
          // CONTINUE (nearly every page) needs no await.
          const b = flags & RamFlag.CONTINUE ? this.continued(at) : await this.namedBlock(f, at)
          if (addr + RAM_PAGE_SIZE > b.length) {
            throw new RamOffsetError(`page at offset 0x${addr.toString(16)} is outside block '${b.name}' of ${b.length} bytes`, { offset: at })
          }
          if (direct && f.available < (flags & RamFlag.ZERO ? 1 : RAM_PAGE_SIZE)) {
            // The buffer ends inside this record: native code finishes it and goes on.
            const zero = (flags & RamFlag.ZERO) !== 0
            const got = zero ? 0 : f.available
            f.takeInto(b.memory, addr, got)
            const end = await this.loadDirect(f, direct, { block: direct.indexOf(b), offset: addr, zero, got, at })
            if (end === 'eos') return
            handOver = false
            if (end === 'more') break
            // Declined: the rest comes through the stream.
            if (!zero) {
              await need(f, RAM_PAGE_SIZE - got, 'ram', 'page data')
              f.takeInto(b.memory, addr + got, RAM_PAGE_SIZE - got)
              this.stats.normalPages++
              this.applied(b, addr)
              break
            }
          }
          if (flags & RamFlag.ZERO) {
            if (f.available < 1) await need(f, 1, 'ram', 'zero page fill byte')
            const ch = f.u8()
            if (ch !== 0) throw zeroFillError(b, addr, ch, at)
            // As QEMU's zero-page handler does: leave an already-zero page untouched so the host need not back it.
            if (!isZeroPage(b.memory, addr)) b.memory.fill(0, addr, addr + RAM_PAGE_SIZE)
            this.stats.zeroPages++
          } else {
            if (f.available < RAM_PAGE_SIZE) await need(f, RAM_PAGE_SIZE, 'ram', 'page data')
            f.takeInto(b.memory, addr, RAM_PAGE_SIZE)
            this.stats.normalPages++
          }
          this.applied(b, addr)
          break
        }
        case RamFlag.MEM_SIZE:
          if (flags & RamFlag.CONTINUE) throw new RamBadFlagsError(`flags ${describeFlags(flags)}: MEM_SIZE cannot continue a block`, { offset: at })
          await this.blockList(f, addr)
          break
        case RamFlag.EOS:
          if (flags & RamFlag.CONTINUE) throw new RamBadFlagsError(`flags ${describeFlags(flags)}: EOS cannot continue a block`, { offset: at })
          return
        case RamFlag.LOCAL_FDS:
          if (flags & RamFlag.CONTINUE) throw new RamBadFlagsError(`flags ${describeFlags(flags)}: LOCAL_FDS cannot continue a block`, { offset: at })
          await this.passedBlocks(f, addr / RAM_PAGE_SIZE, at)
          break
        default:
          throw new RamBadFlagsError(`unknown combination of flags ${describeFlags(flags)} (0x${flags.toString(16)})`, { offset: at })
      }
    }
  }

  /**
   * Records through native code until EOS ('eos') or a record it leaves to
   * this loader ('more'); 'declined' when the stream had read ahead.
   */
  private async loadDirect(f: MigStream, direct: DirectLoader, pending?: RamPendingPage): Promise<'eos' | 'more' | 'declined'> {
    const r = await direct.load(f, this.last, pending)
    if (r === null) {
      if (f.error) throw streamFailure(f, 'ram', 'RAM pages')
      return 'declined'
    }
    this.stats.normalPages += r.normalPages
    this.stats.zeroPages += r.zeroPages
    this.last = direct.block(r.last)
    switch (r.end) {
      case 'eos':
        return 'eos'
      case 'truncated':
        // Reported where the stream path reports it: where the payload starts.
        throw new TruncatedError(`stream ends inside ${r.zero ? 'zero page fill byte' : 'page data'}`, { section: 'ram', offset: f.bytesRead - (r.got ?? 0) })
      case 'zero-fill':
        throw zeroFillError(direct.block(r.block!)!, r.offset!, r.fill!, r.at!)
      default:
        return 'more'
    }
  }

  /**
   * A LOCAL_FDS record: every named block is checked first (known here,
   * fd-backed here, as long as here, named once), then the descriptors the
   * channel received with the record are taken and each mapped in place of
   * its block. Whatever fails, no descriptor stays open: those not taken
   * are dropped from the channel, those taken are adopted or closed.
   */
  private async passedBlocks(f: MigStream, count: number, at: number): Promise<void> {
    const refuse = (why: string): never => {
      f.channel.dropFds?.()
      throw new RamLocalError(why, { offset: at })
    }
    if (!f.local || !f.channel.takeFds) {
      refuse(`the source passed RAM as file descriptors (a local migration), but this destination ${f.local ? `has a ${f.channel.kind}: channel, which passes none` : 'was not started for one (--local)'}`)
    }
    if (count < 1 || count > MAX_LOCAL_BLOCKS) refuse(`LOCAL_FDS names ${count} blocks, 1..${MAX_LOCAL_BLOCKS} may be passed`)
    const blocks: RamBlock[] = []
    for (let i = 0; i < count; i++) {
      let b: RamBlock
      try {
        b = await this.readBlockName(f, f.bytesRead)
        await need(f, 8, 'ram', `length of passed block '${b.name}'`)
      } catch (e) {
        f.channel.dropFds?.()
        throw e
      }
      const length = f.be32() * 0x100000000 + f.be32()
      if (blocks.includes(b)) refuse(`block '${b.name}' is passed twice`)
      if (length !== b.length) refuse(`passed block '${b.name}' is ${length} bytes on the source, ${b.length} here`)
      if (!b.shared) refuse(`block '${b.name}' is not fd-backed here (${b.backing ?? 'memory of this process only'}), so it cannot map the source's`)
      blocks.push(b)
    }
    let fds: number[]
    try {
      fds = f.channel.takeFds!(count)
    } catch (e) {
      return refuse(`RAM passed as file descriptors: ${(e as Error).message}`)
    }
    for (let i = 0; i < blocks.length; i++) {
      try {
        await blocks[i].shared!.adopt(fds[i])
      } catch (e) {
        for (const fd of fds.slice(i + 1)) close(fd, () => undefined)
        await this.detachLocal().catch(() => undefined)
        throw new RamLocalError(`passed block '${blocks[i].name}': ${(e as Error).message}`, { offset: at })
      }
      this.adopted.push(blocks[i])
      this.received.get(blocks[i])!.fill(0xff)
      this.stats.passedBlocks++
    }
  }

  /** Gives back every block `passedBlocks` mapped: fresh memory, the source's descriptors closed. */
  async detachLocal(): Promise<void> {
    const adopted = this.adopted
    this.adopted = []
    let first: unknown
    for (const b of adopted) await b.shared!.detach().catch(e => (first ??= e))
    if (first) throw first
  }

  private continued(at: number): RamBlock {
    if (!this.last) throw new RamNoBlockError('CONTINUE before any block was named', { offset: at })
    return this.last
  }

  private async namedBlock(f: MigStream, at: number): Promise<RamBlock> {
    const b = await this.readBlockName(f, at)
    this.last = b
    return b
  }

  private async readBlockName(f: MigStream, at: number): Promise<RamBlock> {
    if (f.available < 1) await need(f, 1, 'ram', 'block id length')
    const len = f.u8()
    if (f.available < len) await need(f, len, 'ram', 'block id')
    const name = f.view(len).toString('utf8')
    const b = this.layout.byName.get(name)
    if (!b) {
      const known = this.layout.blocks.map(x => `'${x.name}'`).join(', ')
      throw new RamUnknownBlockError(`unknown RAM block ${JSON.stringify(name)} (this side has ${known})`, { offset: at })
    }
    return b
  }

  /** MEM_SIZE's block list: (u8 len, id, be64 length) until the lengths add up to the total. */
  private async blockList(f: MigStream, total: number): Promise<void> {
    const start = f.bytesRead - 8
    const seen = new Set<RamBlock>()
    let left = total
    while (left > 0) {
      const at = f.bytesRead
      const b = await this.readBlockName(f, at)
      await need(f, 8, 'ram', `length of block '${b.name}'`)
      const hi = f.be32()
      const lo = f.be32()
      const length = hi * 0x100000000 + lo
      if (seen.has(b)) throw new RamBlockSizeError(`block '${b.name}' is listed twice`, { offset: at })
      seen.add(b)
      if (length !== b.length) {
        throw new RamBlockSizeError(`block '${b.name}' is ${length} bytes on the source, ${b.length} here`, { offset: at })
      }
      if (length > left) {
        throw new RamMemSizeError(`block '${b.name}' (${length} bytes) exceeds what is left of the MEM_SIZE total ${total}`, { offset: at })
      }
      left -= length
    }
    if (total !== this.layout.totalBytes || seen.size !== this.layout.blocks.length) {
      const missing = this.layout.blocks.filter(b => !seen.has(b)).map(b => `'${b.name}'`)
      throw new RamMemSizeError(
        `source RAM is ${total} bytes, ${this.layout.totalBytes} here${missing.length ? `; not sent: ${missing.join(', ')}` : ''}`,
        { offset: start },
      )
    }
  }
}

/** Whether the first `pages` bits of `bits` are all set. */
function allReceived(bits: Uint8Array, pages: number): boolean {
  const whole = pages >>> 3
  const view = Buffer.from(bits.buffer, bits.byteOffset, whole)
  if (whole > 0 && !view.equals(Buffer.alloc(whole, 0xff))) return false
  const rest = pages & 7
  return rest === 0 || (bits[whole] & ((1 << rest) - 1)) === (1 << rest) - 1
}
