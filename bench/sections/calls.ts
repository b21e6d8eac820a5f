// Cost of one cheap call: through our napi addon, through ffi-rs (dynamic
// FFI straight into libc), and from a C loop as the floor.
import { createRequire } from 'node:module'
import { native } from '../../vmm/native/addon.js'
import { cProgram } from '../lib/cbuild.js'
import { runJson } from '../lib/proc.js'
import { summarize, type Summary } from '../lib/stats.js'
import type { BenchContext } from '../lib/context.js'

export interface CallResults {
  napi_nativeVersion_ns?: Summary
  ffirs_getpid_ns?: Summary
  ffirs_abs_ns?: Summary
  c_getpid_ns?: Summary
  c_abs_ns?: Summary
}

function nsPerCall(n: number, fn: () => unknown): number {
  let sink: unknown
  for (let i = 0; i < Math.min(n, 10000); i++) sink = fn()
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < n; i++) sink = fn()
  const t1 = process.hrtime.bigint()
  if (sink === Symbol.for('never')) console.log(sink)
  return Number(t1 - t0) / n
}

type FfiRs = typeof import('ffi-rs')

export async function runCalls(ctx: BenchContext): Promise<CallResults> {
  const res: CallResults = {}
  const reps = Math.max(3, ctx.repeats)
  const N = ctx.quick ? 200_000 : 1_000_000
  res.napi_nativeVersion_ns = summarize(Array.from({ length: reps }, () => nsPerCall(N, () => native.nativeVersion())))

  let ffi: FfiRs | undefined
  try {
    ffi = createRequire(import.meta.url)('ffi-rs') as FfiRs
  } catch (e) {
    ctx.skip('calls/ffi-rs', `ffi-rs not installed (npm install): ${(e as Error).message.split('\n')[0]}`)
  }
  if (ffi) {
    const f = ffi
    f.open({ library: 'libc', path: '' })
    const getpid = () => f.load({ library: 'libc', funcName: 'getpid', retType: f.DataType.I32, paramsType: [], paramsValue: [] })
    const abs = () => f.load({ library: 'libc', funcName: 'abs', retType: f.DataType.I32, paramsType: [f.DataType.I32], paramsValue: [-7] })
    if (getpid() !== process.pid) throw new Error(`ffi-rs getpid returned ${String(getpid())}, expected ${process.pid}`)
    if (abs() !== 7) throw new Error('ffi-rs abs(-7) did not return 7')
    const n = Math.floor(N / 5)
    res.ffirs_getpid_ns = summarize(Array.from({ length: reps }, () => nsPerCall(n, getpid)))
    res.ffirs_abs_ns = summarize(Array.from({ length: reps }, () => nsPerCall(n, abs)))
    f.close('libc')
  }

  const exe = await cProgram('callloop')
  const g: number[] = []
  const a: number[] = []
  for (let i = 0; i < reps; i++) {
    const r = await runJson(exe, [String(N)], 60000)
    const o = r.lines[0] as { getpid_ns?: number; abs_ns?: number }
    if (typeof o?.getpid_ns !== 'number' || typeof o.abs_ns !== 'number') throw new Error(`callloop: unexpected output ${r.stdout}`)
    g.push(o.getpid_ns)
    a.push(o.abs_ns)
  }
  res.c_getpid_ns = summarize(g)
  res.c_abs_ns = summarize(a)
  return res
}
