// Finds the native zero-copy fd-to-fd transfer if the addon has one. The
// addon may be absent or older than this code; then streams use their
// bounce-buffer fallback.
export type FdTransfer = (fromFd: number, toFd: number, length: number, opts?: { allowSplice?: boolean }) => Promise<number>

let detected: FdTransfer | null = null
try {
  const m = (await import('../native/addon.js')) as { native: Record<string, unknown> }
  const f = m.native.fdTransfer
  if (typeof f === 'function') detected = (a, b, n, o) => (f as FdTransfer).call(m.native, a, b, n, o).then(Number)
} catch {
  detected = null
}

/** The native transfer, or null when the addon does not provide one. */
export function nativeFdTransfer(): FdTransfer | null {
  return detected
}
