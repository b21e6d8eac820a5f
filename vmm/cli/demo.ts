// `vmm-migrate demo` (npm start): a destination in a child process, a running
// microVM here, a live migration over loopback TCP, then proof that the guest
// arrived intact: digests and counters at the switchover compared across the
// two processes, and the guest still running correctly on the destination.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { kvmAvailable } from '../machine/index.js'
import type { MigrationStats } from '../migration/types.js'
import type { Verification } from '../microvm/index.js'
import type { Options, Parsed } from './args.js'
import { runSource, verificationRows, type IncomingReport, type Out } from './commands.js'
import { downtimeReport, statsRows, table, type DowntimeReport } from './format.js'
import { toJson } from './analyze.js'
import { makeTlsCreds } from './certs.js'

export interface Check {
  name: string
  ok: boolean
  source?: string
  destination?: string
}

export interface DemoResult {
  ok: boolean
  vcpu: string
  /** Whether the migration ran over TLS. */
  tls: boolean
  stats: MigrationStats
  /** The downtime against the limit, split into the migration and the destination's verification. */
  downtime: DowntimeReport
  source: Verification
  destination: IncomingReport
  checks: Check[]
}

const CHILD_TIMEOUT_MS = 120_000

/** Options for the child: everything given except what only the source uses. */
function childArgs(p: Parsed, vcpu: string, address: string, tlsDir: string | undefined): string[] {
  const skip = new Set(['--json', '--vcpu', '--run', '--events', '--no-verify', '--after-failure', '--no-ram-proof', '--tls', '--tls-creds-x509', '--tls-hostname'])
  const rest = p.given.filter(([name]) => !skip.has(name!)).flat()
  const tls = tlsDir ? ['--tls-creds-x509', tlsDir] : []
  return ['incoming', address, '--events', '--vcpu', vcpu, ...tls, ...rest]
}

class Child {
  private events: Record<string, unknown>[] = []
  private waiters: (() => void)[] = []
  private stderr = ''
  private exited: { code: number | null; signal: string | null } | undefined
  readonly proc: ChildProcess

  constructor(args: string[]) {
    const self = fileURLToPath(import.meta.url)
    const main = self.replace(/demo\.(js|ts)$/, 'main.$1')
    this.proc = spawn(process.execPath, [...process.execArgv, main, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    createInterface({ input: this.proc.stdout! }).on('line', (l) => {
      try {
        this.events.push(JSON.parse(l) as Record<string, unknown>)
      } catch {
        this.stderr += `${l}\n`
      }
      this.wake()
    })
    this.proc.stderr!.on('data', (d: Buffer) => {
      if (this.stderr.length < 64 << 10) this.stderr += d.toString()
    })
    this.proc.on('exit', (code, signal) => {
      this.exited = { code, signal }
      this.wake()
    })
    this.proc.on('error', (e) => {
      this.stderr += `spawn failed: ${e.message}\n`
      this.exited = { code: -1, signal: null }
      this.wake()
    })
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w()
  }

  private failure(what: string): Error {
    const last = this.stderr.trim().split('\n').filter(Boolean).pop() ?? ''
    return new Error(`destination ${what}${last ? `: ${last}` : ''}`)
  }

  async next(name: string, timeoutMs = CHILD_TIMEOUT_MS): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const e = this.events.find((x) => x.event === name || x.event === 'error')
      if (e) {
        if (e.event === 'error') throw this.failure(`failed: ${String(e.message)}`)
        return e
      }
      if (this.exited) throw this.failure(`exited (code ${this.exited.code}${this.exited.signal ? `, ${this.exited.signal}` : ''}) before '${name}'`)
      if (Date.now() > deadline) throw this.failure(`sent no '${name}' within ${timeoutMs} ms`)
      await new Promise<void>((r) => {
        const t = setTimeout(r, 200)
        this.waiters.push(() => {
          clearTimeout(t)
          r()
        })
      })
    }
  }

  async exit(): Promise<number | null> {
    while (!this.exited) await new Promise<void>((r) => this.waiters.push(r))
    return this.exited.code
  }

  kill(): void {
    if (!this.exited) this.proc.kill('SIGKILL')
  }
}

