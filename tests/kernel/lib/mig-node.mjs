// One side of a live migration inside the kernel-lane guest: a process that
// holds one mtty device through the project's compiled code (dist/) and runs
// the orchestrator's migrate() (source) or incoming() (destination).
//
//   node mig-node.mjs '{"role":"source","group":12,"uuid":"...","uri":"unix:/tmp/x/s"}'
//   node mig-node.mjs '{"role":"dest","group":13,"uuid":"...","uri":"unix:/tmp/x/s"}'
// ("emulated": {EmulatedDevice options} instead of group/uuid: host debugging.)
//
// Talks to the parent (tests/kernel/migration.mjs) in JSON lines on stdout:
// {"event":"listening"} (dest), then one {"event":"result",...}. The
// destination then keeps its device open until a line arrives on stdin, so
// the parent can see it still holds the group; the source exits at once,
// which is what releases its device (the napi layer closes fds on exit).
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { once } from 'node:events';

const require = createRequire(import.meta.url);
const native = require('../../../native/index.cjs');
const dist = (p) => import(new URL(`../../../dist/vmm/${p}`, import.meta.url));
const { Vm } = await dist('runstate/index.js');
const { SaveVMRegistry } = await dist('savevm/index.js');
const { VfioMigrationSet } = await dist('vfio/index.js');
const { migrate, incoming } = await dist('migration/index.js');

const args = JSON.parse(process.argv[2] ?? '{}');
const say = (event, body = {}) => process.stdout.write(`${JSON.stringify({ event, ...body }, (_k, v) => (typeof v === 'bigint' ? Number(v) : v))}\n`);
const caps = { switchoverAck: true };
// Same on both sides: the section is matched by idstr, and the two mdevs' names differ.
const idstr = 'mtty0/vfio';

async function openDevice({ group, uuid, emulated }) {
  // Host-side debugging of this script only (no mtty there): the emulated
  // device with the given options. The kernel suite never sets it.
  if (emulated) return { device: new native.EmulatedDevice({ name: args.role, ...emulated }).device() };
  const container = await native.Container.open();
  const grp = await native.Group.open(group);
  await grp.setContainer(container);
  await container.setIommu();
  return { container, group: grp, device: await grp.getDevice(uuid) };
}

/** The device's whole STOP_COPY image from STOP, hashed; leaves it in STOP. */
async function imageHash(device) {
  const fd = await device.setState('STOP_COPY');
  const h = createHash('sha256');
  let bytes = 0;
  for (;;) {
    const b = Buffer.alloc(4096);
    const n = await fd.read(b);
    if (n === 0) break;
    h.update(b.subarray(0, n));
    bytes += n;
    if (bytes > 1 << 20) throw new Error('mtty image over 1 MiB: not the 96-byte device this test knows');
  }
  await device.setState('STOP');
  await fd.close();
  return { bytes, sha256: h.digest('hex') };
}

async function side(role) {
  const { device } = await openDevice(args);
  const vm = new Vm(role === 'source' ? 'prelaunch' : 'inmigrate');
  if (role === 'source') await vm.vmStart();
  const registry = new SaveVMRegistry();
  const vfio = new VfioMigrationSet(vm, registry, { switchoverAck: () => caps.switchoverAck });
  const dev = await vfio.add(device, { idstr });
  const states = [];
  dev.on('state-change', (e) => states.push(e.to));
  return { device, vm, vfio, machine: { vm, registry, machine: 'kernel-lane', vfio }, states, dev };
}

const errInfo = (e) => ({ message: String(e?.message ?? e), code: e?.code, cause: e?.cause?.message, causeCode: e?.cause?.code });

async function source() {
  const s = await side('source');
  const before = await s.device.getState();
  let res;
  try {
    const stats = await migrate(s.machine, args.uri, { capabilities: caps, parameters: { handoverTimeoutMs: 20_000 } });
    res = { ok: true, stats };
  } catch (e) {
    res = { ok: false, error: errInfo(e), stats: e?.stats };
  }
  res.before = before;
  res.states = s.states;
  res.deviceState = await s.device.getState();
  res.vmState = s.vm.state;
  res.vfio = s.vfio.stats();
  if (res.ok) res.image = await imageHash(s.device);
  say('result', res);
}

async function dest() {
  const s = await side('dest');
  let res;
  try {
    const r = await incoming(s.machine, args.uri, { capabilities: caps, onListening: (address) => say('listening', { address }) });
    res = { ok: true, incoming: r };
  } catch (e) {
    res = { ok: false, error: errInfo(e) };
  }
  res.states = s.states;
  res.deviceState = await s.device.getState();
  res.vmState = s.vm.state;
  res.vfio = s.vfio.stats();
  if (res.ok) {
    // Read the image back through a fresh STOP_COPY, then run again.
    await s.device.setState('STOP');
    res.image = await imageHash(s.device);
    await s.device.setState('RUNNING');
  }
  say('result', res);
  process.stdin.resume();
  await once(process.stdin, 'data');
  say('bye', { deviceState: await s.device.getState() });
}

try {
  if (args.role === 'source') await source();
  else if (args.role === 'dest') await dest();
  else throw new Error(`role must be source or dest, not ${JSON.stringify(args.role)}`);
  process.exit(0);
} catch (e) {
  say('crash', { error: errInfo(e), stack: e?.stack });
  process.exit(1);
}
