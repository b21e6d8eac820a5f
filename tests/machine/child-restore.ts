// Child process of the restore tests: loads a vCPU state and RAM image from a
// folder, runs the guest on, and writes what it found to result.json.
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createVcpu, regionChecksum, type VcpuKind } from '../../vmm/machine/index.js'

if (process.argv.length < 4) {
  // Run directly (e.g. `tap tests/machine/`): nothing to do without the parent's arguments.
  console.log('1..0 # SKIP helper process of the machine tests')
  process.exit(0)
}
const [kind, dir] = process.argv.slice(2) as [VcpuKind, string]
const ram = readFileSync(join(dir, 'ram'))
const v = await createVcpu(ram.byteLength, { kind, params: { regionPages: 300, pagesPerIter: 5, spin: 1000 } })
v.memory.load(ram)
await v.setState({ kind, bytes: readFileSync(join(dir, 'state')) })
const from = v.counter()
await v.start()
const deadline = Date.now() + 10_000
while (v.counter() < from + 10n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
await v.quiesce()
const p = v.params()
const consistent = v.checksum() === regionChecksum(v.memory.bytes, p.regionStart, p.regionPages)
writeFileSync(join(dir, 'result.json'), JSON.stringify({ counter: v.counter().toString(), consistent }))
await v.destroy()
