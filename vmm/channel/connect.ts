// Opening channels from URIs: connect() for the outgoing side, listen() +
// accept() for the incoming side.
import * as net from 'node:net'
import * as fs from 'node:fs'
import { spawn, type ChildProcess } from 'node:child_process'
import type { Channel } from './types.js'
import { SocketChannel } from './socket.js'
import { FileChannel } from './file.js'
import { parseUri, formatUri, type MigrationAddress } from './uri.js'
import { StreamError, toStreamError } from '../stream/errors.js'

function openAsync(path: string, flags: string): Promise<number> {
  return new Promise((res, rej) => fs.open(path, flags, 0o600, (e, fd) => (e ? rej(e) : res(fd))))
}
function fstatAsync(fd: number): Promise<fs.Stats> {
  return new Promise((res, rej) => fs.fstat(fd, (e, st) => (e ? rej(e) : res(st))))
}

function socketConnect(opts: net.NetConnectOpts, desc: string, kind: 'tcp' | 'unix'): Promise<Channel> {
  return new Promise((resolve, reject) => {
    const s = net.connect(opts)
    const onErr = (e: Error) => reject(toStreamError(e, `connect ${desc}`))
    s.once('error', onErr)
    s.once('connect', () => {
      s.off('error', onErr)
      s.setNoDelay(true)
      resolve(new SocketChannel(kind, desc, s, s))
    })
  })
}

function execChannel(command: string, desc: string): Channel {
  const child: ChildProcess = spawn('/bin/sh', ['-c', command], { stdio: ['pipe', 'pipe', 'inherit'] })
  const exited = new Promise<void>(r => {
    if (child.exitCode !== null || child.signalCode !== null) r()
    else child.once('exit', () => r()).once('error', () => r())
  })
  const onClose = async () => {
    // Give the command a moment to finish with its input, then make sure it goes.
    const t = setTimeout(() => child.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(t)
  }
  return new SocketChannel('exec', desc, child.stdout!, child.stdin!, onClose)
}

async function fdChannel(fd: number, desc: string): Promise<Channel> {
  let st: fs.Stats
  try {
    st = await fstatAsync(fd)
  } catch (e) {
    throw toStreamError(e, `${desc}: fstat`)
  }
  if (st.isSocket() || st.isFIFO()) {
    const s = new net.Socket({ fd, readable: true, writable: true })
    return new SocketChannel('fd', desc, s, s)
  }
  return new FileChannel('fd', desc, fd, false)
}

/** Open the outgoing side of a migration. */
export async function connect(uri: string | MigrationAddress): Promise<Channel> {
  const a = typeof uri === 'string' ? parseUri(uri) : uri
  const desc = formatUri(a)
  switch (a.kind) {
    case 'tcp': return socketConnect({ host: a.host, port: a.port }, desc, 'tcp')
    case 'unix': return socketConnect({ path: a.path }, desc, 'unix')
    case 'file':
      try {
        return new FileChannel('file', desc, await openAsync(a.path, 'w'), true)
      } catch (e) {
        throw toStreamError(e, `open ${desc}`)
      }
    case 'exec': return execChannel(a.command, desc)
    case 'fd': return fdChannel(a.fd, desc)
  }
}

export interface Listener {
  /** The address actually bound (tcp port 0 becomes the real port). */
  readonly address: string
  /** The next incoming channel. */
  accept(): Promise<Channel>
  close(): Promise<void>
}

class ServerListener implements Listener {
  private queue: net.Socket[] = []
  private waiters: { res: (c: Channel) => void; rej: (e: Error) => void }[] = []
  private error: StreamError | null = null
  constructor(private readonly server: net.Server, readonly address: string, private readonly kind: 'tcp' | 'unix') {
    server.on('connection', s => {
      s.setNoDelay?.(true)
      const w = this.waiters.shift()
      if (w) w.res(this.wrap(s))
      else this.queue.push(s)
    })
    server.on('error', e => {
      this.error = toStreamError(e, address)
      for (const w of this.waiters.splice(0)) w.rej(this.error)
    })
  }
  private wrap(s: net.Socket): Channel {
    return new SocketChannel(this.kind, `${this.address} <- ${s.remoteAddress ?? 'peer'}`, s, s)
  }
  accept(): Promise<Channel> {
    const s = this.queue.shift()
    if (s) return Promise.resolve(this.wrap(s))
    if (this.error) return Promise.reject(this.error)
    if (!this.server.listening) return Promise.reject(new StreamError('EBADF', `${this.address}: listener closed`))
    return new Promise((res, rej) => this.waiters.push({ res, rej }))
  }
  close(): Promise<void> {
    for (const s of this.queue.splice(0)) s.destroy()
    const err = new StreamError('ECANCELED', `${this.address}: listener closed`)
    for (const w of this.waiters.splice(0)) w.rej(err)
    return new Promise(r => this.server.close(() => r()))
  }
}

class OnceListener implements Listener {
  private used = false
  constructor(readonly address: string, private readonly open: () => Promise<Channel>) {}
  accept(): Promise<Channel> {
    if (this.used) return Promise.reject(new StreamError('EINVAL', `${this.address}: accepts only one channel`))
    this.used = true
    return this.open()
  }
  async close(): Promise<void> {
    this.used = true
  }
}

/** Open the incoming side of a migration. */
export async function listen(uri: string | MigrationAddress): Promise<Listener> {
  const a = typeof uri === 'string' ? parseUri(uri) : uri
  const desc = formatUri(a)
  switch (a.kind) {
    case 'tcp':
    case 'unix': {
      const server = net.createServer({ pauseOnConnect: true })
      await new Promise<void>((res, rej) => {
        server.once('error', e => rej(toStreamError(e, `listen ${desc}`)))
        if (a.kind === 'tcp') server.listen(a.port, a.host, () => res())
        else server.listen(a.path, () => res())
      })
      let address = desc
      if (a.kind === 'tcp') {
        const bound = server.address() as net.AddressInfo
        address = formatUri({ kind: 'tcp', host: a.host, port: bound.port })
      }
      return new ServerListener(server, address, a.kind)
    }
    case 'file':
      return new OnceListener(desc, async () => {
        try {
          return new FileChannel('file', desc, await openAsync(a.path, 'r'), true)
        } catch (e) {
          throw toStreamError(e, `open ${desc}`)
        }
      })
    case 'exec':
      return new OnceListener(desc, async () => execChannel(a.command, desc))
    case 'fd':
      return new OnceListener(desc, () => fdChannel(a.fd, desc))
  }
}
