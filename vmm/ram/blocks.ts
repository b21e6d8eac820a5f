// RAM blocks as configured by the VMM: validated once, then laid out on one
// guest-physical dirty bitmap that every dirty source writes into.
import { DirtyBitmap } from '../core/dirty-bitmap.js'
import { RAM_PAGE_SIZE } from './format.js'

export interface RamBlockConfig {
  /** QEMU's RAMBlock idstr, e.g. "pc.ram": 1..255 bytes of UTF-8, unique. */
  name: string
  /** The block's bytes: guest memory itself (pages are sent from it by reference, loaded into it in place). */
  memory: Uint8Array
  /** Guest-physical address of byte 0 (default 0). */
  base?: number
  /** The file behind `memory`, when there is one: what a local migration passes. */
  shared?: SharedRam
  /** What `memory` is when not `shared`, for a refusal to name ("a SharedArrayBuffer of the soft vCPU"). */
  backing?: string
}

/**
 * Guest RAM backed by a file (a memfd mapped shared), which a local
 * migration hands to the next VMM process instead of copying its pages.
 */
export interface SharedRam {
  /** The descriptor behind the block's memory now; stays the owner's. */
  fd(): number
  /**
   * Destination: maps `fd` (the source's, passed over the channel; owned
   * from now on, closed on failure too) in place of the block's memory, at
   * the same address, so `memory` shows the source's pages. Rejects if its
   * size is not the block's.
   */
  adopt(fd: number): Promise<void>
  /** Destination: undoes `adopt` (fresh zeroed memory), closing the source's descriptor. */
  detach(): Promise<void>
}

export interface RamBlock {
  readonly name: string
  readonly nameBytes: Buffer
  readonly memory: Uint8Array
  readonly base: number
  readonly shared?: SharedRam
  readonly backing?: string
  readonly length: number
  readonly pages: number
  /** Index of the block's page 0 in the dirty bitmap. */
  readonly firstPage: number
}

/** Widest guest-physical span one bitmap covers: 1 TiB = 32 MiB of bits. */
export const MAX_SPAN = 2 ** 40

export class RamLayout {
  readonly blocks: readonly RamBlock[]
  readonly byName: ReadonlyMap<string, RamBlock>
  /** Guest-physical address of the bitmap's page 0. */
  readonly base: number
  readonly span: number
  readonly totalBytes: number
  readonly totalPages: number

  constructor(configs: readonly RamBlockConfig[], pageSize: number = RAM_PAGE_SIZE) {
    if (pageSize !== RAM_PAGE_SIZE) throw new RangeError(`registerRam: pageSize must be ${RAM_PAGE_SIZE}, got ${pageSize}`)
    if (!Array.isArray(configs) || configs.length === 0) throw new TypeError('registerRam: blocks must be a non-empty array')
    const byName = new Map<string, RamBlock>()
    const parsed: Omit<RamBlock, 'firstPage'>[] = []
    for (const [i, c] of configs.entries()) {
      const what = `registerRam: block ${i}`
      if (typeof c?.name !== 'string' || c.name.length === 0) throw new TypeError(`${what}: name must be a non-empty string`)
      const nameBytes = Buffer.from(c.name, 'utf8')
      if (nameBytes.length > 255) throw new TypeError(`${what} (${c.name.slice(0, 40)}...): name is ${nameBytes.length} bytes, the stream allows 255`)
      if (byName.has(c.name) || parsed.some(p => p.name === c.name)) throw new TypeError(`${what}: name '${c.name}' is used twice`)
      if (!(c.memory instanceof Uint8Array)) throw new TypeError(`${what} '${c.name}': memory must be a Uint8Array`)
      const length = c.memory.byteLength
      if (length === 0 || length % pageSize !== 0) {
        throw new RangeError(`${what} '${c.name}': memory of ${length} bytes is not a positive multiple of the page size ${pageSize}`)
      }
      const base = c.base ?? 0
      if (!Number.isSafeInteger(base) || base < 0 || base % pageSize !== 0) {
        throw new RangeError(`${what} '${c.name}': base ${base} must be a non-negative multiple of ${pageSize}`)
      }
      parsed.push({ name: c.name, nameBytes, memory: c.memory, base, length, pages: length / pageSize, shared: c.shared, backing: c.backing })
    }
    const sorted = [...parsed].sort((a, b) => a.base - b.base)
    for (let i = 1; i < sorted.length; i++) {
      const p = sorted[i - 1]
      const q = sorted[i]
      if (q.base < p.base + p.length) {
        throw new RangeError(`registerRam: blocks '${p.name}' and '${q.name}' overlap in guest-physical space; give each its own base`)
      }
    }
    this.base = sorted[0].base
    const end = sorted[sorted.length - 1].base + sorted[sorted.length - 1].length
    this.span = end - this.base
    if (this.span > MAX_SPAN) throw new RangeError(`registerRam: blocks span ${this.span} bytes of guest-physical space, more than ${MAX_SPAN}`)
    // Stream order is registration order, like QEMU's block list.
    this.blocks = parsed.map(p => ({ ...p, firstPage: (p.base - this.base) / pageSize }))
    for (const b of this.blocks) byName.set(b.name, b)
    this.byName = byName
    this.totalBytes = parsed.reduce((s, p) => s + p.length, 0)
    this.totalPages = this.totalBytes / pageSize
  }

  bitmap(): DirtyBitmap {
    return new DirtyBitmap(this.base, this.span, RAM_PAGE_SIZE)
  }
}
