// The fault lab's handover trials (issue #13, docs/faults.md): cut, black-hole
// and kill -9 of either side at every step of the handover and in pre-copy,
// between two real processes in two network namespaces. `npm test` runs the
// trials marked quick; FAULTS_FULL=1 (npm run test:faults) runs them all.
import t from 'tap'
import { labGate, type Trigger } from './netns.js'
import { runTrial, before, after, type TrialSpec } from './trials.js'
import { missingBuild } from '../e2e/helpers.js'

const full = process.env.FAULTS_FULL === '1'
// Each trial takes 5-15 s (two processes, a 64 MiB guest, the lab's bounds).
t.setTimeout(full ? 900_000 : 240_000)

const trials: TrialSpec[] = []
for (const verdict of ['blackhole', 'cut'] as const) {
  const link = (trigger: Trigger) => ({ kind: 'link' as const, verdict, trigger })
  const v = verdict === 'cut' ? 'cut' : 'black-holed'
  trials.push(
    // Pre-copy: the stream is about 70 MB; a quarter and three quarters in.
    { name: `link ${v} in pre-copy (16 MB)`, fault: link({ kind: 'forward-bytes', bytes: 16 << 20 }), source: ['resumed'], destination: ['failed'], quick: verdict === 'cut' },
    { name: `link ${v} late in pre-copy (48 MB)`, fault: link({ kind: 'forward-bytes', bytes: 48 << 20 }), source: ['resumed'], destination: ['failed'] },
    // The switchover, before the stream's end reached the destination.
    { name: `link ${v} at the switchover, before the end of the stream`, fault: { kind: 'link-at', verdict, at: { who: 'source', event: 'status', status: 'device' } }, source: ['resumed'], destination: ['failed'], quick: verdict === 'blackhole' },
    // After the end of the stream the destination sends nothing but READY
    // (and heartbeats): a fault there is READY lost.
    { name: `link ${v} before READY (after the end of the stream)`, fault: link(before('ready')), source: ['resumed'], destination: ['unknown'], quick: verdict === 'blackhole' },
    { name: `link ${v} after READY`, fault: link(after('ready')), source: ['unknown'], destination: ['unknown'] },
    { name: `link ${v} before GO`, fault: link(before('go')), source: ['unknown'], destination: ['unknown'], quick: verdict === 'cut' },
    { name: `link ${v} after GO`, fault: link(after('go')), source: ['unknown'], destination: ['ran'] },
    { name: `link ${v} before STARTED`, fault: link(before('started')), source: ['unknown'], destination: ['ran'], quick: verdict === 'blackhole' },
    { name: `link ${v} after STARTED`, fault: link(after('started')), source: ['completed'], destination: ['ran'] },
  )
}
trials.push(
  // 64 MiB at 16 MiB/s: four seconds of pre-copy, so a kill 200 ms into it lands there (one CI run
  // on an idle machine finished the whole migration before such a kill, without the cap).
  { name: 'source killed in pre-copy', fault: { kind: 'kill', side: 'source', at: { who: 'source', event: 'status', status: 'active', delayMs: 200 } }, source: ['dead'], destination: ['failed'], sourceArgs: ['--max-bandwidth', '16M'] },
  { name: 'source killed at the switchover', fault: { kind: 'kill', side: 'source', at: { who: 'source', event: 'status', status: 'device' } }, source: ['dead'], destination: ['failed', 'unknown'] },
  // The destination's copy is then the only one: it must keep it.
  { name: 'source killed while READY is lost', fault: { kind: 'kill-after-trip', side: 'source', trigger: before('ready') }, source: ['dead'], destination: ['unknown'], quick: true },
  { name: 'source killed once the destination is ready', fault: { kind: 'kill', side: 'source', at: { who: 'destination', event: 'ready' } }, source: ['dead'], destination: ['ran', 'unknown'] },
  { name: 'source killed after GO, GO lost', fault: { kind: 'kill-after-trip', side: 'source', trigger: before('go') }, source: ['dead'], destination: ['unknown'] },
  { name: 'source killed after GO arrived', fault: { kind: 'kill', side: 'source', at: { who: 'destination', event: 'starting' } }, source: ['dead'], destination: ['ran'] },
  { name: 'destination killed in pre-copy', fault: { kind: 'kill', side: 'destination', at: { who: 'source', event: 'status', status: 'active', delayMs: 200 } }, source: ['resumed'], destination: ['dead'], sourceArgs: ['--max-bandwidth', '16M'] },
  { name: 'destination killed at the switchover', fault: { kind: 'kill', side: 'destination', at: { who: 'source', event: 'status', status: 'device' } }, source: ['resumed'], destination: ['dead'] },
  // A kill at an event of the destination lands a little after it: GO, the
  // start and STARTED may all have happened by then (then the guest ran
  // there and the kill ended it, which no protocol can undo).
  { name: 'destination killed with READY sent', fault: { kind: 'kill', side: 'destination', at: { who: 'destination', event: 'ready' } }, source: ['resumed', 'unknown', 'completed'], destination: ['dead'] },
  { name: 'destination killed as it starts the guest', fault: { kind: 'kill', side: 'destination', at: { who: 'destination', event: 'starting' } }, source: ['unknown', 'completed'], destination: ['dead'] },
  // Aimed by the kernel instead: GO delivered, nothing after it gets out.
  { name: 'destination killed after GO, before STARTED', fault: { kind: 'kill-after-trip', side: 'destination', trigger: after('go') }, source: ['unknown'], destination: ['dead'], quick: true },
  { name: 'destination killed while STARTED is lost', fault: { kind: 'kill-after-trip', side: 'destination', trigger: before('started') }, source: ['unknown'], destination: ['dead'] },
)

const noBuild = missingBuild()
const gate = noBuild ? false : labGate(t)
// FAULTS_ONLY=text: the trials whose name contains it (whatever the form).
const only = process.env.FAULTS_ONLY
const chosen = trials.filter((x) => (only ? x.name.includes(only) : full || x.quick))
t.comment(`${full ? 'full' : 'quick'} form: ${chosen.length} of ${trials.length} trials${full ? '' : ' (FAULTS_FULL=1 or npm run test:faults for all)'}`)
for (const spec of chosen) {
  t.test(spec.name, { skip: noBuild ?? gate, timeout: 120_000 }, (t) => runTrial(t, spec))
}
