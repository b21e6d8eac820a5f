// Errors carried by streams and channels. Each has a Node-style `code` and the
// positive errno it corresponds to, so callers can log or map either one.
import { constants } from 'node:os'
import { VmmError } from '../core/errors.js'

const E = constants.errno

export const errnoOf: Record<string, number> = {
  EIO: E.EIO,
  EINVAL: E.EINVAL,
  EPIPE: E.EPIPE,
  ECANCELED: E.ECANCELED,
  ENOBUFS: E.ENOBUFS,
  EMSGSIZE: E.EMSGSIZE,
  ECONNRESET: E.ECONNRESET,
  ENOTSUP: E.ENOTSUP,
  EBADF: E.EBADF,
  ENODATA: E.ENODATA,
  ETIMEDOUT: E.ETIMEDOUT,
  EADDRINUSE: E.EADDRINUSE,
}

export class StreamError extends VmmError {
  readonly code: string
  readonly errno: number
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(`${code}: ${message}`, options)
    this.name = 'StreamError'
    this.code = code
    this.errno = errnoOf[code] ?? E.EIO
  }
}

/** Wrap anything thrown by a channel or syscall as a StreamError, keeping the cause. */
export function toStreamError(e: unknown, what: string): StreamError {
  if (e instanceof StreamError) return e
  const ne = e as NodeJS.ErrnoException
  const code = typeof ne?.code === 'string' && /^E[A-Z]+$/.test(ne.code) ? ne.code : 'EIO'
  const msg = ne?.message ?? String(e)
  return new StreamError(code, `${what}: ${msg}`, { cause: e })
}
