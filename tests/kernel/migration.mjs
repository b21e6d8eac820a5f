// Live migration inside the kernel-lane guest, between two node processes:
// the source holds mdev A, the destination mdev B, and the project's
// orchestrator (dist/vmm/migration: migrate / incoming) moves A's state to B
// over a UNIX socket with pre-copy, P2P, switchover-ack and stop-copy; mtty
// (Linux 6.12) is the device on both ends. Then the failures: resume data
// damaged on the wire must be refused by the destination's driver, and a
// connection cut in pre-copy; either way the source device runs again.
//
// Runs after suite.mjs, in its own process: a process that opened a group
// keeps it until it exits (the napi layer has no close), so the suite's
// process must be gone before the children can open A and B. The failure
// cases run first because the last check opens group A here for good.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { errnoOf, laneEnv, loadNative } from './lib/vfio.mjs';
import { relay } from './lib/wire.mjs';

const env = laneEnv();
const native = loadNative();
const NODE_SCRIPT = fileURLToPath(new URL('./lib/mig-node.mjs', import.meta.url));
// TCG is slow: node's start alone takes seconds in the guest.
const EVENT_TIMEOUT_MS = 120_000;
const dir = mkdtempSync(join(tmpdir(), 'kernel-mig-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** Spawns one side; next(event) resolves that side's next JSON line with `event`. */
function startSide(args) {
  const child = spawn(process.execPath, [NODE_SCRIPT, JSON.stringify(args)], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines = [];
  const waiters = [];
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const flush = () => {
    for (let i = 0; i < waiters.length; i++) {
      const w = waiters[i];
      const k = lines.findIndex((l) => l.event === w.event || l.event === 'crash');
      if (k < 0) continue;
      const [line] = lines.splice(k, 1);
      waiters.splice(i--, 1);
      clearTimeout(w.timer);
      if (line.event === 'crash') w.reject(new Error(`${args.role} crashed: ${line.error.message}\n${line.stack ?? ''}\n${stderr}`));
      else w.resolve(line);
    }
  };
  createInterface({ input: child.stdout }).on('line', (l) => {
    try {
      lines.push(JSON.parse(l));
    } catch {
      lines.push({ event: 'noise', text: l });
    }
    flush();
  });
  exited.then(({ code, signal }) => {
    for (const w of waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error(`${args.role} exited (code ${code}, signal ${signal}) before '${w.event}'; stderr:\n${stderr}`));
    }
  });
  return {
    child,
    exited,
    next(event) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`${args.role}: no '${event}' within ${EVENT_TIMEOUT_MS} ms; stderr:\n${stderr}`));
        }, EVENT_TIMEOUT_MS);
        waiters.push({ event, resolve, reject, timer });
        flush();
      });
    },
    quit() {
      child.stdin.end('quit\n');
    },
  };
}

const sides = (uri) => [
  { role: 'source', group: env.a.group, uuid: env.a.uuid, uri },
  { role: 'dest', group: env.b.group, uuid: env.b.uuid, uri },
];

/** Destination listening on `listenUri`, source sent to `sendUri`; resolves both results. */
async function run(listenUri, sendUri, middle) {
  const [srcArgs, dstArgs] = sides(listenUri);
  const dst = startSide(dstArgs);
  try {
    await dst.next('listening');
    const wire = middle ? await middle() : null;
    const src = startSide({ ...srcArgs, uri: sendUri });
    try {
      const [s, d] = await Promise.all([src.next('result'), dst.next('result')]);
      assert.deepEqual(await src.exited, { code: 0, signal: null }, 'the source exits cleanly');
      return { s, d, dst, wire };
    } finally {
      src.child.kill('SIGKILL');
      await wire?.close();
    }
  } catch (e) {
    dst.child.kill('SIGKILL');
    throw e;
  }
}

async function endDest(dst) {
  dst.quit();
  const bye = await dst.next('bye');
  assert.deepEqual(await dst.exited, { code: 0, signal: null }, 'the destination exits cleanly');
  return bye;
}

const show = (x) => JSON.stringify(x, null, 1);

/** The source's checks after a failed migration: its device and VM run again, as before. */
function sourceRecovered(s) {
  assert.equal(s.ok, false, `the source reports the failure: ${show(s)}`);
  assert.equal(s.before, 'RUNNING');
  assert.equal(s.deviceState, 'RUNNING', `source device back to RUNNING: ${show(s.states)}`);
  assert.equal(s.vmState, 'running', 'source VM runs again');
  assert.ok(s.states.includes('PRE_COPY'), `the failure came during a live migration: ${show(s.states)}`);
  assert.equal(s.states.at(-1), 'RUNNING');
}

