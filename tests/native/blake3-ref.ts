// A plain BLAKE3 (unkeyed hash, 32-byte output) written from the
// specification, as the independent reference for the native digest:
// one compression at a time, the tree built by its recursive definition,
// no SIMD, no threads. Slow, and only for tests.

const IV = Uint32Array.of(0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19)
const PERMUTATION = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
const CHUNK_START = 1
const CHUNK_END = 2
const PARENT = 4
const ROOT = 8
const BLOCK = 64
const CHUNK = 1024

const rotr = (x: number, n: number) => ((x >>> n) | (x << (32 - n))) >>> 0

function g(s: Uint32Array, a: number, b: number, c: number, d: number, x: number, y: number): void {
  s[a] = (s[a]! + s[b]! + x) >>> 0
  s[d] = rotr(s[d]! ^ s[a]!, 16)
  s[c] = (s[c]! + s[d]!) >>> 0
  s[b] = rotr(s[b]! ^ s[c]!, 12)
  s[a] = (s[a]! + s[b]! + y) >>> 0
  s[d] = rotr(s[d]! ^ s[a]!, 8)
  s[c] = (s[c]! + s[d]!) >>> 0
  s[b] = rotr(s[b]! ^ s[c]!, 7)
}

/** The compression function; returns all 16 output words. */
function compress(cv: Uint32Array, block: Uint32Array, counter: number, len: number, flags: number): Uint32Array {
  const s = new Uint32Array(16)
  s.set(cv, 0)
  s.set(IV.subarray(0, 4), 8)
  s[12] = counter >>> 0
  s[13] = Math.floor(counter / 2 ** 32)
  s[14] = len
  s[15] = flags
  let m = Uint32Array.from(block)
  let next = new Uint32Array(16)
  for (let round = 0; round < 7; round++) {
    g(s, 0, 4, 8, 12, m[0]!, m[1]!)
    g(s, 1, 5, 9, 13, m[2]!, m[3]!)
    g(s, 2, 6, 10, 14, m[4]!, m[5]!)
    g(s, 3, 7, 11, 15, m[6]!, m[7]!)
    g(s, 0, 5, 10, 15, m[8]!, m[9]!)
    g(s, 1, 6, 11, 12, m[10]!, m[11]!)
    g(s, 2, 7, 8, 13, m[12]!, m[13]!)
    g(s, 3, 4, 9, 14, m[14]!, m[15]!)
    for (let i = 0; i < 16; i++) next[i] = m[PERMUTATION[i]!]!
    ;[m, next] = [next, m]
  }
  for (let i = 0; i < 8; i++) {
    s[i] = (s[i]! ^ s[i + 8]!) >>> 0
    s[i + 8] = (s[i + 8]! ^ cv[i]!) >>> 0
  }
  return s
}

/** 64 bytes (zero-padded) as 16 little-endian words. */
function words(bytes: Uint8Array): Uint32Array {
  const padded = new Uint8Array(BLOCK)
  padded.set(bytes)
  const v = new DataView(padded.buffer)
  return Uint32Array.from({ length: 16 }, (_, i) => v.getUint32(i * 4, true))
}

/** A node's last compression, not yet run: the root runs it with ROOT. */
interface Output {
  cv: Uint32Array
  block: Uint32Array
  counter: number
  len: number
  flags: number
}

function chunkOutput(chunk: Uint8Array, index: number): Output {
  let cv = IV
  const blocks = Math.max(1, Math.ceil(chunk.length / BLOCK))
  for (let b = 0; b < blocks - 1; b++) {
    cv = compress(cv, words(chunk.subarray(b * BLOCK, (b + 1) * BLOCK)), index, BLOCK, b === 0 ? CHUNK_START : 0).subarray(0, 8)
  }
  const last = chunk.subarray((blocks - 1) * BLOCK)
  return { cv, block: words(last), counter: index, len: last.length, flags: (blocks === 1 ? CHUNK_START : 0) | CHUNK_END }
}

const chaining = (o: Output) => compress(o.cv, o.block, o.counter, o.len, o.flags).subarray(0, 8)

/** The subtree over `input` starting at chunk `first`: left is the largest power-of-two of chunks that leaves a right side. */
function node(input: Uint8Array, first: number): Output {
  if (input.length <= CHUNK) return chunkOutput(input, first)
  let left = CHUNK
  while (left * 2 < input.length) left *= 2
  const block = new Uint32Array(16)
  block.set(chaining(node(input.subarray(0, left), first)), 0)
  block.set(chaining(node(input.subarray(left), first + left / CHUNK)), 8)
  return { cv: IV, block, counter: 0, len: BLOCK, flags: PARENT }
}

/** BLAKE3 of `input`, 64 hex digits. */
export function blake3Reference(input: Uint8Array): string {
  const o = node(input, 0)
  const out = compress(o.cv, o.block, o.counter, o.len, o.flags | ROOT).subarray(0, 8)
  return Array.from(out, (w) => [0, 8, 16, 24].map((sh) => ((w >>> sh) & 0xff).toString(16).padStart(2, '0')).join('')).join('')
}
