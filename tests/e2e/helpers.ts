// Real processes for the end-to-end tests: the built `vmm-migrate` program
// (dist/, plain node, no TypeScript loader), its JSON event lines, bounded
// waits, and teardown that never leaves a child behind.
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
// The shapes the CLI prints as JSON: the types it is written with.
import type { Verification } from '../../vmm/microvm/index.js'
import type { IncomingReport } from '../../vmm/cli/commands.js'

export type { Verification, IncomingReport }

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
export const MAIN = join(root, 'dist/vmm/cli/main.js')

/** Why the e2e tests cannot run here, or undefined. */
export function missingBuild(): string | undefined {
  return existsSync(MAIN) ? undefined : `${MAIN} is missing: run npm run build first`
}

/**
 * The environment of a child: without tap's NODE_OPTIONS hooks, which load
 * into every node process and would be measured as the program's own memory.
 * Not enough alone for a node child: see nodeCommand.
 */
export function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  for (const k of Object.keys(env)) if (k.startsWith('_TAPJS_')) delete env[k]
  return env
}

/**
 * The argv that runs node on `args` free of tap's hooks. Under tap,
 * @tapjs/processinfo wraps child_process and puts its --import loader back
 * into the NODE_OPTIONS of every child, whatever env the caller passed; the
 * loader (and a copy of it in each worker thread) then costs the program
 * 30-50 MiB of heap it does not have on its own, which the RSS bound below
 * would charge to the migration. env(1) drops it after the wrapper, before
 * node starts, and execs node in place (same pid).
 */
export function nodeCommand(args: string[]): string[] {
  return ['env', '-u', 'NODE_OPTIONS', process.execPath, ...args]
}

export type Ev = Record<string, unknown> & { event?: string }

export class Proc {
  readonly proc: ChildProcess
  readonly events: Ev[] = []
  /** performance.now() when each of `events` arrived (same index). */
  readonly eventTimes: number[] = []
  stdout = ''
  stderr = ''
  exited: { code: number | null; signal: NodeJS.Signals | null } | undefined
  exitedAt = 0
  private waiters: (() => void)[] = []

  /** `wrap`: a command that runs the program (`ip netns exec NS`: the fault lab's namespaces). */
  constructor(readonly args: string[], readonly name = args[0] ?? 'proc', wrap: string[] = []) {
    const argv = [...wrap, ...nodeCommand([MAIN, ...args])]
    this.proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv() })
    live.add(this)
    createInterface({ input: this.proc.stdout! }).on('line', (l) => {
      this.stdout += `${l}\n`
      if (l.startsWith('{"')) {
        try {
          this.events.push(JSON.parse(l) as Ev)
          this.eventTimes.push(performance.now())
        } catch {
          // a pretty-printed document, read whole from stdout at exit
        }
      }
      this.wake()
    })
    this.proc.stderr!.on('data', (d: Buffer) => {
      if (this.stderr.length < 256 << 10) this.stderr += d.toString()
    })
    this.proc.on('exit', (code, signal) => {
      this.exited = { code, signal }
      this.exitedAt = performance.now()
      live.delete(this)
      this.wake()
    })
  }

  get pid(): number {
    return this.proc.pid!
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w()
  }

  private async until<T>(what: string, timeoutMs: number, probe: () => T | undefined): Promise<T> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const v = probe()
      if (v !== undefined) return v
      if (Date.now() > deadline) throw new Error(`${this.name}: no ${what} within ${timeoutMs} ms\nstdout: ${this.stdout.slice(-2000)}\nstderr: ${this.stderr.slice(-2000)}`)
      await new Promise<void>((r) => {
        const t = setTimeout(r, 100)
        this.waiters.push(() => {
          clearTimeout(t)
          r()
        })
      })
    }
  }

  /** The first event named `name` (an exit before it is an error). */
  next(name: string, timeoutMs = 60_000, where: (e: Ev) => boolean = () => true): Promise<Ev> {
    return this.until(`'${name}' event`, timeoutMs, () => {
      const e = this.events.find((x) => x.event === name && where(x))
      if (e) return e
      if (this.exited) throw new Error(`${this.name} exited (${JSON.stringify(this.exited)}) before '${name}'\nstdout: ${this.stdout.slice(-2000)}\nstderr: ${this.stderr.slice(-2000)}`)
      return undefined
    })
  }

  exit(timeoutMs = 60_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.until('exit', timeoutMs, () => this.exited).catch((e) => {
      this.kill()
      throw e
    })
  }

  /** stdout parsed as one JSON document (--json output). */
  json<T = Record<string, unknown>>(): T {
    try {
      return JSON.parse(this.stdout) as T
    } catch {
      throw new Error(`${this.name}: stdout is not JSON: ${this.stdout.slice(0, 500)}\nstderr: ${this.stderr.slice(-2000)}`)
    }
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.exited) this.proc.kill(sig)
  }

  kill(): void {
    this.signal('SIGKILL')
  }
}

