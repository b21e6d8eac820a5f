// Local migration between two real vmm-migrate processes (the built
// program): a running KVM microVM handed over by passing its RAM's memfd
// over a UNIX socket arrives intact (the digests, counters and checksums
// the e2e tests compare) with its downtime reported; `demo --local` does
// the same by itself; and what cannot be local is refused, clearly, with
// the source guest still running.
import t, { type Test } from 'tap'
import { join } from 'node:path'
import { checkArrived, killAll, lastEvent, missingBuild, tempDir, Proc, MiB, type Ev } from '../e2e/helpers.js'
import { migratePair } from '../e2e/lib.js'
import { kvmSkip } from './gate.js'

t.setTimeout(300_000)
t.teardown(killAll)

const noBuild = missingBuild()
if (noBuild) t.comment(`skipped: ${noBuild}`)
const noKvm = noBuild ?? (await kvmSkip(t))

t.test('a 64 MiB KVM microVM handed over locally arrives intact', { skip: noKvm }, async (t) => {
  const ram = 64 * MiB
  const { src, dst } = await migratePair({ transport: 'unix', vcpu: 'kvm', ram, dir: tempDir(t), common: ['--local'] })
  checkArrived(t, ram, 'kvm', src, dst)
  t.type(src.stats.downtime, 'number', `downtime reported: ${src.stats.downtime} ms`)
  t.ok(src.stats.downtime! > 0 && src.stats.downtime! < 5000, 'a plausible downtime')
})

t.test('demo --local', { skip: noKvm }, async (t) => {
  const p = new Proc(['demo', '--local', '--ram', '32M', '--run', '200', '--run-after', '200', '--json'], 'demo --local')
  t.teardown(() => p.kill())
  const ex = await p.exit(120_000)
  t.equal(ex.code, 0, `demo --local exit 0${ex.code ? `: ${p.stderr.slice(-2000)}` : ''}`)
  const r = JSON.parse(p.stdout) as { ok: boolean; vcpu: string; checks: { name: string; ok: boolean }[]; stats: { status: string; downtime?: number } }
  t.equal(r.vcpu, 'kvm')
  t.ok(r.ok, 'every check passed')
  for (const c of r.checks) t.ok(c.ok, c.name)
  t.equal(r.stats.status, 'completed')
  t.type(r.stats.downtime, 'number', 'downtime reported')
})

t.test('--local on a tcp: URI is a usage error', { skip: noBuild }, async (t) => {
  const p = new Proc(['migrate', 'tcp:127.0.0.1:4444', '--local'], 'migrate --local tcp:')
  const ex = await p.exit(30_000)
  t.equal(ex.code, 2, 'usage error exit code')
  t.match(p.stderr, /--local: a local migration passes guest RAM as file descriptors, which only a unix: channel carries .*got tcp:127\.0\.0\.1:4444/)
  const q = new Proc(['save', 'file:/tmp/x', '--local'], 'save --local')
  t.equal((await q.exit(30_000)).code, 2)
  t.match(q.stderr, /--local belongs to migrate, incoming and demo, not save/)
})

async function refusedSoft(t: Test): Promise<void> {
  const dir = tempDir(t)
  const d = new Proc(['incoming', `unix:${join(dir, 'm.sock')}`, '--local', '--events', '--vcpu', 'soft', '--ram', '16M'], 'destination')
  t.teardown(() => d.kill())
  const address = String((await d.next('listening', 30_000)).address)
  const s = new Proc(['migrate', address, '--local', '--events', '--vcpu', 'soft', '--ram', '16M', '--run', '200', '--after-failure', '300'], 'source')
  t.teardown(() => s.kill())
  const ex = await s.exit(60_000)
  t.equal(ex.code, 1, 'source exit 1: no migration')
  const ev = lastEvent(s, 'failed') as (Ev & { report: { error: string; runState: string; guestOk: boolean } }) | undefined
  t.ok(ev, `after-failure report${ev ? '' : `: ${s.stderr.slice(-1500)}`}`)
  if (!ev) return
  t.match(ev.report.error, /RAM block 'pc\.ram' is not fd-backed \(a SharedArrayBuffer of the soft vCPU/)
  t.equal(ev.report.runState, 'running', 'the source guest runs')
  t.ok(ev.report.guestOk, 'and is intact')
}

t.test('a soft vCPU\'s RAM is refused by name; the guest runs on', { skip: noBuild }, refusedSoft)
