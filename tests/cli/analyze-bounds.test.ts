// `analyze` streams (#13: 737 MB of RSS on a stream with a 16 MiB vmdesc and
// millions of commands): what it keeps does not grow with the file, and a
// vmdesc larger than it parses is refused by its size.
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { childEnv } from '../e2e/helpers.js'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { writeHeader, writeConfiguration } from '../../vmm/savevm/writer.js'
import { analyzeFile, writeAnalysis, toJson } from '../../vmm/cli/analyze.js'

const dir = mkdtempSync(join(tmpdir(), 'analyze-bounds-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const run = promisify(execFile)
const CHILD = fileURLToPath(new URL('./analyze-heap-child.ts', import.meta.url))
// The TypeScript loader the suite itself runs under, for the child's .ts.
const TS_LOADER = import.meta.resolve('@tapjs/typescript/import')

/** Header, configuration, `body`, EOF, `tail`, as a file. */
async function stream(body: Buffer, tail: Buffer): Promise<string> {
  const [a, b] = memoryPair(1 << 20)
  const f = new MigStream(a)
  writeHeader(f)
  await writeConfiguration(f, { machine: 'microvm-1' })
  await f.flush()
  await a.endWrites()
  const parts: Buffer[] = []
  const buf = Buffer.alloc(4096)
  for (let n; (n = await b.read(buf, 0, buf.length)) > 0;) parts.push(Buffer.from(buf.subarray(0, n)))
  const file = join(dir, `s${parts.length}-${body.length}-${tail.length}`)
  writeFileSync(file, Buffer.concat([...parts, body, Buffer.from([0]), tail]))
  return file
}

function vmdesc(json: Buffer): Buffer {
  const h = Buffer.alloc(5)
  h[0] = 0x06
  h.writeUInt32BE(json.length, 1)
  return Buffer.concat([h, json])
}

t.test('a 16 MiB vmdesc is refused by its size, not parsed', async t => {
  const json = Buffer.alloc(16 << 20, ' ')
  json.write('{"devices":[]}')
  const file = await stream(Buffer.alloc(0), vmdesc(json))
  await t.rejects(analyzeFile(file), { name: 'AnalyzeError', message: /the vmdesc is 16777216 bytes, more than the 1048576 analyze reads/ })
  const small = await stream(Buffer.alloc(0), vmdesc(Buffer.from('{"devices":[]}')))
  t.same((await analyzeFile(small)).vmdesc, { devices: [] })
})

t.test('half a million commands: the printed analysis holds them all, and the heap does not', async t => {
  const count = 500_000
  const ping = Buffer.from([8, 0, 2, 0, 4, 0, 0, 0, 7])
  const body = Buffer.alloc(ping.length * count)
  for (let i = 0; i < count; i++) ping.copy(body, i * ping.length)
  const file = await stream(body, vmdesc(Buffer.from('{"devices":[]}')))
  const child = await run(process.execPath, ['--expose-gc', '--import', TS_LOADER, CHILD, file], { encoding: 'utf8', timeout: 90_000, env: childEnv() })
  const { pings, first, peak } = JSON.parse(child.stdout) as { pings: number; first: string; peak: number }
  t.equal(pings, count, 'every command printed')
  t.match(first, /^\{\n {2}"file": /, 'the document starts as toJson(analyzeFile) does')
  // Kept in memory (analyzeFile), the commands are some 28 MB of objects here.
  t.ok(peak < 12 << 20, `peak of the heap still reachable: ${(peak / 1048576).toFixed(1)} MiB more`)
})

t.test('the printed document is the analysis', async t => {
  const body = Buffer.from([8, 0, 1, 0, 0, 8, 0, 2, 0, 4, 0, 0, 0, 1])
  const file = await stream(body, vmdesc(Buffer.from('{"page_size":4096,"devices":[]}')))
  let printed = ''
  await writeAnalysis(file, (l) => { printed += `${l}\n` })
  t.same(JSON.parse(printed), JSON.parse(toJson(await analyzeFile(file))))
})
