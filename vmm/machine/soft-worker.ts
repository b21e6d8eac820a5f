// The software vCPU's execution engine: the workload of guest/workload.S as a
// state machine over the shared RAM. This file is the worker thread's own
// module (SoftVcpu starts it by URL), so it is loaded, type-checked and
// covered like any other. Registers = [phase, x, cursor, left, spinLeft].
import * as threads from 'node:worker_threads'
import { CTL } from './workload.js'

const PHASE_TOP = 0 // check the stop flag, load rng/cursor/pagesPerIter
const PHASE_WRITE = 1 // one xorshift step and one page write
const PHASE_SPIN = 2 // busy loop after an iteration
const PHASE_DONE = 3 // store rng/cursor, counter += 1
/** workerData.role of a soft vCPU's thread: any other worker importing this module is left alone. */
export const SOFT_WORKER_ROLE = 'vmm-migration/soft-vcpu'

export interface SoftWorkerData {
  role: typeof SOFT_WORKER_ROLE
  mem: SharedArrayBuffer
  dirty: SharedArrayBuffer
  ctrl: SharedArrayBuffer
  ctlAddr: number
}

export interface SoftStopped {
  type: 'stopped'
  reason: 'paused' | 'guest-exit' | 'error'
  regs: number[]
  error?: string
}

export function softWorkerMain(wt: typeof import('node:worker_threads')): void {
  const port = wt.parentPort!
  const data = wt.workerData as SoftWorkerData
  const u32 = new Uint32Array(data.mem)
  const dirty = new Int32Array(data.dirty)
  const ctrl = new Int32Array(data.ctrl)
  const pages = data.mem.byteLength / 4096
  const C = data.ctlAddr / 4 // control block as a u32 index
  const ctlPage = data.ctlAddr / 4096
  const ctlBit = 1 << (ctlPage & 31)
  const ctlWord = ctlPage >>> 5
  port.on('message', (msg: { type: string; regs?: number[] }) => {
    if (msg.type !== 'run' || !msg.regs) return
    let [phase, x, cur, left, spinLeft] = msg.regs as [number, number, number, number, number]
    let reason: SoftStopped['reason'] = 'paused'
    let error: string | undefined
    for (;;) {
      if (Atomics.load(ctrl, 0) !== 0) break
      if (phase === PHASE_TOP) {
        if (Atomics.load(u32, C + CTL.stop / 4) !== 0) {
          reason = 'guest-exit'
          break
        }
        x = u32[C + CTL.rng / 4]!
        cur = u32[C + CTL.cursor / 4]!
        left = u32[C + CTL.pagesPerIter / 4]!
        phase = left === 0 ? PHASE_DONE : PHASE_WRITE
      } else if (phase === PHASE_WRITE) {
        x = (x ^ (x << 13)) >>> 0
        x = (x ^ (x >>> 17)) >>> 0
        x = (x ^ (x << 5)) >>> 0
        const page = u32[C + CTL.regionStart / 4]! + cur
        if (page >= pages) {
          reason = 'error'
          error = `soft vCPU: workload wrote page ${page}, outside guest RAM of ${pages} pages`
          break
        }
        const w = page * 1024 + ((x & 0xffc) >>> 2)
        const old = u32[w]!
        u32[w] = x
        u32[C + CTL.checksum / 4] = (u32[C + CTL.checksum / 4]! + x - old) >>> 0
        Atomics.or(dirty, page >>> 5, 1 << (page & 31))
        Atomics.or(dirty, ctlWord, ctlBit)
        cur = cur + 1 >= u32[C + CTL.regionPages / 4]! ? 0 : cur + 1
        left = (left - 1) >>> 0
        if (left === 0) phase = PHASE_DONE
      } else if (phase === PHASE_DONE) {
        u32[C + CTL.rng / 4] = x
        u32[C + CTL.cursor / 4] = cur
        const lo = (u32[C + CTL.counter / 4]! + 1) >>> 0
        u32[C + CTL.counter / 4] = lo
        if (lo === 0) u32[C + CTL.counter / 4 + 1] = (u32[C + CTL.counter / 4 + 1]! + 1) >>> 0
        Atomics.or(dirty, ctlWord, ctlBit)
        spinLeft = u32[C + CTL.spin / 4]!
        phase = spinLeft === 0 ? PHASE_TOP : PHASE_SPIN
      } else if (phase === PHASE_SPIN) {
        spinLeft = (spinLeft - 1) >>> 0
        if (spinLeft === 0) phase = PHASE_TOP
      } else {
        reason = 'error'
        error = `soft vCPU: invalid phase ${phase}`
        break
      }
    }
    const out: SoftStopped = { type: 'stopped', reason, regs: [phase, x, cur, left, spinLeft] }
    if (error !== undefined) out.error = error
    port.postMessage(out)
  })
  port.postMessage({ type: 'ready' })
}

if (!threads.isMainThread && (threads.workerData as Partial<SoftWorkerData> | null)?.role === SOFT_WORKER_ROLE) softWorkerMain(threads)
