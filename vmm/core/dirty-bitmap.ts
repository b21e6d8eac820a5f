// The dirty-page bitmap that every tracker writes into and the RAM migration
// reads from: one bit per guest page, over guest-physical addresses.
//
// Bits live in 32-bit words (page p = bit p%32 of word p/32, which on a
// little-endian host is also bit p%8 of byte p/8, the kernel's layout), so
// scans, merges and counts touch 32 pages per step: 2 GiB of RAM is 16 Ki
// words. Bits past `pages` in the last word are kept zero.

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1

function popcount32(v: number): number {
  v = v - ((v >>> 1) & 0x55555555)
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333)
  return Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24
}

/** Bits [lo, hi) of a word set, 0 <= lo < hi <= 32. */
function wordMask(lo: number, hi: number): number {
  const upper = hi === 32 ? 0xffffffff : (1 << hi) - 1
  return (upper & ~((1 << lo) - 1)) >>> 0
}

export class DirtyBitmap {
  readonly pages: number
  private readonly words: Uint32Array
  private readonly bits: Uint8Array
  private all = false

  constructor(
    /** Guest-physical (IOVA) address of page 0. */
    readonly base: number,
    readonly size: number,
    readonly pageSize = 4096,
  ) {
    if (!Number.isSafeInteger(size) || size < 0 || size % pageSize !== 0) {
      throw new RangeError(`dirty bitmap: size ${size} is not a multiple of the page size ${pageSize}`)
    }
    if (!LITTLE_ENDIAN) throw new RangeError('dirty bitmap: needs a little-endian host (kernel bitmaps are read as bytes)')
    this.pages = size / pageSize
    this.words = new Uint32Array(Math.ceil(this.pages / 32))
    this.bits = new Uint8Array(this.words.buffer)
  }

  /** Every page dirty (no tracker, or a tracker that lost track). */
  markAll(): void {
    this.all = true
  }

  get allDirty(): boolean {
    return this.all
  }

  /**
   * The bitmap itself, shared (bit i%32 of word i/32 = page i), for native
   * code that walks and clears it in place. Not meaningful while allDirty.
   */
  get wordView(): Uint32Array {
    return this.words
  }

  markPage(index: number): void {
    if (index >= 0 && index < this.pages) this.words[index >>> 5] |= 1 << (index & 31)
  }

  /** Clear one page's bit (a page that has been sent). Turns an all-dirty map into explicit bits first. */
  clearPage(index: number): void {
    if (index < 0 || index >= this.pages) return
    if (this.all) this.materialize()
    this.words[index >>> 5] &= ~(1 << (index & 31))
  }

  /** Mark pages [first, first + count) by index; out-of-range parts are ignored. */
  markPages(first: number, count: number): void {
    let lo = Math.max(0, Math.floor(first))
    const hi = Math.min(this.pages, Math.floor(first + count))
    const w = this.words
    while (lo < hi) {
      const wi = lo >>> 5
      const top = Math.min(hi - wi * 32, 32)
      w[wi] |= wordMask(lo & 31, top)
      lo = wi * 32 + top
    }
  }

  /** Mark every page touching [addr, addr + len). Out-of-range parts are ignored. */
  markRange(addr: number, len: number): void {
    if (len <= 0) return
    const first = Math.max(0, Math.floor((addr - this.base) / this.pageSize))
    const last = Math.min(this.pages - 1, Math.floor((addr + len - 1 - this.base) / this.pageSize))
    if (last >= first) this.markPages(first, last - first + 1)
  }

