// The handover trials of the fault lab (docs/faults.md): a real `vmm-migrate
// migrate` in one namespace, `vmm-migrate incoming` in the other, one fault
// per trial, and after it the invariant of docs/flows.md "The handover":
// at most one side runs the guest; if neither does, each side still alive
// says handover-unknown, and `vmm-migrate resolve --resume` on exactly one
// of them recovers it with the state the source stopped with.
import type { Test } from 'tap'
import { Lab, ADDR_DST, type Trigger, type Verdict } from './netns.js'
import { Proc, lastEvent } from '../e2e/helpers.js'

export const PORT = 4444
/**
 * Short bounds so a trial takes seconds; long enough that two processes on a
 * loaded 2-core machine are not mistaken for a dead link.
 */
export const LINK_TIMEOUT_MS = 2000
export const HANDOVER_TIMEOUT_MS = 5000
/** Every side decides within this of the start of its migration (the bounds above, a slow start, slack). */
export const DECIDE_MS = 30_000
/**
 * And within this of the fault: the longest wait of docs/flows.md "Bounds"
 * (a handover wait, or 1.25 x link-timeout of silence, whichever ends it),
 * plus 2 s for two busy processes to notice and print it.
 */
export const FAULT_BOUND_MS = Math.max(HANDOVER_TIMEOUT_MS, 1.25 * LINK_TIMEOUT_MS) + 2000

const COMMON = ['--ram', '64M', '--vcpu', 'soft', '--link-timeout', String(LINK_TIMEOUT_MS), '--handover-timeout', String(HANDOVER_TIMEOUT_MS)]

/** The handover's messages as they start a TCP payload (vmm/channel/return-path.ts, handover.ts). */
export const MSG = {
  /** READY: be16 0x103, be16 length 0. Behind a LOAD_PROGRESS (12 bytes) or a PONG (8) if they shared a segment. */
  ready: { dir: 'return', hex: '01030000', offsets: [0, 8, 12] },
  /** GO: "VMHO", be16 1, be16 0. The source sends nothing else after the stream's end. */
  go: { dir: 'forward', hex: '564d484f00010000', offsets: [0] },
  /** STARTED: RESUME_OK, be16 0x100, be16 length 32. */
  started: { dir: 'return', hex: '01000020', offsets: [0, 12] },
} as const

type Msg = keyof typeof MSG
export const before = (m: Msg): Trigger => ({ kind: 'message', ...MSG[m], offsets: [...MSG[m].offsets], before: true })
export const after = (m: Msg): Trigger => ({ kind: 'message', ...MSG[m], offsets: [...MSG[m].offsets], before: false })

type Side = 'source' | 'destination'
/** A process event: `event` (and for 'status' the status) printed by `who`. */
export interface At { who: Side; event: string; status?: string; delayMs?: number }

export type Fault =
  /** Armed before the migration; the kernel applies it when the trigger goes by. */
  | { kind: 'link'; verdict: Verdict; trigger: Trigger }
  /** At a process event: the source is frozen (SIGSTOP) while the fault is armed, so it cannot run ahead. */
  | { kind: 'link-at'; verdict: Verdict; at: At }
  /** kill -9 of one side at a process event. */
  | { kind: 'kill'; side: Side; at: At }
  /** kill -9 of one side once a black-hole armed on a message went off (that message lost). */
  | { kind: 'kill-after-trip'; side: Side; trigger: Trigger }

export type SourceEnd = 'completed' | 'resumed' | 'unknown' | 'dead' | 'error'
export type DestEnd = 'ran' | 'failed' | 'unknown' | 'dead'

