#!/usr/bin/env node
// npm run fuzz / npm run fuzz:ci: every fuzz target for a bounded time.
//
//   node scripts/fuzz.mjs [--seconds N] [--targets a,b] [--ci] [--merge]
//                         [--replay TARGET FILE...] [--make-seeds]
//
// TypeScript targets (tests/fuzz/targets) run in a child process each
// (tests/fuzz/worker.ts, compiled to .fuzz-build/ so that coverage is taken
// over plain JavaScript, not over a TypeScript loader): a child that stops
// answering for longer than the target's hang bound, or dies, has hung or
// crashed on the input it wrote to its `current` file, which is kept as the
// finding. Rust targets (crates/fuzz) are libFuzzer binaries built on the
// stable toolchain with SanitizerCoverage (scripts/fuzz-rust.sh).
//
// New inputs go to .fuzz/<target>/corpus, findings to .fuzz/findings/<target>/.
// The stored corpus (tests/fuzz/corpus/<target>) is read, never written,
// except by --merge, which minimises it together with .fuzz/<target>/corpus.
// --ci: any finding fails the run, and figures go to .fuzz/stats.json.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync, copyFileSync, readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const JS_TARGETS = ['savevm', 'ram-diff', 'analyze', 'cli', 'qmp']
const RUST_TARGETS = ['ram_decode', 'vfio_frames']
const args = process.argv.slice(2)
const opt = (name, dflt) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : dflt
}
const ci = args.includes('--ci')
const seconds = Number(opt('--seconds', ci ? 45 : 600))
const only = opt('--targets', '')?.split(',').filter(Boolean)
const work = join(root, '.fuzz')
const unknown = only?.filter(t => !JS_TARGETS.includes(t) && !RUST_TARGETS.includes(t)) ?? []
if (unknown.length) {
  process.stderr.write(`fuzz: no target named ${unknown.join(', ')}; the targets are ${[...JS_TARGETS, ...RUST_TARGETS].join(', ')}\n`)
  process.exit(2)
}
const hangGraceMs = 30_000

function log(s) {
  process.stdout.write(`fuzz: ${s}\n`)
}

