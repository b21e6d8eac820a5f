// Opening channels from URIs: connect() for the outgoing side, listen() +
// accept() for the incoming side. Sockets and pipes are the native layer's
// (FdChannel over NativeChannel/NativeListener); only file: stays a plain fd.
import * as net from 'node:net'
import * as dns from 'node:dns'
import * as fs from 'node:fs'
import { dirname } from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import type { NativeChannel, NativeListener, TlsInfo } from '../../native/index.js'
import { native } from '../native/addon.js'
import type { Channel } from './types.js'
import { FdChannel } from './fd-channel.js'
import { FileChannel } from './file.js'
import { parseUri, formatUri, type MigrationAddress } from './uri.js'
import { StreamError, toStreamError } from '../stream/errors.js'
import { DEFAULT_TLS_HANDSHAKE_MS, type TlsOptions } from './tls.js'

function openAsync(path: string, flags: string): Promise<number> {
  return new Promise((res, rej) => fs.open(path, flags, 0o600, (e, fd) => (e ? rej(e) : res(fd))))
}
function fstatAsync(fd: number): Promise<fs.Stats> {
  return new Promise((res, rej) => fs.fstat(fd, (e, st) => (e ? rej(e) : res(st))))
}

/**
 * The error of an operation on `path`, saying so when the directory it
 * names is missing: libuv reports a unix socket bound in a missing
 * directory as EACCES (for Windows' sake), which sends the user looking for
 * a permission problem, and ENOENT alone does not say which part is missing.
 */
async function pathError(e: unknown, path: string, what: string, whenMissing?: string): Promise<StreamError> {
  const code = (e as NodeJS.ErrnoException)?.code
  if (code === 'EACCES' || code === 'ENOENT' || code === 'ENOTDIR') {
    const dir = dirname(path)
    const st = await fs.promises.stat(dir).then((x) => x, (se: NodeJS.ErrnoException) => se.code)
    if (st === 'ENOENT') return new StreamError('ENOENT', `${what}: directory ${dir} does not exist`, { cause: e })
    if (st === 'ENOTDIR' || (typeof st === 'object' && !st.isDirectory())) {
      return new StreamError('ENOTDIR', `${what}: ${dir} is not a directory`, { cause: e })
    }
    if (code === 'ENOENT' && whenMissing) return new StreamError('ENOENT', `${what}: ${whenMissing}`, { cause: e })
  }
  return toStreamError(e, what)
}

function cancelled(desc: string): StreamError {
  return new StreamError('ECANCELED', `connect ${desc}: cancelled`)
}

/** The numeric addresses of `host`, in the resolver's order (a literal is its own). */
async function addressesOf(host: string, what: string): Promise<string[]> {
  if (net.isIP(host)) return [host]
  try {
    const all = await dns.promises.lookup(host, { all: true })
    return all.map(a => a.address)
  } catch (e) {
    throw toStreamError(e, what)
  }
}

