// The fault lab (issue #13, docs/faults.md): ping-pong migrations A -> B -> A
// between one pair of long-lived processes, one in each namespace
// (pingpong-node.mjs, the library from dist/). Every migration arrives intact
// (the destination's digests equal the source's with its VM stopped), and
// what each process holds stays flat: fds and threads exactly, RSS within a
// bound, from the end of the warm-up to the last round trip.
import t from 'tap'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { Lab, ADDR_SRC, ADDR_DST, labGate, type End } from './netns.js'
import { childEnv, missingBuild, nodeCommand, MiB } from '../e2e/helpers.js'

const full = process.env.FAULTS_FULL === '1'
const TRIPS = full ? 50 : 12
/** Round trips before the figures count: lazily made pools (libuv, V8, the native workers) exist by then. */
const WARMUP = 4
/** Trips per median. */
const WINDOW = full ? 10 : 3
/**
 * RSS may move this much: one guest's 32 MiB whose shared buffer a sample
 * still caught (seen once in 10 quick runs), plus allocator noise. A leak of
 * a VM per trip would be 32 MiB a trip, 160 MiB over the quick form.
 */
const RSS_SLACK = 40 * MiB
type Metric = 'fds' | 'threads' | 'rss'
t.setTimeout(full ? 600_000 : 240_000)

const DRIVER = join(dirname(fileURLToPath(import.meta.url)), 'pingpong-node.mjs')
const noBuild = missingBuild()
const gate = noBuild ? false : labGate(t)

type Line = Record<string, unknown> & { event: string }

function side(lab: Lab, end: End, role: 'A' | 'B', self: string, peer: string) {
  const lines: Line[] = []
  let stderr = ''
  // Coverage (npm test) would make V8 keep every function's counters: not the program's memory.
  const env = childEnv()
  delete env.NODE_V8_COVERAGE
  // --expose-gc: each sample is taken after a full collection.
  const p = spawn('ip', ['netns', 'exec', end.ns, ...nodeCommand(['--expose-gc', DRIVER, role, self, peer, String(TRIPS)])], { stdio: ['ignore', 'pipe', 'pipe'], env })
  createInterface({ input: p.stdout! }).on('line', (l) => { if (l.startsWith('{')) lines.push(JSON.parse(l) as Line) })
  p.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  const exited = new Promise<number | null>((r) => p.on('exit', (c) => r(c)))
  return { role, lines, p, exited, stderr: () => stderr }
}

t.test(`${TRIPS} round trips A -> B -> A in one process pair: intact, fds/threads/RSS flat`, { skip: noBuild ?? gate, timeout: full ? 540_000 : 200_000 }, async (t) => {
  const lab = await Lab.create()
  t.teardown(() => lab.destroy())
  const b = side(lab, lab.dst, 'B', ADDR_DST, ADDR_SRC)
  const a = side(lab, lab.src, 'A', ADDR_SRC, ADDR_DST)
  t.teardown(() => { a.p.kill('SIGKILL'); b.p.kill('SIGKILL') })
  const t0 = performance.now()
  // Bounded: a stuck migration must fail the test, not hang it.
  const limit = (full ? 480_000 : 180_000)
  const timer = setTimeout(() => { a.p.kill('SIGKILL'); b.p.kill('SIGKILL') }, limit)
  const [ca, cb] = await Promise.all([a.exited, b.exited])
  clearTimeout(timer)
  const took = performance.now() - t0
  t.equal(ca, 0, `A exited 0 ${a.stderr().slice(-1500)}`)
  t.equal(cb, 0, `B exited 0 ${b.stderr().slice(-1500)}`)
  t.comment(`${2 * TRIPS} migrations in ${Math.round(took)} ms (${Math.round(took / (2 * TRIPS))} ms each, new 32 MiB VM each)`)

  // Every migration: what arrived is what left.
  let intact = 0
  for (let i = 0; i < 2 * TRIPS; i++) {
    const [from, to] = i % 2 === 0 ? [a, b] : [b, a]
    const s = from.lines.find((l) => l.event === 'sent' && l.i === i)
    const r = to.lines.find((l) => l.event === 'received' && l.i === i)
    if (s && r && s.ramDigest === r.ramDigest && s.deviceDigest === r.deviceDigest && s.counter === r.counter && r.running) intact++
    else t.fail(`migration ${i}: sent ${JSON.stringify(s)} received ${JSON.stringify(r)}`)
  }
  t.equal(intact, 2 * TRIPS, 'every migration arrived intact (RAM, device, vCPU counter) and ran')

  for (const x of [a, b]) {
    const samples = x.lines.filter((l) => l.event === 'sample') as unknown as { trip: number; fds: number; threads: number; rss: number }[]
    t.equal(samples.length, TRIPS, `${x.role}: a sample per round trip`)
    const after = samples.filter((s) => s.trip >= WARMUP)
    if (after.length < 2 * WINDOW) continue
    // The median of the first and of the last WINDOW trips after the warm-up:
    // a leak grows with the trips; one slow teardown at one sample does not.
    const median = (xs: number[]) => [...xs].sort((p, q) => p - q)[xs.length >> 1]!
    const early = (k: Metric) => median(after.slice(0, WINDOW).map((s) => s[k]))
    const late = (k: Metric) => median(after.slice(-WINDOW).map((s) => s[k]))
    const range = (k: Metric) => `${Math.min(...after.map((s) => s[k]))}..${Math.max(...after.map((s) => s[k]))}`
    const mib = (n: number) => (n / MiB).toFixed(0)
    t.comment(`${x.role}: at trip 0 fds ${samples[0]!.fds}, threads ${samples[0]!.threads}, RSS ${mib(samples[0]!.rss)} MiB; ` +
      `trips ${WARMUP}-${WARMUP + WINDOW - 1} -> last ${WINDOW} (medians): fds ${early('fds')} -> ${late('fds')}, threads ${early('threads')} -> ${late('threads')}, ` +
      `RSS ${mib(early('rss'))} -> ${mib(late('rss'))} MiB; ranges fds ${range('fds')}, threads ${range('threads')}, RSS ${mib(Math.min(...after.map((s) => s.rss)))}..${mib(Math.max(...after.map((s) => s.rss)))} MiB`)
    t.comment(`${x.role}: RSS per trip (MiB): ${samples.map((s) => mib(s.rss)).join(' ')}`)
    for (const k of ['heapUsed', 'heapTotal', 'external', 'arrayBuffers'] as const) t.comment(`${x.role}: ${k} per trip (MiB): ${(samples as unknown as Record<string, number>[]).map((s) => (s[k]! / MiB).toFixed(1)).join(' ')}`)
    t.ok(late('fds') <= early('fds'), `${x.role}: fd count flat (${early('fds')} -> ${late('fds')})`)
    t.ok(late('threads') <= early('threads'), `${x.role}: thread count flat (${early('threads')} -> ${late('threads')})`)
    t.ok(late('rss') - early('rss') <= RSS_SLACK, `${x.role}: RSS flat within ${RSS_SLACK / MiB} MiB (${mib(early('rss'))} -> ${mib(late('rss'))} MiB)`)
  }
})
