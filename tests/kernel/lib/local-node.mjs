// One side of a local migration (live update) inside the kernel-lane guest:
// the source opens mtty A, leaves marks in its UART (the scratch register,
// bytes in the FIFO), and hands the running device over with the project's
// compiled code (dist/: migrate/incoming with `local`, KernelVfioHandover);
// the destination never opens the device itself: it uses the fds it got.
//
//   node local-node.mjs '{"role":"source","group":12,"uuid":"...","uri":"unix:/tmp/x/s"}'
//   node local-node.mjs '{"role":"dest","uri":"unix:/tmp/x/s"}'   ("failAfterLoad":true: refuse after adopting)
//
// JSON lines on stdout as mig-node.mjs: {"event":"listening"} (dest), one
// {"event":"result",...}; the destination then reads the device again on
// each stdin line ({"event":"again",...}, once the source is gone) and
// exits on "quit".
import { createRequire } from 'node:module';
import { readlink } from 'node:fs/promises';
import { promisify } from 'node:util';
import * as fs from 'node:fs';

const require = createRequire(import.meta.url);
const native = require('../../../native/index.cjs');
const dist = (p) => import(new URL(`../../../dist/vmm/${p}`, import.meta.url));
const { Vm } = await dist('runstate/index.js');
const { SaveVMRegistry } = await dist('savevm/index.js');
const { KernelVfioHandover } = await dist('vfio/index.js');
const { migrate, incoming, localRefusal } = await dist('migration/index.js');

const args = JSON.parse(process.argv[2] ?? '{}');
const say = (event, body = {}) => process.stdout.write(`${JSON.stringify({ event, ...body }, (_k, v) => (typeof v === 'bigint' ? Number(v) : v))}\n`);
const errInfo = (e) => ({ message: String(e?.message ?? e), code: e?.code });

// mtty's BAR0 (region 0, at offset 0 of the device fd: index << 40) is one
// 16550 port, one byte per register. pread/pwrite through node's fs run on
// libuv's pool, off the event loop.
const UART = { RX: 0, TX: 0, IER: 1, FCR: 2, LSR: 5, SCR: 7 };
const IER_RDI = 0x01;
const FCR_ENABLE_FIFO = 0x01;
const INTX = 0;
const fsRead = promisify(fs.read);
const fsWrite = promisify(fs.write);
async function reg(fd, off) {
  const b = Buffer.alloc(1);
  const { bytesRead } = await fsRead(fd, b, 0, 1, off);
  if (bytesRead !== 1) throw new Error(`mtty register ${off}: read ${bytesRead} bytes`);
  return b[0];
}
async function setReg(fd, off, v) {
  const { bytesWritten } = await fsWrite(fd, Buffer.from([v]), 0, 1, off);
  if (bytesWritten !== 1) throw new Error(`mtty register ${off}: wrote ${bytesWritten} bytes`);
}
/** What each open descriptor is (its /proc/self/fd link), for telling which the migration brought. */
async function fdLinks() {
  const out = [];
  for (const n of await fs.promises.readdir('/proc/self/fd')) out.push(await readlink(`/proc/self/fd/${n}`).catch(() => '(gone)'));
  return out;
}
function gained(before, after) {
  const left = [...before];
  return after.filter((l) => {
    const k = left.indexOf(l);
    if (k < 0) return true;
    left.splice(k, 1);
    return false;
  });
}

