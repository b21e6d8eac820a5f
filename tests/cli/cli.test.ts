// vmm-migrate: argument parsing and its errors, one-line failures from the
// real program, save + analyze of a file, and the demo end to end.
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync, readFileSync, truncateSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs, parseSize, UsageError, DEFAULT_OPTIONS, HELP, commandHelp } from '../../vmm/cli/args.js'
import { errorLine, run } from '../../vmm/cli/main.js'
import type { Out } from '../../vmm/cli/commands.js'
import { createMicroVm, capabilities } from '../../vmm/cli/vm-options.js'
import { listen } from '../../vmm/channel/connect.js'
import { incoming, IncomingMigration } from '../../vmm/migration/index.js'
import { createServer } from 'node:net'

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
    [['demo', '--ram', '4098M'], /between 4M and 4096M/],
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

t.test('each command has its own help', async (t) => {
  t.equal(parseArgs(['migrate', '--help']).topic, 'migrate')
  t.equal(parseArgs(['--help', 'save']).topic, 'save')
  t.equal(parseArgs(['help', 'analyze']).topic, 'analyze')
  t.equal(parseArgs(['--help']).topic, undefined)
  t.equal(parseArgs(['help']).topic, undefined)
  t.throws(() => parseArgs(['fly', '--help']), /unknown command 'fly'/)
  t.throws(() => parseArgs(['help', 'fly']), /help: unknown command 'fly'/)
  t.throws(() => parseArgs(['constructor']), /unknown command 'constructor'/, 'no inherited property passes as a command')
  const optionsOf = (text: string) => new Set(text.match(/^ {2}(?:-h, )?(--[a-z-]+)/gm)!.map((l) => l.trim().replace('-h, ', '')))
  const all = optionsOf(HELP)
  for (const c of ['demo', 'incoming', 'migrate', 'save', 'restore', 'analyze'] as const) {
    const h = commandHelp(c)
    t.match(h, new RegExp(`^usage: vmm-migrate ${c}`), `${c}: its usage line`)
    t.match(h, new RegExp(`\\nexamples?:\\n {2}vmm-migrate ${c}\\b`), `${c}: an example`)
    t.notMatch(h, /\ncommands:/, `${c}: not the global help`)
    const own = optionsOf(h)
    t.ok(own.has('--help'), `${c}: --help listed`)
    for (const o of own) t.ok(all.has(o), `${c}: ${o} is an option`)
    // Every example must parse: the help never shows what the program refuses.
    for (const e of h.split('\n').filter((l) => l.startsWith('  vmm-migrate '))) {
      const args = e.trim().split(/\s+/).slice(1).filter((a, i, xs) => a !== '>' && xs[i - 1] !== '>')
      t.equal(parseArgs(args).command, c, `example parses: ${e.trim()}`)
    }
  }
  t.ok(optionsOf(commandHelp('migrate')).has('--after-failure'))
  t.notOk(optionsOf(commandHelp('incoming')).has('--after-failure'), 'a destination option list without source-only options')
  t.notOk(optionsOf(commandHelp('migrate')).has('--no-verify'), 'and the other way round')
  t.same([...optionsOf(commandHelp('analyze'))], ['--help'])
})

t.test('malformed URIs are usage errors, found before anything runs', async (t) => {
  const bad: [string[], RegExp][] = [
    [['migrate', 'bogus://x'], /^migrate: invalid migration URI "bogus:\/\/x": unknown scheme "bogus"$/],
    [['migrate', 'tcp:127.0.0.1'], /expected tcp:HOST:PORT/],
    [['migrate', 'tcp:127.0.0.1:99999'], /port "99999" is not a number in 0\.\.65535/],
    [['incoming', 'tcp:[::1:5'], /^incoming: .*IPv6 host must be \[ADDR\]:PORT/],
    [['incoming', 'unix:'], /expected unix:PATH/],
    [['save', 'file:'], /^save: .*expected file:PATH/],
    [['migrate', 'fd:x'], /expected fd:N/],
  ]
  for (const [args, re] of bad) {
    const e = (() => {
      try {
        parseArgs(args)
      } catch (err) {
        return err
      }
      return undefined
    })()
    t.ok(e instanceof UsageError, `${args.join(' ')}: a UsageError (exit 2)`)
    t.match((e as Error)?.message, re, args.join(' '))
    t.notMatch((e as Error)?.message, /EINVAL/, 'no errno code in a usage error')
  }
  t.equal(parseArgs(['analyze', 'not-a-uri']).target, 'not-a-uri', 'analyze takes a plain path')
})

t.test('error lines', async (t) => {
  t.equal(errorLine(new UsageError('unknown option --x')), 'vmm-migrate: unknown option --x (see --help)')
  let e: unknown
  try {
    parseArgs(['demo', '--bogus-flag'])
  } catch (err) {
    e = err
  }
  t.equal(errorLine(e), 'vmm-migrate: unknown option --bogus-flag (see --help)', 'the hint once')
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
  const mh = await cli(['migrate', '--help'])
  t.equal(mh.code, 0)
  t.match(mh.stdout, /^usage: vmm-migrate migrate URI/, 'a subcommand\'s own help')
  t.notMatch(mh.stdout, /usage: vmm-migrate COMMAND/)
  const o = await cli(['demo', '--bogus-flag'])
  t.equal(o.code, 2)
  t.equal(o.stderr, 'vmm-migrate: unknown option --bogus-flag (see --help)\n', 'the hint once')
  const u = await cli(['migrate', 'bogus://x', '--events'])
  t.equal(u.code, 2, 'a malformed URI is a usage error')
  t.equal(u.stderr, 'vmm-migrate: migrate: invalid migration URI "bogus://x": unknown scheme "bogus" (see --help)\n')
  const a = await cli(['analyze', '/nonexistent/file'])
  t.equal(a.code, 1)
  t.match(a.stderr, /cannot open \/nonexistent\/file: ENOENT/)
})

