// What counts as a typed error: one of the project's error classes, with a
// string code, and nothing in its cause chain that only a bug throws.
import { Finding, describe } from '../engine.js'

// Thrown by the language or by Node on a misuse (a read past a Buffer, a
// bad argument): never an answer to bad input, always a missing check.
const BUG_CLASSES = [TypeError, RangeError, ReferenceError, SyntaxError, EvalError, URIError]
const NODE_BUG_CODES = /^ERR_(OUT_OF_RANGE|BUFFER_OUT_OF_BOUNDS|INVALID_ARG_TYPE|INVALID_ARG_VALUE|STRING_TOO_LONG|INVALID_BUFFER_SIZE|INTERNAL_ASSERTION|ASSERTION|UNHANDLED_ERROR)$/

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type ErrorClass = abstract new (...args: any[]) => Error

/** Throws Finding unless `e` is a typed error of one of `classes` (with a code unless `uncoded`). */
export function assertTyped(e: unknown, classes: readonly ErrorClass[], what: string, uncoded = false): void {
  if (e instanceof Finding) throw e
  const bad = (why: string) => new Finding(`${what}: ${why}\n${describe(e)}`, { cause: e })
  if (!(e instanceof Error)) throw bad('rejected with a non-Error')
  if (!classes.some(c => e instanceof c)) throw bad(`untyped error ${e.name} (expected one of ${classes.map(c => c.name).join(', ')})`)
  if (typeof (e as { code?: unknown }).code !== 'string' && !uncoded) throw bad(`${e.name} without a code`)
  for (let x: unknown = e, d = 0; x instanceof Error && d < 8; x = x.cause, d++) {
    if (BUG_CLASSES.some(c => x instanceof c)) throw bad(`${(x as Error).name} in the cause chain: a missing check, not a verdict on the input`)
    const code = (x as { code?: unknown }).code
    if (typeof code === 'string' && NODE_BUG_CODES.test(code)) throw bad(`Node's ${code} in the cause chain: a missing check`)
  }
}