async function source() {
  const container = await native.Container.open();
  const group = await native.Group.open(args.group);
  await group.setContainer(container);
  await container.setIommu();
  const device = await group.getDevice(args.uuid);
  const fd = device.fd;
  // Its interrupt goes to an eventfd of this process, which the handover passes on.
  // mtty checks SET_IRQS against the IRQ count of its last GET_INFO answer
  // (0 before any): ask first, as every VMM does.
  await device.info();
  const irq = await native.EventFd.create();
  await device.setIrqEventfds(INTX, 0, [irq.fd]);
  await setReg(fd, UART.SCR, args.scr);
  for (const c of Buffer.from(args.fifo)) await setReg(fd, UART.TX, c);
  const marks = { scr: await reg(fd, UART.SCR), lsr: await reg(fd, UART.LSR) };
  const vm = new Vm('prelaunch');
  await vm.vmStart();
  const registry = new SaveVMRegistry();
  const kv = new KernelVfioHandover(vm, registry);
  await kv.add({ device, group, container, irqFds: [irq.fd] });
  const machine = { vm, registry, machine: 'kernel-lane-local' };
  const refusal = localRefusal(args.uri, registry);
  const deviceFile = await readlink(`/proc/self/fd/${fd}`);
  let res;
  try {
    const stats = await migrate(machine, args.uri, { local: true, parameters: { handoverTimeoutMs: 60_000 } });
    res = { ok: true, stats };
  } catch (e) {
    res = { ok: false, error: errInfo(e) };
  }
  // A failed handover leaves the device the source's: it goes on using it.
  if (!res.ok) {
    await setReg(fd, UART.SCR, 0xa5);
    res.afterFailure = { scr: await reg(fd, UART.SCR), deviceState: await device.getState() };
  }
  say('result', { ...res, marks, refusal, vmState: vm.state, deviceFile, mappings: container.mappings.length });
}

async function dest() {
  const vm = new Vm('inmigrate');
  const registry = new SaveVMRegistry();
  const kv = new KernelVfioHandover(vm, registry);
  const machine = { vm, registry, machine: 'kernel-lane-local' };
  if (args.failAfterLoad) machine.checkIncoming = async () => { throw new Error('refused by the kernel lane after the devices were adopted'); };
  const before = await fdLinks();
  let res;
  try {
    const r = await incoming(machine, args.uri, { local: true, onListening: (address) => say('listening', { address }) });
    res = { ok: true, incoming: r };
  } catch (e) {
    res = { ok: false, error: errInfo(e) };
  }
  res.vmState = vm.state;
  res.received = kv.received;
  const got = gained(before, await fdLinks());
  res.vfioFdsGained = got.filter((l) => l.startsWith('/dev/vfio/') || l.includes('vfio')).sort();
  res.otherFdsGained = got.filter((l) => !res.vfioFdsGained.includes(l));
  if (res.ok) {
    const dev = kv.passed.device(kv.received[0].device);
    const grp = kv.passed.group(kv.received[0].group);
    const fd = dev.fd;
    res.deviceFile = await readlink(`/proc/self/fd/${fd}`);
    res.name = dev.name;
    res.info = await dev.info();
    res.groupStatus = await grp.status();
    res.deviceState = await dev.getState().catch((e) => `(${e.code})`);
    // What the source left: read before anything is written here.
    res.marks = { scr: await reg(fd, UART.SCR), lsr: await reg(fd, UART.LSR) };
    res.fifo = [];
    for (let i = 0; i < args.fifoLength; i++) res.fifo.push(await reg(fd, UART.RX));
    res.lsrAfter = await reg(fd, UART.LSR);
    // And this process goes on using it.
    await setReg(fd, UART.SCR, args.scr2);
    res.scr2 = await reg(fd, UART.SCR);
    // Its interrupt reaches the eventfd the source registered and passed:
    // the receive-data interrupt at a FIFO trigger level of one byte.
    const irqFds = kv.received[0].irqFds;
    res.irqFds = irqFds.length;
    if (irqFds.length === 1) {
      const irq = native.EventFd.adopt(irqFds[0]);
      res.irqBefore = Number(await irq.wait(0));
      await setReg(fd, UART.FCR, FCR_ENABLE_FIFO);
      await setReg(fd, UART.IER, IER_RDI);
      await setReg(fd, UART.TX, 0x78);
      res.irqAfter = Number(await irq.wait(10_000));
      res.rxAfterIrq = await reg(fd, UART.RX);
      await irq.close();
    }
    globalThis.device = { fd, dev };
  }
  say('result', res);
  process.stdin.resume();
  for await (const line of (await import('node:readline')).createInterface({ input: process.stdin })) {
    if (line.trim() === 'quit') break;
    const d = globalThis.device;
    say('again', d ? { scr: await reg(d.fd, UART.SCR), info: await d.dev.info() } : {});
  }
  if (kv.passed) await kv.passed.close();
  say('bye', {});
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
