// One fuzzing process for one target, started by scripts/fuzz.mjs (which
// watches it: a process that stops answering or dies is a hang or a crash
// of the input in --current). Modes:
//   fuzz     seeds and corpus first, then mutations until --seconds run out
//   merge    keep the smallest inputs of the given folders that together
//            reach every feature any of them reaches, into --out
//   replay   run the given files once each, report every verdict
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { AllocGuard, Coverage, Mutator, Rng, execOne, sha1, type Entry, type Outcome, type Target } from './engine.js'
import { targets } from './targets/index.js'

interface Args { target: string; mode: string; seconds: number; corpus: string[]; out?: string; findings: string; current?: string; seed: number; files: string[] }

function parse(argv: string[]): Args {
  const a: Args = { target: '', mode: 'fuzz', seconds: 60, corpus: [], findings: '.fuzz/findings', seed: Date.now() >>> 0, files: [] }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!
    const v = () => argv[++i]!
    if (k === '--target') a.target = v()
    else if (k === '--mode') a.mode = v()
    else if (k === '--seconds') a.seconds = Number(v())
    else if (k === '--corpus') a.corpus.push(v())
    else if (k === '--out') a.out = v()
    else if (k === '--findings') a.findings = v()
    else if (k === '--current') a.current = v()
    else if (k === '--seed') a.seed = Number(v())
    else a.files.push(k)
  }
  return a
}

function readDir(dir: string): Buffer[] {
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return []
  }
  return names.filter(n => !n.startsWith('.') && !n.endsWith('.txt') && statSync(join(dir, n)).isFile()).sort().map(n => readFileSync(join(dir, n)))
}

function send(m: object): void {
  if (process.send) process.send(m)
}

async function main(): Promise<number> {
  const args = parse(process.argv.slice(2))
  const load = targets[args.target]
  if (!load) {
    console.error(`unknown fuzz target '${args.target}' (targets: ${Object.keys(targets).join(', ')})`)
    return 2
  }
  const t: Target = await load()
  const cov = new Coverage(t.cover ?? /\/vmm\/.*\.js$/)
  const guard = new AllocGuard()
  await cov.start()
  guard.install()
  // The parent hears from a live event loop; a loop stuck in synchronous code goes quiet.
  const beat = setInterval(() => send({ beat: Date.now() }), 250)
  const started = performance.now()
  let execs = 0
  const corpus: Entry[] = []

  // A target that settles in microtasks alone (the parsers) would never let
  // the event loop reach its timers: no heartbeat, and the parent sees a hang.
  let yielded = performance.now()
  const run = async (input: Buffer): Promise<{ outcome: Outcome; novel: number }> => {
    if (performance.now() - yielded > 50) {
      await new Promise(r => setImmediate(r))
      yielded = performance.now()
    }
    if (args.current) writeFileSync(args.current, input)
    const outcome = await execOne(t, input, guard)
    execs++
    return { outcome, novel: await cov.take() }
  }
  const report = (input: Buffer, o: Outcome & { ok: false }): void => {
    mkdirSync(args.findings, { recursive: true })
    const file = join(args.findings, `${o.kind}-${sha1(input)}`)
    writeFileSync(file, input)
    writeFileSync(`${file}.txt`, `${t.name}: ${o.kind}\n${o.message}\n`)
    console.error(`\nFINDING ${t.name}: ${o.kind}, input saved to ${file}\n${o.message}\n`)
    send({ finding: file, kind: o.kind })
  }
  const keep = (input: Buffer): void => {
    corpus.push({ data: input, picked: 0 })
    if (args.out) {
      mkdirSync(args.out, { recursive: true })
      writeFileSync(join(args.out, sha1(input)), input)
    }
  }

  // Module loading and setup are nobody's coverage.
  await cov.take()
  let failed = 0
  try {
    if (args.mode === 'replay') {
      for (const f of args.files) {
        const input = readFileSync(f)
        const { outcome } = await run(input)
        console.log(`${f}: ${outcome.ok ? `ok (${outcome.ms.toFixed(1)} ms)` : `${outcome.kind}\n${outcome.message}`}`)
        if (!outcome.ok) failed++
      }
      return failed ? 1 : 0
    }

    const inputs = args.mode === 'merge'
      ? args.corpus.flatMap(readDir)
      : [...(await t.seeds()), ...args.corpus.flatMap(readDir)]
    // Smallest first, so each feature is credited to the smallest input that has it.
    const unique = [...new Map(inputs.map(b => [sha1(b), b.subarray(0, t.maxLen)])).values()].sort((a, b) => a.length - b.length)
    if (args.mode === 'merge' && args.out) {
      rmSync(args.out, { recursive: true, force: true })
    }
    for (const input of unique) {
      const { outcome, novel } = await run(input)
      if (!outcome.ok) {
        report(input, outcome)
        return 1
      }
      if (novel > 0 || corpus.length === 0) keep(input)
    }
    const initial = corpus.length
    console.log(`${t.name}: ${unique.length} inputs in, ${initial} kept, ${cov.figures().blocks} blocks reached`)
    if (args.mode === 'merge') return 0

    const rng = new Rng(args.seed)
    const mut = new Mutator(rng, t.maxLen, t.dict ?? [])
    const deadline = started + args.seconds * 1000
    let lastPrint = performance.now()
    while (performance.now() < deadline) {
      // Newer entries (they found something lately) and small ones are picked more.
      const i = rng.chance(0.5) ? corpus.length - 1 - rng.below(Math.min(corpus.length, 8)) : rng.below(corpus.length)
      const parent = corpus[i]!
      parent.picked++
      const other = corpus[rng.below(corpus.length)]!.data
      const input = mut.mutate(parent.data, other)
      const { outcome, novel } = await run(input)
      if (!outcome.ok) {
        report(input, outcome)
        return 1
      }
      if (novel > 0) keep(input)
      if (performance.now() - lastPrint > 10_000) {
        lastPrint = performance.now()
        const s = (performance.now() - started) / 1000
        console.log(`${t.name}: #${execs} ${(execs / s).toFixed(0)}/s corpus ${corpus.length} blocks ${cov.blocks.size} features ${cov.seen.size}`)
      }
    }
    return 0
  } finally {
    clearInterval(beat)
    guard.uninstall()
    const s = (performance.now() - started) / 1000
    const fig = cov.figures()
    const stats = { target: t.name, mode: args.mode, execs, seconds: Math.round(s), execsPerSec: Math.round(execs / s), corpus: corpus.length, features: cov.seen.size, blocks: fig.blocks, functions: fig.functions, largestAlloc: guard.largest, files: fig.files }
    send({ stats })
    console.log(`${t.name}: done, ${execs} inputs in ${s.toFixed(0)} s, corpus ${corpus.length}, ${fig.blocks} blocks and ${fig.functions} functions of vmm/ reached, largest Buffer allocation ${guard.largest} bytes`)
    cov.close()
    await t.close?.()
  }
}

process.exitCode = await main()
// Handles a target left behind (a vCPU worker, a socket) must not keep a finished run alive.
setTimeout(() => process.exit(), 2000).unref()
