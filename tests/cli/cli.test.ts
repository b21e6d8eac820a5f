// vmm-migrate: argument parsing and its errors, one-line failures from the
// real program, save + analyze of a file, and the demo end to end.
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync, readFileSync, truncateSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs, parseSize, UsageError, DEFAULT_OPTIONS } from '../../vmm/cli/args.js'
import { errorLine, run } from '../../vmm/cli/main.js'
import type { Out } from '../../vmm/cli/commands.js'

// Child processes (demo's destination, the program itself) compile TypeScript on start.
t.setTimeout(600_000)

/** run() in this process, capturing what it prints. */
async function inProcess(args: string[]): Promise<{ code: number; stdout: string; progress: string[] }> {
  let stdout = ''
  const progress: string[] = []
  const out: Out = { line: (s) => (stdout += `${s}\n`), progress: (s) => progress.push(s), done: () => undefined }
  const code = await run(args, out)
  return { code, stdout, progress }
}
import { analyzeFile, AnalyzeError, type Analysis } from '../../vmm/cli/analyze.js'
import { progressLine, statsRows, bytes } from '../../vmm/cli/format.js'

const here = dirname(fileURLToPath(import.meta.url))
const main = join(here, '../../vmm/cli/main.ts')
// Children need only the TypeScript loader; tap's other hooks cost seconds of start-up.
const tsOnly = process.execArgv.filter((a) => a.includes('@tapjs/typescript') || a === '--enable-source-maps')
const childArgv = tsOnly.some((a) => a.includes('@tapjs/typescript')) ? tsOnly : process.execArgv

function cli(args: string[], timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [...childArgv, main, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (d) => (stdout += d))
    p.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs)
    p.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

t.test('sizes', async (t) => {
  t.equal(parseSize('4096', 'x'), 4096)
  t.equal(parseSize('64K', 'x'), 64 << 10)
  t.equal(parseSize('256M', 'x'), 256 << 20)
  t.equal(parseSize('1g', 'x'), 1 << 30)
  t.equal(parseSize('1.5M', 'x'), 1.5 * (1 << 20))
  t.equal(parseSize('2MiB', 'x'), 2 << 20)
  t.throws(() => parseSize('lots', '--ram'), /--ram: 'lots' is not a size/)
  t.throws(() => parseSize('-1M', '--ram'), UsageError)
  t.throws(() => parseSize('99999999999T', '--ram'), /too large/)
})

t.test('arguments', async (t) => {
  const d = parseArgs(['demo'])
  t.equal(d.command, 'demo')
  t.same(d.options, DEFAULT_OPTIONS)
  t.equal(parseArgs([]).command, 'help')
  t.equal(parseArgs(['migrate', 'tcp:1.2.3.4:5', '--help']).command, 'help')
  const p = parseArgs(['migrate', 'tcp:h:1', '--ram', '64M', '--vcpu=soft', '--downtime-limit', '50', '--max-bandwidth', '0', '--switchover-ack', '--auto-converge', '--device-state', '16M', '--dirty-rate', '2M', '--json'])
  t.equal(p.target, 'tcp:h:1')
  t.match(p.options, { ram: 64 << 20, vcpu: 'soft', downtimeLimitMs: 50, maxBandwidth: 0, switchoverAck: true, autoConverge: true, deviceState: 16 << 20, dirtyRate: 2 << 20, json: true })
  t.same(p.given[0], ['--ram', '64M'])
  t.same(p.given[1], ['--vcpu', 'soft'])
  t.equal(parseArgs(['restore', 'file:/x', '--no-verify']).options.noVerify, true)
  const bad: [string[], RegExp][] = [
    [['demo', '--bogus'], /unknown option --bogus/],
    [['demo', '--ram'], /--ram needs a value/],
    [['demo', '--ram', '--json'], /--ram needs a value/],
    [['demo', '--vcpu', 'xen'], /'xen' is not one of auto, kvm, soft/],
    [['demo', '--ram', '3M'], /not a multiple of 2 MiB/],
    [['demo', '--ram', '4G'], /between 4M and 3072M/],
    [['demo', '--downtime-limit', '0'], /outside 1\.\./],
    [['demo', '--downtime-limit', '1.5'], /not a whole number/],
    [['demo', '--json=1'], /takes no value/],
    [['fly'], /unknown command 'fly'/],
    [['migrate'], /migrate needs URI/],
    [['save', '/tmp/x'], /not a file: URI/],
    [['analyze'], /analyze needs FILE/],
    [['demo', 'extra'], /unexpected argument 'extra'/],
  ]
  for (const [args, re] of bad) t.throws(() => parseArgs(args), re, args.join(' '))
})