/** Connects a native socket, closing it when the connect fails or is abandoned. */
async function connectNative(nat: NativeChannel, signal: AbortSignal | undefined, desc: string): Promise<void> {
  // A host that drops SYNs keeps a connect pending for minutes: closing the
  // socket ends the wait (ECANCELED) at once.
  const onAbort = () => nat.close()
  signal?.addEventListener('abort', onAbort, { once: true })
  try {
    await nat.connect()
  } catch (e) {
    nat.close()
    throw signal?.aborted ? cancelled(desc) : e
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
}

/**
 * The client side of TLS on a connected socket: the handshake ends before
 * the channel is handed out, so a refused certificate fails connect(), before
 * any byte of the migration. Aborting `signal` ends it (ECANCELED).
 */
async function startTls(nat: NativeChannel, tls: TlsOptions, defaultName: string | undefined, desc: string, signal?: AbortSignal): Promise<TlsInfo> {
  const name = tls.hostname || defaultName
  if (!name) {
    nat.close()
    throw new StreamError('EINVAL', `connect ${desc}: TLS needs the destination's name to verify its certificate (tls-hostname)`)
  }
  if (tls.creds.endpoint !== 'client') {
    nat.close()
    throw new StreamError('EINVAL', `connect ${desc}: the TLS credentials were loaded for the ${tls.creds.endpoint} side; the source needs 'client' ones`)
  }
  const onAbort = () => nat.close()
  signal?.addEventListener('abort', onAbort, { once: true })
  try {
    return await nat.startTls(tls.creds, name, tls.handshakeTimeoutMs ?? DEFAULT_TLS_HANDSHAKE_MS)
  } catch (e) {
    nat.close()
    throw signal?.aborted ? cancelled(desc) : toStreamError(e, `connect ${desc}`)
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
}

async function tcpConnect(host: string, port: number, desc: string, signal?: AbortSignal, tls?: TlsOptions): Promise<Channel> {
  if (signal?.aborted) throw cancelled(desc)
  const ips = await addressesOf(host, `connect ${desc}`)
  let last: unknown = new StreamError('ENOENT', `connect ${desc}: ${host} has no address`)
  // Each address of a name in turn, as net.connect does without happy eyeballs.
  for (const ip of ips) {
    if (signal?.aborted) throw cancelled(desc)
    let nat: NativeChannel
    try {
      nat = native.NativeChannel.tcp(ip, port)
      await connectNative(nat, signal, desc)
    } catch (e) {
      if (e instanceof StreamError) throw e
      last = e
      continue
    }
    if (!tls) return new FdChannel('tcp', desc, nat)
    return new FdChannel('tcp', desc, nat, { tls: Promise.resolve(await startTls(nat, tls, host, desc, signal)) })
  }
  throw toStreamError(last, `connect ${desc}`)
}

async function unixConnect(path: string, desc: string, signal?: AbortSignal, tls?: TlsOptions): Promise<Channel> {
  if (signal?.aborted) throw cancelled(desc)
  let nat: NativeChannel
  try {
    nat = native.NativeChannel.unix(path)
    await connectNative(nat, signal, desc)
  } catch (e) {
    if (e instanceof StreamError) throw e
    throw await pathError(e, path, `connect ${desc}`, `no socket ${path} (is the destination listening?)`)
  }
  if (!tls) return new FdChannel('unix', desc, nat)
  return new FdChannel('unix', desc, nat, { tls: Promise.resolve(await startTls(nat, tls, undefined, desc, signal)) })
}

/**
 * The command's stdin and stdout are one socket, the other end ours: the
 * stream goes in, and whatever the command writes back (a destination's
 * return path, `incoming fd:0` or a relay to one) comes out, as QEMU's exec
 * channel does with two pipes.
 */
async function execChannel(command: string, desc: string): Promise<Channel> {
  let nat: NativeChannel
  try {
    nat = native.NativeChannel.forChild()
  } catch (e) {
    throw toStreamError(e, desc)
  }
  const theirs = nat.childFd!
  let child: ChildProcess
  try {
    child = spawn('/bin/sh', ['-c', command], { stdio: [theirs, theirs, 'inherit'] })
  } catch (e) {
    nat.close()
    throw toStreamError(e, desc)
  } finally {
    // The child has its own copies; ours would keep the stream open after it exits.
    nat.releaseChildFd()
  }
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
  return new FdChannel('exec', desc, nat, { duplex: true, onClose })
}

async function fdChannel(fd: number, desc: string): Promise<Channel> {
  let st: fs.Stats
  try {
    st = await fstatAsync(fd)
  } catch (e) {
    throw toStreamError(e, `${desc}: fstat`)
  }
  if (st.isSocket() || st.isFIFO()) {
    let nat: NativeChannel
    try {
      nat = native.NativeChannel.adopt(fd)
    } catch (e) {
      throw toStreamError(e, desc)
    }
    // The channel takes the descriptor over (QEMU's fd: does): the native
    // side holds its own copy, and a pipe's reader sees the end only once
    // every copy is closed. Standard streams stay open, as libuv leaves them.
    if (fd > 2) {
      await new Promise<void>((res, rej) => fs.close(fd, e => {
        if (e) {
          nat.close()
          rej(toStreamError(e, `${desc}: close`))
        } else res()
      }))
    }
    return new FdChannel('fd', desc, nat, { duplex: st.isSocket() })
  }
  return new FileChannel('fd', desc, fd, false)
}

export interface ConnectOptions {
  /** Aborting it abandons a connect still in progress (ECANCELED). */
  signal?: AbortSignal
  /** TLS on a tcp: or unix: channel (other kinds are refused with it). */
  tls?: TlsOptions
}

function noTls(desc: string, kind: string): StreamError {
  return new StreamError('EINVAL', `${desc}: TLS runs over tcp: and unix: channels only, not ${kind}:`)
}

/** Open the outgoing side of a migration. */
export async function connect(uri: string | MigrationAddress, opts: ConnectOptions = {}): Promise<Channel> {
  const a = typeof uri === 'string' ? parseUri(uri) : uri
  const desc = formatUri(a)
  if (opts.tls && a.kind !== 'tcp' && a.kind !== 'unix') throw noTls(desc, a.kind)
  // Found before connecting: a destination takes its first peer as the source.
  if (opts.tls && a.kind === 'unix' && !opts.tls.hostname) {
    throw new StreamError('EINVAL', `connect ${desc}: TLS needs the destination's name to verify its certificate (tls-hostname): a unix: URI has no host`)
  }
  switch (a.kind) {
    case 'tcp': return tcpConnect(a.host, a.port, desc, opts.signal, opts.tls)
    case 'unix': return unixConnect(a.path, desc, opts.signal, opts.tls)
    case 'file':
      try {
        return new FileChannel('file', desc, await openAsync(a.path, 'w'), true)
      } catch (e) {
        throw await pathError(e, a.path, `open ${desc}`)
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
  /** False for file:, exec: and fd:, which give one channel; true (or absent) for a socket that accepts peers. */
  readonly acceptsMany?: boolean
  /**
   * True when each accepted channel runs a TLS handshake (listen() with
   * `tls`): its first read or write waits for it and fails with its error.
   */
  readonly tls?: boolean
}

class ServerListener implements Listener {
  readonly acceptsMany = true
  readonly tls: boolean
  private closed = false
  constructor(private readonly nat: NativeListener, readonly address: string, private readonly kind: 'tcp' | 'unix', private readonly tlsOpts?: TlsOptions) {
    this.tls = tlsOpts !== undefined
  }

  async accept(): Promise<Channel> {
    if (this.closed) throw new StreamError('EBADF', `${this.address}: listener closed`)
    let c: NativeChannel
    try {
      c = await this.nat.accept()
    } catch (e) {
      if (this.closed) throw new StreamError('ECANCELED', `${this.address}: listener closed`)
      throw toStreamError(e, this.address)
    }
    const desc = `${this.address} <- ${c.peer ?? 'peer'}`
    if (!this.tlsOpts) return new FdChannel(this.kind, desc, c)
    // The handshake runs while the caller already holds the channel, so a
    // peer that stalls it holds no accept: the caller's probe bounds it too
    // (incoming.ts), and drops the peer when it fails.
    const hs = c.startTls(this.tlsOpts.creds, null, this.tlsOpts.handshakeTimeoutMs ?? DEFAULT_TLS_HANDSHAKE_MS)
    return new FdChannel(this.kind, desc, c, { tls: hs })
  }

  async close(): Promise<void> {
    this.closed = true
    await this.nat.close()
  }
}

class OnceListener implements Listener {
  readonly acceptsMany = false
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

/**
 * A socket file left by a process that died (kill -9 leaves it behind) makes
 * bind() fail with EADDRINUSE. Remove it when nobody listens on it (connect
 * is refused); refuse clearly when someone does, or when the path is not a
 * socket at all.
 */
async function clearStaleSocket(path: string, desc: string): Promise<void> {
  let st: fs.Stats
  try {
    st = await fs.promises.lstat(path)
  } catch {
    return // nothing there (or a missing directory, which listen() reports)
  }
  if (!st.isSocket()) throw new StreamError('EADDRINUSE', `listen ${desc}: ${path} exists and is not a socket`)
  const probe = await new Promise<'listening' | 'stale' | string>((resolve) => {
    const s = net.connect({ path })
    const t = setTimeout(() => { s.destroy(); resolve('listening') }, 1000)
    s.once('connect', () => { clearTimeout(t); s.destroy(); resolve('listening') })
    s.once('error', (e: NodeJS.ErrnoException) => { clearTimeout(t); resolve(e.code === 'ECONNREFUSED' || e.code === 'ENOENT' ? 'stale' : e.code ?? 'EIO') })
  })
  if (probe === 'listening') throw new StreamError('EADDRINUSE', `listen ${desc}: another process is listening on ${path}`)
  if (probe !== 'stale') throw new StreamError('EADDRINUSE', `listen ${desc}: ${path} is a socket that cannot be probed (${probe})`)
  await fs.promises.unlink(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw toStreamError(e, `listen ${desc}: removing the stale socket ${path}`)
  })
}

export interface ListenOptions {
  /** TLS on each accepted channel (tcp: and unix: only); `hostname` does not apply. */
  tls?: TlsOptions
}

/** Open the incoming side of a migration. */
export async function listen(uri: string | MigrationAddress, opts: ListenOptions = {}): Promise<Listener> {
  const a = typeof uri === 'string' ? parseUri(uri) : uri
  const desc = formatUri(a)
  const tls = opts.tls
  if (tls && a.kind !== 'tcp' && a.kind !== 'unix') throw noTls(desc, a.kind)
  if (tls && tls.creds.endpoint !== 'server') {
    throw new StreamError('EINVAL', `listen ${desc}: the TLS credentials were loaded for the ${tls.creds.endpoint} side; the destination needs 'server' ones`)
  }
  switch (a.kind) {
    case 'tcp': {
      const [ip] = await addressesOf(a.host, `listen ${desc}`)
      let l: NativeListener
      try {
        l = native.NativeListener.tcp(ip, a.port)
      } catch (e) {
        throw toStreamError(e, `listen ${desc}`)
      }
      return new ServerListener(l, formatUri({ kind: 'tcp', host: a.host, port: l.port! }), 'tcp', tls)
    }
    case 'unix': {
      await clearStaleSocket(a.path, desc)
      let l: NativeListener
      try {
        l = await native.NativeListener.unix(a.path)
      } catch (e) {
        throw await pathError(e, a.path, `listen ${desc}`)
      }
      return new ServerListener(l, desc, 'unix', tls)
    }
    case 'file':
      return new OnceListener(desc, async () => {
        try {
          return new FileChannel('file', desc, await openAsync(a.path, 'r'), true)
        } catch (e) {
          throw await pathError(e, a.path, `open ${desc}`)
        }
      })
    case 'exec':
      return new OnceListener(desc, async () => execChannel(a.command, desc))
    case 'fd':
      return new OnceListener(desc, () => fdChannel(a.fd, desc))
  }
}
