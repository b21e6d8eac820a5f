// Stream write throughput: MigStream (4 KiB pages with an 8-byte header each,
// and 1 MiB chunks with a 4-byte length) against a plain writev loop of the
// same bytes, to a pipe and to a loopback TCP socket. Writes
// bench/results/stream.json. `--quick` for a short run.
import * as fs from 'node:fs'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { connect } from '../vmm/channel/connect.js'
import { MigStream } from '../vmm/stream/stream.js'
import { startTcpDrain, stopChild, rawTcp, rawPipe, writevRaw } from './lib/sinks.js'
import type { Writable } from 'node:stream'
import type { Channel } from '../vmm/channel/types.js'

const quick = process.argv.includes('--quick')
const TOTAL = (quick ? 64 : 256) << 20
const REPEAT = quick ? 2 : 6
const RAM = Buffer.alloc(64 << 20)
for (let i = 0; i < RAM.length; i += 4096) RAM.writeUInt32LE(i, i)

type Unit = 'page4k' | 'chunk1m'
const unitSize = (u: Unit) => (u === 'page4k' ? 4096 : 1 << 20)
/** Pages per flush: what maybeFlush's 512 KiB threshold gives. */
const BATCH = 128

async function viaStream(ch: Channel, unit: Unit): Promise<number> {
  const f = new MigStream(ch)
  const size = unitSize(unit)
  const n = TOTAL / size
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    const off = (i * size) % RAM.length
    if (unit === 'page4k') f.putBe64n(off | 0x8)
    else f.putBe32(size)
    f.putBufferAsync(RAM.subarray(off, off + size))
    if (f.flushNeeded) await f.flush()
  }
  await f.flush()
  if (f.error) throw f.error
  return performance.now() - t0
}

async function viaWritev(w: Writable, unit: Unit): Promise<number> {
  const size = unitSize(unit)
  const n = TOTAL / size
  const hdrLen = unit === 'page4k' ? 8 : 4
  const headers = Buffer.alloc(hdrLen * BATCH)
  const t0 = performance.now()
  const per = unit === 'page4k' ? BATCH : 1
  for (let i = 0; i < n; i += per) {
    const iov: Uint8Array[] = []
    for (let k = 0; k < per && i + k < n; k++) {
      const off = ((i + k) * size) % RAM.length
      const h = headers.subarray(k * hdrLen, (k + 1) * hdrLen)
      if (unit === 'page4k') h.writeUInt32BE(off | 0x8, 4)
      else h.writeUInt32BE(size)
      iov.push(h, RAM.subarray(off, off + size))
    }
    await writevRaw(w, iov)
  }
  return performance.now() - t0
}

interface Result {
  sink: string
  unit: Unit
  bytes: number
  stream_MiBps: number
  writev_MiBps: number
  ratio: number
}

const mibps = (ms: number) => TOTAL / (1 << 20) / (ms / 1000)

async function runPipe(unit: Unit): Promise<Result> {
  const best = { s: Infinity, w: Infinity }
  for (let r = 0; r < REPEAT; r++) {
    const order = r % 2 === 0 ? ['stream', 'writev'] : ['writev', 'stream']
    for (const which of order) {
      if (which === 'stream') {
        const ch = await connect('exec:cat > /dev/null')
        best.s = Math.min(best.s, await viaStream(ch, unit))
        await ch.endWrites()
        await ch.close()
      } else {
        const { child, raw } = rawPipe()
        best.w = Math.min(best.w, await viaWritev(raw, unit))
        await stopChild(child)
      }
    }
  }
  return result('pipe', unit, best)
}

async function runTcp(unit: Unit): Promise<Result> {
  const { port, child } = await startTcpDrain()
  const best = { s: Infinity, w: Infinity }
  for (let r = 0; r < REPEAT; r++) {
    // Alternate which goes first so neither gets a warmer connection or server.
    const order = r % 2 === 0 ? ['stream', 'writev'] : ['writev', 'stream']
    for (const which of order) {
      if (which === 'stream') {
        const ch = await connect(`tcp:127.0.0.1:${port}`)
        best.s = Math.min(best.s, await viaStream(ch, unit))
        await ch.close()
      } else {
        const raw = await rawTcp(port)
        best.w = Math.min(best.w, await viaWritev(raw, unit))
        raw.destroy()
      }
    }
  }
  await stopChild(child)
  return result('tcp', unit, best)
}

function result(sink: string, unit: Unit, best: { s: number; w: number }): Result {
  const s = mibps(best.s)
  const w = mibps(best.w)
  return { sink, unit, bytes: TOTAL, stream_MiBps: Math.round(s), writev_MiBps: Math.round(w), ratio: Math.round((s / w) * 1000) / 1000 }
}

const results: Result[] = []
for (const unit of ['page4k', 'chunk1m'] as Unit[]) {
  results.push(await runPipe(unit))
  results.push(await runTcp(unit))
}
const out = {
  bench: 'stream',
  quick,
  node: process.version,
  date: new Date().toISOString(),
  target_ratio: 0.9,
  results,
  min_ratio: Math.min(...results.map(r => r.ratio)),
  peak_rss_MiB: Math.round(process.resourceUsage().maxRSS / 1024),
}
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), fs.existsSync(path.join(path.dirname(fileURLToPath(import.meta.url)), '../../package.json')) ? '../..' : '..')
const dir = path.join(root, 'bench', 'results')
fs.mkdirSync(dir, { recursive: true })
fs.writeFileSync(path.join(dir, 'stream.json'), JSON.stringify(out, null, 2) + '\n')
for (const r of results) console.log(`${r.sink.padEnd(5)} ${r.unit.padEnd(8)} stream ${String(r.stream_MiBps).padStart(6)} MiB/s  writev ${String(r.writev_MiBps).padStart(6)} MiB/s  ratio ${r.ratio}`)
console.log(`peak RSS ${out.peak_rss_MiB} MiB; results in ${path.join(dir, 'stream.json')}`)
