// The downtime as the CLI reports it: against the limit, and split into the
// migration and the destination's verification (which happens with the guest
// stopped, so it is part of the downtime). The source learns the split from
// the destination's RESUME_OK; `migrate` prints it and puts it in --json.
import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../vmm/cli/main.js'
import type { Out } from '../../vmm/cli/commands.js'
import { downtimeReport, downtimeText, statsRows } from '../../vmm/cli/format.js'
import type { MigrationStats } from '../../vmm/migration/types.js'

t.setTimeout(300_000)

function capture(): Out & { lines: string[] } {
  const lines: string[] = []
  return { lines, line: (s) => lines.push(s), progress: () => undefined, done: () => undefined }
}

const base: MigrationStats = {
  status: 'completed', totalTime: 900, setupTime: 5, expectedDowntime: 30, transferred: 1, remaining: 0,
  mbps: 1, dirtyPagesRate: 0, iterations: 2, cpuThrottlePercentage: 0,
}

t.test('report and text: the limit and the split', async (t) => {
  const measured = { ...base, downtime: 62.5, downtimeMeasured: true, downtimeVerification: 24.25 }
  t.same(downtimeReport(measured, 300), { limitMs: 300, totalMs: 62.5, measured: true, migrationMs: 38.25, verificationMs: 24.25, withinLimit: true })
  t.equal(downtimeText(downtimeReport(measured, 300)), "63 ms (limit 300 ms): migration 38 ms + destination's verification 24 ms")
  t.equal(Object.fromEntries(statsRows(measured, 300)).downtime, "63 ms (limit 300 ms): migration 38 ms + destination's verification 24 ms")
  t.equal(Object.fromEntries(statsRows(measured)).downtime, '63 ms', 'without a limit: the plain figure')

  const over = downtimeReport({ ...measured, downtime: 412, downtimeVerification: 300 }, 300)
  t.match(over, { withinLimit: false, migrationMs: 112 })
  t.match(downtimeText(over), /^412 ms \(OVER the 300 ms limit\): migration 112 ms \+ destination's verification 300 ms$/)

  // A destination that verified nothing (or an older one): all of it is the migration's.
  t.match(downtimeReport({ ...measured, downtimeVerification: undefined }, 300), { migrationMs: 62.5, verificationMs: 0 })

  // No return path (a file): only the source's estimate, which ends before any destination exists.
  const estimate = downtimeReport({ ...base, downtime: 12, downtimeMeasured: false }, 300)
  t.same(estimate, { limitMs: 300, totalMs: 12, measured: false, migrationMs: 12, verificationMs: undefined, withinLimit: true })
  t.equal(downtimeText(estimate), '12 ms (source estimate, limit 300 ms)')

  t.same(downtimeReport(base, 300), { limitMs: 300 }, 'no switchover, no downtime')
  t.equal(downtimeText(downtimeReport(base, 300)), '- (limit 300 ms)')
})

const VM = ['--ram', '16M', '--vcpu', 'soft', '--device-state', '1M']

/** `incoming` in this process; resolves its address once it listens, and its exit code and events at the end. */
function destination(extra: string[] = []) {
  const out = capture()
  let listening!: (a: string) => void
  const address = new Promise<string>((r) => (listening = r))
  const realLine = out.line
  out.line = (s) => {
    realLine(s)
    const e = JSON.parse(s) as { event: string; address?: string }
    if (e.event === 'listening') listening(e.address!)
  }
  const done = run(['incoming', 'tcp:127.0.0.1:0', '--events', '--run-after', '0', ...VM, ...extra], out)
  return { address, done, out }
}

interface MigrateJson {
  stats: MigrationStats
  downtime: { limitMs: number; totalMs: number; measured: boolean; migrationMs: number; verificationMs: number; withinLimit: boolean }
}

t.test('migrate --json: the limit and the split, as the destination reported its verification', async (t) => {
  const d = destination()
  const src = capture()
  const code = await run(['migrate', await d.address, '--json', '--run', '100', '--downtime-limit', '5000', ...VM], src)
  t.equal(code, 0)
  t.equal(await d.done, 0)
  const r = JSON.parse(src.lines.join('\n')) as MigrateJson
  const completed = d.out.lines.map((l) => JSON.parse(l) as { event: string; report?: { verificationMs: number; loaded?: { hashMs: number } } })
    .find((e) => e.event === 'completed')!
  const reported = completed.report!.verificationMs
  t.equal(r.downtime.limitMs, 5000)
  t.equal(r.downtime.totalMs, r.stats.downtime)
  t.equal(r.downtime.measured, true)
  t.ok(reported >= completed.report!.loaded!.hashMs, 'the destination waited for all of its hashing')
  t.equal(r.downtime.verificationMs, Math.round(reported * 1000) / 1000, 'the source has the destination\'s figure (µs precision)')
  t.equal(r.stats.downtimeVerification, r.downtime.verificationMs)
  t.ok(r.downtime.verificationMs > 0 && r.downtime.verificationMs <= r.downtime.totalMs)
  t.equal(r.downtime.migrationMs, Math.round((r.downtime.totalMs - r.downtime.verificationMs) * 1000) / 1000)
  t.equal(r.downtime.withinLimit, r.downtime.totalMs <= 5000)
})

t.test('migrate --json to a destination with --no-verify: the whole downtime is the migration\'s', async (t) => {
  const d = destination(['--no-verify'])
  const src = capture()
  t.equal(await run(['migrate', await d.address, '--json', '--run', '50', ...VM], src), 0)
  t.equal(await d.done, 0)
  const r = JSON.parse(src.lines.join('\n')) as MigrateJson
  t.match(r.downtime, { limitMs: 300, measured: true, verificationMs: 0 })
  t.equal(r.downtime.migrationMs, r.downtime.totalMs)
})

t.test('migrate, human output: the downtime row shows the limit and the split', async (t) => {
  const d = destination()
  const src = capture()
  t.equal(await run(['migrate', await d.address, '--run', '50', '--downtime-limit', '4000', ...VM], src), 0)
  t.equal(await d.done, 0)
  t.match(src.lines.join('\n'), /\n {2}downtime +[\d.]+ ms \((limit 4000 ms|OVER the 4000 ms limit)\): migration [\d.]+ ms \+ destination's verification [\d.]+ ms\n/)
})

t.test('save --json: no return path, the source\'s estimate and no split', async (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'vmm-downtime-')), 'vm.sav')
  const src = capture()
  t.equal(await run(['save', `file:${file}`, '--json', '--run', '50', ...VM], src), 0)
  const r = JSON.parse(src.lines.join('\n')) as MigrateJson
  t.match(r.downtime, { limitMs: 300, measured: false })
  t.equal(r.downtime.verificationMs, undefined)
  t.equal(r.downtime.migrationMs, r.downtime.totalMs)
})
