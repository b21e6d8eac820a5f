// The RAM section's records through both decoders: RamLoader reading a
// memory channel (TypeScript only) and RamLoader over a unix socket, where
// native code (crates/vmm-native/src/ram/decode.rs, ramLoadPages) takes the
// records it can. Same bytes, same verdict: the same error (code and
// message) or the same memory and counts; neither writes outside its
// blocks, which sit between guard pages in one arena.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { memoryPair } from '../../../vmm/channel/memory.js'
import { connect, listen, type Listener } from '../../../vmm/channel/connect.js'
import type { Channel } from '../../../vmm/channel/types.js'
import { MigStream } from '../../../vmm/stream/stream.js'
import { RamLayout, RamLoader } from '../../../vmm/ram/index.js'
import { LoadError } from '../../../vmm/savevm/errors.js'
import { StreamError } from '../../../vmm/stream/errors.js'
import { native } from '../../../vmm/native/addon.js'
import { Finding, type Target } from '../engine.js'
import { assertTyped } from './typed.js'

const PAGE = 4096
const GUARD = PAGE
const GUARD_BYTE = 0xa5
/** This side's blocks: as tests/ram's local(), two blocks of 16 and 2 pages. */
export const BLOCKS: [string, number][] = [['pc.ram', 16], ['vga', 2]]

interface Side { arena: Uint8Array; loader: RamLoader; ranges: [number, number][] }

function side(): Side {
  const total = BLOCKS.reduce((s, [, p]) => s + p * PAGE + GUARD, GUARD)
  const arena = new Uint8Array(total).fill(GUARD_BYTE)
  const ranges: [number, number][] = []
  let at = GUARD
  const blocks = BLOCKS.map(([name, pages], i) => {
    const memory = arena.subarray(at, at + pages * PAGE)
    // Distinct old content per page, so a page not written is told from one that was.
    for (let p = 0; p < pages; p++) memory.fill(0x10 + i * 0x20 + p, p * PAGE, (p + 1) * PAGE)
    ranges.push([at, at + pages * PAGE])
    at += pages * PAGE + GUARD
    return { name, memory, base: i * 0x100000000 }
  })
  return { arena, loader: new RamLoader(new RamLayout(blocks)), ranges }
}

type Verdict = { ok: true } | { ok: false; code: string; message: string }

/** Sections of records until the input ends at a section's end, then the completeness check. */
async function load(f: MigStream, loader: RamLoader): Promise<Verdict> {
  try {
    do await loader.load(f, 4)
    while ((await f.tryFill(1)) > 0)
    loader.checkComplete()
    return { ok: true }
  } catch (e) {
    assertTyped(e, [LoadError, StreamError], 'RamLoader')
    return { ok: false, code: (e as LoadError).code, message: (e as Error).message }
  }
}

function guardsIntact(s: Side, path: string): void {
  let from = 0
  for (const [start, end] of [...s.ranges, [s.arena.length, s.arena.length] as [number, number]]) {
    for (let i = from; i < start; i++) {
      if (s.arena[i] !== GUARD_BYTE) throw new Finding(`${path}: byte ${i - from} of the guard before arena offset ${start} was written (outside every block)`)
    }
    from = end
  }
}

/** A connected unix socket pair as channels, [writer, reader], as `incoming unix:` would accept. */
async function socketPair(l: Listener): Promise<[Channel, Channel]> {
  const [w, r] = await Promise.all([connect(l.address), l.accept()])
  return [w, r]
}

export async function target(): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'fuzz-ram-'))
  const path = join(dir, 's')
  const server = await listen(`unix:${path}`)
  const n = native as unknown as Record<string, (...a: unknown[]) => unknown>
  const orig = n.ramLoadPages!
  let nativeCalls = 0
  n.ramLoadPages = (...a: unknown[]) => {
    nativeCalls++
    return orig(...a)
  }
  return {
    name: 'ram-diff',
    invariant: 'RamLoader over a memory channel (TypeScript) and over a unix socket (native ramLoadPages) give the same error, or the same memory and counts; neither writes outside its blocks',
    maxLen: 96 << 10,
    timeoutMs: 10_000,
    // Both loaders write pages in place; nothing of the input's size need be allocated.
    allocLimit: 1 << 20,
    dict: [
      ...[0x02, 0x04, 0x08, 0x10, 0x20, 0x22, 0x28, 0x40, 0x100, 0x200].map(f => { const b = Buffer.alloc(8); b.writeUInt32BE(f, 4); return b }),
      Buffer.from('\x06pc.ram'), Buffer.from('\x03vga'), Buffer.from([0, 0, 0, 0, 0, 0x01, 0x20, 0x04]),
    ],
    async seeds() {
      return []
    },
    async run(input) {
      const ts = side()
      const [a, b] = memoryPair(1 << 26)
      await a.writev([input])
      await a.endWrites()
      const tv = await load(new MigStream(b), ts.loader)

      const nat = side()
      const [w, r]: Channel[] = await socketPair(server)
      const before = nativeCalls
      let nv: Verdict
      try {
        const write = (async () => {
          await w.writev([input]).catch(() => undefined)
          await w.endWrites().catch(() => undefined)
        })()
        nv = await load(new MigStream(r), nat.loader)
        // A loader that stopped early leaves the rest unread; closing ends the write.
        await r.close()
        await write
      } finally {
        await w.close()
        await r.close()
      }
      guardsIntact(ts, 'TypeScript path')
      guardsIntact(nat, 'native path')
      const used = nativeCalls > before ? 'native code took part' : 'native code never called'
      if (tv.ok !== nv.ok || (!tv.ok && !nv.ok && (tv.code !== nv.code || tv.message !== nv.message))) {
        throw new Finding(`verdicts differ (${used}):\n  TypeScript: ${tv.ok ? 'loaded' : tv.message}\n  native:     ${nv.ok ? 'loaded' : nv.message}`)
      }
      if (tv.ok) {
        if (Buffer.compare(ts.arena, nat.arena) !== 0) throw new Finding(`both loaded, but the memory differs (${used})`)
        const [s1, s2] = [JSON.stringify(ts.loader.stats), JSON.stringify(nat.loader.stats)]
        if (s1 !== s2) throw new Finding(`both loaded, but the counts differ: TypeScript ${s1}, native ${s2}`)
      }
    },
    async close() {
      n.ramLoadPages = orig
      await server.close()
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
