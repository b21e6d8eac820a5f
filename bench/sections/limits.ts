// What the machine can physically do: loopback TCP between two processes,
// memory copy, and a splice copy pipe -> socket -> pipe. Every migration
// figure is reported as a fraction of these, measured in the same run.
import { cProgram } from '../lib/cbuild.js'
import { runJson } from '../lib/proc.js'
import { mibps, summarize, type Summary } from '../lib/stats.js'
import { repeat, type BenchContext } from '../lib/context.js'

interface Timed { bytes: number; ns: number }

function timed(v: unknown, what: string): Timed {
  const o = v as Partial<Timed>
  if (!o || typeof o.bytes !== 'number' || typeof o.ns !== 'number' || o.ns <= 0) throw new Error(`${what}: unexpected output ${JSON.stringify(v)}`)
  return o as Timed
}

/** Raw loopback TCP, MiB/s, moving `bytes` with 1 MiB writes. */
export async function loopbackMiBps(ctx: BenchContext, bytes: number): Promise<Summary> {
  const exe = await cProgram('loopback')
  const runs = await repeat(ctx.repeats, async () => {
    const r = await runJson(exe, [String(bytes), String(1 << 20)], 120000)
    const t = timed(r.lines[0], 'loopback')
    return mibps(t.bytes, t.ns / 1e6)
  })
  return summarize(runs)
}

/** memcpy bandwidth, MiB/s, over a 256 MiB buffer. */
export async function memcpyMiBps(ctx: BenchContext): Promise<Summary> {
  const exe = await cProgram('memcopy')
  const r = await runJson(exe, [String(256 << 20), String(Math.max(3, ctx.repeats))], 60000)
  return summarize(r.lines.map(l => { const t = timed(l, 'memcopy'); return mibps(t.bytes, t.ns / 1e6) }))
}

/** splice copy pipe -> UNIX socket -> pipe of `bytes`, MiB/s. */
export async function spliceMiBps(ctx: BenchContext, bytes: number): Promise<Summary> {
  const exe = await cProgram('splicecopy')
  const runs = await repeat(ctx.repeats, async () => {
    const r = await runJson(exe, [String(bytes)], 120000)
    const t = timed(r.lines[0], 'splicecopy')
    return mibps(t.bytes, t.ns / 1e6)
  })
  return summarize(runs)
}
