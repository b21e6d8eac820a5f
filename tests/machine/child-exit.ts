// Child process of the exit test: leaves a vCPU running and ends, either by
// running out of work or by process.exit(). The process must still end promptly.
import { createVcpu, type VcpuKind } from '../../vmm/machine/index.js'

const [kind, how] = process.argv.slice(2) as [VcpuKind, 'drain' | 'exit']
const v = await createVcpu(2 << 20, { kind })
await v.start()
await new Promise((r) => setTimeout(r, 20))
process.stdout.write(`running ${v.counter() >= 0n}\n`)
if (how === 'exit') process.exit(0)
