// The migration proof's RAM digest: how long hashing a microVM's guest RAM
// takes, which the demo's destination spends inside the downtime. SHA-256 on
// the event loop in 8 MiB slices (what the demo did before) against BLAKE3 on
// native threads (blake3Digest: one, two, the default). Runs on the microVM's
// own RAM (KVM memfd mapping, or the soft vCPU's SharedArrayBuffer), filled
// as a migration leaves it. Writes bench/results/digest.json.
// `node dist/bench/digest.js [--ram 256M] [--repeats N] [--vcpu kvm|soft]`
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { createHash } from 'node:crypto'
import { MicroVm, blake3Digest } from '../vmm/microvm/index.js'
import { kvmAvailable } from '../vmm/machine/index.js'
import { RESULTS_DIR } from './lib/paths.js'
import { summarize, type Summary } from './lib/stats.js'

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name)
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback
}

const ramMiB = Number.parseInt(arg('--ram', '256'), 10)
const repeats = Number.parseInt(arg('--repeats', '7'), 10)
if (!(ramMiB >= 4 && ramMiB % 2 === 0) || !(repeats >= 1)) throw new Error('usage: digest [--ram MiB (even, >= 4)] [--repeats N] [--vcpu kvm|soft]')

/** The demo's digest before BLAKE3: SHA-256 on this thread, yielding between 8 MiB slices. */
async function sha256Sliced(bytes: Uint8Array): Promise<string> {
  const h = createHash('sha256')
  const slice = 8 << 20
  for (let off = 0; off < bytes.byteLength; off += slice) {
    h.update(bytes.subarray(off, Math.min(bytes.byteLength, off + slice)))
    await new Promise<void>((r) => setImmediate(r))
  }
  return h.digest('hex')
}

async function main(): Promise<void> {
  const vcpu = arg('--vcpu', (await kvmAvailable()).available ? 'kvm' : 'soft') as 'kvm' | 'soft'
  // A source fills its cold pages; stopped before it starts, nothing writes RAM while it is hashed.
  const vm = await MicroVm.create({ role: 'source', ramSize: ramMiB << 20, vcpu, autostart: false })
  const ram = vm.vcpu.memory.bytes
  const ways: [string, () => Promise<string>][] = [
    ['sha256, event loop (before)', () => sha256Sliced(ram)],
    ['blake3, 1 native thread', () => blake3Digest(ram, 1)],
    ['blake3, 2 native threads', () => blake3Digest(ram, 2)],
    ['blake3, default threads (now)', () => blake3Digest(ram)],
  ]
  try {
    await blake3Digest(ram) // every page mapped before anything is timed
    const ms: number[][] = ways.map(() => [])
    for (let r = 0; r < repeats; r++) {
      // Rotating the order spreads a noisy neighbour over every way alike.
      for (let k = 0; k < ways.length; k++) {
        const i = (k + r) % ways.length
        const t0 = performance.now()
        await ways[i]![1]()
        ms[i]!.push(performance.now() - t0)
      }
    }
    const results = ways.map(([name], i) => ({ name, ms: summarize(ms[i]!) as Summary }))
    const out = {
      bench: 'digest', date: new Date().toISOString(), ramMiB, vcpu, repeats,
      machine: { cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, loadavg: os.loadavg()[0] },
      results,
    }
    fs.mkdirSync(RESULTS_DIR, { recursive: true })
    fs.writeFileSync(path.join(RESULTS_DIR, 'digest.json'), JSON.stringify(out, null, 2) + '\n')
    console.log(`guest RAM ${ramMiB} MiB (${vcpu}), ${repeats} runs each, load average ${os.loadavg()[0]!.toFixed(2)} on ${os.cpus().length} cores`)
    for (const { name, ms: s } of results) {
      console.log(`  ${name.padEnd(32)} median ${s.median.toFixed(1).padStart(6)} ms  (min ${s.min.toFixed(1)}, max ${s.max.toFixed(1)})  ${((ramMiB / s.median) * 1000).toFixed(0)} MiB/s`)
    }
  } finally {
    await vm.destroy()
  }
}

main().catch((e) => {
  console.error(`digest: ${(e as Error).stack ?? String(e)}`)
  process.exit(1)
})
