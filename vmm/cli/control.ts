// The control socket of a side in 'handover-unknown': `vmm-migrate resolve`
// connects to it and asks that side to run the guest (--resume) or give its
// copy up (--discard). A unix socket, not a signal: the operator gets an
// answer (it runs now, or why not), and only the owner of the private
// directory it lives in can reach it.
import * as net from 'node:net'
import { mkdtemp, rm, unlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import type { ResolveAction } from '../migration/types.js'
import type { RunState } from '../runstate/index.js'

/** One request line: {"op":"status"} or {"op":"resolve","action":"resume"|"discard"}. */
export interface ControlRequest {
  op: 'status' | 'resolve'
  action?: ResolveAction
}

export interface ControlReply {
  ok: boolean
  role?: 'source' | 'destination'
  /** The migration's status after the request. */
  status?: string
  runState?: RunState
  error?: string
}

export interface ControlTarget {
  role: 'source' | 'destination'
  status(): string
  runState(): RunState
  resolve(action: ResolveAction): Promise<void>
}

export interface ControlServer {
  readonly path: string
  close(): Promise<void>
}

const MAX_REQUEST = 4096

/** Serve `target` on `path` (default: a fresh 0700 directory under the temp dir). */
export async function serveControl(target: ControlTarget, path?: string): Promise<ControlServer> {
  const ownDir = path === undefined ? await mkdtemp(join(tmpdir(), 'vmm-migrate-')) : undefined
  const where = path ?? join(ownDir!, 'control')
  const server = net.createServer((s) => {
    let buf = ''
    s.setEncoding('utf8')
    const reply = (r: ControlReply) => s.end(`${JSON.stringify({ role: target.role, status: target.status(), runState: target.runState(), ...r })}\n`)
    // A client that says nothing is not served forever.
    s.setTimeout(10_000, () => s.destroy())
    s.on('error', () => undefined)
    s.on('data', (d: string) => {
      buf += d
      if (buf.length > MAX_REQUEST) return reply({ ok: false, error: 'request too long' })
      const nl = buf.indexOf('\n')
      if (nl < 0) return
      let req: ControlRequest
      try {
        req = JSON.parse(buf.slice(0, nl)) as ControlRequest
      } catch {
        return reply({ ok: false, error: 'request is not JSON' })
      }
      if (req.op === 'status') return reply({ ok: true })
      if (req.op !== 'resolve') return reply({ ok: false, error: `unknown op ${JSON.stringify(req.op)}` })
      target.resolve(req.action as ResolveAction).then(
        () => reply({ ok: true }),
        (e: Error) => reply({ ok: false, error: e.message }),
      )
    })
  })
  await new Promise<void>((res, rej) => {
    server.once('error', rej)
    server.listen(where, () => res())
  })
  return {
    path: where,
    close: async () => {
      await new Promise<void>((r) => server.close(() => r()))
      await unlink(where).catch(() => undefined)
      if (ownDir) await rm(dirname(where), { recursive: true, force: true }).catch(() => undefined)
    },
  }
}

/** Send one request to the control socket at `path`; bounded by `timeoutMs`. */
export function controlRequest(path: string, req: ControlRequest, timeoutMs = 60_000): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path })
    let buf = ''
    const timer = setTimeout(() => {
      s.destroy()
      reject(new Error(`no answer from ${path} within ${timeoutMs} ms`))
    }, timeoutMs)
    s.setEncoding('utf8')
    s.on('connect', () => s.write(`${JSON.stringify(req)}\n`))
    s.on('data', (d: string) => { buf += d })
    s.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      const why = e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
        ? `no side in handover-unknown serves ${path} (${e.code})`
        : e.message
      reject(Object.assign(new Error(why), { code: e.code }))
    })
    s.on('end', () => {
      clearTimeout(timer)
      try {
        resolve(JSON.parse(buf) as ControlReply)
      } catch {
        reject(new Error(`${path} answered something that is not JSON: ${buf.slice(0, 200)}`))
      }
    })
  })
}
