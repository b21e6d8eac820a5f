// Raw fd I/O on libuv's threadpool, tolerant of non-blocking fds (EAGAIN is
// retried after a short pause instead of failing the transfer).
import * as fs from 'node:fs'
import { toStreamError } from './errors.js'

const EAGAIN_PAUSE_MS = 1

function pause(): Promise<void> {
  return new Promise(r => setTimeout(r, EAGAIN_PAUSE_MS))
}

export async function readFd(fd: number, buf: Uint8Array, off: number, len: number): Promise<number> {
  for (;;) {
    try {
      return await new Promise<number>((res, rej) => fs.read(fd, buf, off, len, null, (e, n) => (e ? rej(e) : res(n))))
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        await pause()
        continue
      }
      throw toStreamError(e, `read fd ${fd}`)
    }
  }
}

export async function writeAllFd(fd: number, buf: Uint8Array): Promise<void> {
  let off = 0
  while (off < buf.length) {
    try {
      off += await new Promise<number>((res, rej) =>
        fs.write(fd, buf, off, buf.length - off, null, (e, n) => (e ? rej(e) : res(n))))
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        await pause()
        continue
      }
      throw toStreamError(e, `write fd ${fd}`)
    }
  }
}
