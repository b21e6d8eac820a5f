// What the machine can physically do: loopback TCP between two processes,
// memory copy, and a splice copy pipe -> socket -> pipe. Every migration
// figure is reported as a fraction of these, measured in the same run.
import { cProgram } from '../lib/cbuild.js'
import { runJson } from '../lib/proc.js'
import { mibps, summarize, type Summary } from '../lib/stats.js'
import type { BenchContext } from '../lib/context.js'

interface Timed { bytes: number; ns: number }

function timed(v: unknown, what: string): Timed {
  const o = v as Partial<Timed>
  if (!o || typeof o.bytes !== 'number' || typeof o.ns !== 'number' || o.ns <= 0) throw new Error(`${what}: unexpected output ${JSON.stringify(v)}`)
  return o as Timed
}

/** One raw loopback TCP transfer of `bytes` with 1 MiB writes, MiB/s. */
export async function loopbackOnce(bytes: number): Promise<number> {
  const exe = await cProgram('loopback')
  const r = await runJson(exe, [String(bytes), String(1 << 20)], 600000)
  const t = timed(r.lines[0], 'loopback')
  return mibps(t.bytes, t.ns / 1e6)
}

/** One splice copy pipe -> UNIX socket -> pipe of `bytes`, MiB/s. */
export async function spliceOnce(bytes: number): Promise<number> {
  const exe = await cProgram('splicecopy')
  const r = await runJson(exe, [String(bytes)], 600000)
  const t = timed(r.lines[0], 'splicecopy')
  return mibps(t.bytes, t.ns / 1e6)
}

/** memcpy bandwidth, MiB/s, over a 256 MiB buffer. */
export async function memcpyMiBps(ctx: BenchContext): Promise<Summary> {
  const exe = await cProgram('memcopy')
  const r = await runJson(exe, [String(256 << 20), String(Math.max(3, ctx.repeats))], 60000)
  return summarize(r.lines.map(l => { const t = timed(l, 'memcopy'); return mibps(t.bytes, t.ns / 1e6) }))
}
