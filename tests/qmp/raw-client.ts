// A raw QMP client for the tests: what it sends is bytes, what it gets is
// every message, in order, each taken once by whoever waits for it.
import * as net from 'node:net'

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Msg = Record<string, any>

/** A raw QMP client: what it sends is bytes, what it gets is every message, in order. */
export class Raw {
  readonly got: Msg[] = []
  private buf = ''
  private waiters: (() => void)[] = []
  closed = false
  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d) => {
      this.buf += d
      let nl: number
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim()
        this.buf = this.buf.slice(nl + 1)
        if (line) this.got.push(JSON.parse(line))
      }
      for (const w of this.waiters.splice(0)) w()
    })
    sock.on('close', () => {
      this.closed = true
      for (const w of this.waiters.splice(0)) w()
    })
    sock.on('error', () => undefined)
  }

  static connect(path: string): Promise<Raw> {
    return new Promise((res, rej) => {
      const s = net.connect(path, () => res(new Raw(s)))
      s.once('error', rej)
    })
  }

  /** The next message matching `pred` (each is taken once), within `ms`. */
  async next(pred: (m: Msg) => boolean = () => true, ms = 10000): Promise<Msg> {
    const deadline = Date.now() + ms
    for (;;) {
      const i = this.got.findIndex(pred)
      if (i >= 0) return this.got.splice(i, 1)[0]!
      if (this.closed) throw new Error(`connection closed; still had ${JSON.stringify(this.got).slice(0, 300)}`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no such message in ${ms} ms; had ${JSON.stringify(this.got).slice(0, 300)}`)
      await new Promise<void>((r) => {
        const timer = setTimeout(r, left)
        this.waiters.push(() => {
          clearTimeout(timer)
          r()
        })
      })
    }
  }

  send(raw: string | Buffer): void {
    this.sock.write(raw)
  }

  private n = 0
  /** Execute and return the reply (matched by a fresh id). */
  async x(execute: string, args?: Record<string, unknown>): Promise<Msg> {
    const id = `c${++this.n}`
    this.send(JSON.stringify(args === undefined ? { execute, id } : { execute, arguments: args, id }))
    return this.next((m) => m.id === id)
  }

  async negotiate(): Promise<Msg> {
    const greeting = await this.next((m) => 'QMP' in m)
    const r = await this.x('qmp_capabilities')
    if (!('return' in r)) throw new Error(`negotiation failed: ${JSON.stringify(r)}`)
    return greeting
  }

  close(): void {
    this.sock.destroy()
  }
}

