// `npm run bench [-- --quick] [--only ram,device,downtime,live,calls,qmp,local,tls]
// [--repeats N] [--no-qemu] [--no-install]`: every comparison of the
// project against its baselines, each pair measured in the same run.
// Writes bench/results/ (quick runs: bench/results/quick/): bench.json,
// summary.md and SVG charts.
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { native } from '../vmm/native/addon.js'
import { BenchContext } from './lib/context.js'
import { ensureQemu } from './lib/qemu.js'
import { RESULTS_DIR } from './lib/paths.js'
import { charts } from './lib/charts.js'
import { summaryMarkdown } from './lib/summary.js'
import type { BenchResults } from './lib/results.js'
import { memcpyMiBps } from './sections/limits.js'
import { runRam } from './sections/ram.js'
import { runDeviceThroughput, runDowntime } from './sections/device.js'
import { runLive } from './sections/live.js'
import { runCalls } from './sections/calls.js'
import { runQmp } from './sections/qmp.js'
import { runLocal } from './sections/local.js'
import { runTls } from './sections/tls.js'
import { MAX_RAM } from '../vmm/machine/workload.js'
import { parseArgs, type Part } from './lib/args.js'
import { makeRandomFile, removeRamFile, removeRamFiles } from './lib/ramfile.js'
import { killChildren } from './lib/proc.js'

/** Writes bench.json (when `json`), the charts and summary.md into `dir`; returns the summary. */
function writeOutputs(dir: string, results: BenchResults, json: boolean): string {
  fs.mkdirSync(dir, { recursive: true })
  const write = (name: string, text: string) => {
    const p = path.join(dir, name)
    fs.writeFileSync(p + '.tmp', text)
    fs.renameSync(p + '.tmp', p)
  }
  if (json) write('bench.json', JSON.stringify(results, null, 2) + '\n')
  for (const [name, svg] of Object.entries(charts(results))) write(name, svg)
  const md = summaryMarkdown(results)
  write('summary.md', md)
  return md
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2))
  if (opts.render) {
    const dir = opts.quick ? path.join(RESULTS_DIR, 'quick') : RESULTS_DIR
    const file = path.join(dir, 'bench.json')
    if (!fs.existsSync(file)) throw new Error(`bench --render: no ${file}; run the bench first`)
    writeOutputs(dir, JSON.parse(fs.readFileSync(file, 'utf8')) as BenchResults, false)
    console.log(`redrew ${dir}`)
    return
  }
  const t0 = Date.now()
  const ctx = new BenchContext(opts.quick, opts.repeats)
  const M = 1 << 20
  const ramSizes = opts.quick ? [256 * M] : [256 * M, 1024 * M, 4096 * M]
  const deviceSize = opts.quick ? 256 * M : 1024 * M
  const downtimeSizes = opts.quick ? [16 * M, 64 * M] : [16 * M, 64 * M, 256 * M, 1024 * M]
  const downtimeReps = opts.quick ? 2 : 3
  const liveRam = opts.quick ? 128 * M : 512 * M
  const liveSets = opts.quick ? [8 * M, 64 * M] : [8 * M, 64 * M, 256 * M]
  const liveReps = opts.quick ? 1 : 3

  const kvm = await native.kvmProbe().catch(e => ({ available: false, reason: (e as Error).message }))
  const results: BenchResults = {
    bench: 'vmm-migration', quick: opts.quick, date: new Date().toISOString(), durationS: 0, repeats: opts.repeats,
    machine: {
      cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, memGiB: Math.round(os.totalmem() / 2 ** 30),
      kernel: os.release(), node: process.version, kvm: kvm.available ? 'yes' : `no (${kvm.reason})`,
      loadavg: [os.loadavg()[0], 0],
    },
    limits: {}, ram: [], device: { throughput: [], downtime: [] }, live: [], skipped: [], errors: [],
  }
  const part = async (name: Part, fn: () => Promise<void>) => {
    if (!opts.only.has(name)) return
    ctx.log(`== ${name}`)
    try {
      await fn()
    } catch (e) {
      const msg = `${name}: ${(e as Error).message}`
      results.errors.push(msg)
      ctx.log(`  FAILED ${msg}`)
    }
  }

  let qemuOk = false
  if (opts.only.has('ram') || opts.only.has('tls')) {
    if (!opts.qemu) ctx.skip('ram/qemu', '--no-qemu given')
    else {
      const q = await ensureQemu(s => ctx.log(s), opts.install)
      if (q.version) { qemuOk = true; results.machine.qemu = q.version } else ctx.skip('ram/qemu', q.reason!)
    }
  }
  await part('limits', async () => { results.limits.memcpyMiBps = await memcpyMiBps(ctx) })
  await part('calls', async () => { results.calls = await runCalls(ctx) })
  await part('ram', async () => { results.ram = await runRam(ctx, ramSizes, qemuOk) })
  await part('device', async () => { results.device.throughput.push(await runDeviceThroughput(ctx, deviceSize)) })
  await part('downtime', async () => {
    // The STOP_COPY limit is derived from what the device path moves; measure it small if the throughput part did not run.
    const known = results.device.throughput[0]?.oursMiBps.median
    const pathMiBps = known ?? (await runDeviceThroughput(new BenchContext(true, 1, () => undefined), 64 * M)).oursMiBps.median
    results.device.downtime = await runDowntime(ctx, downtimeSizes, pathMiBps, downtimeReps)
  })
  await part('live', async () => { results.live = await runLive(ctx, liveRam, liveSets, liveReps) })
  await part('qmp', async () => {
    const size = opts.quick ? 64 * M : 256 * M
    let qemu = qemuOk
    if (!qemu && opts.qemu && !opts.only.has('ram')) qemu = !!(await ensureQemu(s => ctx.log(s), opts.install)).version
    const file = qemu ? await makeRandomFile(size) : undefined
    try {
      results.qmp = await runQmp(ctx, size, opts.quick ? 1 : 3, file)
    } finally {
      if (file) removeRamFile(file)
    }
  })

  await part('local', async () => {
    if (!kvm.available) {
      ctx.skip('local', `KVM not usable here: ${kvm.reason}`)
      return
    }
    // The largest guest the microVM takes (MAX_RAM, 4 GiB) only in a full
    // run: the copying side holds two copies of it.
    const sizes = opts.quick ? [256 * M, 1024 * M] : [256 * M, 1024 * M, MAX_RAM]
    results.local = await runLocal(ctx, sizes, opts.quick ? 2 : 3)
  })

  await part('tls', async () => {
    // 1 GiB of RAM and of device state, as docs/tls.md's targets are stated; quick: small, for CI.
    const size = opts.quick ? 128 * M : 1024 * M
    results.tls = await runTls(ctx, size, size, opts.quick ? 1 : 3, qemuOk)
  })

  results.durationS = (Date.now() - t0) / 1000
  results.machine.loadavg[1] = os.loadavg()[0]
  results.skipped = ctx.skipped
  const dir = opts.quick ? path.join(RESULTS_DIR, 'quick') : RESULTS_DIR
  ctx.log('\n' + writeOutputs(dir, results, true))
  ctx.log(`results in ${dir} (${results.durationS.toFixed(0)} s)`)
  if (results.errors.length) process.exitCode = 1
}

process.on('exit', () => { killChildren(); removeRamFiles() })
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    killChildren()
    removeRamFiles()
    process.kill(process.pid, sig)
  })
}

main().catch(e => {
  console.error((e as Error).message)
  process.exitCode = 2
})
