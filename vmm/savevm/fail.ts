// Turning a failed stream read into the right typed load error.
import type { MigStream } from '../stream/stream.js'
import { LoadError, TruncatedError, StreamFailedError, LengthLimitError } from './errors.js'

export function streamFailure(f: MigStream, section: string | undefined, what: string): LoadError {
  const e = f.error
  if (e?.code === 'ENODATA') return new TruncatedError(`stream ends inside ${what}`, { section, offset: f.bytesRead, cause: e })
  if (e?.code === 'EMSGSIZE') return new LengthLimitError(`${what}: ${e.message}`, { section, offset: f.bytesRead, cause: e })
  return new StreamFailedError(`${what}: ${e?.message ?? 'stream failed'}`, { section, offset: f.bytesRead, cause: e })
}

/** Make n bytes readable or throw the typed error. */
export async function need(f: MigStream, n: number, section: string | undefined, what: string): Promise<void> {
  if (!(await f.fill(n))) throw streamFailure(f, section, what)
}