function build() {
  const t0 = Date.now()
  // Emit only: types are checked by `npm run build:ts`, and a fuzzing run
  // should not wait on (or fail for) a type error elsewhere in the tree.
  const r = spawnSync(join(root, 'node_modules', '.bin', 'tsc'), ['-p', 'tests/fuzz/tsconfig.json', '--noCheck'], { cwd: root, stdio: 'inherit' })
  if (r.status !== 0) {
    log('compiling tests/fuzz (tsc -p tests/fuzz/tsconfig.json) failed, see above')
    process.exit(1)
  }
  log(`compiled the TypeScript targets in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
}

/** One worker run; resolves its stats and findings. */
function runWorker(target, mode, extra, budgetSec) {
  return new Promise(resolve => {
    const dir = join(work, target)
    mkdirSync(dir, { recursive: true })
    const current = join(dir, `.current-${process.pid}`)
    const findings = join(work, 'findings', target)
    const child = spawn(process.execPath, [
      // A heap runaway is a finding (the child dies), not a swapping machine.
      '--max-old-space-size=2048',
      join(root, '.fuzz-build', 'tests', 'fuzz', 'worker.js'),
      '--target', target, '--mode', mode, '--seconds', String(budgetSec), '--current', current, '--findings', findings,
      '--seed', String(Number(opt('--seed', Date.now() & 0x7fffffff))),
      ...extra,
    ], { cwd: root, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    let last = Date.now()
    let stats
    const found = []
    child.on('message', m => {
      last = Date.now()
      if (m.stats) stats = m.stats
      if (m.finding) found.push(m.finding)
    })
    const watch = setInterval(() => {
      if (Date.now() - last > hangGraceMs) {
        log(`${target}: no word from the worker for ${hangGraceMs / 1000} s: a hang`)
        child.kill('SIGKILL')
      }
    }, 1000)
    child.on('exit', (code, signal) => {
      clearInterval(watch)
      if ((signal || (code !== 0 && code !== 1)) && existsSync(current)) {
        // Died or was killed without a verdict: the input it was running is the finding.
        mkdirSync(findings, { recursive: true })
        const kind = signal === 'SIGKILL' ? 'hang' : 'crash'
        const file = join(findings, `${kind}-${Date.now()}`)
        copyFileSync(current, file)
        writeFileSync(`${file}.txt`, `${target}: the worker ${signal ? `was killed by ${signal}` : `exited with ${code}`} on this input\n`)
        log(`${target}: worker ${signal ? `killed by ${signal}` : `exited ${code}`}; input saved to ${file}`)
        found.push(file)
      }
      resolve({ target, code, signal, stats, found })
    })
  })
}

function runRust(target, budgetSec) {
  const r = spawnSync('bash', [join(root, 'scripts', 'fuzz-rust.sh'), target, String(budgetSec)], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  process.stdout.write(r.stdout)
  const m = /STATS (\{.*\})/.exec(r.stdout)
  const stats = m ? JSON.parse(m[1]) : undefined
  const found = [...r.stdout.matchAll(/^FINDING (\S+)/gm)].map(x => x[1])
  return { target, code: r.status, stats, found }
}

async function main() {
  if (args.includes('--make-seeds')) {
    build()
    const r = spawnSync(process.execPath, [join(root, '.fuzz-build', 'tests', 'fuzz', 'make-seeds.js')], { cwd: root, stdio: 'inherit' })
    process.exit(r.status ?? 1)
  }
  const ri = args.indexOf('--replay')
  if (ri >= 0) {
    const [target, ...files] = args.slice(ri + 1)
    if (RUST_TARGETS.includes(target)) {
      process.exit(spawnSync('bash', [join(root, 'scripts', 'fuzz-rust.sh'), target, 'replay', ...files], { cwd: root, stdio: 'inherit' }).status ?? 1)
    }
    build()
    const r = await runWorker(target, 'replay', files, 0)
    process.exit(r.code ?? 1)
  }
  const js = JS_TARGETS.filter(t => !only?.length || only.includes(t))
  const rust = RUST_TARGETS.filter(t => !only?.length || only.includes(t))
  if (js.length) build()
  const results = []
  for (const t of js) {
    const corpus = join(root, 'tests', 'fuzz', 'corpus', t)
    const mine = join(work, t, 'corpus')
    if (args.includes('--merge')) {
      results.push(await runWorker(t, 'merge', ['--corpus', corpus, '--corpus', mine, '--out', corpus], 0))
      continue
    }
    log(`${t}: ${seconds} s`)
    results.push(await runWorker(t, 'fuzz', ['--corpus', corpus, '--corpus', mine, '--out', mine], seconds))
  }
  for (const t of rust) {
    if (args.includes('--merge')) {
      results.push(runRust(t, 'merge'))
      continue
    }
    log(`${t}: ${seconds} s`)
    results.push(runRust(t, seconds))
  }

  log('summary')
  const table = []
  for (const r of results) {
    const s = r.stats ?? {}
    const cov = s.blocks !== undefined ? `${s.blocks} V8 blocks, ${s.functions} functions` : s.cov !== undefined ? `${s.cov} edges (SanitizerCoverage), ${s.ft} features` : 'no figures'
    table.push({ target: r.target, execs: s.execs, execsPerSec: s.execsPerSec, corpus: s.corpus, coverage: cov, findings: r.found.length })
    log(`  ${r.target.padEnd(12)} ${String(s.execs ?? '-').padStart(8)} inputs ${String(s.execsPerSec ?? '-').padStart(6)}/s  corpus ${String(s.corpus ?? '-').padStart(4)}  ${cov}  findings ${r.found.length}${r.found.length ? `: ${r.found.join(' ')}` : ''}`)
  }
  mkdirSync(work, { recursive: true })
  writeFileSync(join(work, 'stats.json'), JSON.stringify(results.map(r => ({ ...r.stats, target: r.target, findings: r.found })), null, 2))
  const bad = results.filter(r => r.found.length || (r.code !== 0 && r.code !== undefined))
  if (bad.length) {
    log(`FAILED: ${bad.map(r => `${r.target} (${r.found.length ? `findings: ${r.found.join(', ')}` : `exit ${r.code}${r.signal ? ` ${r.signal}` : ''}`})`).join('; ')}`)
    log('reproduce one with: node scripts/fuzz.mjs --replay TARGET FILE; fix it, and add the file under tests/fuzz/regressions/TARGET/')
    process.exit(1)
  }
  log(`${results.length} targets, no findings`)
}

await main()
