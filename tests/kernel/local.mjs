// A local migration (live update) of a kernel VFIO device inside the
// kernel-lane guest, between two node processes: the source opens mtty A,
// sets its INTx eventfd, leaves marks in its UART (the scratch register,
// two bytes in the FIFO) and hands the running device over with
// migrate/incoming `local`: its container, group and device fds and the
// eventfd go over the UNIX socket with SCM_RIGHTS
// and no device state moves (mtty is an mdev that pins no guest pages, so
// there are no DMA mappings whose vaddr would have to change hands). The
// destination, which never opened the device itself, finds the marks,
// drains the FIFO, writes its own mark, gets the device's interrupt on the
// passed eventfd, and still uses the device after the source process is
// gone.
//
// Runs in its own process (each file of the lane is one): group A must be
// free, and the source child opens it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { errnoOf, laneEnv, loadNative } from './lib/vfio.mjs';

const env = laneEnv();
const native = loadNative();
const dist = (p) => import(new URL(`../../dist/vmm/${p}`, import.meta.url));
const { Vm } = await dist('runstate/index.js');
const { SaveVMRegistry } = await dist('savevm/index.js');
const { KernelVfioHandover } = await dist('vfio/index.js');
const { localRefusal } = await dist('migration/index.js');
/** Group A, held by this process from the handover case on (the napi layer has no close). */
let groupA;
const NODE_SCRIPT = fileURLToPath(new URL('./lib/local-node.mjs', import.meta.url));
const EVENT_TIMEOUT_MS = 120_000;
const dir = mkdtempSync(join(tmpdir(), 'kernel-local-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

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
    send(line) {
      child.stdin.write(`${line}\n`);
    },
  };
}

const show = (x) => JSON.stringify(x, null, 1);

test('a destination that fails after adopting the fds closes them; the source keeps using the device', async (t) => {
  const uri = `unix:${join(dir, 'fail.sock')}`;
  const dst = startSide({ role: 'dest', uri, fifoLength: 0, failAfterLoad: true });
  try {
    await dst.next('listening');
    const src = startSide({ role: 'source', group: env.a.group, uuid: env.a.uuid, uri, scr: 0x11, fifo: '' });
    const [s, d] = await Promise.all([src.next('result'), dst.next('result')]);
    t.diagnostic(`source: ${show({ ok: s.ok, error: s.error, afterFailure: s.afterFailure, vmState: s.vmState })}; destination: ${show({ ok: d.ok, error: d.error, vfioFdsGained: d.vfioFdsGained })}`);
    assert.equal(s.ok, false, 'the migration failed');
    assert.match(d.error.message, /refused by the kernel lane after the devices were adopted/);
    assert.match(s.error.message, /refused by the kernel lane/, 'the source hears why');
    assert.equal(s.vmState, 'running', 'the source runs on');
    assert.deepEqual(s.afterFailure, { scr: 0xa5, deviceState: 'RUNNING' }, 'and uses its device');
    assert.deepEqual(d.vfioFdsGained, [], 'the destination holds no VFIO fd');
    assert.notEqual(d.vmState, 'running');
    assert.deepEqual(await src.exited, { code: 0, signal: null });
    dst.send('quit');
    await dst.next('bye');
    assert.deepEqual(await dst.exited, { code: 0, signal: null });
  } finally {
    dst.child.kill('SIGKILL');
  }
});