t.test('migrate reaches the destination before it builds the guest, and migrates over that connection', async (t) => {
  const small = ['--ram', '8M', '--vcpu', 'soft', '--device-state', '0', '--run', '50']
  const events: string[] = []
  const out: Out = { line: (s) => events.push(String((JSON.parse(s) as { event: string }).event)), progress: () => undefined, done: () => undefined }
  // A port nobody listens on: the error comes before any guest exists.
  const port = await new Promise<number>((r) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as { port: number }).port
      srv.close(() => r(p))
    })
  })
  await t.rejects(run(['migrate', `tcp:127.0.0.1:${port}`, '--events', ...small], out), { code: 'ECONNREFUSED' })
  t.same(events, [], 'no guest was built (no running event)')
  await t.rejects(run(['migrate', 'unix:/nonexistent-dir/sock', '--events', ...small], out), /directory \/nonexistent-dir does not exist/)
  await t.rejects(run(['incoming', 'unix:/nonexistent-dir/sock', '--events', ...small], out), /directory \/nonexistent-dir does not exist/, 'incoming: not EACCES')
  t.same(events, [])

  const l = await listen('tcp:127.0.0.1:0')
  t.teardown(() => l.close())
  const source = run(['migrate', l.address, '--events', ...small], out)
  const channel = await l.accept()
  t.same(events, [], 'connected before the guest was built')
  const dest = await createMicroVm('dest', parseArgs(['incoming', l.address, ...small]).options)
  t.teardown(() => dest.destroy())
  const res = await incoming(dest, channel)
  t.equal(res.status, 'completed', 'the migration ran over the first connection')
  t.equal(await source, 0)
  t.same(events.filter((e) => e !== 'status'), ['running', 'completed'])
  const second = await Promise.race([l.accept().then(() => 'another connection', () => 'none'), new Promise((r) => setTimeout(() => r('none'), 200))])
  t.equal(second, 'none', 'no second (probe) connection')
})

t.test('migrate sends the stream header as it connects, so a destination that drops silent peers keeps it', async (t) => {
  // --run keeps the source from migrating well past the destination's handshake-timeout.
  const args = ['--ram', '8M', '--vcpu', 'soft', '--device-state', '0', '--run', '1500']
  const o = parseArgs(['migrate', 'tcp:h:1', ...args]).options
  const dest = await createMicroVm('dest', o)
  t.teardown(() => dest.destroy())
  const l = await listen('tcp:127.0.0.1:0')
  t.teardown(() => l.close())
  const im = new IncomingMigration(dest, { capabilities: capabilities(o), parameters: { handshakeTimeoutMs: 300 } })
  const dropped: string[] = []
  im.on('peer-dropped', (e) => dropped.push(e.reason))
  const inc = im.start(l)
  const out: Out = { line: () => undefined, progress: () => undefined, done: () => undefined }
  t.equal(await run(['migrate', l.address, ...args], out), 0)
  t.equal((await inc).status, 'completed')
  t.same(dropped, [], 'not dropped as a silent peer')
})

t.test('migrate cancelled before it started: the connected destination hears so', async (t) => {
  const args = ['--ram', '8M', '--vcpu', 'soft', '--device-state', '0', '--run', '60000']
  const o = parseArgs(['migrate', 'tcp:h:1', ...args]).options
  const dest = await createMicroVm('dest', o)
  t.teardown(() => dest.destroy())
  const l = await listen('tcp:127.0.0.1:0')
  t.teardown(() => l.close())
  const inc = new IncomingMigration(dest, { capabilities: capabilities(o) }).start(l)
  inc.catch(() => undefined)
  const ac = new AbortController()
  const events: string[] = []
  const out: Out = { line: (s) => events.push(s), progress: () => undefined, done: () => undefined }
  const src = run(['migrate', l.address, '--events', ...args], out, ac.signal)
  while (!events.some((e) => e.includes('"running"'))) await new Promise((r) => setTimeout(r, 20))
  ac.abort()
  await t.rejects(src, { code: 'ECANCELED', message: /cancelled before it started/ })
  await t.rejects(inc, { code: 'ERR_MIGRATION_CANCELLED', message: /the source cancelled the migration/ })
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
  t.match(h.stdout, /migration completed\n[\s\S]*RAM blake3 +[0-9a-f]{64}[\s\S]*device digest +\(no device\)/)
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
  const res = JSON.parse(r.stdout) as {
    ok: boolean; checks: { name: string; ok: boolean }[]; stats: { status: string; transferred: number; downtime: number }
    downtime: { limitMs: number; totalMs: number; measured: boolean; migrationMs: number; verificationMs: number; withinLimit: boolean }
    destination: { verificationMs: number; loaded: { hashMs: number } }
  }
  t.ok(res.ok)
  // The downtime against the limit, and how much of it was the destination's verification.
  t.match(res.downtime, { limitMs: 300, totalMs: res.stats.downtime, measured: true, withinLimit: res.stats.downtime <= 300 })
  t.equal(res.downtime.verificationMs, Math.round(res.destination.verificationMs * 1000) / 1000, 'the split the destination reported')
  t.ok(res.destination.verificationMs >= res.destination.loaded.hashMs)
  t.equal(res.downtime.migrationMs, Math.round((res.downtime.totalMs - res.downtime.verificationMs) * 1000) / 1000)
  t.equal(res.stats.status, 'completed')
  t.ok(res.stats.transferred > 32 << 20 ? true : res.stats.transferred > 0)
  t.equal(res.checks.length, 6)
  for (const c of res.checks) t.ok(c.ok, c.name)
})