const live = new Set<Proc>()

/** Kill whatever is still running (test teardown and process exit). */
export function killAll(): void {
  for (const p of live) p.kill()
}
process.once('exit', killAll)

export function tempDir(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'vmm-e2e-'))
  t.teardown(() => rmSync(d, { recursive: true, force: true }))
  return d
}

/** KVM usable here? Asked in a child so this process never loads the addon. */
export async function kvmReason(): Promise<string | undefined> {
  const p = spawn(process.execPath, ['--input-type=module', '-e',
    `const m = await import(${JSON.stringify(join(root, 'dist/vmm/machine/index.js'))}); const a = await m.kvmAvailable(); console.log(JSON.stringify(a))`],
  { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv() })
  let out = ''
  p.stdout.on('data', (d) => (out += d))
  const code = await new Promise<number | null>((r) => {
    const t = setTimeout(() => p.kill('SIGKILL'), 20_000)
    p.on('exit', (c) => {
      clearTimeout(t)
      r(c)
    })
  })
  try {
    const a = JSON.parse(out) as { available: boolean; reason?: string }
    return a.available ? undefined : `KVM not usable here: ${a.reason ?? 'unknown reason'}`
  } catch {
    return `KVM probe failed (exit ${code}): ${out.slice(0, 200)}`
  }
}

export const MiB = 1 << 20
/** The bound of the task: peak RSS within guest RAM + 128 MiB. */
export const rssBound = (ram: number) => ram + 128 * MiB

export interface SourceResult {
  stats: { status: string; cpuThrottlePercentage: number; iterations: number; downtime?: number }
  verification: Verification
  maxThrottle: number
  maxRssBytes: number
}

interface Assert {
  equal(a: unknown, b: unknown, m?: string): void
  ok(v: unknown, m?: string, extra?: Record<string, unknown>): void
  same(a: unknown, b: unknown, m?: string): void
  comment(...m: unknown[]): void
}

/** The guest arrived intact, kept running there, and neither process grew past RAM + 128 MiB. */
export function checkArrived(t: Assert, ram: number, vcpu: string, src: SourceResult, dst: IncomingReport): void {
  t.equal(src.stats.status, 'completed', 'source: completed')
  const l = dst.loaded
  t.ok(l, 'destination verified the image before its vCPU started')
  if (!l) return
  t.equal(l.ramDigest, src.verification.ramDigest, 'RAM digest equal')
  t.equal(l.deviceDigest, src.verification.deviceDigest, 'device digest equal')
  t.equal(l.counter, src.verification.counter, 'vCPU counter equal at the switchover')
  t.same(l.timer, src.verification.timer, 'timer state equal')
  t.ok(src.verification.checksumConsistent, 'source checksum matches its RAM')
  t.ok(l.checksumConsistent, 'destination checksum matches its RAM at load')
  t.ok(dst.checksumConsistentAfter, 'destination checksum matches its RAM after running')
  t.ok(BigInt(dst.counterAfter) > BigInt(l.counter), `destination vCPU kept counting (${l.counter} -> ${dst.counterAfter})`)
  t.equal(dst.vcpu, vcpu, `destination vCPU is ${vcpu}`)
  checkRss(t, 'source', ram, src.maxRssBytes)
  checkRss(t, 'destination', ram, dst.maxRssBytes)
}

/** The bound: each process within guest RAM + 128 MiB at its peak. */

export function checkRss(t: Assert, who: string, ram: number, rss: number | undefined): void {
  t.ok(typeof rss === 'number' && rss > 0, `${who} reported its peak RSS`)
  if (typeof rss !== 'number') return
  t.comment(`${who} peak RSS ${(rss / MiB).toFixed(0)} MiB for ${ram / MiB} MiB of guest RAM`)
  const ok = rss <= rssBound(ram)
  t.ok(ok, `${who} peak RSS ${(rss / MiB).toFixed(0)} MiB <= guest RAM + 128 MiB (${rssBound(ram) / MiB} MiB)`)
}

/** The source's last event: completed, or failed with its after-failure report. */
export function lastEvent(p: Proc, name: string): Ev | undefined {
  return [...p.events].reverse().find((e) => e.event === name)
}
