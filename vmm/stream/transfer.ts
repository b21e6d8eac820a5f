// Finds the native zero-copy fd-to-fd transfer if the addon has one. The
// addon may be absent or older than this code; then streams use their
// bounce-buffer fallback.
import { optionalNative } from '../native/optional.js'
import type { NativeChannel } from '../../native/index.js'

/**
 * One end of a native transfer: an fd, or under TLS the native channel
 * whose session the bytes must go through (it hands out no fd).
 */
export type DirectTarget = number | NativeChannel

export type FdTransfer = (from: DirectTarget, to: DirectTarget, length: number, opts?: { allowSplice?: boolean }) => Promise<number>

const fdTransfer = optionalNative<(a: DirectTarget, b: DirectTarget, n: number, o?: { allowSplice?: boolean }) => Promise<number | bigint>>('fdTransfer')
const detected: FdTransfer | null = fdTransfer ? (a, b, n, o) => fdTransfer(a, b, n, o).then(Number) : null

/** The native transfer, or null when the addon does not provide one. */
export function nativeFdTransfer(): FdTransfer | null {
  return detected
}
