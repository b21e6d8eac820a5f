// QMP's wire format, free of I/O: the splitter that cuts a byte stream into
// JSON texts, the checks QEMU makes on a request (qapi/qmp-dispatch.c), and
// the serializer of replies and events.
//
// QMP is not line-delimited: QEMU's JSON streamer takes one JSON value after
// another, and clients rely on it (qemu.qmp writes a command without a
// newline). So the splitter counts brackets outside strings, as QEMU's
// streamer does, and cuts at the end of each top-level value. It never holds
// more than `maxMessageBytes` of one message: a longer one is reported once
// and skipped to its end without being stored, so a client sending megabytes
// (or a never-ending value) costs no memory.
import { VmmError } from '../core/errors.js'

/** A JSON text cut from the stream, or why one could not be. */
export type Decoded =
  | { kind: 'value'; value: unknown }
  | { kind: 'error'; desc: string }

export interface DecoderOptions {
  /** Longest JSON text accepted, bytes (default 1 MiB; QMP commands are small). */
  maxMessageBytes?: number
  /** Deepest nesting of objects and arrays (default 1024, QEMU's MAX_NESTING). */
  maxNesting?: number
}

export const DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
export const DEFAULT_MAX_NESTING = 1024

const LBRACE = 0x7b, RBRACE = 0x7d, LBRACKET = 0x5b, RBRACKET = 0x5d, QUOTE = 0x22, BACKSLASH = 0x5c

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d
}

/**
 * Splits a QMP byte stream into JSON texts.
 *
 * @example
 * const d = new QmpDecoder()
 * for (const m of d.feed(Buffer.from('{"execute":"query-status"}{"exec'))) console.log(m)
 * // { kind: 'value', value: { execute: 'query-status' } }; the rest waits for more bytes
 */
export class QmpDecoder {
  readonly maxMessageBytes: number
  readonly maxNesting: number
  private parts: Buffer[] = []
  private size = 0
  /** Inside a message (after its first byte). */
  private active = false
  private depth = 0
  private inString = false
  private escaped = false
  /** A top-level bare token (`foo`, `42`): it ends at whitespace or a bracket. */
  private scalar = false
  /** Why the current message is being skipped (over a limit): followed to its end, not stored. */
  private skipping: string | null = null

  constructor(opts: DecoderOptions = {}) {
    this.maxMessageBytes = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
    this.maxNesting = opts.maxNesting ?? DEFAULT_MAX_NESTING
    if (!Number.isSafeInteger(this.maxMessageBytes) || this.maxMessageBytes < 16) throw new RangeError(`maxMessageBytes must be an integer >= 16, got ${this.maxMessageBytes}`)
    if (!Number.isSafeInteger(this.maxNesting) || this.maxNesting < 1) throw new RangeError(`maxNesting must be an integer >= 1, got ${this.maxNesting}`)
  }

  /** Bytes of the message in progress held here (never more than maxMessageBytes). */
  get buffered(): number {
    return this.size
  }

  /** Feed the next bytes; returns every message they completed, in order. */
  feed(chunk: Buffer): Decoded[] {
    const out: Decoded[] = []
    // Where the current message's bytes in this chunk begin.
    let start = 0
    const end = (at: number) => {
      this.take(chunk, start, at)
      out.push(this.finish())
    }
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!
      if (!this.active) {
        if (isSpace(b)) continue
        if (b === RBRACE || b === RBRACKET) {
          out.push({ kind: 'error', desc: `JSON parse error, stray '${String.fromCharCode(b)}'` })
          continue
        }
        this.active = true
        start = i
        if (b === LBRACE || b === LBRACKET) this.depth = 1
        else if (b === QUOTE) this.inString = true
        else this.scalar = true
      } else if (this.inString) {
        if (this.escaped) this.escaped = false
        else if (b === BACKSLASH) this.escaped = true
        else if (b === QUOTE) {
          this.inString = false
          // A top-level string ends with its quote.
          if (this.depth === 0) {
            end(i + 1)
            continue
          }
        }
      } else if (this.scalar) {
        if (isSpace(b) || b === LBRACE || b === LBRACKET || b === RBRACE || b === RBRACKET) {
          end(i)
          // That byte belongs to what comes next.
          i--
          continue
        }
      } else if (b === QUOTE) {
        this.inString = true
      } else if (b === LBRACE || b === LBRACKET) {
        if (++this.depth > this.maxNesting) this.skip(`JSON nesting depth limit exceeded (${this.maxNesting})`)
      } else if (b === RBRACE || b === RBRACKET) {
        if (--this.depth === 0) {
          end(i + 1)
          continue
        }
      }
      if (this.skipping === null && this.size + (i + 1 - start) > this.maxMessageBytes) this.skip(`QMP input exceeds ${this.maxMessageBytes} bytes`)
    }
    if (this.active) this.take(chunk, start, chunk.length)
    return out
  }

  private skip(why: string): void {
    if (this.skipping !== null) return
    this.skipping = why
    this.parts = []
    this.size = 0
  }

  private take(chunk: Buffer, from: number, to: number): void {
    if (this.skipping !== null || to <= from) return
    // Copied: the caller may reuse its buffer.
    this.parts.push(Buffer.from(chunk.subarray(from, to)))
    this.size += to - from
  }

  private finish(): Decoded {
    const skipped = this.skipping
    const text = skipped === null ? Buffer.concat(this.parts, this.size).toString('utf8') : ''
    this.parts = []
    this.size = 0
    this.active = false
    this.depth = 0
    this.scalar = false
    this.inString = false
    this.escaped = false
    this.skipping = null
    if (skipped !== null) return { kind: 'error', desc: skipped }
    try {
      return { kind: 'value', value: JSON.parse(text) }
    } catch (e) {
      return { kind: 'error', desc: `JSON parse error, ${(e as Error).message}` }
    }
  }
}

