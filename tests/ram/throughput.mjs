#!/usr/bin/env node
// RAM migration throughput driver (not a test): migrates a paused guest's RAM
// of random content from this process to a forked destination process over
// loopback TCP, the way bench/sections/ram.ts measures it, and prints MiB/s.
// Each side can be profiled on its own with --prof-src / --prof-dst
// (node --cpu-prof, .cpuprofile files in --prof-dir).
//
//   npm run build:ts && node tests/ram/throughput.mjs --size 1024 --runs 3 [--verify]
//
// Uses the compiled dist/ so it measures what the bench measures.
import { fork } from 'node:child_process'
import { createHash, randomFillSync } from 'node:crypto'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const dist = path.resolve(here, '../../dist/vmm')
const { registerRam } = await import(path.join(dist, 'ram/index.js'))
const { migrate, incoming } = await import(path.join(dist, 'migration/index.js'))
const { Vm } = await import(path.join(dist, 'runstate/index.js'))
const { SaveVMRegistry } = await import(path.join(dist, 'savevm/registry.js'))

const MiB = 1 << 20

function parseArgs(argv) {
  const o = { size: 1024, runs: 1, verify: false, profSrc: false, profDst: false, profDir: '/tmp/ram-prof', role: 'src' }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const val = () => {
      const v = argv[++i]
      if (v === undefined) throw new Error(`${a} needs a value`)
      return v
    }
    if (a === '--size') o.size = Number(val())
    else if (a === '--runs') o.runs = Number(val())
    else if (a === '--verify') o.verify = true
    else if (a === '--prof-src') o.profSrc = true
    else if (a === '--prof-dst') o.profDst = true
    else if (a === '--prof-dir') o.profDir = val()
    else if (a === '--role') o.role = val()
    else throw new Error(`unknown argument ${a} (--size MiB --runs N --verify --prof-src --prof-dst --prof-dir DIR)`)
  }
  if (!Number.isInteger(o.size) || o.size <= 0 || o.size > 64 * 1024) throw new Error(`--size must be 1..65536 MiB, got ${o.size}`)
  if (!Number.isInteger(o.runs) || o.runs <= 0) throw new Error(`--runs must be a positive integer, got ${o.runs}`)
  return o
}

const ms = us => (us / 1000).toFixed(0)

function sha(b) {
  const h = createHash('sha256')
  for (let off = 0; off < b.length; off += 256 * MiB) h.update(b.subarray(off, Math.min(b.length, off + 256 * MiB)))
  return h.digest('hex')
}

function machine(mem, role) {
  const registry = new SaveVMRegistry()
  registerRam(registry, { blocks: [{ name: 'pc.ram', memory: mem }], dirtySources: [] })
  return { vm: new Vm(role === 'src' ? 'prelaunch' : 'inmigrate'), registry, machine: 'microvm' }
}

async function destination(o) {
  // Touched up front, as the bench's destination does: page faults are not the migration's.
  const mem = Buffer.allocUnsafe(o.size * MiB).fill(0)
  const m = machine(mem, 'dst')
  let c0
  const res = await incoming(m, 'tcp:127.0.0.1:0', {
    onListening: address => {
      c0 = process.cpuUsage()
      process.send({ listening: address })
    },
  })
  const cpu = process.cpuUsage(c0)
  process.send({ result: { loadTimeMs: res.loadTimeMs, cpu, digest: o.verify ? sha(mem) : undefined } })
}

function next(child) {
  return new Promise((resolve, reject) => {
    const onMsg = m => { cleanup(); resolve(m) }
    const onExit = code => { cleanup(); reject(new Error(`destination exited with ${code}`)) }
    const cleanup = () => { child.off('message', onMsg); child.off('exit', onExit) }
    child.on('message', onMsg)
    child.on('exit', onExit)
  })
}

async function once(o, mem, digest) {
  const execArgv = o.profDst ? ['--cpu-prof', '--cpu-prof-dir', o.profDir] : []
  const child = fork(fileURLToPath(import.meta.url), [...process.argv.slice(2), '--role', 'dst'], { execArgv })
  try {
    const l = await next(child)
    const m = machine(mem, 'src')
    await m.vm.vmStart()
    await m.vm.vmStop('paused')
    const c0 = process.cpuUsage()
    const t0 = performance.now()
    const stats = await migrate(m, l.listening, { parameters: { maxBandwidth: 0 } })
    const wall = performance.now() - t0
    const cpu = process.cpuUsage(c0)
    const r = await next(child)
    if (o.verify && r.result.digest !== digest) throw new Error('destination RAM differs from the source')
    return { ms: stats.totalTime, wall, transferred: stats.transferred, downtime: stats.downtime, cpu, dcpu: r.result.cpu }
  } finally {
    await new Promise(res => (child.exitCode !== null ? res() : child.once('exit', res)))
  }
}

async function source(o) {
  const mem = Buffer.allocUnsafe(o.size * MiB)
  for (let off = 0; off < mem.length; off += 64 * MiB) randomFillSync(mem, off, Math.min(64 * MiB, mem.length - off))
  const digest = o.verify ? sha(mem) : undefined
  const rates = []
  for (let i = 0; i < o.runs; i++) {
    const r = await once(o, mem, digest)
    const mibps = o.size / (r.ms / 1000)
    rates.push(mibps)
    console.log(`run ${i + 1}: ${o.size} MiB in ${r.ms.toFixed(0)} ms (wall ${r.wall.toFixed(0)} ms) = ${mibps.toFixed(0)} MiB/s; ` +
      `wire/RAM ${(r.transferred / mem.length).toFixed(4)}, downtime ${r.downtime?.toFixed?.(0)} ms${o.verify ? ', verified' : ''}; ` +
      `CPU ms user/sys source ${ms(r.cpu.user)}/${ms(r.cpu.system)} destination ${ms(r.dcpu.user)}/${ms(r.dcpu.system)}`)
  }
  rates.sort((a, b) => a - b)
  console.log(`median ${rates[Math.floor(rates.length / 2)].toFixed(0)} MiB/s (min ${rates[0].toFixed(0)}, max ${rates[rates.length - 1].toFixed(0)})`)
}

const opts = parseArgs(process.argv.slice(2))
if (opts.role === 'dst') {
  destination(opts).then(() => process.exit(0), e => { console.error(`destination: ${e.stack ?? e}`); process.exit(1) })
} else {
  source(opts).then(() => process.exit(0), e => { console.error(`source: ${e.stack ?? e}`); process.exit(1) })
}
