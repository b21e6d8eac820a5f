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

async function destination(t: Test, extra: string[] = [], uri = 'tcp:127.0.0.1:0'): Promise<{ p: Proc; address: string }> {
  const p = new Proc(['incoming', uri, '--events', ...common, ...extra], 'destination')
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
})

t.test('setup: nobody listening', { skip: noBuild }, async (t) => {
  const s = source(t, `unix:${join(tempDir(t), 'nobody.sock')}`)
  const r = await survived(t, s, 'setup', 'failed')
  t.match(r?.error ?? '', /ENOENT|ECONNREFUSED/, 'the error names the connect failure')
})

t.test('setup/active: SIGINT as soon as the source reports setup', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t)
  const s = source(t, address, ['--max-bandwidth', '8M'])
  await s.next('status', 30_000, (e) => e.status === 'setup')
  s.signal('SIGINT')
  await survived(t, s, ['setup', 'active'], 'cancelled')
  await destinationFailed(t, d)
})

t.test('active: SIGINT during pre-copy', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t)
  const s = source(t, address, ['--max-bandwidth', '8M'])
  await s.next('status', 30_000, (e) => e.status === 'active')
  await sleep(400)
  s.signal('SIGINT')
  await survived(t, s, 'active', 'cancelled')
  await destinationFailed(t, d)
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

t.test('after the stream ended, before the destination resumed: destination killed', { skip: noBuild }, async (t) => {
  const { p: d, address } = await destination(t)
  const s = source(t, address)
  // 'starting' = loaded to EOF, VM not yet running, source not told.
  await d.next('starting', 60_000)
  d.kill()
  const r = await survived(t, s, 'device', 'failed')
  t.match(r?.error ?? '', /resume|closed|ECONNRESET|EPIPE/i, 'the source knows the destination never resumed')
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
