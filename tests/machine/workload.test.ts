// The workload's semantics, checked against an independent reference: both
// vCPUs must leave exactly the RAM the reference computes for the same number
// of iterations, and the soft engine's phases run in-process here too.
import t, { type Test } from 'tap'
import {
  createVcpu, kvmAvailable, xorshift32, regionChecksum, readCtl, writeCtl, installControlBlock, defaultParams,
  dirtyPages, CTL, CTL_ADDR, PAGE_SIZE, type VcpuKind, type WorkloadParams,
} from '../../vmm/machine/index.js'
import { SOFT_WORKER_ROLE, softWorkerMain, type SoftStopped } from '../../vmm/machine/soft-worker.js'

/** Runs `iterations` whole iterations of workload.S over `mem` from a fresh control block. */
function reference(mem: Uint8Array, p: WorkloadParams, iterations: number): void {
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength)
  let x = p.seed
  let cur = 0
  let sum = 0
  for (let i = 0; i < iterations; i++) {
    for (let j = 0; j < p.pagesPerIter; j++) {
      x = xorshift32(x)
      const addr = (p.regionStart + cur) * PAGE_SIZE + (x & 0xffc)
      sum = (sum + x - dv.getUint32(addr, true)) >>> 0
      dv.setUint32(addr, x, true)
      cur = cur + 1 >= p.regionPages ? 0 : cur + 1
    }
  }
  dv.setUint32(CTL_ADDR + CTL.rng, x, true)
  dv.setUint32(CTL_ADDR + CTL.cursor, cur, true)
  dv.setUint32(CTL_ADDR + CTL.checksum, sum, true)
  dv.setBigUint64(CTL_ADDR + CTL.counter, BigInt(iterations), true)
}

function region(mem: Uint8Array, p: WorkloadParams): Buffer {
  return Buffer.from(mem.buffer, mem.byteOffset + p.regionStart * PAGE_SIZE, p.regionPages * PAGE_SIZE)
}

async function matchesReference(t: Test, kind: VcpuKind): Promise<void> {
  const ram = 4 << 20
  const p = { ...defaultParams(ram), regionPages: 700, pagesPerIter: 7, spin: 3000, seed: 0xdeadbeef }
  const v = await createVcpu(ram, { kind, params: p })
  t.teardown(() => v.destroy())
  await v.start()
  // Enough iterations that the cursor wraps twice and stops mid-region, so
  // later passes read what earlier ones wrote. A fixed wait could end before
  // the vCPU's thread even ran on a loaded machine: wait for them, bounded.
  const enough = Math.ceil((2.5 * p.regionPages) / p.pagesPerIter)
  const deadline = Date.now() + 10_000
  while (v.counter() < BigInt(enough) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
  await v.quiesce()
  const n = Number(v.counter())
  t.ok(n >= enough, `${kind} ran ${n} iterations (at least ${enough})`)
  const mem = new Uint8Array(ram)
  installControlBlock(mem, p)
  reference(mem, p, n)
  t.ok(region(mem, p).equals(region(v.memory.bytes, p)), 'data region identical to the reference')
  for (const k of ['rng', 'cursor', 'checksum'] as const) t.equal(readCtl(v.memory.bytes, CTL[k]), readCtl(mem, CTL[k]), k)
}

t.test('soft vCPU computes what the reference computes', (t) => matchesReference(t, 'soft'))

const probe = await kvmAvailable()
t.test('KVM vCPU computes what the reference computes', { skip: probe.available ? false : probe.reason }, (t) =>
  matchesReference(t, 'kvm'),
)

/** Drives the soft engine on this thread with a fake port. */
function engine(ramSize: number) {
  const mem = new SharedArrayBuffer(ramSize)
  const dirty = new SharedArrayBuffer(Math.ceil(ramSize / PAGE_SIZE / 32) * 4)
  const ctrl = new SharedArrayBuffer(16)
  let onMsg: ((m: unknown) => void) | undefined
  const out: unknown[] = []
  const port = { on: (_: string, f: (m: unknown) => void) => (onMsg = f), postMessage: (m: unknown) => out.push(m) }
  softWorkerMain({ parentPort: port, workerData: { role: SOFT_WORKER_ROLE, mem, dirty, ctrl, ctlAddr: CTL_ADDR } } as never)
  return {
    bytes: new Uint8Array(mem),
    ctrl: new Int32Array(ctrl),
    dirty: new Uint8Array(dirty),
    run: (regs: number[]): SoftStopped => {
      onMsg!({ type: 'run', regs })
      return out.pop() as SoftStopped
    },
    out,
  }
}

t.test('soft engine: one iteration through every phase, in-process', async (t) => {
  const e = engine(2 << 20)
  t.same(e.out, [{ type: 'ready' }])
  e.out.length = 0
  const p = { ...defaultParams(2 << 20), regionPages: 10, pagesPerIter: 3, spin: 5 }
  installControlBlock(e.bytes, p)
  writeCtl(e.bytes, CTL.stop, 1)
  // From TOP with the stop flag up: leaves at once.
  t.same(e.run([0, 0, 0, 0, 0]), { type: 'stopped', reason: 'guest-exit', regs: [0, 0, 0, 0, 0] })
  // Mid-iteration (about to write, 3 writes left): finishes the iteration, spins, stops at TOP.
  const s = e.run([1, p.seed, 0, 3, 0])
  t.equal(s.reason, 'guest-exit')
  t.equal(s.regs[0], 0)
  const ref = new Uint8Array(2 << 20)
  installControlBlock(ref, p)
  reference(ref, p, 1)
  t.ok(region(ref, p).equals(region(e.bytes, p)))
  t.equal(readCtl(e.bytes, CTL.checksum), regionChecksum(e.bytes, p.regionStart, p.regionPages))
  t.equal(readCtl(e.bytes, CTL.counter), 1)
  t.same(dirtyPages(e.dirty), [CTL_ADDR / PAGE_SIZE, 16, 17, 18])
  // Host pause wins over everything.
  Atomics.store(e.ctrl, 0, 1)
  t.same(e.run([2, 1, 2, 3, 4]).regs, [2, 1, 2, 3, 4])
  Atomics.store(e.ctrl, 0, 0)
  t.match(e.run([9, 0, 0, 0, 0]), { reason: 'error', error: /invalid phase 9/ })
  // A region past RAM (only reachable by writing the control block directly) stops with an error.
  writeCtl(e.bytes, CTL.regionStart, 600)
  t.match(e.run([1, 5, 0, 1, 0]), { reason: 'error', error: /outside guest RAM/ })
  // Counter carry into the high word.
  writeCtl(e.bytes, CTL.regionStart, 16)
  writeCtl(e.bytes, CTL.counter, 0xffffffff)
  e.run([3, 5, 0, 0, 0])
  t.equal(readCtl(e.bytes, CTL.counter + 4), 1)
  t.equal(readCtl(e.bytes, CTL.counter), 0)
})
