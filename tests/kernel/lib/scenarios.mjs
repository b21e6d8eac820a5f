// Operation sequences run the same way on any Device (mtty through the kernel,
// or the emulated device), each resolving a plain transcript of outcomes:
// states, whether a data fd came back, errno values. Comparing two such
// transcripts is the differential test; comparing one with the C probe's is
// the native-layer test.
import { FEATURE, GET, INVALID_STATE, PROBE, SET, STATES, closeFd, drain, errnoOf, rawSetState } from './vfio.mjs';

/**
 * Every (from, to): reset, walk to `from`, ask for `to`, read the state back.
 * Mirrors matrix() in raw/mtty_probe.c, including the one pair an unfixed
 * kernel spins on.
 */
export async function stateMatrix(device, { skipFix }) {
  const rows = [];
  for (let from = 1; from < STATES.length; from++) {
    for (let to = 0; to <= INVALID_STATE; to++) {
      const name = to < STATES.length ? STATES[to] : 'INVALID';
      if (from === 3 && (to === 6 || to === 7) && !skipFix) {
        rows.push({ from: STATES[from], to: name, skipped: true });
        continue;
      }
      await device.reset();
      const setup = await rawSetState(device, from);
      if (setup.errno) {
        rows.push({ from: STATES[from], to: name, setupErrno: setup.errno });
        continue;
      }
      const r = await rawSetState(device, to);
      rows.push({ from: STATES[from], to: name, errno: r.errno, dataFd: r.fd !== null, state: await device.getState() });
      await closeFd(setup.fd);
      await closeFd(r.fd);
    }
  }
  await device.reset();
  return rows;
}

/** Feature discovery and the generic VFIO_DEVICE_FEATURE checks. */
export async function featureChecks(device) {
  const buf = (n) => Buffer.alloc(n);
  // A probe resolves true/false; a rejection is kept as its code so one odd
  // answer does not hide the others.
  const probe = (index, op) => device.probe(index, op).catch((e) => { if (!e?.code) throw e; return e.code; });
  return {
    migrationFlags: await device.migrationFlags(),
    probeMigrationGet: await probe(FEATURE.MIGRATION, GET),
    probeMigrationSet: await probe(FEATURE.MIGRATION, SET),
    probeStateGetSet: await probe(FEATURE.MIG_DEVICE_STATE, GET | SET),
    probeLoggingStart: await probe(FEATURE.DMA_LOGGING_START, SET),
    noPayload: await errnoOf(device.feature(FEATURE.MIGRATION, GET, buf(0))),
    shortStatePayload: await errnoOf(device.feature(FEATURE.MIG_DEVICE_STATE, SET, buf(4))),
    unknownIndex: await errnoOf(device.feature(0x7777, GET, buf(8))),
    getAndSet: await errnoOf(device.feature(FEATURE.MIG_DEVICE_STATE, GET | SET, buf(8))),
    neither: await errnoOf(device.feature(FEATURE.MIGRATION, 0, buf(8))),
    setDataSize: await errnoOf(device.feature(FEATURE.MIG_DATA_SIZE, SET, buf(8))),
    probeFlagWithGet: await errnoOf(device.feature(FEATURE.MIGRATION, PROBE | GET)),
  };
}

/**
 * The save-side data fd behaviour that does not depend on the image format:
 * STOP_COPY to EOF, PRECOPY_INFO outside PRE_COPY, the fd after STOP, and
 * PRE_COPY: initial bytes, the same fd kept for STOP_COPY, reset killing it.
 */
export async function dataFdChecks(device) {
  const out = {};
  await device.reset();
  let fd = await device.setState('STOP_COPY');
  out.stopCopyFd = fd !== null;
  const whole = await drain(fd);
  out.stopCopyEnd = whole.end;
  out.stopCopyMatchesDataSize = BigInt(whole.bytes) === (await device.migDataSize());
  out.readAgain = await fd.read(Buffer.alloc(16));
  out.writeSaving = await errnoOf(fd.write(Buffer.alloc(4)));
  out.precopyInfoInStopCopy = await errnoOf(fd.precopyInfo());
  out.toStop = await device.setState('STOP');
  out.readAfterStop = await errnoOf(fd.read(Buffer.alloc(16)));
  await fd.close();

  await device.reset();
  fd = await device.setState('PRE_COPY');
  out.preCopyFd = fd !== null;
  const info = await fd.precopyInfo();
  out.preCopyHasInitial = info.initialBytes > 0n;
  out.preCopyDirty = info.dirtyBytes;
  const first = await drain(fd);
  out.preCopyYieldsInitial = BigInt(first.bytes) === info.initialBytes;
  out.initialAfterDrain = (await fd.precopyInfo()).initialBytes;
  out.toPreCopyP2pFd = (await device.setState('PRE_COPY_P2P')) !== null;
  out.precopyInfoInP2p = await errnoOf(fd.precopyInfo());
  const again = await device.setState('STOP_COPY');
  out.stopCopyAfterPreCopyNewFd = again !== null;
  await closeFd(again);
  const rest = await drain(fd);
  out.preCopyPlusStopCopyIsDataSize = BigInt(first.bytes + rest.bytes) === (await device.migDataSize());
  await device.setState('STOP');
  await fd.close();

  await device.reset();
  fd = await device.setState('PRE_COPY');
  await device.reset();
  out.stateAfterReset = await device.getState();
  out.readAfterReset = await errnoOf(fd.read(Buffer.alloc(16)));
  await fd.close();
  return out;
}

/** Resume-side checks that do not depend on the image format. */
export async function resumeChecks(device) {
  const out = {};
  await device.reset();
  const fd = await device.setState('RESUMING');
  out.resumingFd = fd !== null;
  out.readResuming = await errnoOf(fd.read(Buffer.alloc(16)));
  out.stopWithNoData = await errnoOf(device.setState('STOP'));
  out.stateAfterEmptyStop = await device.getState();
  await fd.close();
  await device.reset();
  return out;
}

/** DMA logging argument checks (the report's own answer depends on config). */
export async function dmaLoggingChecks(device) {
  const Mi = 1n << 20n;
  return {
    noRanges: await errnoOf(device.dmaLoggingStart(4096n, [])),
    unaligned: await errnoOf(device.dmaLoggingStart(4096n, [{ iova: 0n, length: Mi }, { iova: 4097n, length: Mi }])),
    overlap: await errnoOf(device.dmaLoggingStart(4096n, [{ iova: 0n, length: Mi }, { iova: 4096n, length: Mi }])),
    start: await device.dmaLoggingStart(4096n, [{ iova: 0n, length: Mi }, { iova: Mi, length: Mi }]),
    reportBadPageSize: await errnoOf(device.dmaLoggingReport(0n, 2n * Mi, 1000n, Buffer.alloc(64))),
    reportWraps: await errnoOf(device.dmaLoggingReport((1n << 64n) - 4096n, 2n * Mi, 4096n, Buffer.alloc(64))),
    stop: await errnoOf(device.dmaLoggingStop()),
  };
}
