// Numbers of QEMU's RAM section (migration/ram.c, ram.h): every record starts
// with a be64 whose low 12 bits (below TARGET_PAGE_BITS) are RAM_SAVE_FLAG_*
// and whose upper bits are a page offset inside a block, or for MEM_SIZE the
// total RAM size.

export const RAM_IDSTR = 'ram'
/** register_savevm_live("ram", 0, 4, ...); ram_load() accepts only 4. */
export const RAM_VERSION = 4
export const RAM_PAGE_SIZE = 4096
/** Flags sit below the target page size. */
export const RAM_FLAGS_MASK = RAM_PAGE_SIZE - 1

export const RamFlag = {
  /** Obsolete, never sent by QEMU since 2.x. */
  FULL: 0x01,
  /** Page filled with one byte, which must be 0 (a u8 follows the header). */
  ZERO: 0x02,
  /** Offset word is the total RAM size; the block list follows. */
  MEM_SIZE: 0x04,
  /** TARGET_PAGE_SIZE raw bytes follow the header. */
  PAGE: 0x08,
  /** End of this section's RAM records. */
  EOS: 0x10,
  /** Same block as the previous page: no block id string. */
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  /** RDMA's hook (rdma.h). */
  HOOK: 0x80,
  /** Removed in QEMU 9.1. */
  COMPRESS_PAGE: 0x100,
  MULTIFD_FLUSH: 0x200,
  /**
   * Not QEMU's (it uses no flag above 0x200): a local migration's blocks,
   * passed as file descriptors attached to this record's first byte. The
   * offset word's upper bits (as a page offset) are the number of blocks; each follows as (u8 len, id, be64
   * length), in the order of the descriptors. No page of them follows.
   */
  LOCAL_FDS: 0x400,
} as const

export const RAM_FLAG_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(RamFlag).map(([k, v]) => [v, k]),
)

/** Flags this implementation reads; the rest belong to capabilities it does not support. */
export const SUPPORTED_FLAGS = RamFlag.ZERO | RamFlag.MEM_SIZE | RamFlag.PAGE | RamFlag.EOS | RamFlag.CONTINUE | RamFlag.LOCAL_FDS

/** "ZERO|CONTINUE", unknown bits as hex. */
export function describeFlags(flags: number): string {
  const parts: string[] = []
  for (let bit = 1; bit <= RAM_FLAGS_MASK; bit <<= 1) {
    if (flags & bit) parts.push(RAM_FLAG_NAMES[bit] ?? `0x${bit.toString(16)}`)
  }
  return parts.length ? parts.join('|') : 'none'
}
