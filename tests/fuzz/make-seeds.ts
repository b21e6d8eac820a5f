// Writes the seeds the stored corpus started from (run by `npm run fuzz -- --make-seeds`):
// streams of our own `save` of a microVM shaped as the savevm target's
// destination, its RAM section alone for the RAM targets, and cut QEMU 7.2
// streams for `analyze`. Their files are named by content, so a rerun adds
// only what changed; `npm run fuzz -- --merge` then minimises.
import { mkdirSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MicroVm } from '../../vmm/microvm/index.js'
import { migrate } from '../../vmm/migration/index.js'
import { sha1 } from './engine.js'
import { SHAPE } from './targets/savevm.js'
import { BLOCKS } from './targets/ram-diff.js'
import { spawnSync } from 'node:child_process'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { registerRam } from '../../vmm/ram/index.js'

const root = process.argv[2] ?? 'tests/fuzz/corpus'
const tmp = mkdtempSync(join(tmpdir(), 'fuzz-seeds-'))

function put(target: string, bytes: Buffer): void {
  mkdirSync(join(root, target), { recursive: true })
  writeFileSync(join(root, target, sha1(bytes)), bytes)
  console.log(`${target}: ${bytes.length} bytes`)
}

async function ourSave(zeroRam: boolean, opts: Parameters<typeof migrate>[2] = {}): Promise<Buffer> {
  const src = await MicroVm.create({ role: 'source', ...SHAPE })
  try {
    await src.vm.vmStop()
    // Guest RAM that is all zero but the machine's control pages travels as
    // ZERO records: a seed of kilobytes, not megabytes.
    if (zeroRam) src.vcpu.memory.bytes.fill(0, src.layout.workload.regionStart * 4096)
    const file = join(tmp, 'save')
    await migrate(src, `file:${file}`, opts)
    return readFileSync(file)
  } finally {
    await src.destroy()
  }
}

const mine = await ourSave(true)
put('savevm', mine)
put('analyze', mine)

// The RAM sections RamSaver writes for the ram-diff target's blocks (setup,
// one round, completion), pages of data and zero pages alike.
{
  const blocks = BLOCKS.map(([name, pages], i) => {
    const memory = new Uint8Array(pages * 4096)
    for (let p = 0; p < pages; p++) if ((p + i) % 3) memory.fill(p + 1, p * 4096, p * 4096 + 64 * (p + 1))
    return { name, memory, base: i * 0x100000000 }
  })
  const ram = registerRam(new SaveVMRegistry(), { blocks, dirtySources: [] })
  const [a, b] = memoryPair(1 << 26)
  const f = new MigStream(a)
  const h = ram.entry.handlers
  await h.saveSetup!(f)
  while (!(await h.saveLiveIterate!(f))) { /* every page once */ }
  await h.saveComplete!(f)
  await f.flush()
  await a.endWrites()
  const chunks: Buffer[] = []
  const buf = Buffer.alloc(1 << 16)
  for (let n; (n = await b.read(buf, 0, buf.length)) > 0;) chunks.push(Buffer.from(buf.subarray(0, n)))
  put('ram-diff', Buffer.concat(chunks))
}

// Real QEMU 7.2 streams, as tests/interop makes them: an empty microvm
// machine whole, a pc machine cut after 64 KiB (its BIOS pages).
for (const [machine, cut] of [['microvm', 256 << 10], ['pc', 64 << 10]] as const) {
  const out = join(tmp, `qemu-${machine}`)
  const qmp = [
    '{"execute":"qmp_capabilities"}',
    `{"execute":"migrate","arguments":{"uri":"exec:cat > ${out}"}}`,
  ].join('\n')
  const r = spawnSync('bash', ['-c', `(echo '${qmp}'; sleep 3; echo '{"execute":"quit"}') | qemu-system-x86_64 -machine ${machine},accel=tcg -m 16M -nodefaults -display none -S -qmp stdio`], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 60_000 })
  if (r.status !== 0) {
    console.log(`qemu-system-x86_64 (${machine}) did not run (status ${r.status}): no QEMU seed`)
    continue
  }
  put('analyze', readFileSync(out).subarray(0, cut))
}
rmSync(tmp, { recursive: true, force: true })
