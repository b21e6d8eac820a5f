// The typed Device helpers and DataFd transfers driven against the emulated
// backend: the userspace state check, PRE_COPY transfers that stop at ENOMSG
// instead of waiting, a whole save -> load through fds, and the raw call's guards.
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { native } from '../../vmm/native/addon.js'

import { rejection } from './helpers.js'

function tmpFile(t: Tap.Test, name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'helpers-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, name)
}

t.test('STOP_COPY -> PRE_COPY is refused in userspace and the device stays put', async t => {
  const e = new native.EmulatedDevice({ name: 'emulated:dev0', stateSize: 4096 })
  const d = e.device()
  await d.setState('STOP')
  const fd = await d.setState('STOP_COPY')
  t.ok(fd)
  t.teardown(() => fd?.close())
  const err = await rejection(d.setState('PRE_COPY'))
  t.equal(err.code, 'EINVAL')
  t.equal(err.errno, 22)
  t.equal(err.syscall, 'VFIO_DEVICE_FEATURE(MIG_DEVICE_STATE)')
  t.equal(err.message, 'emulated:dev0: VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE STOP_COPY -> PRE_COPY: EINVAL (refused in userspace: the kernel has no arc)')
  t.equal(await d.getState(), 'STOP_COPY')
  t.equal(e.state, 'STOP_COPY')
  const bad = await rejection(d.setState('SIDEWAYS' as 'STOP'))
  t.equal(bad.code, 'EINVAL')
  t.match(bad.message, /unknown state "SIDEWAYS"/)
  t.match((await rejection(d.setState('ERROR'))).message, /ERROR cannot be requested/)
})

t.test('a device without PRE_COPY is refused PRE_COPY before the backend sees it', async t => {
  const e = new native.EmulatedDevice({ flags: 1, stateSize: 4096 })
  const d = e.device()
  const arcs = e.stats().arcs
  const err = await rejection(d.setState('PRE_COPY'))
  t.match(err.message, /RUNNING -> PRE_COPY: EINVAL \(refused in userspace: the device does not support PRE_COPY \(migration flags 0x1\)\)/)
  t.equal(e.stats().arcs, arcs)
  t.equal(await d.getState(), 'RUNNING')
})

t.test('info, probe, MIG_DATA_SIZE and the raw call guards', async t => {
  const e = new native.EmulatedDevice({ stateSize: 100_000 })
  const d = e.device()
  const info = await d.info()
  t.type(info.flags, 'number')
  t.ok(info.numRegions >= 0)
  t.equal(await d.probe(9, 1 << 16), true, 'MIG_DATA_SIZE GET')
  t.equal(await d.probe(200, 1 << 16), false, 'an unknown feature probes false (ENOTTY)')
  t.ok((await d.migDataSize()) >= 100_000n)
  const noSize = new native.EmulatedDevice({ migDataSize: false }).device()
  const ns = await rejection(noSize.migDataSize())
  t.equal(ns.code, 'ENOTTY')
  t.equal(ns.syscall, 'VFIO_DEVICE_FEATURE(MIG_DATA_SIZE)')
  const ptr = await rejection(d.feature(6, 1 << 17, Buffer.alloc(24)))
  t.equal(ptr.code, 'EINVAL')
  t.match(ptr.message, /user pointer/)
  t.match((await rejection(d.feature(8, 1 << 16, Buffer.alloc(32)))).message, /user pointer/)
  t.equal((await rejection(d.feature(0x10000, 1 << 16))).code, 'EINVAL')
  t.equal((await rejection(d.feature(1, 1 << 16 | 5))).code, 'EINVAL')
  // GET MIGRATION through the raw call fills the caller's Buffer.
  const p = Buffer.alloc(8)
  const r = await d.feature(1, 1 << 16, p)
  t.equal(r.ret, 0)
  t.equal(r.dataFd, undefined, 'no data fd from a GET')
  t.equal(p.readBigUInt64LE(0), 7n)
  // Raw SET MIG_DEVICE_STATE hands its data fd over as a DataFd.
  const set = Buffer.alloc(8)
  set.writeUInt32LE(6, 0) // PRE_COPY
  set.writeInt32LE(-1, 4)
  const raw = await d.feature(2, 1 << 17, set)
  t.ok(raw.dataFd)
  t.equal(set.readInt32LE(4), raw.dataFd!.fd)
  await raw.dataFd!.close()
  const bm = await rejection(d.dmaLoggingReport(0n, 65n * 4096n, 4096n, Buffer.alloc(8)))
  t.match(bm.message, /bitmap of 8 bytes is too small, 16 needed/)
  t.equal((await rejection(d.dmaLoggingStart(4096n, []))).code, 'EINVAL')
  t.equal((await rejection(d.dmaLoggingStart(4096n, [{ iova: -1n, length: 1n }]))).code, 'EINVAL')
})

t.test('PRE_COPY transferTo stops at ENOMSG, STOP_COPY at EOF; transferFrom loads it', async t => {
  const size = 300_000
  const src = new native.EmulatedDevice({ name: 'src', stateSize: size, seed: 11 })
  const dst = new native.EmulatedDevice({ name: 'dst', stateSize: size, seed: 12 })
  const s = src.device()
  const image = tmpFile(t, 'image')
  const out = fs.openSync(image, 'w')
  t.teardown(() => fs.closeSync(out))
  const fd = await s.setState('PRE_COPY')
  t.ok(fd)
  const first = await fd!.transferTo(out, undefined, { idleTimeoutMs: 10000 })
  t.equal(first.end, 'enomsg', 'the PRE_COPY pause ends the transfer instead of waiting')
  t.ok(first.bytes > size)
  t.same(await fd!.precopyInfo(), { initialBytes: 0n, dirtyBytes: 0n })
  const none = await fd!.transferTo(out, undefined, { idleTimeoutMs: 10000 })
  t.same([none.bytes, none.end], [0, 'enomsg'])
  // Same pause through the read/write path.
  const rw = await fd!.transferTo(out, undefined, { allowSplice: false })
  t.same([rw.bytes, rw.path, rw.end], [0, 'read-write', 'enomsg'])
  src.dirtyRegion(2)
  await s.setState('PRE_COPY_P2P')
  t.equal(await s.setState('STOP_COPY'), null)
  const rest = await fd!.transferTo(out)
  t.equal(rest.end, 'eof')
  t.ok(rest.bytes > 0)
  await s.setState('STOP')
  await fd!.close()

  const total = first.bytes + rest.bytes
  t.equal(fs.statSync(image).size, total)
  const d = dst.device()
  await d.setState('STOP')
  const rfd = await d.setState('RESUMING')
  t.ok(rfd)
  const inp = fs.openSync(image, 'r')
  t.teardown(() => fs.closeSync(inp))
  const loaded = await rfd!.transferFrom(inp, total)
  t.same([loaded.bytes, loaded.end], [total, 'limit'])
  await d.setState('STOP')
  await rfd!.close()
  t.equal(await dst.digest(), await src.digest())
})