  /**
   * OR in a kernel-style bitmap (bit n of the little-endian u64 array = page
   * n from `addr`, at `pageSize` granularity; KVM_GET_DIRTY_LOG, VFIO).
   */
  markBitmap(addr: number, bitmap: Uint8Array, pageSize = this.pageSize): void {
    const start = (addr - this.base) / this.pageSize
    if (pageSize === this.pageSize && Number.isInteger(start) && start >= 0 && start % 8 === 0) {
      // Byte-aligned: OR whole bytes, masking the part past the last page.
      const first = start / 8
      const lastByte = (this.pages - 1) >> 3
      const tailBits = this.pages & 7
      const n = Math.min(bitmap.length, lastByte - first + 1)
      for (let b = 0; b < n; b++) {
        let v = bitmap[b]
        if (v === 0) continue
        if (first + b === lastByte && tailBits !== 0) v &= (1 << tailBits) - 1
        this.bits[first + b] |= v
      }
      return
    }
    for (let byte = 0; byte < bitmap.length; byte++) {
      const v = bitmap[byte]
      if (v === 0) continue
      for (let bit = 0; bit < 8; bit++) {
        if (v & (1 << bit)) this.markRange(addr + (byte * 8 + bit) * pageSize, pageSize)
      }
    }
  }

  isDirty(index: number): boolean {
    return this.all || (this.words[index >>> 5] & (1 << (index & 31))) !== 0
  }

  count(): number {
    return this.countRange(0, this.pages)
  }

  /** Dirty pages among [first, first + count). */
  countRange(first: number, count: number): number {
    let lo = Math.max(0, first)
    const hi = Math.min(this.pages, first + count)
    if (hi <= lo) return 0
    if (this.all) return hi - lo
    const w = this.words
    let n = 0
    while (lo < hi) {
      const wi = lo >>> 5
      const top = Math.min(hi - wi * 32, 32)
      const v = (lo & 31) === 0 && top === 32 ? w[wi] : w[wi] & wordMask(lo & 31, top)
      if (v !== 0) n += popcount32(v)
      lo = wi * 32 + top
    }
    return n
  }

  /** Index of the first dirty page in [from, end), or -1. */
  findNext(from: number, end = this.pages): number {
    if (end > this.pages) end = this.pages
    if (from < 0) from = 0
    if (from >= end) return -1
    if (this.all) return from
    const w = this.words
    let wi = from >>> 5
    const lastWord = (end - 1) >>> 5
    let v = w[wi] & ~((1 << (from & 31)) - 1)
    for (;;) {
      if (v !== 0) {
        const i = wi * 32 + (31 - Math.clz32(v & -v))
        return i < end ? i : -1
      }
      if (++wi > lastWord) return -1
      v = w[wi]
    }
  }

  /**
   * OR this bitmap's pages [first, first + count) into `target` (same
   * geometry). Resolves how many of them were not already dirty there.
   */
  mergeInto(target: DirtyBitmap, first = 0, count = this.pages): number {
    if (target.pages !== this.pages || target.base !== this.base || target.pageSize !== this.pageSize) {
      throw new RangeError('dirty bitmap: mergeInto needs a bitmap of the same geometry')
    }
    let lo = Math.max(0, first)
    const hi = Math.min(this.pages, first + count)
    if (hi <= lo) return 0
    if (target.all) return 0
    if (this.all) {
      const before = target.countRange(lo, hi - lo)
      target.markPages(lo, hi - lo)
      return hi - lo - before
    }
    const s = this.words
    const t = target.words
    let added = 0
    while (lo < hi) {
      const wi = lo >>> 5
      const top = Math.min(hi - wi * 32, 32)
      let v = s[wi]
      if (v !== 0) {
        if ((lo & 31) !== 0 || top !== 32) v &= wordMask(lo & 31, top)
        const fresh = v & ~t[wi]
        if (fresh !== 0) {
          added += popcount32(fresh)
          t[wi] |= fresh
        }
      }
      lo = wi * 32 + top
    }
    return added
  }

  /** Indices of dirty pages, ascending. */
  *dirtyPages(): Generator<number> {
    for (let i = this.findNext(0); i >= 0; i = this.findNext(i + 1)) yield i
  }

  clear(): void {
    this.words.fill(0)
    this.all = false
  }

  private materialize(): void {
    this.all = false
    this.markPages(0, this.pages)
  }
}
