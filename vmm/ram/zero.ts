// Zero-page detection: one native memcmp against a zero page, without a
// view allocation per page (Buffer#compare takes the range). A page with
// data nearly always shows a non-zero byte among a few samples, which JS reads
// far cheaper than the call into memcmp costs; only pages that pass the
// samples (zero ones, mostly) pay for the full compare.
import { RAM_PAGE_SIZE } from './format.js'

const ZERO_PAGE = Buffer.alloc(RAM_PAGE_SIZE)

export function isZeroPage(mem: Uint8Array, offset: number): boolean {
  if ((mem[offset] | mem[offset + 8] | mem[offset + 1024] | mem[offset + 2048] | mem[offset + 3072] | mem[offset + RAM_PAGE_SIZE - 1]) !== 0) return false
  return ZERO_PAGE.compare(mem, offset, offset + RAM_PAGE_SIZE) === 0
}
