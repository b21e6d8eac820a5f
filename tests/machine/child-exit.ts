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
await new Promise((r) => setTimeout(r, 20))
process.stdout.write(`running ${v.counter() >= 0n}\n`)
if (how === 'exit') process.exit(0)
