// SHA-256 of guest RAM without holding the event loop for the whole pass:
// WebCrypto refuses SharedArrayBuffer views (the software vCPU's RAM), so
// hash in chunks on this thread and yield between them.
import { createHash } from 'node:crypto'

const CHUNK = 8 << 20

export async function sha256Chunked(bytes: Uint8Array): Promise<string> {
  const h = createHash('sha256')
  for (let off = 0; off < bytes.byteLength; off += CHUNK) {
    h.update(bytes.subarray(off, Math.min(bytes.byteLength, off + CHUNK)))
    if (off + CHUNK < bytes.byteLength) await new Promise<void>((r) => setImmediate(r))
  }
  return h.digest('hex')
}
