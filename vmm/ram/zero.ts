// Zero-page detection: one native memcmp against a zero page, without a
// view allocation per page (Buffer#compare takes the range).
import { RAM_PAGE_SIZE } from './format.js'

const ZERO_PAGE = Buffer.alloc(RAM_PAGE_SIZE)

export function isZeroPage(mem: Uint8Array, offset: number): boolean {
  return ZERO_PAGE.compare(mem, offset, offset + RAM_PAGE_SIZE) === 0
}
