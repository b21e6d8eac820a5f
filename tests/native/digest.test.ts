// blake3Digest: the native, multi-threaded RAM digest of the migration proof
// equals BLAKE3 as written from the specification in JavaScript
// (blake3-ref.ts) on the same bytes, whatever the length and thread count,
// and changes when one byte does.
import t from 'tap'
import { native } from '../../vmm/native/addon.js'
import { blake3Digest } from '../../vmm/microvm/index.js'
import { blake3Reference } from './blake3-ref.js'

/** BLAKE3's test-vector input: byte i is i % 251. */
function vectorInput(len: number, into: Uint8Array = new Uint8Array(len)): Uint8Array {
  for (let i = 0; i < len; i++) into[i] = i % 251
  return into
}

t.test('the JavaScript reference gives BLAKE3\'s published answers', async (t) => {
  t.equal(blake3Reference(vectorInput(0)), 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262')
  t.equal(blake3Reference(vectorInput(1)), '2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213')
  t.equal(blake3Reference(vectorInput(1025)), 'd00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444')
})

t.test('native digest equals the reference on the same bytes', async (t) => {
  const M = 1 << 20
  // Around chunk (1 KiB) and piece (1 MiB) boundaries, and an odd count of
  // pieces so the threads' pieces merge into an unbalanced tree.
  const lengths = [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 4097, M - 1, M, M + 1, 2 * M, 3 * M + 4097]
  for (const len of lengths) {
    const bytes = vectorInput(len)
    const want = blake3Reference(bytes)
    for (const threads of [1, 2, 3, undefined]) {
      t.equal(await native.blake3Digest(bytes, threads), want, `${len} bytes, ${threads ?? 'default'} threads`)
    }
  }
})

t.test('one changed byte changes the digest, and the reference agrees', async (t) => {
  const bytes = vectorInput(3 * (1 << 20) + 17)
  const before = await blake3Digest(bytes)
  for (const at of [0, (2 << 20) + 5, bytes.length - 1]) {
    bytes[at] ^= 0x40
    const after = await blake3Digest(bytes)
    t.not(after, before, `byte ${at} flipped`)
    t.equal(after, blake3Reference(bytes), `byte ${at} flipped: still BLAKE3`)
    bytes[at] ^= 0x40
  }
  t.equal(await blake3Digest(bytes), before, 'restored: the digest is back')
})

t.test('views: a slice of a larger buffer, and shared memory (the soft vCPU\'s RAM)', async (t) => {
  const big = vectorInput(3 << 20)
  const view = big.subarray(4096, 4096 + (2 << 20) + 3)
  t.equal(await blake3Digest(view, 2), blake3Reference(view))
  const shared = vectorInput(2 << 20, new Uint8Array(new SharedArrayBuffer(2 << 20)))
  t.equal(await blake3Digest(shared, 2), blake3Reference(shared))
})

t.test('bad thread counts are refused before any work', async (t) => {
  const b = new Uint8Array(16)
  for (const n of [0, 65]) {
    t.throws(() => native.blake3Digest(b, n), { code: 'EINVAL', message: /blake3Digest: argument threads/ }, `threads ${n}`)
  }
})
