// A QMP server on a unix socket (QEMU's -qmp unix:PATH,server): the
// greeting, capabilities negotiation, one command at a time per session in
// the order sent, replies with the request's id, events to every session
// that negotiated. Commands are in control.ts; the wire format in codec.ts.
//
// Every client is bounded: its message size (the decoder), its queue of
// commands not yet answered (reading pauses past QEMU's 8), and what it
// leaves unread (a client that stops reading events is dropped past 1 MiB).
// A client that goes away mid-command only loses the reply; the command
// (a migration, say) goes on.
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import type { MigratableVm } from '../migration/types.js'
import {
  QmpDecoder, QmpError, checkRequest, errorMessage, eventMessage, returnMessage, serialize, type QmpRequest,
} from './codec.js'
import { MigrationControl, type MigrationControlOptions } from './control.js'

export interface QmpServerOptions extends Omit<MigrationControlOptions, 'machine'> {
  /** Longest message a client may send, bytes (default 1 MiB). */
  maxMessageBytes?: number
  /** Clients served at once; more are refused with an error and closed (default 16). */
  maxClients?: number
  /** Unread output a client may leave before it is dropped, bytes (default 1 MiB). */
  maxPendingOutput?: number
  /** The version the greeting and query-version report (QEMU's, as the VMM pretends; default 9.1.0). */
  version?: { major: number; minor: number; micro: number; package?: string }
  /** quit was asked for, after its reply went out: the VMM ends (default: nothing). */
  onQuit?(): void
  /**
   * A command failed with an error that is not a refusal of this server's
   * (not a QmpError): the client got it as a GenericError; this sees the
   * error itself, to log it (default: nothing).
   */
  onCommandError?(command: string, error: unknown): void
}

/** Commands a session may have queued before its reading pauses (QEMU's QMP_REQ_QUEUE_LEN_MAX). */
const QUEUE_MAX = 8

type Handler = (args: Record<string, unknown>, session: Session) => unknown | Promise<unknown>

class Session {
  negotiated = false
  /** In the order received: a request to run, or the error a malformed one gets (QEMU queues both). */
  private queue: ({ request: QmpRequest } | { reply: Record<string, unknown> })[] = []
  private running = false
  private closed = false
  private readonly decoder: QmpDecoder

  constructor(readonly socket: net.Socket, private readonly server: QmpServer, maxMessageBytes: number, private readonly maxPending: number) {
    this.decoder = new QmpDecoder({ maxMessageBytes })
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
    socket.on('error', () => undefined)
    socket.on('close', () => {
      this.closed = true
      this.queue = []
      server.forget(this)
    })
  }

  send(message: unknown): void {
    if (this.closed || this.socket.destroyed) return
    this.socket.write(serialize(message))
    if (this.socket.writableLength > this.maxPending) {
      // It does not read what it is sent: dropping it bounds our memory; a manager reconnects.
      this.socket.destroy()
    }
  }

  private onData(chunk: Buffer): void {
    for (const d of this.decoder.feed(chunk)) {
      // An error answers its place in the stream: sent at once, it would
      // overtake the replies of commands still queued or running before it.
      if (d.kind === 'error') {
        this.queue.push({ reply: errorMessage('GenericError', d.desc) })
        continue
      }
      const r = checkRequest(d.value)
      this.queue.push(r.ok ? { request: r.request } : { reply: errorMessage('GenericError', r.desc, r) })
    }
    if (this.queue.length >= QUEUE_MAX) this.socket.pause()
    void this.drain()
  }

  private async drain(): Promise<void> {
    if (this.running) return
    this.running = true
    try {
      while (this.queue.length && !this.closed) {
        const next = this.queue.shift()!
        this.send('reply' in next ? next.reply : await this.server.dispatch(next.request, this))
        if (this.queue.length < QUEUE_MAX && this.socket.isPaused()) this.socket.resume()
      }
    } finally {
      this.running = false
    }
  }

  close(): void {
    this.closed = true
    this.socket.destroy()
  }
}

/**
 * QMP for a VM that embeds this library: the commands a manager migrates a
 * QEMU with (migrate, migrate-incoming, migrate-set-capabilities, ...),
 * by QEMU's names and with QEMU's replies and events, on a unix socket.
 *
 * @example
 * import { QmpServer } from 'vmm-migration'
 * const qmp = await QmpServer.listen('/run/vm1.qmp', { machine: vm, incoming: 'defer', onQuit: () => process.exit(0) })
 * // a manager: {"execute":"qmp_capabilities"} {"execute":"migrate-incoming","arguments":{"uri":"tcp:0:4444"}}
 * // ... later: await qmp.close()
 */
export class QmpServer {
  readonly control: MigrationControl
  private readonly sessions = new Set<Session>()
  private readonly handlers: Record<string, Handler>
  private readonly version: { qemu: { major: number; minor: number; micro: number }; package: string }
  private closing = false

