// A migration that fails or is cancelled at every phase — before it starts,
// setup, active (pre-copy), device (switchover), after the stream's end but
// before the destination resumed — and destinations that refuse the stream.
// In each case the source process, still alive (--after-failure), must report
// its guest running again, intact (checksum matching RAM with the VM stopped,
// twice) and still counting; the destination must exit with an error, never hang.
import t, { type Test } from 'tap'
import { join } from 'node:path'
import { Proc, checkRss, killAll, kvmReason, lastEvent, missingBuild, tempDir, MiB, type Ev } from './helpers.js'

t.setTimeout(240_000)
t.teardown(killAll)

const noBuild = missingBuild()
const noKvm = noBuild ? 'no build' : (process.env.VMM_E2E_KVM === '0' ? 'VMM_E2E_KVM=0' : await kvmReason())
const RAM = 64 * MiB
const common = ['--ram', '64M', '--vcpu', 'soft']
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Report {
  status: string
  phase: string
  error: string
  runState: string
  counterAtFailure: string
  verification?: { counter: string; checksumConsistent: boolean }
  counterAfter?: string
  checksumConsistentAfter?: boolean
  guestOk: boolean
}

function source(t: Test, uri: string, extra: string[] = []): Proc {
  const p = new Proc(['migrate', uri, '--events', '--after-failure', '300', '--run', '300', ...common, ...extra], 'source')
  t.teardown(() => p.kill())
  return p
}

async function destination(t: Test, extra: string[] = [], uri = 'tcp:127.0.0.1:0', env: string[] = []): Promise<{ p: Proc; address: string }> {
  const p = new Proc(['incoming', uri, '--events', ...common, ...extra], 'destination', env.length ? ['env', ...env] : [])
  t.teardown(() => p.kill())
  return { p, address: String((await p.next('listening', 30_000)).address) }
}

/** The source gave up in `phase` with `status`, then showed its guest alive and intact. */
async function survived(t: Test, src: Proc, phase: string | string[], status: 'failed' | 'cancelled'): Promise<Report> {
  const ex = await src.exit(60_000)
  const ev = lastEvent(src, 'failed') as (Ev & { report: Report; maxRssBytes: number }) | undefined
  t.ok(ev, `source printed its after-failure report${ev ? '' : `; stdout ${src.stdout.slice(-1500)} stderr ${src.stderr.slice(-1500)}`}`)
  t.equal(ex.code, 1, 'source exit code 1: the migration did not happen')
  if (!ev) return undefined as unknown as Report
  const r = ev.report
  t.comment(`source: ${r.status} in ${r.phase}: ${r.error}`)
  t.equal(r.status, status, `migration ${status}`)
  t.ok((Array.isArray(phase) ? phase : [phase]).includes(r.phase), `gave up in phase ${r.phase} (expected ${phase})`)
  t.equal(r.runState, 'running', 'the source VM runs again right after the failure')
  t.ok(r.verification?.checksumConsistent, 'stopped later: guest checksum matches its RAM')
  t.ok(r.checksumConsistentAfter, 'after running on: guest checksum matches its RAM again')
  t.ok(BigInt(r.verification?.counter ?? 0) > BigInt(r.counterAtFailure), `vCPU counting after the failure (${r.counterAtFailure} -> ${r.verification?.counter})`)
  t.ok(BigInt(r.counterAfter ?? 0) > BigInt(r.verification?.counter ?? 0), `and after a stop/start (${r.verification?.counter} -> ${r.counterAfter})`)
  t.ok(r.guestOk, 'the source judged its guest intact')
  checkRss(t, 'source', RAM, ev.maxRssBytes)
  return r
}

async function destinationFailed(t: Test, d: Proc, why?: RegExp): Promise<void> {
  const ex = await d.exit(60_000)
  t.not(ex.code, 0, `destination exited with an error (${JSON.stringify(ex)})`)
  t.notOk(d.events.some((e) => e.event === 'completed'), 'destination did not complete')
  if (why) t.match(d.stderr, why, 'destination says why')
}

t.test('cancelled (SIGINT) before the migration started', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t)
  const s = new Proc(['migrate', address, '--events', '--after-failure', '300', '--run', '4000', ...common], 'source')
  t.teardown(() => s.kill())
  await s.next('running', 30_000)
  await sleep(300)
  s.signal('SIGINT')
  await survived(t, s, 'none', 'cancelled')
  t.notOk(d.events.some((e) => e.event === 'starting'), 'nothing reached the destination')
  // The source connected (and sent the file header) before it built its
  // guest: it ends that stream with the cancel marker.
  await destinationFailed(t, d, /ERR_MIGRATION_CANCELLED: the source cancelled the migration/)
})

t.test('nobody listening: the source fails before it builds a guest', { skip: noBuild }, async (t) => {
  const s = source(t, `unix:${join(tempDir(t), 'nobody.sock')}`)
  const ex = await s.exit(60_000)
  t.equal(ex.code, 1, 'exit code 1: the migration did not happen')
  t.notOk(s.events.some((e) => e.event === 'running'), 'no guest was built')
  t.match(lastEvent(s, 'error')?.message, /ENOENT|ECONNREFUSED/, 'the error names the connect failure')
  t.match(s.stderr, /no socket .*nobody\.sock/, 'and says what is missing')
})

t.test('setup/active: SIGINT as soon as the source reports setup', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t)
  const s = source(t, address, ['--max-bandwidth', '8M'])
  await s.next('status', 30_000, (e) => e.status === 'setup')
  s.signal('SIGINT')
  await survived(t, s, ['setup', 'active'], 'cancelled')
  await destinationFailed(t, d, /ERR_MIGRATION_CANCELLED: the source cancelled the migration/)
})

