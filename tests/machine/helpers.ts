// Shared scenario for both vCPU kinds: what "the same interface" must mean.
import type { Test } from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  createVcpu, dirtyPages, expectedDirtyPages, readCtl, regionChecksum, CTL, type Vcpu, type VcpuKind,
} from '../../vmm/machine/index.js'

const here = dirname(fileURLToPath(import.meta.url))
// Children need only the TypeScript loader; tap's other hooks cost seconds of start-up.
const tsOnly = process.execArgv.filter((a) => a.includes('@tapjs/typescript') || a === '--enable-source-maps')
const childArgv = tsOnly.some((a) => a.includes('@tapjs/typescript')) ? tsOnly : process.execArgv
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * Waits (bounded) until the guest has completed `n` iterations: the vCPU's
 * thread or worker may not run for a while on a loaded machine, so a test
 * waits for the iterations it asserts on rather than for a fixed time.
 */
export async function runUntil(v: Vcpu, n: bigint): Promise<void> {
  const deadline = Date.now() + 10_000
  while (v.counter() < n) {
    if (Date.now() > deadline) throw new Error(`guest stuck at ${v.counter()} iterations`)
    await sleep(5)
  }
}

export function consistent(v: Vcpu): boolean {
  const p = v.params()
  return v.checksum() === regionChecksum(v.memory.bytes, p.regionStart, p.regionPages)
}

export async function runsAndPauses(t: Test, kind: VcpuKind): Promise<void> {
  const v = await createVcpu(4 << 20, { kind, params: { regionPages: 256, pagesPerIter: 4 } })
  t.teardown(() => v.destroy())
  t.equal(v.kind, kind)
  t.equal(v.counter(), 0n)
  await v.start()
  t.ok(v.running)
  await runUntil(v, 1n)
  await t.rejects(v.start(), { errno: 16 }, 'second start is EBUSY')
  await t.rejects(v.getState(), { errno: 16 }, 'state of a running vCPU is EBUSY')
  const ms = 300
  const c0 = v.counter()
  const t0 = performance.now()
  // The rate is taken over at least `ms`, and over at least one iteration.
  await sleep(ms)
  await runUntil(v, c0 + 1n)
  const c1 = v.counter()
  const dt = (performance.now() - t0) / 1000
  const tp = performance.now()
  const stop = await v.pause()
  const pauseMs = performance.now() - tp
  t.equal(stop.reason, 'paused')
  t.notOk(v.running)
  t.ok(c1 > c0, `counter moved (${c1})`)
  const ips = Number(c1 - c0) / dt
  t.comment(`${kind} vCPU: ${Math.round(ips)} iterations/s, ${Math.round(ips * 4)} pages dirtied/s (4 pages/iter, spin 0), pause took ${pauseMs.toFixed(2)} ms`)
  t.ok(pauseMs < 250, 'pause is prompt')
  t.same(await v.pause(), stop, 'pausing a stopped vCPU reports the last stop')
  const q = await v.quiesce()
  t.equal(q.reason, 'guest-exit')
  t.equal(readCtl(v.memory.bytes, CTL.stop), 0, 'stop request cleared')
  t.ok(consistent(v), 'checksum in RAM matches the data region')
  // Dirty-rate knob: a long spin slows iterations down.
  v.setParams({ spin: 200_000 })
  const s0 = v.counter()
  const ts = performance.now()
  await v.start()
  await sleep(100)
  await v.quiesce()
  // Over the time it really ran: quiesce waits for the iteration under way,
  // which on a loaded machine can be much longer than the 100 ms asked for.
  const slow = Number(v.counter() - s0) / ((performance.now() - ts) / 1000)
  t.ok(slow < ips / 4, `spin knob slows the guest (${Math.round(slow)}/s vs ${Math.round(ips)}/s)`)
  t.throws(() => v.setParams({ regionPages: 1 << 20 }), { errno: 22 })
  t.throws(() => v.setParams({ seed: 0 }), { errno: 22 })
}

