// Guest RAM content for the RAM benchmarks: random bytes (no zero pages, so
// neither side can skip a page), written once to a file that QEMU maps as
// its memory backend and our source reads into its Buffer.
import { randomFill } from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

const fill = (buf: Buffer, off: number, n: number) =>
  new Promise<void>((res, rej) => randomFill(buf, off, n, e => (e ? rej(e) : res())))
const CHUNK = 64 << 20
const live = new Set<string>()

/** Removes every RAM file still on disk (they can be GiBs of /dev/shm); run.ts calls it on exit and on signals. */
export function removeRamFiles(): void {
  for (const f of live) fs.rmSync(f, { force: true })
  live.clear()
}

export function removeRamFile(file: string): void {
  fs.rmSync(file, { force: true })
  live.delete(file)
}

/** Where the file goes: /dev/shm (what QEMU users back RAM with) when it has room, else the temp dir. */
export function ramFileDir(size: number): string {
  try {
    const st = fs.statfsSync('/dev/shm')
    if (st.bavail * st.bsize > size + (2 << 30)) return '/dev/shm'
  } catch { /* no /dev/shm */ }
  return os.tmpdir()
}

export async function makeRandomFile(size: number): Promise<string> {
  if (!Number.isSafeInteger(size) || size <= 0 || size % 4096) throw new RangeError(`ram file: size must be a positive multiple of 4096, got ${size}`)
  const file = path.join(ramFileDir(size), `vmm-bench-ram-${process.pid}-${size}`)
  live.add(file)
  const fh = await fs.promises.open(file, 'w', 0o600)
  try {
    const buf = Buffer.allocUnsafe(Math.min(CHUNK, size))
    for (let off = 0; off < size; off += buf.length) {
      const n = Math.min(buf.length, size - off)
      await fill(buf, 0, n)
      await fh.write(buf, 0, n, off)
    }
  } catch (e) {
    await fh.close()
    removeRamFile(file)
    throw e
  }
  await fh.close()
  return file
}

/** Reads the whole file into `buf` (whose length is the file's size). */
export async function readInto(file: string, buf: Buffer): Promise<void> {
  const fh = await fs.promises.open(file, 'r')
  try {
    const st = await fh.stat()
    if (st.size !== buf.length) throw new RangeError(`ram file ${file} holds ${st.size} bytes, expected ${buf.length}`)
    for (let off = 0; off < buf.length;) {
      const { bytesRead } = await fh.read(buf, off, Math.min(CHUNK, buf.length - off), off)
      if (bytesRead === 0) throw new Error(`ram file ${file}: short read at ${off}`)
      off += bytesRead
    }
  } finally {
    await fh.close()
  }
}
