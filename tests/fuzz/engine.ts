// A small coverage-guided fuzzer for the TypeScript targets.
//
// Why not Jazzer.js: its only release that installs from the npm registry
// alone (4.0.0) ships a fuzzer addon built against glibc 2.38, and Debian 12
// has 2.36; 2.1.0 fetches its addon from GitHub at install time. So coverage
// comes from V8 itself: precise block coverage (the inspector's Profiler, in
// this process), taken after every input. A feature is a block of a vmm/
// script reached with a given hit-count bucket, as libFuzzer counts edges;
// an input that reaches a new feature joins the corpus.
//
// The targets are plain async functions over a Buffer. A target throws
// Finding when an invariant breaks; anything else it throws is a finding too
// (the target itself catches the errors its invariant allows).
import { Session } from 'node:inspector'
import { createHash } from 'node:crypto'

/** An invariant broke. */
export class Finding extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'Finding'
  }
}

export interface Target {
  name: string
  /** What the invariant is, in a sentence (printed and in docs/fuzzing.md). */
  invariant: string
  /** Built-in seeds besides the stored corpus (may be empty). */
  seeds(): Promise<Buffer[]>
  /** Checks one input; throws on a broken invariant. */
  run(input: Buffer): Promise<void>
  /** Largest input the mutator makes. */
  maxLen: number
  /** An input taking longer is a hang. */
  timeoutMs: number
  /** Largest single Buffer allocation one input may cause (bytes). */
  allocLimit: number
  /** Tokens the mutator inserts or overwrites with. */
  dict?: Buffer[]
  /** Scripts whose blocks count as coverage (URL test). */
  cover?: RegExp
  /** Called once when the run ends. */
  close?(): Promise<void>
}

export const sha1 = (b: Uint8Array): string => createHash('sha1').update(b).digest('hex')

// ---------------------------------------------------------------------------
// Coverage

interface Range { startOffset: number; endOffset: number; count: number }
interface ScriptCoverage { url: string; functions: { functionName: string; ranges: Range[] }[] }

function post<T>(s: Session, method: string, params?: object): Promise<T> {
  return new Promise((res, rej) => s.post(method, params ?? {}, (err, r) => (err ? rej(err) : res(r as T))))
}

// libFuzzer's hit-count buckets: a loop that runs once more is not new, one that runs 8x as often is.
function bucket(n: number): number {
  return n < 4 ? n : n < 8 ? 4 : n < 16 ? 5 : n < 32 ? 6 : n < 128 ? 7 : 8
}

export class Coverage {
  private readonly s = new Session()
  private readonly urls = new Map<string, number>()
  /** Every feature seen so far. */
  readonly seen = new Set<number>()
  /** Blocks (url, start, end) ever reached, for the figures. */
  readonly blocks = new Set<string>()
  readonly functions = new Set<string>()

  constructor(private readonly cover: RegExp) {}

  async start(): Promise<void> {
    this.s.connect()
    await post(this.s, 'Profiler.enable')
    await post(this.s, 'Profiler.startPreciseCoverage', { callCount: true, detailed: true })
  }

  /**
   * How many features the code run since the last call reached that no
   * earlier input did (V8 resets its counters on each take). A block's first
   * reach is always a new feature, so the blocks and functions recorded here
   * are every one the run reached.
   */
  async take(): Promise<number> {
    const { result } = await post<{ result: ScriptCoverage[] }>(this.s, 'Profiler.takePreciseCoverage')
    let n = 0
    for (const sc of result) {
      if (!this.cover.test(sc.url)) continue
      let u = this.urls.get(sc.url)
      if (u === undefined) this.urls.set(sc.url, (u = this.urls.size + 1))
      for (const fn of sc.functions) {
        for (let i = 0; i < fn.ranges.length; i++) {
          const r = fn.ranges[i]!
          if (r.count === 0) continue
          // FNV-1a over the block and its bucket.
          let h = 0x811c9dc5
          for (const v of [u, r.startOffset, r.endOffset, bucket(r.count)]) {
            h = Math.imul(h ^ (v & 0xffff), 0x01000193)
            h = Math.imul(h ^ (v >>> 16), 0x01000193)
          }
          h >>>= 0
          if (this.seen.has(h)) continue
          this.seen.add(h)
          n++
          const key = `${sc.url}#${r.startOffset}-${r.endOffset}`
          this.blocks.add(key)
          if (i === 0) this.functions.add(key)
        }
      }
    }
    return n
  }

