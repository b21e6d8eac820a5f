// The RAM digest of the migration proof. The destination takes it before its
// vCPU starts, so it is part of the downtime: SHA-256 on this thread took
// 230-345 ms of a 300 ms limit for 256 MiB. BLAKE3 is a tree hash, so the
// native layer splits the bytes over worker threads and still returns the
// standard BLAKE3 hash, checkable by any implementation.
import { native } from '../native/addon.js'

/**
 * BLAKE3 (hex) of `bytes`, hashed off the event loop on `threads` native
 * threads (default: the machine's cores, at most 8). Nothing may write the
 * bytes until the Promise settles.
 */
export function blake3Digest(bytes: Uint8Array, threads?: number): Promise<string> {
  return native.blake3Digest(bytes, threads)
}
