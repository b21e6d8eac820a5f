// Child process: one device-state migration (both sides here: the bytes move
// in native threads, not on this event loop; `-copy` modes read and write the
// data fds as a kernel VFIO fd requires, never splicing them), or, with
// `source-only`, how fast the emulated device alone produces its state
// (data fd -> /dev/null).
// Prints one JSON line.
import * as fs from 'node:fs'
import { native } from '../../vmm/native/addon.js'
import { deviceThroughput } from '../lib/vfio-pair.js'

const size = Number(process.argv[2])
const mode = process.argv[3] ?? 'migrate'
const MODES = ['migrate', 'verify', 'migrate-copy', 'verify-copy', 'source-only']
if (!Number.isSafeInteger(size) || size <= 0 || !MODES.includes(mode)) {
  console.error(`usage: device-throughput SIZE [${MODES.join('|')}] (got ${process.argv.slice(2).join(' ')})`)
  process.exit(2)
}

async function sourceOnly(): Promise<{ bytes: number; ms: number }> {
  const emu = new native.EmulatedDevice({ name: 'bench-source-only', flags: 1, stateSize: size, seed: 7 })
  const fd = await emu.device().setState('STOP_COPY')
  if (!fd) throw new Error('STOP_COPY gave no data fd')
  const nul = fs.openSync('/dev/null', 'w')
  try {
    const t0 = performance.now()
    const st = await fd.transferTo(nul)
    return { bytes: st.bytes, ms: performance.now() - t0 }
  } finally {
    fs.closeSync(nul)
    await fd.close()
  }
}

const r = mode === 'source-only'
  ? await sourceOnly()
  : await deviceThroughput(size, mode.startsWith('verify'), !mode.endsWith('-copy'))
console.log(JSON.stringify({ ...r, maxRss: process.resourceUsage().maxRSS * 1024 }))
