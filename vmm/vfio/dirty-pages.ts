// The dirty-page bitmap that every tracker writes into and the RAM migration
// reads from: one bit per guest page, over guest-physical addresses.

export class DirtyBitmap {
  readonly pages: number
  private bits: Uint8Array
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
    this.pages = size / pageSize
    this.bits = new Uint8Array(Math.ceil(this.pages / 8))
  }

  /** Every page dirty (no tracker, or a tracker that lost track). */
  markAll(): void {
    this.all = true
  }

  get allDirty(): boolean {
    return this.all
  }

  markPage(index: number): void {
    if (index >= 0 && index < this.pages) this.bits[index >> 3] |= 1 << (index & 7)
  }

  /** Mark every page touching [addr, addr + len). Out-of-range parts are ignored. */
  markRange(addr: number, len: number): void {
    if (len <= 0) return
    const first = Math.max(0, Math.floor((addr - this.base) / this.pageSize))
    const last = Math.min(this.pages - 1, Math.floor((addr + len - 1 - this.base) / this.pageSize))
    for (let i = first; i <= last; i++) this.bits[i >> 3] |= 1 << (i & 7)
  }

  /**
   * OR in a kernel-style bitmap (bit n of the little-endian u64 array = page
   * n from `addr`, at `pageSize` granularity; KVM_GET_DIRTY_LOG, VFIO).
   */
  markBitmap(addr: number, bitmap: Uint8Array, pageSize = this.pageSize): void {
    const scale = pageSize / this.pageSize
    for (let byte = 0; byte < bitmap.length; byte++) {
      const v = bitmap[byte]
      if (v === 0) continue
      for (let bit = 0; bit < 8; bit++) {
        if (!(v & (1 << bit))) continue
        const page = byte * 8 + bit
        if (scale === 1) {
          const i = (addr - this.base) / this.pageSize + page
          if (i >= 0 && i < this.pages) this.bits[i >> 3] |= 1 << (i & 7)
        } else {
          this.markRange(addr + page * pageSize, pageSize)
        }
      }
    }
  }

  isDirty(index: number): boolean {
    return this.all || (this.bits[index >> 3] & (1 << (index & 7))) !== 0
  }

  count(): number {
    if (this.all) return this.pages
    let n = 0
    for (const b of this.bits) {
      let v = b
      while (v) {
        v &= v - 1
        n++
      }
    }
    return n
  }

  /** Indices of dirty pages, ascending. */
  *dirtyPages(): Generator<number> {
    for (let byte = 0; byte < this.bits.length; byte++) {
      const v = this.all ? 0xff : this.bits[byte]
      if (v === 0) continue
      for (let bit = 0; bit < 8; bit++) {
        const i = byte * 8 + bit
        if (i >= this.pages) return
        if (v & (1 << bit)) yield i
      }
    }
  }

  clear(): void {
    this.bits.fill(0)
    this.all = false
  }
}