  /** Blocks and functions reached over the whole run, per file and in total. */
  figures(): { blocks: number; functions: number; files: Record<string, { blocks: number; functions: number }> } {
    return { blocks: this.blocks.size, functions: this.functions.size, files: this.perFile() }
  }

  private perFile(): Record<string, { blocks: number; functions: number }> {
    const files: Record<string, { blocks: number; functions: number }> = {}
    const short = (k: string) => k.slice(0, k.indexOf('#')).replace(/^.*?\/vmm\//, 'vmm/').replace(/\.js$/, '.ts')
    for (const b of this.blocks) (files[short(b)] ??= { blocks: 0, functions: 0 }).blocks++
    for (const f of this.functions) (files[short(f)] ??= { blocks: 0, functions: 0 }).functions++
    return files
  }

  close(): void {
    this.s.disconnect()
  }
}

// ---------------------------------------------------------------------------
// Allocation bound: every Buffer allocation an input causes is checked
// against the target's limit, at the call, before the memory is taken.

export class AllocGuard {
  limit = Infinity
  largest = 0
  private readonly saved: Record<string, (...a: never[]) => Buffer> = {}

  install(): void {
    const B = Buffer as unknown as Record<string, (...a: unknown[]) => Buffer>
    for (const name of ['alloc', 'allocUnsafe', 'allocUnsafeSlow']) {
      const orig = B[name]!
      this.saved[name] = orig
      // eslint-disable-next-line @typescript-eslint/no-this-alias
      const guard = this
      B[name] = function (size: unknown, ...rest: unknown[]) {
        if (typeof size === 'number') {
          if (size > guard.largest) guard.largest = size
          if (size > guard.limit) throw new Finding(`Buffer.${name}(${size}): over the ${guard.limit}-byte allocation bound of this target`)
        }
        return orig.call(Buffer, size, ...rest)
      }
    }
  }

  uninstall(): void {
    Object.assign(Buffer, this.saved)
  }
}

// ---------------------------------------------------------------------------
// Mutation

export class Rng {
  constructor(private s: number) {
    if (this.s === 0) this.s = 0x9e3779b9
  }
  next(): number {
    // xorshift32: fast and good enough to pick mutations.
    let x = this.s
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    this.s = x >>> 0
    return this.s
  }
  below(n: number): number {
    return n <= 1 ? 0 : this.next() % n
  }
  chance(p: number): boolean {
    return this.next() / 0x100000000 < p
  }
}

const INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 31, 32, 63, 64, 100, 127, 128, 255, 256, 511, 512, 1000, 1023, 1024, 4095, 4096, 4097,
  0x7fff, 0x8000, 0xffff, 0x10000, 0xfffff, 0x100000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff]

export class Mutator {
  constructor(private readonly rng: Rng, private readonly maxLen: number, private readonly dict: Buffer[]) {}

  /** One to several stacked mutations of `b`; `other` is a second corpus entry for crossover. */
  mutate(b: Buffer, other: Buffer | undefined): Buffer {
    let out: Buffer = Buffer.from(b)
    const n = 1 + (this.rng.chance(0.5) ? 0 : this.rng.below(7))
    for (let i = 0; i < n; i++) out = this.one(out, other)
    return out.length > this.maxLen ? out.subarray(0, this.maxLen) : out
  }

