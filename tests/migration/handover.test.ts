// The handover (docs/flows.md), in one process with a relay between the
// sides: the link is cut or black-holed at every step of the protocol (in
// pre-copy, before READY, before GO, before STARTED, after STARTED) and after
// each trial the invariant is checked: at most one side runs the guest; if
// none does, both say 'handover-unknown', and resolve() on one side runs it
// with the state the source last had. Also: a destination whose start fails
// after GO, a cancel and a READY timeout (ABORT: the destination fails
// cleanly), the capability off on either side, and resolve()'s refusals.
import t, { type Test } from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { native } from '../../vmm/native/addon.js'
import type { EmulatedDevice, EmulatedDeviceOptions } from '../../native/index.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { VfioMigrationSet } from '../../vmm/vfio/vfio-set.js'
import { listen } from '../../vmm/channel/connect.js'
import { RpMsg } from '../../vmm/channel/return-path.js'
import {
  OutgoingMigration, IncomingMigration, MigrationError, type MigratableVm, type MigrationCapabilities,
  type MigrationParameters, type MigrationStats, type IncomingResult,
} from '../../vmm/migration/index.js'
import { Relay, type FaultAction, type FaultPoint } from './relay.js'

interface TestVm extends MigratableVm {
  emus: EmulatedDevice[]
  vfio: VfioMigrationSet
}

async function makeVm(role: 'source' | 'dest', o: EmulatedDeviceOptions, extra: Partial<MigratableVm> = {}): Promise<TestVm> {
  const vm = new Vm('prelaunch')
  if (role === 'source') await vm.vmStart()
  const registry = new SaveVMRegistry()
  const vfio = new VfioMigrationSet(vm, registry, { switchoverAck: () => false })
  const emu = new native.EmulatedDevice({ name: `${role}0`, ...o })
  await vfio.add(emu.device(), { idstr: 'dev0/vfio' })
  return { vm, registry, machine: 'test-1', vfio, emus: [emu], ...extra }
}

const tmp = () => mkdtempSync(join(tmpdir(), 'handover-'))
// Short enough for a quick test, long enough that a loaded machine's slow
// step is no dead link: with both sides in one process on a machine at load 11
// on 2 cores, 1000 ms of silence happened without any fault.
const FAST: Partial<MigrationParameters> = { linkTimeoutMs: 2000, handoverTimeoutMs: 5000, maxBandwidth: 0 }

type Outcome<T> = { ok: true; value: T } | { ok: false; error: MigrationError }
const settle = <T>(p: Promise<T>): Promise<Outcome<T>> => p.then((value) => ({ ok: true as const, value }), (error) => ({ ok: false as const, error: error as MigrationError }))

/** Resolves once `m` is in one of `states` (bounded). */
function reach(m: { status: string; on(e: 'status', f: (s: never) => void): unknown }, states: string[], ms: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (states.includes(m.status)) return resolve()
    const timer = setTimeout(() => reject(new Error(`${what}: still ${m.status} after ${ms} ms (wanted ${states.join('|')})`)), ms)
    m.on('status', ((s: string) => {
      if (states.includes(s)) {
        clearTimeout(timer)
        resolve()
      }
    }) as never)
  })
}

interface Trial {
  src: TestVm
  dst: TestVm
  out: OutgoingMigration
  inc: IncomingMigration
  srcDone: Promise<Outcome<MigrationStats>>
  dstDone: Promise<Outcome<IncomingResult>>
  relay: Relay
}

async function trial(t: Test, point: FaultPoint | null, action: FaultAction, opts: {
  dstExtra?: Partial<MigratableVm>
  srcCaps?: Partial<MigrationCapabilities>
  dstCaps?: Partial<MigrationCapabilities>
  srcParams?: Partial<MigrationParameters>
} = {}): Promise<Trial> {
  const dir = tmp()
  const src = await makeVm('source', { flags: 7, stateSize: 1 << 20, seed: 11 })
  const dst = await makeVm('dest', { flags: 7, stateSize: 1 << 20 }, opts.dstExtra)
  const l = await listen(`unix:${join(dir, 'dst')}`)
  const inc = new IncomingMigration(dst, { parameters: FAST, capabilities: opts.dstCaps })
  const dstDone = settle(inc.start(l))
  void dstDone.finally(() => l.close())
  const relay = await Relay.create(join(dir, 'relay'), join(dir, 'dst'), point, action)
  t.teardown(() => relay.close())
  const out = new OutgoingMigration(src, { parameters: { ...FAST, ...opts.srcParams }, capabilities: opts.srcCaps })
  const srcDone = settle(out.start(`unix:${relay.path}`))
  return { src, dst, out, inc, srcDone, dstDone, relay }
}

