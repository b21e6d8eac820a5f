// The software vCPU's execution engine: the workload of guest/workload.S as a
// state machine over the shared RAM. It runs in a worker_thread created from
// this function's source (eval), so it must not close over anything: all it
// needs arrives in workerData. Registers = [phase, x, cursor, left, spinLeft].

export const PHASE_TOP = 0 // check the stop flag, load rng/cursor/pagesPerIter
export const PHASE_WRITE = 1 // one xorshift step and one page write
export const PHASE_SPIN = 2 // busy loop after an iteration
export const PHASE_DONE = 3 // store rng/cursor, counter += 1

export interface SoftWorkerData {
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
      if (phase === 0) {
        if (Atomics.load(u32, C + 12) !== 0) {
          reason = 'guest-exit'
          break
        }
        x = u32[C + 5]!
        cur = u32[C + 6]!
        left = u32[C + 10]!
        phase = left === 0 ? 3 : 1
      } else if (phase === 1) {
        x = (x ^ (x << 13)) >>> 0
        x = (x ^ (x >>> 17)) >>> 0
        x = (x ^ (x << 5)) >>> 0
        const page = u32[C + 8]! + cur
        if (page >= pages) {
          reason = 'error'
          error = `soft vCPU: workload wrote page ${page}, outside guest RAM of ${pages} pages`
          break
        }
        const w = page * 1024 + ((x & 0xffc) >>> 2)
        const old = u32[w]!
        u32[w] = x
        u32[C + 4] = (u32[C + 4]! + x - old) >>> 0
        Atomics.or(dirty, page >>> 5, 1 << (page & 31))
        Atomics.or(dirty, ctlWord, ctlBit)
        cur = cur + 1 >= u32[C + 9]! ? 0 : cur + 1
        left = (left - 1) >>> 0
        if (left === 0) phase = 3
      } else if (phase === 3) {
        u32[C + 5] = x
        u32[C + 6] = cur
        const lo = (u32[C + 2]! + 1) >>> 0
        u32[C + 2] = lo
        if (lo === 0) u32[C + 3] = (u32[C + 3]! + 1) >>> 0
        Atomics.or(dirty, ctlWord, ctlBit)
        spinLeft = u32[C + 11]!
        phase = spinLeft === 0 ? 0 : 2
      } else if (phase === 2) {
        spinLeft = (spinLeft - 1) >>> 0
        if (spinLeft === 0) phase = 0
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