t.test('active: SIGINT during pre-copy', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t)
  const s = source(t, address, ['--max-bandwidth', '8M'])
  await s.next('status', 30_000, (e) => e.status === 'active')
  await sleep(400)
  s.signal('SIGINT')
  await survived(t, s, 'active', 'cancelled')
  // Not 'ERR_SAVEVM_TRUNCATED: stream ends inside section type' (issue #11).
  await destinationFailed(t, d, /ERR_MIGRATION_CANCELLED: the source cancelled the migration/)
})

t.test('active: destination killed during pre-copy', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t)
  const s = source(t, address, ['--max-bandwidth', '8M'])
  await s.next('status', 30_000, (e) => e.status === 'active')
  await sleep(400)
  d.kill()
  await survived(t, s, 'active', 'failed')
})

t.test('active: SIGINT while blocked on a peer that never reads', { skip: noBuild }, async (t) => {
  // exec:sleep takes the stream on a pipe and never reads it: the source's write blocks.
  const s = source(t, 'exec:sleep 20')
  await s.next('status', 30_000, (e) => e.status === 'active')
  await sleep(500)
  s.signal('SIGINT')
  await survived(t, s, 'active', 'cancelled')
})

t.test('device: destination killed at the switchover', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t)
  const s = source(t, address)
  await s.next('status', 60_000, (e) => e.status === 'device')
  d.kill()
  await survived(t, s, 'device', 'failed')
})

t.test('device: SIGINT at the switchover', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t)
  const s = source(t, address)
  await s.next('status', 60_000, (e) => e.status === 'device')
  s.signal('SIGINT')
  await survived(t, s, 'device', 'cancelled')
  const ex = await d.exit(60_000)
  // If the whole stream was out before the cancel, the destination may have started
  // its copy: the source cannot take back what it sent (QEMU's rule too). Reported.
  t.comment(`destination after a cancel at the switchover: exit ${JSON.stringify(ex)}, ${d.events.some((e) => e.event === 'completed') ? 'it ran the guest too' : 'it did not run the guest'}`)
})

t.test('after GO, before the destination said it runs: destination killed', { skip: noBuild }, async (t) => {
  // It freezes itself at 'starting' (GO received, nothing started, the
  // source not told): a kill aimed at that event from here landed after
  // STARTED had gone out once the machine was loaded.
  const { p: d, address } = await destination(t, [], undefined, ['VMM_MIGRATE_FAULT=stop-at-starting'])
  const s = source(t, address, ['--link-timeout', '1000'])
  await d.next('starting', 60_000)
  d.kill()
  // The destination may have run the guest: the source must not run it too by itself.
  const u = await s.next('handover-unknown', 30_000)
  t.equal(u.runState, 'postmigrate', 'the source guest stays paused')
  t.notOk(s.exited, 'and the source waits for a decision')
  // The operator knows the destination is gone: run the guest on the source.
  const r = new Proc(['resolve', String(u.control), '--resume', '--json'], 'resolve')
  t.teardown(() => r.kill())
  t.equal((await r.exit(30_000)).code, 0, `resolve --resume succeeded: ${r.stdout}${r.stderr}`)
  t.match(r.json(), { ok: true, role: 'source', status: 'failed', runState: 'running' })
  const rep = await survived(t, s, 'handover-unknown', 'failed')
  t.match(rep?.error ?? '', /handover-unknown.*resolved: the guest runs here again/, 'the report says how it was resolved')
})

t.test('after GO: destination stopped (SIGSTOP) past the link timeout, then continued', { skip: noBuild }, async (t) => {
  // Stopped by itself at 'starting', as above: a SIGSTOP sent from here at
  // that event can land after STARTED is out.
  const { p: d, address } = await destination(t, ['--run-after', '100'], undefined, ['VMM_MIGRATE_FAULT=stop-at-starting'])
  const s = source(t, address, ['--link-timeout', '1000'])
  await d.next('starting', 60_000)
  const u = await s.next('handover-unknown', 30_000)
  t.equal(u.runState, 'postmigrate', 'the source gave up waiting but does not resume by itself')
  d.signal('SIGCONT')
  // The destination had GO: it runs the guest. The operator discards the source's copy.
  const ex = await d.exit(60_000)
  t.equal(ex.code, 0, 'the destination ran the guest and completed')
  t.ok(d.events.some((e) => e.event === 'completed'))
  const r = new Proc(['resolve', String(u.control), '--discard'], 'resolve')
  t.teardown(() => r.kill())
  t.equal((await r.exit(30_000)).code, 0, `resolve --discard succeeded: ${r.stdout}${r.stderr}`)
  const se = await s.exit(60_000)
  t.equal(se.code, 0, 'the source completed (its copy given up)')
  t.ok(s.events.some((e) => e.event === 'completed'))
})

t.test('destination refuses: wrong RAM size', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t, ['--ram', '32M'])
  const s = source(t, address)
  await survived(t, s, ['setup', 'active'], 'failed')
  await destinationFailed(t, d, /pc\.ram.*67108864.*33554432/)
})

t.test('destination refuses: no VFIO device there', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t, ['--device-state', '0'])
  const s = source(t, address)
  await survived(t, s, ['setup', 'active'], 'failed')
  await destinationFailed(t, d, /vfio/i)
})

t.test('destination refuses at the switchover: other vCPU kind', { skip: noBuild ?? noKvm }, async (t) => {
  const { p: d, address } = await destination(t, ['--vcpu', 'kvm'])
  const s = source(t, address)
  await survived(t, s, 'device', 'failed')
  await destinationFailed(t, d, /soft|kvm/)
})
