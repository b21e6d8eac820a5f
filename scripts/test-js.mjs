#!/usr/bin/env node
// npm run test:js: the whole tap suite, then vmm/'s coverage held to the
// thresholds in package.json ("tap": lines, statements, functions, branches).
//
// tap itself allows incomplete coverage (package.json), because a run of one
// file (npx tap tests/x.test.ts) covers a fraction of vmm/ and would fail
// with no word of why. The thresholds mean something only for the whole
// suite, so they are checked here, after it, with a message naming what fell
// short. Arguments go to tap; with any, no threshold is checked (a partial run).
import { spawnSync } from 'node:child_process'
import { readFileSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const config = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).tap ?? {}
const metrics = ['lines', 'statements', 'functions', 'branches']
const args = process.argv.slice(2)
const started = Date.now()

const r = spawnSync(join(root, 'node_modules', '.bin', 'tap'), ['--coverage-report=text', '--coverage-report=json-summary', ...args], { cwd: root, stdio: 'inherit' })
if (r.error) {
  console.error(`test:js: cannot run tap: ${r.error.message}`)
  process.exit(1)
}
if (r.status !== 0) {
  console.error(`test:js: tap failed (${r.signal ? `killed by ${r.signal}` : `exit ${r.status}`}): a test failed or crashed (or no coverage was written), see its report above`)
  process.exit(r.status || 1)
}
if (args.length) {
  console.log('test:js: a partial run (arguments given): coverage thresholds apply to the whole suite only, not checked')
  process.exit(0)
}

const summaryPath = join(root, '.tap', 'report', 'coverage-summary.json')
let total
try {
  // An old summary would pass or fail a suite it does not describe.
  if (statSync(summaryPath).mtimeMs < started) throw new Error('it predates this run')
  total = JSON.parse(readFileSync(summaryPath, 'utf8')).total
} catch (e) {
  console.error(`test:js: no coverage summary from this run at ${summaryPath} (${e.message})`)
  process.exit(1)
}
const want = m => Number(config[m] ?? 100)
const short = metrics.filter(m => !(Number(total[m]?.pct) >= want(m)))
if (short.length) {
  console.error(`test:js: every test passed, but coverage of vmm/ fell below the thresholds in package.json ("tap"): ${short.map(m => `${m} ${total[m]?.pct}% < ${want(m)}%`).join(', ')}`)
  process.exit(1)
}
console.log(`test:js: coverage of vmm/ within the thresholds: ${metrics.map(m => `${m} ${total[m].pct}% >= ${want(m)}%`).join(', ')}`)