/** A request that passed QEMU's checks of its shape (qmp_dispatch_check_obj). */
export interface QmpRequest {
  execute: string
  arguments: Record<string, unknown>
  /** Echoed in the reply, whatever JSON it is. */
  id?: unknown
  hasId: boolean
}

/**
 * QEMU's checks of a request object, with its messages: an object, `execute`
 * a string, `arguments` an object, `id` anything, nothing else (no `exec-oob`:
 * this server offers no out-of-band capability).
 */
export function checkRequest(value: unknown): { ok: true; request: QmpRequest } | { ok: false; desc: string; id?: unknown; hasId: boolean } {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return { ok: false, desc: 'QMP input must be a JSON object', hasId: false }
  const o = value as Record<string, unknown>
  const hasId = Object.hasOwn(o, 'id')
  const id = o.id
  for (const [k, v] of Object.entries(o)) {
    if (k === 'execute') {
      if (typeof v !== 'string') return { ok: false, desc: "QMP input member 'execute' must be a string", id, hasId }
    } else if (k === 'arguments') {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) return { ok: false, desc: "QMP input member 'arguments' must be an object", id, hasId }
    } else if (k !== 'id') {
      return { ok: false, desc: `QMP input member '${k}' is unexpected`, id, hasId }
    }
  }
  if (!Object.hasOwn(o, 'execute')) return { ok: false, desc: "QMP input lacks member 'execute'", id, hasId }
  return { ok: true, request: { execute: o.execute as string, arguments: (o.arguments as Record<string, unknown>) ?? {}, id, hasId } }
}

/** QMP's error classes (qapi/error.json); this server uses the first two. */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap'

/** A command's failure, sent as `{"error": {"class", "desc"}}`. */
export class QmpError extends VmmError {
  readonly code = 'ERR_QMP'
  constructor(readonly errorClass: QmpErrorClass, readonly desc: string) {
    super(desc)
    this.name = 'QmpError'
  }
}

/** The time stamp QEMU puts on events. */
export function timestamp(ms = Date.now()): { seconds: number; microseconds: number } {
  const us = Math.round(ms * 1000)
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 }
}

/** One JSON text and QEMU's line ending: clients (qemu.qmp) read replies line by line. */
export function serialize(message: unknown): Buffer {
  return Buffer.from(`${JSON.stringify(message)}\r\n`, 'utf8')
}

export function returnMessage(value: unknown, req?: { id?: unknown; hasId: boolean }): Record<string, unknown> {
  return req?.hasId ? { return: value, id: req.id } : { return: value }
}

export function errorMessage(errorClass: QmpErrorClass, desc: string, req?: { id?: unknown; hasId: boolean }): Record<string, unknown> {
  const m: Record<string, unknown> = { error: { class: errorClass, desc } }
  if (req?.hasId) m.id = req.id
  return m
}

export function eventMessage(event: string, data?: Record<string, unknown>, ms?: number): Record<string, unknown> {
  const m: Record<string, unknown> = { timestamp: timestamp(ms), event }
  if (data !== undefined) m.data = data
  return m
}