test('resume data damaged on the wire: mtty refuses the write, both sides recover', async (t) => {
  const target = `unix:${join(dir, 'corrupt-dst.sock')}`;
  const front = join(dir, 'corrupt-front.sock');
  const { s, d, dst, wire } = await run(target, `unix:${front}`, () => relay(front, target.slice(5), 'corrupt'));
  t.diagnostic(`source: ${JSON.stringify(s.error)}; destination: ${JSON.stringify(d.error)}`);
  assert.equal(wire.hits(), 1, 'the relay saw the mtty header once and damaged it');
  assert.equal(d.ok, false, 'the destination refuses the migration');
  assert.match(show(d.error), /EFAULT/, 'mtty answers a bad magic with EFAULT on the write');
  assert.ok(d.states.includes('RESUMING'), show(d.states));
  assert.equal(d.deviceState, 'RUNNING', 'the destination device was reset out of RESUMING');
  assert.notEqual(d.vmState, 'running', 'the destination VM never started');
  sourceRecovered(s);
  assert.equal((await endDest(dst)).deviceState, 'RUNNING');
});

test('connection cut in pre-copy before the initial data arrives: no switchover, both sides recover', async (t) => {
  const target = `unix:${join(dir, 'cut-dst.sock')}`;
  const front = join(dir, 'cut-front.sock');
  const { s, d, dst, wire } = await run(target, `unix:${front}`, () => relay(front, target.slice(5), 'cut'));
  t.diagnostic(`source: ${JSON.stringify(s.error)}; destination: ${JSON.stringify(d.error)}`);
  assert.equal(wire.hits(), 1);
  assert.equal(d.ok, false);
  assert.notEqual(d.deviceState, 'RESUMING', 'the destination left RESUMING');
  assert.notEqual(d.deviceState, 'ERROR');
  assert.notEqual(d.vmState, 'running');
  assert.ok(!s.states.includes('STOP_COPY'), `no switchover without the destination's ack: ${show(s.states)}`);
  sourceRecovered(s);
  await endDest(dst);
});

test('live migration A -> B between two processes: pre-copy, P2P, switchover-ack, stop-copy', async (t) => {
  const uri = `unix:${join(dir, 'ok.sock')}`;
  const { s, d, dst } = await run(uri, uri);
  t.diagnostic(`source stats: ${JSON.stringify({ ...s.stats, vfio: s.vfio })}`);
  t.diagnostic(`destination: ${JSON.stringify({ incoming: d.incoming, vfio: d.vfio })}`);
  t.diagnostic(`device states: source ${s.states.join(' > ')}; destination ${d.states.join(' > ')}`);
  assert.equal(s.ok, true, `migrate() failed: ${show(s.error)}`);
  assert.equal(d.ok, true, `incoming() failed: ${show(d.error)}`);
  assert.equal(s.stats.status, 'completed');
  assert.equal(d.incoming.status, 'completed');

  // Source: RUNNING -> PRE_COPY, quiesced through PRE_COPY_P2P (mtty has
  // P2P), STOP_COPY for the rest, and after completion the VM is in
  // postmigrate with the device stopped.
  const at = (name) => s.states.indexOf(name);
  assert.ok(at('PRE_COPY') >= 0 && at('PRE_COPY') < at('PRE_COPY_P2P') && at('PRE_COPY_P2P') < at('STOP_COPY'), `source walk: ${s.states.join(' > ')}`);
  assert.equal(s.vmState, 'postmigrate');
  assert.equal(s.deviceState, 'STOP', 'the source device stays stopped after completion');
  const sv = Object.values(s.vfio)[0];
  // mtty offers its 24-byte header in PRE_COPY, the two ports (72) after.
  assert.equal(sv.precopyBytes, 24, 'the header went in pre-copy');
  assert.equal(sv.stopCopyBytes, 72, 'the ports went in stop-copy');
  assert.equal(sv.bytesSaved, 96);
  // Switchover-ack was on for both: the source only switches over after the
  // destination acked, so a completed run is the proof it did.

  // Destination: RESUMING, loaded on leaving it (the driver checks the
  // image there), running with the VM.
  assert.equal(d.states[0], 'RESUMING', `destination walk: ${d.states.join(' > ')}`);
  assert.equal(d.states.at(-1), 'RUNNING');
  assert.equal(d.deviceState, 'RUNNING', 'the destination device runs');
  assert.equal(d.vmState, 'running');
  assert.equal(Object.values(d.vfio)[0].bytesLoaded, 96);
  // Both devices now save the same image (mtty's ports are at their
  // defaults here: the same bytes, not a proof of transfer on their own).
  assert.equal(d.image.bytes, 96);
  assert.deepEqual(d.image, s.image);

  // The source process is gone and released A; B is still held.
  const a = await native.Group.open(env.a.group);
  assert.equal((await a.status()).viable, true, 'group A can be opened again: the source let go');
  assert.equal(await errnoOf(native.Group.open(env.b.group)), 16, 'group B is busy: the destination holds it');
  assert.equal((await endDest(dst)).deviceState, 'RUNNING', 'the destination device still runs at exit');
});