t.test('error lines', async (t) => {
  t.equal(errorLine(new UsageError('unknown option --x')), 'vmm-migrate: unknown option --x (see --help)')
  t.equal(errorLine(Object.assign(new Error('boom'), { code: 'EIO' })), 'vmm-migrate: boom [EIO]')
  t.equal(errorLine(new AnalyzeError('bad', 12)), 'vmm-migrate analyze: bad (at byte 12)')
})

t.test('formatting', async (t) => {
  t.equal(bytes(512), '512 B')
  t.equal(bytes(3 << 20), '3.00 MiB')
  const s = { status: 'active' as const, totalTime: 10, setupTime: 1, expectedDowntime: 5, transferred: 50, remaining: 50, mbps: 100, dirtyPagesRate: 7, iterations: 2, cpuThrottlePercentage: 20, vfio: { emu0: { bytesSaved: 10, precopyBytes: 8, stopCopyBytes: 2, state: 'PRE_COPY' } }, dirtyTracker: 'none' }
  t.match(progressLine(s), /^\[#{15}\.{15}\]  50%  iter 2/)
  const rows = Object.fromEntries(statsRows(s))
  t.equal(rows['vfio emu0'], '10 B (pre-copy 8 B, stop-copy 2 B), PRE_COPY')
  t.equal(rows['dirty tracker'], 'none')
})

t.test('the program: usage errors are one line and exit 2', async (t) => {
  const r = await cli(['demo', '--ram', 'huge'])
  t.equal(r.code, 2)
  t.equal(r.stderr.trim().split('\n').length, 1)
  t.match(r.stderr, /--ram: 'huge' is not a size/)
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
  const h = await cli(['--help'])
  t.equal(h.code, 0)
  t.match(h.stdout, /usage: vmm-migrate COMMAND/)
  const a = await cli(['analyze', '/nonexistent/file'])
  t.equal(a.code, 1)
  t.match(a.stderr, /cannot open \/nonexistent\/file: ENOENT/)
})

t.test('save to a file, analyze it, restore it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-cli-'))
  const file = join(dir, 'vm.sav')
  const s = await inProcess(['save', `file:${file}`, '--ram', '16M', '--vcpu', 'soft', '--device-state', '1M', '--run', '100', '--json'])
  t.equal(s.code, 0)
  const saved = JSON.parse(s.stdout) as { stats: { status: string }; verification: { ramDigest: string; deviceDigest: string; counter: string } }
  t.equal(saved.stats.status, 'completed')

  const a: Analysis = await analyzeFile(file)
  t.same(a.header, { magic: 'QEVM', version: 3 })
  t.equal(a.configuration?.machine, 'microvm-1')
  t.ok(a.eof)
  t.same(a.ram?.blocks, [{ name: 'pc.ram', length: 16 << 20 }])
  t.ok(a.ram!.pages + a.ram!.zeroPages >= 4096, 'every page sent at least once')
  const dev = a.vfio['0000:00:02.0/vfio']!
  t.ok(dev, 'VFIO device decoded')
  t.ok(dev.dataBytes >= 1 << 20, `device data ${dev.dataBytes} bytes`)
  const types = a.sections.map((x) => `${x.type} ${x.idstr}`)
  t.ok(types.includes('START ram') && types.includes('END ram'))
  t.ok(types.includes('FULL cpu') && types.includes('FULL microvm-timer'))
  const timer = a.sections.find((x) => x.idstr === 'microvm-timer')!
  t.equal(timer.kind, 'vmstate')
  t.match(timer.fields, { config: 3, periodUs: 1000, 'microvm-timer/alarm (v1)': { alarmAt: 1_000_000_000 } })
  t.match(a.vmdesc, { devices: Array })
  const cliOut = await inProcess(['analyze', file])
  t.equal(cliOut.code, 0)
  t.equal(JSON.parse(cliOut.stdout).sections.length, a.sections.length)

  const r = await inProcess(['restore', `file:${file}`, '--ram', '16M', '--vcpu', 'soft', '--device-state', '1M', '--json'])
  t.equal(r.code, 0)
  const restored = JSON.parse(r.stdout) as { loaded: { ramDigest: string; deviceDigest: string; counter: string }; counterAfter: string }
  t.equal(restored.loaded.ramDigest, saved.verification.ramDigest)
  t.equal(restored.loaded.deviceDigest, saved.verification.deviceDigest)
  t.equal(restored.loaded.counter, saved.verification.counter)
  t.ok(BigInt(restored.counterAfter) > BigInt(restored.loaded.counter))

  await t.rejects(inProcess(['restore', `file:${file}`, '--ram', '32M', '--vcpu', 'soft', '--device-state', '1M']), /pc\.ram/, 'RAM size mismatch names the block')

  // Human output of the same commands.
  const file2 = join(dir, 'vm2.sav')
  const h = await inProcess(['save', `file:${file2}`, '--ram', '8M', '--vcpu', 'soft', '--device-state', '0', '--run', '50'])
  t.equal(h.code, 0)
  t.match(h.stdout, /migration completed\n[\s\S]*RAM sha256 +[0-9a-f]{64}[\s\S]*device digest +\(no device\)/)
  t.ok(h.progress.length > 0, 'progress reported')
  const hr = await inProcess(['restore', `file:${file2}`, '--ram', '8M', '--vcpu', 'soft', '--device-state', '0', '--run-after', '0'])
  t.equal(hr.code, 0)
  t.match(hr.stdout, /reading file:[\s\S]*incoming migration completed[\s\S]*checksum after run +matches RAM/)
  const nv = await inProcess(['restore', `file:${file2}`, '--ram', '8M', '--vcpu', 'soft', '--device-state', '0', '--no-verify', '--json'])
  t.equal(nv.code, 0)
  const nvr = JSON.parse(nv.stdout) as { loaded?: unknown; counterAtStart: string; counterAfter: string }
  t.equal(nvr.loaded, undefined, '--no-verify: no hashing before the start')
  t.ok(BigInt(nvr.counterAfter) > BigInt(nvr.counterAtStart))
  t.equal((await inProcess(['--help'])).code, 0)

  // Broken files: truncated, and not a stream at all.
  const cut = join(dir, 'cut.sav')
  writeFileSync(cut, readFileSync(file))
  truncateSync(cut, Math.floor(statSync(file).size / 2))
  await t.rejects(analyzeFile(cut), AnalyzeError)
  // A footer that does not follow the section: the timer's payload is 1 byte short of where the footer is.
  const foot = join(dir, 'foot.sav')
  const img = readFileSync(file)
  const hdr = 1 + 4 + 1 + 'microvm-timer'.length + 4 + 4
  img[timer.offset + hdr + timer.size] = 0x00
  writeFileSync(foot, img)
  await t.rejects(analyzeFile(foot), /'microvm-timer' .* is not followed by its footer/)
  const junk = join(dir, 'junk')
  writeFileSync(junk, 'hello world, not a migration')
  await t.rejects(analyzeFile(junk), /not a migration stream/)
})

t.test('demo --json end to end', async (t) => {
  const r = await cli(['demo', '--ram', '32M', '--device-state', '2M', '--run', '200', '--json'], 180_000)
  t.equal(r.code, 0, r.stderr)
  const res = JSON.parse(r.stdout) as { ok: boolean; checks: { name: string; ok: boolean }[]; stats: { status: string; transferred: number } }
  t.ok(res.ok)
  t.equal(res.stats.status, 'completed')
  t.ok(res.stats.transferred > 32 << 20 ? true : res.stats.transferred > 0)
  t.equal(res.checks.length, 6)
  for (const c of res.checks) t.ok(c.ok, c.name)
})
