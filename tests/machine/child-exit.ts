// Child process of the exit test: leaves a vCPU running and ends, either by
// running out of work or by process.exit(). The process must still end promptly.
import { createVcpu, type VcpuKind } from '../../vmm/machine/index.js'

if (process.argv.length < 4) {
  // Run directly (e.g. `tap tests/machine/`): nothing to do without the parent's arguments.
  console.log('1..0 # SKIP helper process of the machine tests')
  process.exit(0)
}
const [kind, how] = process.argv.slice(2) as [VcpuKind, 'drain' | 'exit']
const v = await createVcpu(2 << 20, { kind })
await v.start()
// The guest must really be under way when the process ends (bounded: the
// parent's spawnSync gives up after 30 s).
const deadline = Date.now() + 10_000
while (v.counter() === 0n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
process.stdout.write(`running ${v.running && v.counter() > 0n}\n`)
if (how === 'exit') process.exit(0)
