// A tiny QMP client: JSON objects, one per line, over QEMU's monitor socket.
// The parser is separate (and pure) so it can be tested without QEMU.
import * as net from 'node:net'

export type QmpMessage =
  | { kind: 'greeting'; version: unknown; capabilities: unknown[] }
  | { kind: 'return'; id?: unknown; value: unknown }
  | { kind: 'error'; id?: unknown; errorClass: string; desc: string }
  | { kind: 'event'; event: string; data: unknown; timestamp?: unknown }

/** QEMU's replies are small; a line longer than this means we are not talking to QMP. */
export const MAX_LINE = 4 << 20

export class QmpProtocolError extends Error {
  override name = 'QmpProtocolError'
}

export class QmpCommandError extends Error {
  override name = 'QmpCommandError'
  constructor(readonly command: string, readonly errorClass: string, readonly desc: string) {
    super(`QMP ${command}: ${errorClass}: ${desc}`)
  }
}

export function classify(obj: unknown): QmpMessage {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new QmpProtocolError(`QMP: expected a JSON object, got ${JSON.stringify(obj)?.slice(0, 80)}`)
  }
  const o = obj as Record<string, unknown>
  if ('QMP' in o) {
    const q = o.QMP as Record<string, unknown> | null
    if (!q || typeof q !== 'object') throw new QmpProtocolError('QMP: greeting without an object')
    return { kind: 'greeting', version: q.version, capabilities: Array.isArray(q.capabilities) ? q.capabilities : [] }
  }
  if ('return' in o) return { kind: 'return', id: o.id, value: o.return }
  if ('error' in o) {
    const e = o.error as Record<string, unknown> | null
    if (!e || typeof e !== 'object') throw new QmpProtocolError('QMP: error reply without an object')
    return { kind: 'error', id: o.id, errorClass: String(e.class ?? 'GenericError'), desc: String(e.desc ?? '') }
  }
  if (typeof o.event === 'string') return { kind: 'event', event: o.event, data: o.data, timestamp: o.timestamp }
  throw new QmpProtocolError(`QMP: unknown message ${JSON.stringify(o).slice(0, 120)}`)
}

/** Splits a byte stream into QMP messages; keeps a partial line until its newline arrives. */
export class QmpParser {
  private buf = ''

  feed(chunk: string | Buffer): QmpMessage[] {
    this.buf += typeof chunk === 'string' ? chunk : chunk.toString('utf8')
    const out: QmpMessage[] = []
    let nl: number
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim()
      this.buf = this.buf.slice(nl + 1)
      if (!line) continue
      let obj: unknown
      try {
        obj = JSON.parse(line)
      } catch {
        throw new QmpProtocolError(`QMP: malformed JSON line: ${line.slice(0, 120)}`)
      }
      out.push(classify(obj))
    }
    if (this.buf.length > MAX_LINE) throw new QmpProtocolError(`QMP: line longer than ${MAX_LINE} bytes without a newline`)
    return out
  }
}

export function encodeCommand(execute: string, args?: Record<string, unknown>, id?: number): string {
  if (typeof execute !== 'string' || !/^[a-z][a-z0-9_-]*$/i.test(execute)) throw new TypeError(`QMP: bad command name ${JSON.stringify(execute)}`)
  const o: Record<string, unknown> = { execute }
  if (args && Object.keys(args).length) o.arguments = args
  if (id !== undefined) o.id = id
  return JSON.stringify(o) + '\n'
}

interface Waiter {
  command: string
  resolve(v: unknown): void
  reject(e: Error): void
  timer: NodeJS.Timeout
}

export class QmpClient {
  readonly events: { event: string; data: unknown }[] = []
  private parser = new QmpParser()
  private waiters = new Map<number, Waiter>()
  private nextId = 1
  private closedError: Error | undefined

  private constructor(private readonly sock: net.Socket) {}

  /** Connects to `path` (retrying while QEMU creates it), reads the greeting and leaves capabilities negotiation mode. */
  static async connect(path: string, timeoutMs = 10000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((res, rej) => {
          const s = net.connect(path, () => { s.off('error', rej); res(s) })
          s.once('error', rej)
        })
        const c = new QmpClient(sock)
        await c.greet(Math.max(1000, deadline - Date.now()))
        await c.execute('qmp_capabilities')
        return c
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code
        if ((code === 'ENOENT' || code === 'ECONNREFUSED') && Date.now() < deadline) {
          await new Promise(r => setTimeout(r, 50))
          continue
        }
        throw e
      }
    }
  }

  private greet(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.sock.destroy(); reject(new QmpProtocolError(`QMP: no greeting within ${timeoutMs} ms`)) }, timeoutMs)
      let greeted = false
      this.sock.on('data', d => {
        let msgs: QmpMessage[]
        try {
          msgs = this.parser.feed(d)
        } catch (e) {
          this.fail(e as Error)
          return
        }
        for (const m of msgs) {
          if (!greeted) {
            if (m.kind !== 'greeting') { this.fail(new QmpProtocolError(`QMP: expected greeting, got ${m.kind}`)); return }
            greeted = true
            clearTimeout(timer)
            resolve()
          } else this.dispatch(m)
        }
      })
      this.sock.on('error', e => this.fail(e))
      this.sock.on('close', () => this.fail(new QmpProtocolError('QMP: connection closed')))
      this.sock.once('close', () => { if (!greeted) { clearTimeout(timer); reject(this.closedError) } })
    })
  }

  private dispatch(m: QmpMessage): void {
    if (m.kind === 'event') {
      this.events.push({ event: m.event, data: m.data })
      return
    }
    if (m.kind === 'greeting') return
    const w = typeof m.id === 'number' ? this.waiters.get(m.id) : undefined
    if (!w) return
    this.waiters.delete(m.id as number)
    clearTimeout(w.timer)
    if (m.kind === 'return') w.resolve(m.value)
    else w.reject(new QmpCommandError(w.command, m.errorClass, m.desc))
  }

  private fail(e: Error): void {
    this.closedError ??= e
    for (const w of this.waiters.values()) { clearTimeout(w.timer); w.reject(e) }
    this.waiters.clear()
    this.sock.destroy()
  }

  execute(command: string, args?: Record<string, unknown>, timeoutMs = 30000): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError)
    const id = this.nextId++
    const line = encodeCommand(command, args, id)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(id)
        reject(new QmpProtocolError(`QMP ${command}: no reply within ${timeoutMs} ms`))
      }, timeoutMs)
      this.waiters.set(id, { command, resolve, reject, timer })
      this.sock.write(line)
    })
  }

  close(): void {
    this.fail(new QmpProtocolError('QMP: client closed'))
  }
}