export async function dirtyLogIsExact(t: Test, kind: VcpuKind): Promise<void> {
  const p = { regionPages: 1500, pagesPerIter: 3, spin: 20_000 }
  const v = await createVcpu(8 << 20, { kind, params: p })
  t.teardown(() => v.destroy())
  await v.quiesce() // up to the first stop check: nothing written yet
  await v.syncDirtyLog()
  for (let round = 0; round < 3; round++) {
    const cursor = readCtl(v.memory.bytes, CTL.cursor)
    const c0 = v.counter()
    await v.start()
    await runUntil(v, c0 + 1n)
    await v.quiesce()
    const iters = Number(v.counter() - c0)
    const dirty = dirtyPages(await v.syncDirtyLog())
    const want = expectedDirtyPages(v.params(), cursor, iters)
    t.comment(`${kind} round ${round}: ${iters} iterations, ${dirty.length} dirty pages`)
    t.same(dirty, want, `round ${round}: exactly the pages written`)
    t.ok(consistent(v))
  }
  t.same(dirtyPages(await v.syncDirtyLog()), [], 'the read cleared the log')
  // Read-and-clear while running: pages logged across two syncs add up to the run.
  const cursor = readCtl(v.memory.bytes, CTL.cursor)
  const c0 = v.counter()
  await v.start()
  await runUntil(v, c0 + 1n)
  const a = dirtyPages(await v.syncDirtyLog())
  await runUntil(v, v.counter() + 1n)
  await v.quiesce()
  const b = dirtyPages(await v.syncDirtyLog())
  const union = [...new Set([...a, ...b])].sort((x, y) => x - y)
  t.same(union, expectedDirtyPages(v.params(), cursor, Number(v.counter() - c0)), 'syncs while running lose nothing')
}

/** Pause anywhere (mid-iteration), move state + RAM to a new vCPU, continue there. */
export async function stateMoves(t: Test, kind: VcpuKind): Promise<void> {
  const params = { regionPages: 300, pagesPerIter: 5, spin: 1000 }
  const a = await createVcpu(4 << 20, { kind, params })
  await a.start()
  await runUntil(a, 20n)
  await a.pause()
  const state = await a.getState()
  const ram = a.memory.snapshot()
  const counter = a.counter()
  await a.destroy()
  await t.rejects(a.start(), { errno: 19 }, 'destroyed vCPU refuses to start')

  const b = await createVcpu(4 << 20, { kind, params: { ...params, seed: 7 } })
  t.teardown(() => b.destroy())
  b.memory.load(ram)
  await b.setState(state)
  t.equal(b.counter(), counter)
  const back = await b.getState()
  t.same(Buffer.from(back.bytes).subarray(0, 8), Buffer.from(state.bytes).subarray(0, 8))
  await b.start()
  await runUntil(b, counter + 10n)
  await b.quiesce()
  t.ok(b.counter() > counter, `counter continues: ${counter} -> ${b.counter()}`)
  t.ok(consistent(b), 'checksum still matches RAM after restore')
  const other: VcpuKind = kind === 'kvm' ? 'soft' : 'kvm'
  await t.rejects(b.setState({ kind: other, bytes: state.bytes }), { errno: 22 })
  await t.rejects(b.setState({ kind, bytes: state.bytes.subarray(0, 7) }), { errno: 22 })
}

/** The same, with the destination in a child process. */
export async function stateMovesToChild(t: Test, kind: VcpuKind): Promise<void> {
  const params = { regionPages: 300, pagesPerIter: 5, spin: 1000 }
  const a = await createVcpu(4 << 20, { kind, params })
  t.teardown(() => a.destroy())
  await a.start()
  await runUntil(a, 20n)
  await a.pause()
  const dir = mkdtempSync(join(tmpdir(), 'microvm-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'state'), (await a.getState()).bytes)
  writeFileSync(join(dir, 'ram'), a.memory.bytes)
  const counter = a.counter()
  const r = spawnSync(process.execPath, [...childArgv, join(here, 'child-restore.ts'), kind, dir], {
    encoding: 'utf8',
    timeout: 30_000,
  })
  t.equal(r.status, 0, `child exited cleanly: ${r.stderr}`)
  const out = JSON.parse(readFileSync(join(dir, 'result.json'), 'utf8')) as { counter: string; consistent: boolean }
  t.ok(BigInt(out.counter) > counter, `child continued the counter: ${counter} -> ${out.counter}`)
  t.ok(out.consistent, 'child found the checksum consistent with RAM')
}

/** A process that leaves its vCPU running still exits, and promptly. */
export async function exitsWhileRunning(t: Test, kind: VcpuKind): Promise<void> {
  for (const how of ['drain', 'exit']) {
    const t0 = Date.now()
    const r = spawnSync(process.execPath, [...childArgv, join(here, 'child-exit.ts'), kind, how], {
      encoding: 'utf8',
      timeout: 30_000,
    })
    t.equal(r.status, 0, `${how}: exit status 0 (${r.stderr})`)
    t.match(r.stdout, /running true/)
    t.comment(`${kind} ${how}: child finished in ${Date.now() - t0} ms`)
  }
}
