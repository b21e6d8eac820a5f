// QEMU as the baseline: a source whose RAM is a memory-backend-file with
// random content, paused under TCG with no kernel, migrated over loopback TCP
// to a destination started with -incoming; both driven over QMP.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { QmpClient } from './qmp.js'
import { peakRss, stopProcess, track } from './proc.js'

const QEMU = process.env.QEMU || 'qemu-system-x86_64'

/** QEMU's version string, or why it cannot be used. Installs Debian's package when missing and we are root. */
export async function ensureQemu(log: (s: string) => void, install: boolean): Promise<{ version?: string; reason?: string }> {
  const v = await version()
  if (v) return { version: v }
  if (!install) return { reason: `${QEMU} not found (run with --install-qemu, or apt-get install qemu-system-x86)` }
  if (process.getuid?.() !== 0) return { reason: `${QEMU} not found and not root to install qemu-system-x86` }
  log('  installing qemu-system-x86 from Debian (apt-get) ...')
  const ok = await new Promise<boolean>(res => {
    execFile('/bin/sh', ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86'],
      { timeout: 600000 }, e => res(!e))
  })
  const v2 = ok ? await version() : undefined
  return v2 ? { version: v2 } : { reason: 'apt-get install qemu-system-x86 failed' }
}

function version(): Promise<string | undefined> {
  return new Promise(res => {
    execFile(QEMU, ['--version'], { timeout: 10000 }, (e, out) => res(e ? undefined : /version ([^\s]+)/.exec(out)?.[1] ?? out.split('\n')[0]))
  })
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = net.createServer()
    s.once('error', rej)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => res(port))
    })
  })
}

export interface QemuMigration {
  totalTimeMs: number
  setupTimeMs: number
  downtimeMs: number
  /** Bytes on the wire, from query-migrate's ram.transferred. */
  transferred: number
  ramTotal: number
  rssSource: number
  rssDest: number
}

export interface Qemu {
  child: ChildProcess
  qmp: QmpClient
  stderr: () => string
}

/** Start QEMU with `args` and connect to its QMP socket `qmpPath` (negotiated). */
export async function launch(args: string[], qmpPath: string): Promise<Qemu> {
  const child = track(spawn(QEMU, args, { stdio: ['ignore', 'ignore', 'pipe'] }))
  let err = ''
  child.stderr!.on('data', d => { if (err.length < 65536) err += d })
  const exited = new Promise<never>((_, rej) => child.once('exit', c => rej(new Error(`qemu exited ${c}: ${err.trim().slice(0, 400)}`))))
  exited.catch(() => undefined)
  try {
    const qmp = await Promise.race([QmpClient.connect(qmpPath, 20000), exited])
    return { child, qmp, stderr: () => err }
  } catch (e) {
    await stopProcess(child)
    throw e
  }
}

export function machineArgs(size: number, backend: string, qmpPath: string): string[] {
  return [
    '-nodefaults', '-display', 'none', '-serial', 'none', '-monitor', 'none',
    '-machine', 'pc,accel=tcg,memory-backend=ram0', '-m', `${size / 2 ** 20}M`,
    '-object', backend, '-S', '-qmp', `unix:${qmpPath},server=on,wait=off`,
  ]
}

const num = (v: unknown, what: string): number => {
  if (typeof v !== 'number') throw new Error(`query-migrate: ${what} missing`)
  return v
}

export interface QemuMigrateOptions {
  /**
   * Migrate over TLS with x509 credentials from this directory (QEMU's
   * layout, both ends' files in it): tls-creds-x509 with verify-peer on at
   * both ends, the source checking the name 127.0.0.1.
   */
  tlsDir?: string
}

/** One QEMU migration of `size` bytes of RAM read from `ramFile`. */
export async function qemuMigrate(size: number, ramFile: string, timeoutMs: number, opts: QemuMigrateOptions = {}): Promise<QemuMigration> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-bench-qemu-'))
  const port = await freePort()
  let src: Qemu | undefined
  let dst: Qemu | undefined
  const creds = (endpoint: string) => opts.tlsDir ? ['-object', `tls-creds-x509,id=tls0,dir=${opts.tlsDir},endpoint=${endpoint},verify-peer=on`] : []
  try {
    // With TLS the destination's tls-creds must be set before it listens: -incoming defer, then migrate-incoming.
    dst = await launch([...machineArgs(size, `memory-backend-ram,id=ram0,size=${size}`, path.join(dir, 'dst.qmp')), ...creds('server'),
      '-incoming', opts.tlsDir ? 'defer' : `tcp:127.0.0.1:${port}`], path.join(dir, 'dst.qmp'))
    if (opts.tlsDir) {
      await dst.qmp.execute('migrate-set-parameters', { 'tls-creds': 'tls0' })
      await dst.qmp.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${port}` })
    }
    src = await launch([...machineArgs(size, `memory-backend-file,id=ram0,size=${size},mem-path=${ramFile},share=on`, path.join(dir, 'src.qmp')), ...creds('client')],
      path.join(dir, 'src.qmp'))
    // QEMU's default max-bandwidth throttles (128 MiB/s); a limit far above any link is "unlimited" on every version.
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 2 ** 40, ...(opts.tlsDir ? { 'tls-creds': 'tls0', 'tls-hostname': '127.0.0.1' } : {}) })
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` })
    const deadline = Date.now() + timeoutMs
    let info: Record<string, unknown>
    for (;;) {
      info = (await src.qmp.execute('query-migrate')) as Record<string, unknown>
      if (info.status === 'completed') break
      if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`qemu migration ${String(info.status)}: ${String(info['error-desc'] ?? '')}`)
      if (Date.now() > deadline) throw new Error(`qemu migration not completed within ${timeoutMs} ms (status ${String(info.status)})`)
      await new Promise(r => setTimeout(r, 20))
    }
    // The destination must have taken it all, not just the source sent it.
    for (;;) {
      const d = (await dst.qmp.execute('query-migrate')) as Record<string, unknown>
      if (d.status === 'completed') break
      if (d.status === 'failed') throw new Error('qemu destination: incoming migration failed')
      if (Date.now() > deadline) throw new Error('qemu destination did not complete')
      await new Promise(r => setTimeout(r, 20))
    }
    const ram = info.ram as Record<string, unknown>
    return {
      totalTimeMs: num(info['total-time'], 'total-time'),
      setupTimeMs: typeof info['setup-time'] === 'number' ? info['setup-time'] : 0,
      downtimeMs: typeof info.downtime === 'number' ? info.downtime : 0,
      transferred: num(ram?.transferred, 'ram.transferred'),
      ramTotal: num(ram?.total, 'ram.total'),
      rssSource: peakRss(src.child.pid!) ?? 0,
      rssDest: peakRss(dst.child.pid!) ?? 0,
    }
  } finally {
    for (const q of [src, dst]) {
      if (!q) continue
      await q.qmp.execute('quit', undefined, 3000).catch(() => undefined)
      q.qmp.close()
      await stopProcess(q.child)
    }
    fs.rmSync(dir, { recursive: true, force: true })
  }
}
