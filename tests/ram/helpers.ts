// Fixtures for the RAM tests: guest RAM with random and zero pages, and a
// source/destination pair run concurrently over any pair of channels.
import { randomFillSync } from 'node:crypto'
import type { Channel } from '../../vmm/channel/types.js'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { SaveVM } from '../../vmm/savevm/save.js'
import { loadvm, type LoadResult } from '../../vmm/savevm/load.js'
import { registerRam, type RamMigration, type DirtySource } from '../../vmm/ram/index.js'

export const PAGE = 4096
export const MACHINE = 'microvm-test'

/** `pages` pages: every `zeroEvery`-th page zero, the rest random (never all zero). */
export function guestRam(pages: number, zeroEvery = 3): Uint8Array {
  const m = new Uint8Array(pages * PAGE)
  randomFillSync(m)
  for (let p = 0; p < pages; p++) {
    if (p % zeroEvery === 0) m.fill(0, p * PAGE, (p + 1) * PAGE)
    else m[p * PAGE] |= 1
  }
  return m
}

export interface Side {
  reg: SaveVMRegistry
  ram: RamMigration
}

export function side(blocks: { name: string; memory: Uint8Array; base?: number }[], dirtySources: DirtySource[] = []): Side {
  const reg = new SaveVMRegistry()
  const ram = registerRam(reg, { blocks, dirtySources })
  return { reg, ram }
}

/** Bytes a channel's peer wrote until it ended its writes. */
export async function drain(c: Channel): Promise<Buffer> {
  const chunks: Buffer[] = []
  const buf = Buffer.alloc(1 << 16)
  for (;;) {
    const n = await c.read(buf, 0, buf.length)
    if (n === 0) break
    chunks.push(Buffer.from(buf.subarray(0, n)))
  }
  return Buffer.concat(chunks)
}

export interface RunOptions {
  /** Called between pre-copy rounds; resolve true to stop the guest and complete. */
  round?(i: number, save: SaveVM): Promise<boolean> | boolean
  /** Stop the guest (before saveComplete). */
  stop?(): Promise<void>
  maxBandwidth?: number
  maxRounds?: number
}

/** The source's whole save over `out`: setup, rounds until converged or round() says stop, complete, EOF. */
export async function saveOver(src: Side, out: Channel, o: RunOptions = {}): Promise<SaveVM> {
  const f = new MigStream(out, { maxBandwidth: o.maxBandwidth ?? 0 })
  const save = new SaveVM(f, src.reg, { machine: MACHINE, targetPageBits: 12 })
  try {
    await save.prepare()
    await save.header()
    await save.setup()
    for (let i = 0; i < (o.maxRounds ?? 10000); i++) {
      const done = await save.iterate()
      if (o.round ? await o.round(i, save) : done) break
      await f.throttle()
    }
    await o.stop?.()
    await save.complete()
    await save.nonIterable()
    await save.finish()
  } finally {
    await save.cleanup()
  }
  await out.endWrites()
  return save
}

/** Save on one end of a memory pair while the destination loads from the other. */
export async function migrate(src: Side, dst: Side, o: RunOptions = {}): Promise<{ save: SaveVM; load: LoadResult }> {
  const [a, b] = memoryPair(1 << 22)
  const [save, load] = await Promise.all([
    saveOver(src, a, o),
    loadvm(new MigStream(b), dst.reg, { machine: MACHINE }),
  ])
  return { save, load }
}

/** First differing page, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return 0
  for (let p = 0; p * PAGE < a.length; p++) {
    if (Buffer.compare(a.subarray(p * PAGE, (p + 1) * PAGE), b.subarray(p * PAGE, (p + 1) * PAGE)) !== 0) return p
  }
  return -1
}
