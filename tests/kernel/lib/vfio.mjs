// VFIO numbers and small helpers shared by the kernel suite. Plain ESM so the
// guest runs it with the host's node and no TypeScript loader.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/** The napi addon, as built by `npm run build` on the host. */
export function loadNative() {
  return require('../../../native/index.cjs');
}

export const GET = 1 << 16;
export const SET = 1 << 17;
export const PROBE = 1 << 18;
export const FEATURE = { MIGRATION: 1, MIG_DEVICE_STATE: 2, DMA_LOGGING_START: 6, DMA_LOGGING_STOP: 7, DMA_LOGGING_REPORT: 8, MIG_DATA_SIZE: 9 };
export const STATES = ['ERROR', 'STOP', 'RUNNING', 'STOP_COPY', 'RESUMING', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P'];
/** One past the last state: the kernel must refuse it. */
export const INVALID_STATE = 8;
export const EINVAL = 22;

/** The device names and groups the guest init created (see guest/init). */
export function laneEnv() {
  const need = ['MTTY_A_UUID', 'MTTY_A_GROUP', 'MTTY_B_UUID', 'MTTY_B_GROUP', 'KERNEL_LANE_PROBE'];
  const missing = need.filter((k) => !process.env[k]);
  if (missing.length) {
    throw new Error(`not inside the kernel-lane guest: ${missing.join(', ')} unset (run via tests/kernel/run-in-guest.sh)`);
  }
  const e = process.env;
  return {
    a: { uuid: e.MTTY_A_UUID, group: Number(e.MTTY_A_GROUP) },
    b: { uuid: e.MTTY_B_UUID, group: Number(e.MTTY_B_GROUP) },
    probe: e.KERNEL_LANE_PROBE,
    skipFix: e.KERNEL_LANE_SKIP_FIX === '1',
    iovaBitmap: e.KERNEL_LANE_IOVA_BITMAP === '1',
    out: e.KERNEL_LANE_OUT,
  };
}

/** Container + group + device, the way a VMM opens an mdev. */
export async function openKernelDevice(native, { group, uuid }) {
  const container = await native.Container.open();
  const grp = await native.Group.open(group);
  await grp.setContainer(container);
  await container.setIommu();
  const device = await grp.getDevice(uuid);
  return {
    container, group: grp, device,
    async close() {
      await grp.unsetContainer();
    },
  };
}

/** errno of a rejected native call (0 when it resolved). */
export async function errnoOf(promise) {
  try {
    await promise;
    return 0;
  } catch (e) {
    if (typeof e?.errno !== 'number') throw e;
    return Math.abs(e.errno);
  }
}

/**
 * SET MIG_DEVICE_STATE through the raw feature call (no userspace check), so
 * the answer is the device's own. Resolves { errno, fd: DataFd | null }.
 */
export async function rawSetState(device, stateRaw) {
  const p = Buffer.alloc(8);
  p.writeUInt32LE(stateRaw, 0);
  p.writeInt32LE(-1, 4);
  try {
    const r = await device.feature(FEATURE.MIG_DEVICE_STATE, SET, p);
    return { errno: 0, fd: r.dataFd ?? null };
  } catch (e) {
    if (typeof e?.errno !== 'number') throw e;
    return { errno: Math.abs(e.errno), fd: null };
  }
}

/** The typed setState; resolves { errno, fd }. */
export async function typedSetState(device, state) {
  try {
    return { errno: 0, fd: await device.setState(state) };
  } catch (e) {
    if (typeof e?.errno !== 'number') throw e;
    return { errno: Math.abs(e.errno), fd: null };
  }
}

export async function closeFd(fd) {
  if (fd) await fd.close();
}

/** Reads a data fd until 0 (EOF) or ENOMSG; resolves { bytes, data, end }. */
export async function drain(fd, cap = 1 << 16) {
  const chunks = [];
  let bytes = 0;
  for (;;) {
    const buf = Buffer.alloc(Math.min(4096, cap - bytes));
    if (!buf.length) return { bytes, data: Buffer.concat(chunks), end: 'cap' };
    let n;
    try {
      n = await fd.read(buf);
    } catch (e) {
      if (e?.code === 'ENOMSG') return { bytes, data: Buffer.concat(chunks), end: 'enomsg' };
      throw e;
    }
    if (n === 0) return { bytes, data: Buffer.concat(chunks), end: 'eof' };
    chunks.push(buf.subarray(0, n));
    bytes += n;
  }
}