export interface TrialSpec {
  name: string
  fault: Fault
  /** What each side must end in before anyone resolves (one of). */
  source: SourceEnd[]
  destination: DestEnd[]
  /** Part of the quick form (npm test). */
  quick?: boolean
  /**
   * More arguments for the source. A fault at a time inside pre-copy needs
   * a pre-copy that surely outlasts it: on an idle machine 64 MiB over the
   * lab's veth pair is sent in well under the 200 ms such a trial waits.
   */
  sourceArgs?: string[]
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function until(what: string, ms: number, probe: () => boolean): Promise<void> {
  const deadline = Date.now() + ms
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms`)
    await sleep(25)
  }
}

function sourceEnd(p: Proc, killed: boolean): SourceEnd | undefined {
  if (killed) return 'dead'
  if (!p.exited) return p.events.some((e) => e.event === 'handover-unknown') ? 'unknown' : undefined
  if (p.exited.code === 0 && lastEvent(p, 'completed')) return 'completed'
  const f = lastEvent(p, 'failed') as { report?: { runState?: string } } | undefined
  return f?.report?.runState === 'running' ? 'resumed' : 'error'
}

function destEnd(p: Proc, killed: boolean): DestEnd | undefined {
  if (killed) return 'dead'
  if (!p.exited) return p.events.some((e) => e.event === 'handover-unknown') ? 'unknown' : undefined
  return p.exited.code === 0 && lastEvent(p, 'completed') ? 'ran' : 'failed'
}

/** performance.now() when `p` printed the first event matching `where`. */
function eventAt(p: Proc, where: (e: Record<string, unknown>) => boolean): number | undefined {
  const i = p.events.findIndex(where)
  return i < 0 ? undefined : p.eventTimes[i]
}

interface Digests { ramDigest: string; deviceDigest: string; counter: string; checksumConsistent: boolean }

/** Run one trial and check the invariant (bounded throughout). */
export async function runTrial(t: Test, spec: TrialSpec): Promise<void> {
  const lab = await Lab.create()
  t.teardown(() => lab.destroy())
  const f = spec.fault
  if (f.kind === 'link') await lab.fault(f.verdict, f.trigger, PORT)
  if (f.kind === 'kill-after-trip') await lab.fault('blackhole', f.trigger, PORT)

  const dst = lab.spawn(lab.dst, ['incoming', `tcp:${ADDR_DST}:${PORT}`, '--events', '--run-after', '300', '--incoming-timeout', '60000', ...COMMON], 'destination')
  await dst.next('listening', 30_000)
  const t0 = performance.now()
  const src = lab.spawn(lab.src, ['migrate', `tcp:${ADDR_DST}:${PORT}`, '--events', '--run', '300', '--after-failure', '300', ...COMMON, ...(spec.sourceArgs ?? [])], 'source')
  const proc = (s: Side) => (s === 'source' ? src : dst)
  const killed = { source: false, destination: false }
  let faultAt = 0

  // When a rule armed in advance went off, as seen from here (polled: at most ~50 ms late).
  let polling = f.kind === 'link'
  const poll = (async () => {
    while (polling && !faultAt) {
      if (await lab.tripped().catch(() => false)) faultAt = performance.now()
      else await sleep(30)
    }
  })()
  const atEvent = async (at: At) => {
    await proc(at.who).next(at.event, 60_000, (e) => at.status === undefined || e.status === at.status)
    if (at.delayMs) await sleep(at.delayMs)
  }
  if (f.kind === 'link-at') {
    await atEvent(f.at)
    // Frozen, the source cannot finish the step while the rule is loaded.
    src.signal('SIGSTOP')
    try {
      await lab.fault(f.verdict, { kind: 'now' }, PORT)
    } finally {
      src.signal('SIGCONT')
    }
    faultAt = performance.now()
  } else if (f.kind === 'kill') {
    await atEvent(f.at)
    // Killing the other side at the source's event: the source is frozen
    // first, so it cannot run on to the next step (the end of the stream,
    // GO) before the kill has landed.
    const freeze = f.at.who === 'source' && f.side === 'destination'
    if (freeze) src.signal('SIGSTOP')
    proc(f.side).kill()
    killed[f.side] = true
    if (freeze) {
      await proc(f.side).exit(10_000).catch(() => undefined)
      src.signal('SIGCONT')
    }
    faultAt = performance.now()
  } else if (f.kind === 'kill-after-trip') {
    const deadline = Date.now() + 60_000
    while (!(await lab.tripped()) && Date.now() < deadline && !src.exited && !dst.exited) await sleep(20)
    proc(f.side).kill()
    killed[f.side] = true
    faultAt = performance.now()
  }

  // Each side decides: exits, or stops in handover-unknown (bounded).
  const se = () => sourceEnd(src, killed.source)
  const de = () => destEnd(dst, killed.destination)
  await until('decision of both sides', DECIDE_MS, () => se() !== undefined && de() !== undefined).catch((e: Error) => {
    t.fail(`${e.message}: source ${se() ?? 'undecided'}, destination ${de() ?? 'undecided'}\nsource stderr: ${src.stderr.slice(-1500)}\ndestination stderr: ${dst.stderr.slice(-1500)}`)
  })
  polling = false
  await poll
  const s0 = se()
  const d0 = de()
  // When each side decided: the source's final status; the destination's
  // handover-unknown, its start on GO ('starting'), or its exit.
  const srcAt = killed.source ? undefined : eventAt(src, (e) => e.event === 'status' && ['failed', 'cancelled', 'completed', 'handover-unknown'].includes(String(e.status)))
  const dstAt = killed.destination ? undefined : (eventAt(dst, (e) => e.event === 'handover-unknown' || e.event === 'starting') ?? (dst.exited ? dst.exitedAt : undefined))
  const ms = (x: number | undefined) => (x === undefined ? '-' : `${Math.round(x)} ms`)
  const rel = (x: number | undefined) => (x === undefined || !faultAt ? undefined : x - faultAt)
  t.comment(`${spec.name}: source ${s0}, destination ${d0}; decided after the fault: source ${ms(rel(srcAt))}, destination ${ms(rel(dstAt))}; the whole migration took ${ms(Math.max(srcAt ?? 0, dstAt ?? 0) - t0)}`)
  if (faultAt) {
    for (const [who, x] of [['source', rel(srcAt)], ['destination', rel(dstAt)]] as const) {
      if (x !== undefined) t.ok(x <= FAULT_BOUND_MS, `${who} decided ${Math.round(x)} ms after the fault (bound ${FAULT_BOUND_MS} ms)`)
    }
  }
  if (s0 === undefined || d0 === undefined) return
  if (f.kind === 'link' || f.kind === 'kill-after-trip') t.ok(await lab.tripped(), 'the armed rule went off: the fault hit where it was aimed')
  t.ok(spec.source.includes(s0), `source ended ${s0} (expected ${spec.source.join(' or ')})`, { stderr: src.stderr.slice(-1500) })
  t.ok(spec.destination.includes(d0), `destination ended ${d0} (expected ${spec.destination.join(' or ')})`, { stderr: dst.stderr.slice(-1500) })

  // The invariant, before anyone resolves.
  const srcRuns = s0 === 'resumed'
  const dstRan = d0 === 'ran'
  t.notOk(srcRuns && dstRan, 'never two running copies')
  if (s0 !== 'dead' && d0 !== 'dead' && !srcRuns && !dstRan) {
    t.equal(s0, 'unknown', 'nobody runs the guest: the source says handover-unknown')
    t.equal(d0, 'unknown', 'and so does the destination')
  }
  const dstReady = dst.events.some((e) => e.event === 'ready')
  const dstStarted = dst.events.some((e) => e.event === 'starting')
  if (s0 === 'completed') t.ok(dstRan || (killed.destination && dstStarted), 'a completed source: the destination runs the guest (or ran it until killed)')
  // A destination that had the whole stream, checked, holds the only copy once the source is gone.
  if (s0 === 'dead' && dstReady) t.not(d0, 'failed', 'the source is gone and the destination had the guest ready: it keeps it')

  // Resolve: exactly one copy runs afterwards.
  const resolve = async (side: Side, action: 'resume' | 'discard') => {
    const u = lastEvent(proc(side), 'handover-unknown')
    t.ok(u?.control, `${side} printed its control socket`)
    t.equal(u?.runState, side === 'source' ? 'postmigrate' : 'inmigrate', `${side}: the guest is paused there`)
    const r = new Proc(['resolve', String(u?.control), `--${action}`, '--json'], `resolve ${side}`)
    t.teardown(() => r.kill())
    const ex = await r.exit(30_000)
    t.equal(ex.code, 0, `resolve --${action} on the ${side}: ${r.stdout.trim()} ${r.stderr.trim()}`)
  }
  if (s0 === 'unknown' || d0 === 'unknown') {
    // Who runs it: whoever already does; else the destination, whose copy passed its checks.
    const runner: Side = srcRuns ? 'source' : dstRan ? 'destination' : d0 === 'unknown' ? 'destination' : 'source'
    if (s0 === 'unknown') await resolve('source', runner === 'source' ? 'resume' : 'discard')
    if (d0 === 'unknown') await resolve('destination', runner === 'destination' ? 'resume' : 'discard')
  }
  const sx = killed.source ? undefined : await src.exit(30_000)
  const dx = killed.destination ? undefined : await dst.exit(30_000)
  const s1 = sourceEnd(src, killed.source)
  const d1 = destEnd(dst, killed.destination)
  t.comment(`after resolve: source ${s1} (${JSON.stringify(sx)}), destination ${d1} (${JSON.stringify(dx)})`)
  t.notOk(s1 === 'resumed' && d1 === 'ran', 'after resolve: never two copies')
  const guestLost = s1 !== 'resumed' && d1 !== 'ran'
  // Only a kill of the one process that ran the guest may lose it: the
  // source before the destination had it ready, or the destination after it
  // started it and the source was told.
  if (guestLost) {
    t.ok((s1 === 'dead' && !dstReady) || (d1 === 'dead' && s1 === 'completed' && dstStarted),
      `the guest runs nowhere only because the process running it was killed (source ${s1}, destination ${d1})`)
  }

  // The state: what runs is what the source stopped with.
  const sv = (lastEvent(src, 'completed') as { verification?: Digests } | undefined)?.verification
  const dl = (lastEvent(dst, 'completed') as { report?: { loaded?: Digests; checksumConsistentAfter?: boolean } } | undefined)?.report
  if (d1 === 'ran') {
    t.ok(dl?.loaded?.checksumConsistent, 'destination: the guest checksum matched its RAM when it started')
    t.ok(dl?.checksumConsistentAfter, 'and after running there')
    if (sv) {
      t.equal(dl?.loaded?.ramDigest, sv.ramDigest, "destination RAM digest = the source's after the switchover")
      t.equal(dl?.loaded?.deviceDigest, sv.deviceDigest, 'device digest equal')
      t.equal(dl?.loaded?.counter, sv.counter, 'vCPU counter equal')
    }
    // Without the source's figures (it died) the proof stands: the destination
    // compared what it loaded with the source's microvm-proof before READY.
  }
  if (s1 === 'resumed') {
    const rep = (lastEvent(src, 'failed') as { report?: { guestOk?: boolean } } | undefined)?.report
    t.ok(rep?.guestOk, 'source: its guest runs on intact (checksum matches RAM, counter moves)')
  }
}