const running = (v: TestVm) => v.vm.state === 'running'

/** A destination check that holds until released (whenever that comes), and says when it began. */
function gate(): { check: () => Promise<void>; entered: Promise<void>; release: () => void } {
  let release!: () => void
  let enter!: () => void
  const open = new Promise<void>((r) => { release = r })
  const entered = new Promise<void>((r) => { enter = r })
  return { check: () => { enter(); return open }, entered, release }
}

/** Both sides settled or stuck in handover-unknown; the invariant holds. */
async function settled(t: Test, x: Trial): Promise<void> {
  await Promise.all([
    reach(x.out, ['completed', 'failed', 'cancelled', 'handover-unknown'], 20_000, 'source'),
    reach(x.inc, ['completed', 'failed', 'handover-unknown'], 20_000, 'destination'),
  ])
  t.ok(!(running(x.src) && running(x.dst)), `never two running copies (source ${x.src.vm.state}/${x.out.status}, destination ${x.dst.vm.state}/${x.inc.status})`)
  if (!running(x.src) && !running(x.dst)) {
    t.equal(x.out.status, 'handover-unknown', 'nobody runs the guest: the source says handover-unknown')
    t.equal(x.inc.status, 'handover-unknown', 'and so does the destination')
  }
  if (x.out.status === 'failed' || x.out.status === 'cancelled') t.ok(running(x.src), 'a source that failed on its own runs the guest again')
  if (x.out.status === 'completed') t.ok(running(x.dst), 'a completed source: the destination runs the guest')
  if (x.inc.status === 'failed') t.notOk(running(x.dst), 'a failed destination does not run the guest')
}

const cases: [string, FaultPoint, { src: string; dst: string }][] = [
  ['in pre-copy', { at: 'forward-bytes', bytes: 300_000 }, { src: 'failed', dst: 'failed' }],
  ['before READY reaches the source', { at: 'before-ready' }, { src: 'failed', dst: 'handover-unknown' }],
  ['before GO reaches the destination', { at: 'before-go' }, { src: 'handover-unknown', dst: 'handover-unknown' }],
  ['before STARTED reaches the source', { at: 'before-started' }, { src: 'handover-unknown', dst: 'completed' }],
  ['after STARTED', { at: 'after-started' }, { src: 'completed', dst: 'completed' }],
]