test('local migration: mtty A handed to another process by its fds, running, its state untouched', async (t) => {
  const uri = `unix:${join(dir, 'local.sock')}`;
  const fifo = 'hi';
  const dst = startSide({ role: 'dest', uri, fifoLength: fifo.length, scr2: 0xc3 });
  try {
    await dst.next('listening');
    const src = startSide({ role: 'source', group: env.a.group, uuid: env.a.uuid, uri, scr: 0x5a, fifo });
    const [s, d] = await Promise.all([src.next('result'), dst.next('result')]);
    t.diagnostic(`source: ${show({ ok: s.ok, error: s.error, marks: s.marks, downtime: s.stats?.downtime, vmState: s.vmState })}`);
    t.diagnostic(`destination: ${show({ ok: d.ok, error: d.error, received: d.received, marks: d.marks, fifo: d.fifo, deviceState: d.deviceState, vfioFdsGained: d.vfioFdsGained, otherFdsGained: d.otherFdsGained })}`);
    assert.equal(s.refusal, null, 'nothing stands in the way: an mdev without DMA mappings');
    assert.equal(s.mappings, 0);
    assert.equal(s.ok, true, `migrate() failed: ${show(s.error)}`);
    assert.equal(d.ok, true, `incoming() failed: ${show(d.error)}`);
    assert.equal(s.stats.status, 'completed');
    assert.equal(s.vmState, 'postmigrate');
    assert.equal(d.vmState, 'running');
    assert.equal(d.received.length, 1);
    assert.equal(d.received[0].name, env.a.uuid);
    assert.equal(d.received[0].mdev, true, 'known as an mdev by its UUID');
    assert.deepEqual(d.vfioFdsGained, [`/dev/vfio/${env.a.group}`, '/dev/vfio/vfio', 'anon_inode:[vfio-device]'].sort(), `container, group and device fds, and no other VFIO fd (others: ${show(d.otherFdsGained)})`);
    assert.ok(d.otherFdsGained.includes('anon_inode:[eventfd]'), `and the interrupt eventfd (others: ${show(d.otherFdsGained)})`);
    assert.equal(d.deviceFile, s.deviceFile, 'the same open device file (anon inode), not a new open');
    assert.equal(d.name, env.a.uuid);
    assert.equal(d.info.numRegions, 9);
    assert.deepEqual({ viable: d.groupStatus.viable, containerSet: d.groupStatus.containerSet }, { viable: true, containerSet: true });
    assert.equal(d.deviceState, 'RUNNING', 'never stopped: no device state moved');
    // The marks the source left are there, unmoved by any migration of state.
    assert.equal(s.marks.scr, 0x5a);
    assert.deepEqual(d.marks, s.marks, 'scratch register and line status as the source left them');
    if (s.marks.lsr & 1) assert.deepEqual(d.fifo, [...Buffer.from(fifo)], 'the bytes the source put in the FIFO come out here');
    else t.diagnostic('mtty did not report data ready after the writes: the FIFO check is skipped');
    assert.equal(d.scr2, 0xc3, 'the destination writes and reads the device');
    assert.equal(d.irqFds, 1, 'the INTx eventfd came with the device');
    assert.equal(d.irqBefore, 0, 'no interrupt before the destination asked for one');
    assert.ok(d.irqAfter >= 1, `the device's interrupt reaches the passed eventfd here (count ${d.irqAfter})`);
    assert.equal(d.rxAfterIrq, 0x78, 'and the byte that raised it is in the FIFO');
    assert.deepEqual(await src.exited, { code: 0, signal: null }, 'the source exits cleanly');
    // The source process and its fds are gone; the device is still open here.
    assert.equal(await errnoOf(native.Group.open(env.a.group)), 16, 'group A is busy: the destination holds it');
    dst.send('again');
    const again = await dst.next('again');
    assert.equal(again.scr, 0xc3, 'the device answers the destination after the source exited');
    assert.equal(again.info.numRegions, 9);
    dst.send('quit');
    await dst.next('bye');
    assert.deepEqual(await dst.exited, { code: 0, signal: null });
  } finally {
    dst.child.kill('SIGKILL');
  }
  groupA = await native.Group.open(env.a.group);
  assert.equal((await groupA.status()).viable, true, 'group A is free again once the destination exited');
});

test('an mdev with DMA mappings: the kernel withholds VFIO_UPDATE_VADDR, and the handover is refused by name', async (t) => {
  assert.ok(groupA, 'group A was opened by the case before');
  const container = await native.Container.open();
  await groupA.setContainer(container);
  await container.setIommu();
  const device = await groupA.getDevice(env.a.uuid);
  await device.info();
  // Since Linux 6.2 type1 offers VFIO_UPDATE_VADDR only to a container without mdevs.
  assert.equal(await container.supportsUpdateVaddr(), false, 'no VFIO_UPDATE_VADDR for a container holding an mdev');
  // An mdev-only type1 container maps without pinning (the mdev pins on demand).
  // MAP_DMA wants a page-aligned vaddr: a wasm memory is mmap'd, so it is.
  const ram = Buffer.from(new WebAssembly.Memory({ initial: 1 }).buffer);
  await container.mapDma(ram, 0n);
  assert.deepEqual(container.mappings, [{ iova: 0n, size: BigInt(ram.length) }]);
  const e = await container.invalidateVaddr().then(() => null, (x) => x);
  t.diagnostic(`VFIO_DMA_UNMAP_FLAG_VADDR on it: ${e ? `${e.code} ${e.message}` : 'accepted'}`);
  assert.equal(e?.code, 'EBUSY', 'the kernel refuses to forget the vaddr of a container holding an mdev');
  const vm = new Vm('prelaunch');
  const registry = new SaveVMRegistry();
  const shared = { fd: () => 0, adopt: async () => undefined, detach: async () => undefined };
  const kv = new KernelVfioHandover(vm, registry, { ram: { blocks: [{ name: 'pc.ram', memory: ram, base: 0, length: ram.length, shared }] } });
  await kv.add({ device, group: groupA, container });
  const why = localRefusal('unix:/tmp/x.sock', registry);
  assert.match(why, new RegExp(`VFIO device ${env.a.uuid} is a mediated device whose container has 1 DMA mapping\\(s\\): on a type1 container an mdev pins guest pages on demand`));
  assert.equal(await container.unmapDma(0n), BigInt(ram.length));
  // The device stays open until this process exits (the napi layer has no close), and with it the group's container.
});
