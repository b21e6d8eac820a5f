// What a destination keeps is bounded by what it declares, not by what
// arrives (#13): a 16 MiB vmdesc cost 890 MB of RSS, parsed during the
// downtime, and 6 million PING commands 476 MB, every one of them kept.
import t from 'tap'
import { sourceRegistry, destRegistry, saveToBuffer, streamOf } from './helpers.js'
import { loadvm, DEFAULT_MAX_VMDESC } from '../../vmm/savevm/load.js'

const noDesc = (await saveToBuffer(sourceRegistry(), { vmdesc: false })).bytes
// Where the first section starts: after the header and the configuration (see malformed.test.ts).
const firstSection = 8 + 1 + 4 + 10 + 1 + 1 + 30 + 4 + 4

/** A vmdesc section of `n` (3k + 4) bytes of JSON that parses into k + 1 empty arrays: [[],[],...,[]]. */
function vmdesc(n: number): Buffer {
  const body = Buffer.alloc(n)
  body[0] = 0x5b
  body.fill('[],', 1, n - 3)
  body.write('[]]', n - 3)
  const head = Buffer.alloc(5)
  head[0] = 0x06
  head.writeUInt32BE(n, 1)
  return Buffer.concat([head, body])
}

/** Counts JSON.parse calls while `fn` runs. */
async function parses<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const orig = JSON.parse
  let n = 0
  JSON.parse = ((...a: Parameters<typeof JSON.parse>) => {
    n++
    return orig(...a)
  }) as typeof JSON.parse
  try {
    return [await fn(), n]
  } finally {
    JSON.parse = orig
  }
}

t.test('a 16 MiB vmdesc: refused at its length by default, and never parsed during the load when allowed', async t => {
  const n = 16 << 20
  const desc = vmdesc(n)
  t.equal(DEFAULT_MAX_VMDESC, 1 << 20)
  await t.rejects(loadvm(await streamOf(Buffer.concat([noDesc, desc])), destRegistry().reg, { strictEnd: true }), {
    code: 'ERR_SAVEVM_LENGTH_LIMIT', message: /vmdesc of 16777216 bytes exceeds the 1048576 limit/,
  })
  // Parsed, these 16 MiB are 5.6 million arrays (890 MB of RSS, in the downtime).
  const [res, during] = await parses(async () => loadvm(await streamOf(Buffer.concat([noDesc, desc])), destRegistry().reg, { strictEnd: true, maxVmdescLength: n }))
  t.equal(during, 0, 'nothing parsed during the load')
  const parsed = res.vmdesc as unknown[]
  t.equal(parsed.length, (n - 4) / 3 + 1, 'parsed when asked for')
  t.equal(res.vmdesc, parsed, 'once')
})

t.test('PING commands by the hundred thousand: counted, not kept', async t => {
  const ping = Buffer.from([8, 0, 2, 0, 4, 0, 0, 0, 7])
  const count = 200_000
  const pings = Buffer.alloc(ping.length * count)
  for (let i = 0; i < count; i++) ping.copy(pings, i * ping.length)
  const bytes = Buffer.concat([noDesc.subarray(0, firstSection), pings, Buffer.from([8, 0, 1, 0, 0]), noDesc.subarray(firstSection)])
  const res = await loadvm(await streamOf(bytes), destRegistry().reg, { strictEnd: true, vmdesc: false })
  // One record per command was some 80 bytes each: 476 MB for 6 million.
  t.same(res.commands, [{ cmd: 2, name: 'PING', count, bytes: 4 * count }, { cmd: 1, name: 'OPEN_RETURN_PATH', count: 1, bytes: 0 }])
})