for (const action of ['cut', 'blackhole'] as const) {
  for (const [name, point, want] of cases) {
    t.test(`link ${action === 'cut' ? 'cut' : 'black-holed'} ${name}`, { timeout: 45_000 }, async (t) => {
      const x = await trial(t, point, action)
      let srcDecidedAt = 0
      x.out.on('status', (s) => { if (s !== 'device' && s !== 'active' && s !== 'setup') srcDecidedAt ||= performance.now() })
      const t0 = performance.now()
      await settled(t, x)
      const took = performance.now() - t0
      for (let i = 0; i < 100 && !x.relay.faulted; i++) await new Promise((r) => setTimeout(r, 20))
      t.ok(x.relay.faulted, 'the fault was applied')
      t.equal(x.out.status, want.src, `source: ${want.src} (${x.out.reason ?? ''})`)
      t.equal(x.inc.status, want.dst, `destination: ${want.dst} (${x.inc.reason ?? ''})`)
      // Bounded: the link watchdog (1.25 x 2000 ms) or a handover wait (5000 ms), plus slack for a loaded machine.
      t.ok(took < 12_000, `both sides decided within the bounds (${Math.round(took)} ms)`)
      if (action === 'blackhole' && point.at === 'before-ready') {
        // The switchover's bound: no GO sent, so the source resumes within
        // 1.25 x link-timeout (2500 ms) of the last byte, plus timer slack.
        const after = srcDecidedAt - x.relay.faultAt
        t.ok(after < 5000, `black-holed during the switchover: the source resumed ${Math.round(after)} ms after the link went`)
      }
      const srcDigest = await x.src.emus[0]!.digest()
      if (want.src === 'handover-unknown' && want.dst === 'handover-unknown') {
        t.equal(x.src.vm.state, 'postmigrate', 'the source guest is paused')
        t.notOk(running(x.dst), 'the destination guest is paused')
        t.equal(await x.dst.emus[0]!.digest(), srcDigest, 'both copies hold the state the source stopped with')
        // The operator runs it on one side (here the destination) and gives the other up.
        await x.inc.resolve('resume')
        await x.out.resolve('discard')
        const d = await x.dstDone
        const s = await x.srcDone
        t.ok(d.ok && d.value.resolved === 'resume', 'the destination runs the guest after resolve')
        t.ok(s.ok && s.value.status === 'completed', 'the source gave its copy up: completed')
        t.ok(running(x.dst) && !running(x.src), 'exactly one copy runs')
        t.equal(await x.dst.emus[0]!.digest(), srcDigest, "the running copy has the source's last state")
      } else if (want.src === 'handover-unknown') {
        // The destination runs it: the operator discards the source's copy.
        t.ok(running(x.dst), 'the destination runs the guest')
        await x.out.resolve('discard')
        const s = await x.srcDone
        t.ok(s.ok, 'source completed after resolve')
        t.notOk(running(x.src))
      } else if (want.dst === 'handover-unknown') {
        t.ok(running(x.src), 'the source resumed on its own (no GO was sent)')
        t.match((await x.srcDone as { error: Error }).error?.message ?? '', /READY|destination|link|closed|ECONN|timeout|no data/i, 'the source reports a plain failure')
        await x.inc.resolve('discard')
        const d = await x.dstDone
        t.notOk(d.ok, 'the destination discards its copy')
        t.notOk(running(x.dst))
      } else if (want.src === 'completed') {
        const s = await x.srcDone
        t.ok(s.ok && s.value.downtimeMeasured, 'completed, downtime measured end to end')
        t.equal(await x.dst.emus[0]!.digest(), srcDigest, 'the destination has the state')
      } else {
        t.notOk((await x.srcDone).ok)
        t.notOk((await x.dstDone).ok)
      }
      t.ok(!(running(x.src) && running(x.dst)), 'still never two running copies')
    })
  }
}

t.test('no fault: READY, GO, STARTED, and the destination starts only on GO', { timeout: 45_000 }, async (t) => {
  const order: string[] = []
  const x = await trial(t, null, 'cut')
  x.inc.on('status', (s) => order.push(`dst:${s}`))
  x.dst.vm.on('resume', () => order.push('dst:vm-running'))
  x.out.on('status', (s) => order.push(`src:${s}`))
  const s = await x.srcDone
  const d = await x.dstDone
  t.ok(s.ok && d.ok, 'both completed')
  t.ok(d.ok && d.value.handover, 'the destination started on GO')
  t.same(order.filter((o) => !['src:device', 'src:active', 'dst:active'].includes(o)), ['dst:ready', 'dst:vm-running', 'dst:completed', 'src:completed'])
  const rp = x.relay.seen.filter((m) => m !== RpMsg.LOAD_PROGRESS && m !== RpMsg.PONG)
  t.same(rp.slice(-2), [RpMsg.READY, RpMsg.RESUME_OK], 'READY then STARTED on the return path')
  t.equal(x.src.vm.state, 'postmigrate')
})

t.test('the destination cannot start after GO: it says so, and the source resumes', { timeout: 45_000 }, async (t) => {
  const x = await trial(t, null, 'cut', {
    dstExtra: {},
  })
  // A start notifier that fails: the start is rolled back, the guest never ran there.
  x.dst.vm.addChangeStateHandler({ name: 'refuse', cb: (run) => { if (run) throw new Error('device refused to run') } })
  const s = await x.srcDone
  const d = await x.dstDone
  t.notOk(s.ok, 'the migration failed')
  t.match(!s.ok && s.error.message, /device refused to run/, "with the destination's reason")
  t.equal(x.out.status, 'failed')
  t.ok(running(x.src), 'the source runs the guest again')
  t.notOk(d.ok)
  t.notOk(running(x.dst))
})

