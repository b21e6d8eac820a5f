// Child processes for the bench: run a program to completion and collect its
// JSON lines, and read a live process's peak RSS from /proc.
import { spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'

export interface RunResult {
  lines: unknown[]
  stdout: string
  stderr: string
}

const MAX_OUTPUT = 16 << 20
const children = new Set<ChildProcess>()

/** Remember `child` until it exits, so an interrupted bench leaves no QEMU or worker behind. */
export function track<T extends ChildProcess>(child: T): T {
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

/** SIGKILL every child still running (the bench's exit and signal path). */
export function killChildren(): void {
  for (const c of children) c.kill('SIGKILL')
  children.clear()
}

/** Runs `cmd args`, rejects on a non-zero exit (with stderr) or after `timeoutMs`. */
export function runJson(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = track(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }))
    let out = ''
    let err = ''
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${cmd}: no result within ${timeoutMs} ms`)) }, timeoutMs)
    child.stdout.on('data', d => { if (out.length < MAX_OUTPUT) out += d })
    child.stderr.on('data', d => { if (err.length < MAX_OUTPUT) err += d })
    child.once('error', e => { clearTimeout(timer); reject(e) })
    child.once('close', (code, sig) => {
      clearTimeout(timer)
      if (code !== 0) { reject(new Error(`${cmd} ${args.join(' ')} exited ${code ?? sig}: ${err.trim().slice(0, 500)}`)); return }
      try {
        resolve({ lines: parseJsonLines(out), stdout: out, stderr: err })
      } catch (e) {
        reject(e)
      }
    })
  })
}

/** Every line of `text` that is a JSON object; other lines are ignored (progress text). */
export function parseJsonLines(text: string): unknown[] {
  const res: unknown[] = []
  for (const line of text.split('\n')) {
    const t = line.trim()
    if (!t.startsWith('{')) continue
    try {
      res.push(JSON.parse(t))
    } catch {
      throw new Error(`bench: malformed JSON line from a child: ${t.slice(0, 200)}`)
    }
  }
  return res
}

/**
 * PSS of a live process from /proc/PID/smaps_rollup, bytes (undefined once
 * it is gone): a page mapped by n processes counts 1/n in each, so two
 * processes sharing a memfd add up to its resident pages once, where their
 * VmHWM would count them twice.
 */
export async function pss(pid: number): Promise<number | undefined> {
  try {
    const s = await fs.promises.readFile(`/proc/${pid}/smaps_rollup`, 'utf8')
    const m = /^Pss:\s+(\d+)\s+kB/m.exec(s)
    return m ? Number(m[1]) * 1024 : undefined
  } catch {
    return undefined
  }
}

/** VmHWM (peak resident set) of a live process, bytes; undefined once it is gone. */
export function peakRss(pid: number): number | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(s)
    return m ? Number(m[1]) * 1024 : undefined
  } catch {
    return undefined
  }
}

export async function stopProcess(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const done = new Promise(r => child.once('exit', r))
  child.kill('SIGTERM')
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await done
  clearTimeout(t)
}

/**
 * A node worker that prints JSON lines; `next()` resolves the next one. The
 * worker's stderr goes to ours so its errors are seen.
 */
export class JsonChild {
  readonly child: ChildProcess
  private queue: unknown[] = []
  private waiters: { resolve(v: unknown): void; reject(e: Error): void }[] = []
  private ended: Error | undefined
  private buf = ''

  constructor(script: string, args: string[], nodeArgs: string[] = []) {
    this.child = track(spawn(process.execPath, [...nodeArgs, script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] }))
    this.child.stdout!.on('data', d => {
      this.buf += d
      let nl: number
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim()
        this.buf = this.buf.slice(nl + 1)
        if (!line.startsWith('{')) continue
        let v: unknown
        try { v = JSON.parse(line) } catch { continue }
        const w = this.waiters.shift()
        if (w) w.resolve(v)
        else this.queue.push(v)
      }
      if (this.buf.length > MAX_OUTPUT) this.buf = ''
    })
    this.child.once('exit', (code, sig) => {
      this.ended = new Error(`worker ${script} ${args.join(' ')} exited ${code ?? sig} before reporting`)
      for (const w of this.waiters.splice(0)) w.reject(this.ended)
    })
  }

  next(timeoutMs: number): Promise<Record<string, unknown>> {
    const v = this.queue.shift()
    if (v !== undefined) return Promise.resolve(v as Record<string, unknown>)
    if (this.ended) return Promise.reject(this.ended)
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter(w => w !== entry)
        reject(new Error(`worker gave no report within ${timeoutMs} ms`))
      }, timeoutMs)
      const entry = {
        resolve: (x: unknown) => { clearTimeout(t); resolve(x as Record<string, unknown>) },
        reject: (e: Error) => { clearTimeout(t); reject(e) },
      }
      this.waiters.push(entry)
    })
  }

  async stop(): Promise<void> {
    await stopProcess(this.child)
  }
}
