// A relay between a migration's source and its destination, over unix
// sockets, that knows the handover's messages: it parses the return path
// (be16 type, be16 length, data) and treats the forward bytes that follow a
// READY as the handover frame. A fault (cut: both sockets closed; black-hole:
// nothing forwarded any more, the sockets left open) is applied at one step.
import * as net from 'node:net'
import { RpMsg } from '../../vmm/channel/return-path.js'

export type FaultPoint =
  /** After this many forward bytes (pre-copy). */
  | { at: 'forward-bytes'; bytes: number }
  /** READY reached the relay and is held back. */
  | { at: 'before-ready' }
  /** READY went through; the source's GO reached the relay and is held back. */
  | { at: 'before-go' }
  /** GO went through; the destination's STARTED is held back. */
  | { at: 'before-started' }
  /** STARTED went through. */
  | { at: 'after-started' }

export type FaultAction = 'cut' | 'blackhole'

export class Relay {
  readonly path: string
  private server: net.Server
  private socks: net.Socket[] = []
  /** Set once the fault was applied. */
  faulted = false
  /** performance.now() when it was. */
  faultAt = 0
  readonly seen: number[] = []

  private constructor(path: string, server: net.Server, readonly target: string, readonly point: FaultPoint | null, readonly action: FaultAction) {
    this.path = path
    this.server = server
    server.on('connection', (c) => this.pipe(c))
  }

  static async create(path: string, target: string, point: FaultPoint | null, action: FaultAction): Promise<Relay> {
    const server = net.createServer()
    await new Promise<void>((res, rej) => {
      server.once('error', rej)
      server.listen(path, () => res())
    })
    return new Relay(path, server, target, point, action)
  }

  private fault(): void {
    if (this.faulted) return
    this.faulted = true
    this.faultAt = performance.now()
    for (const s of this.socks) {
      if (this.action === 'cut') s.destroy()
      else s.pause()
    }
  }

  private pipe(src: net.Socket): void {
    const dst = net.connect(this.target)
    this.socks.push(src, dst)
    src.on('error', () => undefined)
    dst.on('error', () => undefined)
    const p = this.point
    let forward = 0
    let readyForwarded = false
    let rp = Buffer.alloc(0)
    src.on('data', (d: Buffer) => {
      if (this.faulted) return
      if (p?.at === 'forward-bytes' && forward + d.length >= p.bytes) {
        dst.write(d.subarray(0, Math.max(0, p.bytes - forward)))
        forward = p.bytes
        return this.fault()
      }
      // Nothing but the handover frame follows READY on the forward channel.
      if (readyForwarded && p?.at === 'before-go') return this.fault()
      forward += d.length
      dst.write(d)
    })
    dst.on('data', (d: Buffer) => {
      if (this.faulted) return
      rp = Buffer.concat([rp, d])
      while (rp.length >= 4) {
        const type = rp.readUInt16BE(0)
        const len = rp.readUInt16BE(2)
        if (rp.length < 4 + len) break
        const msg = rp.subarray(0, 4 + len)
        rp = rp.subarray(4 + len)
        this.seen.push(type)
        if (type === RpMsg.READY && p?.at === 'before-ready') return this.fault()
        if (type === RpMsg.RESUME_OK && p?.at === 'before-started') return this.fault()
        if (type === RpMsg.RESUME_OK && p?.at === 'after-started') {
          // The message is in the source's socket before the link goes.
          src.write(msg, () => this.fault())
          return
        }
        src.write(msg)
        if (type === RpMsg.READY) readyForwarded = true
      }
    })
    const end = (a: net.Socket, b: net.Socket) => a.on('end', () => { if (!this.faulted) b.end() })
    end(src, dst)
    end(dst, src)
  }

  async close(): Promise<void> {
    for (const s of this.socks) s.destroy()
    await new Promise<void>((r) => this.server.close(() => r()))
  }
}