  private constructor(private readonly srv: net.Server, readonly path: string, machine: MigratableVm, private readonly opts: QmpServerOptions) {
    this.control = new MigrationControl({ ...opts, machine }, (event, data) => this.broadcast(event, data))
    const v = opts.version ?? { major: 9, minor: 1, micro: 0 }
    this.version = { qemu: { major: v.major, minor: v.minor, micro: v.micro }, package: v.package ?? 'vmm-migration' }
    const c = this.control
    this.handlers = {
      'query-status': () => c.status(),
      'query-version': () => this.version,
      'query-commands': () => Object.keys(this.handlers).concat('qmp_capabilities').map((name) => ({ name })),
      stop: (a) => c.stop(a),
      cont: (a) => c.cont(a),
      quit: () => {
        // After this reply, as QEMU's main loop does it.
        setImmediate(() => {
          this.broadcast('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' })
          this.opts.onQuit?.()
        })
        return {}
      },
      migrate: (a) => c.migrate(a),
      'migrate-incoming': (a) => c.migrateIncoming(a),
      migrate_cancel: (a) => c.migrateCancel(a),
      'migrate-continue': (a) => c.migrateContinue(a),
      'migrate-set-capabilities': (a) => c.setCapabilities(a),
      'query-migrate-capabilities': (a) => c.queryCapabilities(a),
      'migrate-set-parameters': (a) => c.setParameters(a),
      'query-migrate-parameters': (a) => c.queryParameters(a),
      'query-migrate': (a) => c.queryMigrate(a),
      'x-migrate-resolve': (a) => c.resolve(a),
      'object-add': (a) => c.objects.add(a),
      'object-del': (a) => c.objects.del(a),
    }
  }

  /**
   * Serve QMP for `opts.machine` on the unix socket `socketPath`. A socket
   * file left by a dead process is replaced; one a live process serves is
   * refused (EADDRINUSE).
   */
  static async listen(socketPath: string, opts: QmpServerOptions & { machine: MigratableVm }): Promise<QmpServer> {
    const { machine, ...rest } = opts
    const maxClients = rest.maxClients ?? 16
    const srv = net.createServer()
    srv.maxConnections = maxClients
    await bindUnix(srv, socketPath)
    const server = new QmpServer(srv, socketPath, machine, rest)
    srv.on('connection', (s) => server.accept(s))
    try {
      // With -incoming URI, QEMU is listening before its monitor answers anything.
      await server.control.start()
    } catch (e) {
      await server.close()
      throw e
    }
    return server
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy()
      return
    }
    const s = new Session(socket, this, this.opts.maxMessageBytes ?? 1 << 20, this.opts.maxPendingOutput ?? 1 << 20)
    this.sessions.add(s)
    s.send({ QMP: { version: this.version, capabilities: [] } })
  }

  /** @internal */
  forget(s: Session): void {
    this.sessions.delete(s)
  }

  /** Send an event to every session past negotiation (QEMU's monitor_qapi_event_emit). */
  broadcast(event: string, data?: Record<string, unknown>): void {
    const m = eventMessage(event, data)
    for (const s of this.sessions) if (s.negotiated) s.send(m)
  }

  /** @internal One request of `session`, answered as a reply object. */
  async dispatch(req: QmpRequest, session: Session): Promise<Record<string, unknown>> {
    if (req.execute === 'qmp_capabilities') {
      if (session.negotiated) return errorMessage('CommandNotFound', 'Capabilities negotiation is already complete, command ignored', req)
      const en = req.arguments.enable
      for (const k of Object.keys(req.arguments)) {
        if (k !== 'enable') return errorMessage('GenericError', `Parameter '${k}' is unexpected`, req)
      }
      if (en !== undefined) {
        if (!Array.isArray(en)) return errorMessage('GenericError', "Invalid parameter type for 'enable', expected: array", req)
        for (const [i, c] of en.entries()) {
          if (c !== 'oob') return errorMessage('GenericError', `Parameter 'enable[${i}]' does not accept value '${String(c)}'`, req)
          return errorMessage('GenericError', 'This monitor does not support Out-Of-Band (OOB)', req)
        }
      }
      session.negotiated = true
      return returnMessage({}, req)
    }
    if (!session.negotiated) return errorMessage('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'", req)
    const h = Object.hasOwn(this.handlers, req.execute) ? this.handlers[req.execute] : undefined
    if (!h) return errorMessage('CommandNotFound', `The command ${req.execute} has not been found`, req)
    try {
      return returnMessage(await h(req.arguments, session), req)
    } catch (e) {
      if (e instanceof QmpError) return errorMessage(e.errorClass, e.desc, req)
      // Not a refusal of ours: still an answer, never a crash of the monitor.
      this.opts.onCommandError?.(req.execute, e)
      return errorMessage('GenericError', (e as Error)?.message ?? String(e), req)
    }
  }

  /** Clients connected now. */
  get clients(): number {
    return this.sessions.size
  }

  /** Stop serving: clients are disconnected, the socket file removed. A migration in progress goes on. */
  async close(): Promise<void> {
    if (this.closing) return
    this.closing = true
    this.control.close()
    for (const s of this.sessions) s.close()
    await new Promise<void>((r) => this.srv.close(() => r()))
    await fs.promises.unlink(this.path).catch(() => undefined)
  }
}

/** Bind, replacing a socket file nobody listens on (left by a killed VMM). */
async function bindUnix(srv: net.Server, socketPath: string): Promise<void> {
  const dir = path.dirname(socketPath)
  if (!fs.existsSync(dir)) throw Object.assign(new Error(`QMP socket ${socketPath}: directory ${dir} does not exist`), { code: 'ENOENT' })
  const tryListen = () => new Promise<void>((resolve, reject) => {
    const onError = (e: Error) => {
      srv.off('listening', onListening)
      reject(e)
    }
    const onListening = () => {
      srv.off('error', onError)
      resolve()
    }
    srv.once('error', onError)
    srv.once('listening', onListening)
    srv.listen(socketPath)
  })
  try {
    await tryListen()
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e
    if (await someoneListens(socketPath)) throw Object.assign(new Error(`QMP socket ${socketPath} is in use by a live process`), { code: 'EADDRINUSE' })
    await fs.promises.unlink(socketPath)
    await tryListen()
  }
}

function someoneListens(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socketPath)
    const t = setTimeout(() => done(true), 1000)
    const done = (v: boolean) => {
      clearTimeout(t)
      c.destroy()
      resolve(v)
    }
    c.once('connect', () => done(true))
    c.once('error', () => done(false))
  })
}