  private one(b: Buffer, other: Buffer | undefined): Buffer {
    const r = this.rng
    const at = (extra = 0) => r.below(Math.max(1, b.length - extra + 1))
    switch (r.below(13)) {
      case 0: { // flip a bit
        if (!b.length) return Buffer.from([r.below(256)])
        const p = at(1)
        b[p] ^= 1 << r.below(8)
        return b
      }
      case 1: { // set a byte
        if (!b.length) return Buffer.from([r.below(256)])
        b[at(1)] = r.chance(0.5) ? r.below(256) : [0, 1, 0x7f, 0x80, 0xff][r.below(5)]!
        return b
      }
      case 2: // an interesting big-endian word (the wire is big-endian)
      case 3: {
        const w = [1, 2, 4, 8][r.below(4)]!
        if (b.length < w) return b
        const p = at(w)
        const v = BigInt(INTERESTING[r.below(INTERESTING.length)]!)
        const neg = r.chance(0.2)
        const x = neg ? (1n << BigInt(8 * w)) - v : v
        for (let i = 0; i < w; i++) b[p + w - 1 - i] = Number((x >> BigInt(8 * i)) & 0xffn)
        if (r.chance(0.3)) b.reverse() // occasionally little-endian (VFIO headers are)
        return b
      }
      case 4: { // add or subtract a little from a word
        const w = [1, 2, 4][r.below(3)]!
        if (b.length < w) return b
        const p = at(w)
        const v = b.readUIntBE(p, w)
        const d = 1 + r.below(16)
        const max = 2 ** (8 * w)
        b.writeUIntBE((v + (r.chance(0.5) ? d : max - d)) % max, p, w)
        return b
      }
      case 5: { // erase a range
        if (!b.length) return b
        const p = at(1)
        const len = 1 + r.below(Math.min(b.length - p, r.chance(0.8) ? 16 : b.length))
        return Buffer.concat([b.subarray(0, p), b.subarray(p + len)])
      }
      case 6: { // insert random or repeated bytes
        const p = at()
        const len = 1 + r.below(r.chance(0.8) ? 8 : 256)
        const ins = Buffer.alloc(len, r.below(256))
        if (r.chance(0.5)) for (let i = 0; i < len; i++) ins[i] = r.below(256)
        return Buffer.concat([b.subarray(0, p), ins, b.subarray(p)])
      }
      case 7: { // duplicate or move a chunk within the input
        if (b.length < 2) return b
        const from = at(1)
        const len = 1 + r.below(Math.min(b.length - from, 512))
        const to = at()
        const chunk = Buffer.from(b.subarray(from, from + len))
        if (r.chance(0.5)) return Buffer.concat([b.subarray(0, to), chunk, b.subarray(to)])
        chunk.copy(b, to)
        return b
      }
      case 8: // truncate
        return b.length ? b.subarray(0, at(1)) : b
      case 9: // crossover with another corpus entry
      case 10: {
        if (!other?.length) return b
        const p = r.below(other.length)
        const len = 1 + r.below(Math.min(other.length - p, 4096))
        const to = at()
        if (r.chance(0.5)) return Buffer.concat([b.subarray(0, to), other.subarray(p, p + len), b.subarray(to)])
        const cut = Math.min(b.length, to)
        return Buffer.concat([b.subarray(0, cut), other.subarray(p)])
      }
      default: { // a dictionary token, inserted or written over
        if (!this.dict.length) return b
        const tok = this.dict[r.below(this.dict.length)]!
        const p = at()
        if (r.chance(0.5) || p + tok.length > b.length) return Buffer.concat([b.subarray(0, p), tok, b.subarray(p)])
        tok.copy(b, p)
        return b
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Running one input, and the loop

export type Outcome = { ok: true; ms: number } | { ok: false; kind: 'crash' | 'hang' | 'alloc'; message: string }

export async function execOne(t: Target, input: Buffer, guard: AllocGuard): Promise<Outcome> {
  const t0 = performance.now()
  let timer: NodeJS.Timeout | undefined
  guard.limit = t.allocLimit
  try {
    const hang = new Promise<'hang'>(res => { timer = setTimeout(() => res('hang'), t.timeoutMs) })
    const r = await Promise.race([t.run(input).then(() => 'done' as const), hang])
    if (r === 'hang') return { ok: false, kind: 'hang', message: `no verdict within ${t.timeoutMs} ms` }
    return { ok: true, ms: performance.now() - t0 }
  } catch (e) {
    const msg = describe(e)
    return { ok: false, kind: /allocation bound/.test(msg) ? 'alloc' : 'crash', message: msg }
  } finally {
    clearTimeout(timer)
    guard.limit = Infinity
  }
}

/** The error and its causes, with stacks, for a finding's report. */
export function describe(e: unknown): string {
  const parts: string[] = []
  for (let x: unknown = e, d = 0; x !== undefined && d < 6; d++) {
    parts.push(x instanceof Error ? (x.stack ?? `${x.name}: ${x.message}`) : String(x))
    x = x instanceof Error ? x.cause : undefined
  }
  return parts.join('\n  caused by: ')
}

export interface Entry { data: Buffer; picked: number }