export function compare(src: Verification, dst: IncomingReport, runAfterMs: number): Check[] {
  const l = dst.loaded
  if (!l) return [{ name: 'destination verification', ok: false, destination: 'missing' }]
  return [
    { name: 'RAM digest at switchover', ok: src.ramDigest === l.ramDigest, source: src.ramDigest, destination: l.ramDigest },
    { name: 'device digest at switchover', ok: src.deviceDigest === l.deviceDigest, source: src.deviceDigest, destination: l.deviceDigest },
    { name: 'vCPU counter at switchover', ok: src.counter === l.counter, source: src.counter, destination: l.counter },
    { name: 'timer state at switchover', ok: JSON.stringify(src.timer) === JSON.stringify(l.timer), source: JSON.stringify(src.timer), destination: JSON.stringify(l.timer) },
    { name: 'guest checksum consistent', ok: src.checksumConsistent && l.checksumConsistent && dst.checksumConsistentAfter,
      source: String(src.checksumConsistent), destination: `${l.checksumConsistent} at load, ${dst.checksumConsistentAfter} after running` },
    { name: 'vCPU keeps running on the destination', ok: runAfterMs === 0 || BigInt(dst.counterAfter) > BigInt(l.counter),
      source: src.counter, destination: `${l.counter} -> ${dst.counterAfter} after ${runAfterMs} ms` },
  ]
}

export async function cmdDemo(p: Parsed, out: Out, signal?: AbortSignal): Promise<number> {
  const o: Options = { ...p.options }
  if (o.vcpu === 'auto') o.vcpu = (await kvmAvailable()).available ? 'kvm' : 'soft'
  // A local migration passes descriptors, which only a UNIX socket carries.
  const dir = o.local ? await mkdtemp(join(tmpdir(), 'vmm-local-')) : undefined
  // Throwaway credentials for both ends, in a private directory removed at the end.
  const scratch = o.tls ? await mkdtemp(join(tmpdir(), 'vmm-migrate-tls-')) : undefined
  if (scratch) {
    try {
      await makeTlsCreds(scratch)
    } catch (e) {
      await rm(scratch, { recursive: true, force: true })
      if (dir) await rm(dir, { recursive: true, force: true })
      throw e
    }
    o.tlsCreds = scratch
  }
  const child = new Child(childArgs(p, o.vcpu, dir ? `unix:${join(dir, 'migrate.sock')}` : 'tcp:127.0.0.1:0', o.tlsCreds))
  const onAbort = () => child.kill()
  signal?.addEventListener('abort', onAbort, { once: true })
  try {
    const listening = await child.next('listening')
    const address = String(listening.address)
    if (!o.json) out.line(`destination (pid ${child.proc.pid}) listening on ${address}; ${o.local ? 'handing over (local: RAM passed as file descriptors)' : 'migrating'} a ${o.ram >> 20} MiB ${o.vcpu} microVM${o.tlsCreds ? ` over TLS 1.3 (credentials in ${o.tlsCreds})` : ''}`)
    const { stats, verification, vm } = await runSource(address, o, out, signal)
    await vm.destroy()
    const done = await child.next('completed')
    const destination = done.report as IncomingReport
    if (!destination?.loaded) throw new Error('destination reported no verification')
    const code = await child.exit()
    const checks = compare(verification, destination, o.runAfterMs)
    if (code !== 0) checks.push({ name: 'destination exit status', ok: false, destination: String(code) })
    const ok = checks.every((c) => c.ok)
    const result: DemoResult = { ok, vcpu: o.vcpu, tls: o.tlsCreds !== undefined, stats, downtime: downtimeReport(stats, o.downtimeLimitMs), source: verification, destination, checks }
    if (o.json) {
      out.line(toJson(result))
    } else {
      out.line(`\nmigration ${stats.status}\n${table(statsRows(stats, o.downtimeLimitMs))}`)
      out.line(`\nsource at switchover (VM stopped)\n${table(verificationRows(verification))}`)
      out.line(`\ndestination after load, before its vCPU started (its verification held the start back ${destination.verificationMs.toFixed(0)} ms, ${destination.loaded!.hashMs.toFixed(0)} ms of it hashing)\n${table(verificationRows(destination.loaded!))}`)
      out.line('\nchecks')
      for (const c of checks) out.line(`  ${c.ok ? 'ok  ' : 'FAIL'}  ${c.name}${c.ok ? '' : `: source ${c.source ?? '-'}, destination ${c.destination ?? '-'}`}`)
      out.line(ok ? '\nthe guest arrived intact and keeps running on the destination' : '\nthe destination does NOT match the source')
    }
    return ok ? 0 : 1
  } finally {
    signal?.removeEventListener('abort', onAbort)
    child.kill()
    if (dir) await rm(dir, { recursive: true, force: true })
    if (scratch) await rm(scratch, { recursive: true, force: true })
  }
}