t.test('a cancel while the source waits for READY withdraws with ABORT: the destination fails cleanly', { timeout: 45_000 }, async (t) => {
  const g = gate()
  const x = await trial(t, null, 'cut', { dstExtra: { checkIncoming: g.check } })
  // The destination has the whole stream and is still checking: the source waits for READY.
  await g.entered
  await new Promise((r) => setTimeout(r, 50))
  x.out.cancel()
  g.release()
  const s = await x.srcDone
  const d = await x.dstDone
  t.equal(x.out.status, 'cancelled')
  t.notOk(s.ok)
  t.ok(running(x.src), 'the source runs the guest')
  t.equal(x.inc.status, 'failed', 'the destination failed plainly, not handover-unknown')
  t.match(!d.ok && d.error.message, /ABORT/)
  t.notOk(running(x.dst))
})

t.test('no READY within handover-timeout: the source resumes and withdraws (ABORT)', { timeout: 45_000 }, async (t) => {
  const g = gate()
  const x = await trial(t, null, 'cut', {
    dstExtra: { checkIncoming: g.check },
    srcParams: { handoverTimeoutMs: 500 },
  })
  const s = await x.srcDone
  t.notOk(s.ok)
  t.match(!s.ok && s.error.message, /READY.*500 ms/)
  t.ok(running(x.src), 'the source runs the guest')
  g.release()
  const d = await x.dstDone
  t.notOk(d.ok)
  t.equal(x.inc.status, 'failed')
  t.notOk(running(x.dst))
})

t.test('handover off at the source: the destination starts by itself, as with QEMU', { timeout: 45_000 }, async (t) => {
  const x = await trial(t, null, 'cut', { srcCaps: { handover: false } })
  const s = await x.srcDone
  const d = await x.dstDone
  t.ok(s.ok && d.ok)
  t.ok(d.ok && !d.value.handover, 'no handover')
  t.notOk(x.relay.seen.includes(RpMsg.READY), 'no READY')
  t.ok(running(x.dst))
  t.equal(x.src.vm.state, 'postmigrate')
})

t.test('without the handover a link lost after the whole stream leaves the source paused, not running', { timeout: 45_000 }, async (t) => {
  const x = await trial(t, { at: 'before-started' }, 'cut', { srcCaps: { handover: false } })
  await settled(t, x)
  t.equal(x.out.status, 'handover-unknown', 'the source cannot know: it does not resume by itself')
  t.ok(running(x.dst))
  await x.out.resolve('discard')
  t.ok((await x.srcDone).ok)
})

t.test('handover on at the source, off at the destination: refused in the configuration', { timeout: 45_000 }, async (t) => {
  const x = await trial(t, null, 'cut', { dstCaps: { handover: false } })
  const s = await x.srcDone
  const d = await x.dstDone
  t.match(!d.ok && d.error.message, /capability 'x-handover' is on at the source but off here/)
  t.notOk(s.ok)
  t.ok(running(x.src))
  t.notOk(running(x.dst))
})

t.test('resolve refuses outside handover-unknown and bad actions', { timeout: 45_000 }, async (t) => {
  const x = await trial(t, null, 'cut')
  await x.srcDone
  await x.dstDone
  await t.rejects(x.out.resolve('resume'), { code: 'EINVAL', message: /completed, not handover-unknown/ })
  await t.rejects(x.inc.resolve('discard'), { code: 'EINVAL', message: /completed, not handover-unknown/ })
  await t.rejects(x.out.resolve('bogus' as never), { code: 'EINVAL', message: /'resume' or 'discard'/ })
})

t.test('the source resolved with resume: it runs again and start() rejects', { timeout: 45_000 }, async (t) => {
  const x = await trial(t, { at: 'before-go' }, 'cut')
  await settled(t, x)
  t.equal(x.out.status, 'handover-unknown')
  await x.out.resolve('resume')
  await x.inc.resolve('discard')
  const s = await x.srcDone
  t.notOk(s.ok)
  t.match(!s.ok && s.error.message, /handover-unknown: .*resolved: the guest runs here again/)
  t.equal(!s.ok && s.error.stats?.status, 'failed')
  t.ok(running(x.src))
  t.notOk(running(x.dst))
  t.notOk((await x.dstDone).ok)
})
