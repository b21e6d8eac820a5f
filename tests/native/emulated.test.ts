// The emulated VFIO migration device through napi: the same Device/DataFd
// objects as a kernel device, save -> load with byte-exact digests.
import t from 'tap'
import { native } from '../../vmm/native/addon.js'

import { rejection, type NativeError } from './helpers.js'

type DataFd = InstanceType<typeof native.DataFd>
type Device = ReturnType<InstanceType<typeof native.EmulatedDevice>['device']>

async function readUntil(fd: DataFd, stopAt: 'ENOMSG' | 'EOF'): Promise<Buffer> {
  const parts: Buffer[] = []
  for (;;) {
    const buf = Buffer.alloc(1 << 20)
    let n: number
    try {
      n = await fd.read(buf)
    } catch (e) {
      if (stopAt === 'ENOMSG' && (e as NativeError).code === 'ENOMSG') break
      throw e
    }
    if (n === 0) {
      if (stopAt === 'EOF') break
      throw new Error('EOF during pre-copy')
    }
    parts.push(buf.subarray(0, n))
  }
  return Buffer.concat(parts)
}

async function load(dev: Device, image: Buffer, seg: number): Promise<void> {
  await dev.setState('STOP')
  const fd = await dev.setState('RESUMING')
  if (!fd) throw new Error('RESUMING gave no data fd')
  for (let off = 0; off < image.length;) {
    off += await fd.write(image.subarray(off, Math.min(off + seg, image.length)))
  }
  await dev.setState('STOP')
  await fd.close()
}

t.test('options are validated with errno-carrying errors', async t => {
  t.throws(() => new native.EmulatedDevice({ flags: 2 }), { code: 'EINVAL' })
  t.throws(() => new native.EmulatedDevice({ stateSize: -1 }), { code: 'EINVAL' })
  t.throws(() => new native.EmulatedDevice({ stateSize: 1.5 }), { code: 'EINVAL' })
  const e = new native.EmulatedDevice({ name: 'nic0', stateSize: 10n })
  t.equal(e.name, 'nic0')
  t.equal(e.state, 'RUNNING')
  t.equal(e.device().name, 'nic0')
  t.throws(() => e.failNextMove('NOPE', 'EIO'), { code: 'EINVAL' })
  t.throws(() => e.failNextMove('STOP', 'EWHAT'), { code: 'EINVAL' })
})

t.test('full pre-copy save -> load into a second device: equal digests', async t => {
  const src = new native.EmulatedDevice({ name: 'src', stateSize: (1 << 20) + 3, seed: 7 })
  const dst = new native.EmulatedDevice({ name: 'dst', stateSize: (1 << 20) + 3, seed: 8 })
  t.not(await src.digest(), await dst.digest())
  const s = src.device()
  t.equal(await s.migrationFlags(), 7)
  const fd = await s.setState('PRE_COPY')
  t.ok(fd, 'RUNNING -> PRE_COPY opens the data fd')
  const info = await fd!.precopyInfo()
  t.ok(info.initialBytes > 0n)
  t.equal(info.dirtyBytes, 0n)
  const parts = [await readUntil(fd!, 'ENOMSG')]
  t.same(await fd!.precopyInfo(), { initialBytes: 0n, dirtyBytes: 0n })
  src.dirtyRegion(3)
  t.equal((await fd!.precopyInfo()).dirtyBytes, BigInt(56 + 65536))
  parts.push(await readUntil(fd!, 'ENOMSG'))
  src.dirtyRegion(1)
  t.equal(await s.setState('PRE_COPY_P2P'), null)
  t.equal(await s.setState('STOP_COPY'), null, 'the saving group keeps its fd')
  parts.push(await readUntil(fd!, 'EOF'))
  await s.setState('STOP')
  await fd!.close()
  const d = dst.device()
  await load(d, Buffer.concat(parts), 4093)
  t.equal(await dst.digest(), await src.digest())
  t.equal(dst.state, 'STOP')
  await d.setState('RUNNING')
  t.equal(dst.stats().bytesLoaded, Buffer.concat(parts).length)
})

t.test('STOP_COPY through transferTo (splice on the real fd) into a file', async t => {
  const { mkdtempSync, openSync, closeSync, readFileSync, rmSync } = await import('node:fs')
  const { join } = await import('node:path')
  const { tmpdir } = await import('node:os')
  const dir = mkdtempSync(join(tmpdir(), 'emu-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const src = new native.EmulatedDevice({ flags: 1, stateSize: 300_000n, seed: 3 })
  const s = src.device()
  await s.setState('STOP')
  const fd = await s.setState('STOP_COPY')
  const out = openSync(join(dir, 'image'), 'w')
  const st = await fd!.transferTo(out)
  closeSync(out)
  await fd!.close()
  const image = readFileSync(join(dir, 'image'))
  t.ok(image.length > 300_000)
  t.ok(st)
  const dst = new native.EmulatedDevice({ flags: 1, stateSize: 300_000n, seed: 4 })
  await load(dst.device(), image, 1 << 16)
  t.equal(await dst.digest(), await src.digest())
})

t.test('a corrupted stream is refused and the destination stays in RESUMING until reset (as mtty does)', async t => {
  const src = new native.EmulatedDevice({ stateSize: 200_000 })
  src.corruptStreamByte(64 + 56 + 10)
  const s = src.device()
  await s.setState('STOP')
  const fd = await s.setState('STOP_COPY')
  const image = await readUntil(fd!, 'EOF')
  await fd!.close()
  const dst = new native.EmulatedDevice({ stateSize: 200_000 })
  const e = await rejection(load(dst.device(), image, 1 << 20))
  t.equal(e.code, 'EINVAL')
  t.match(e.message, /RESUMING -> STOP/)
  t.equal(dst.state, 'RESUMING')
  t.match(dst.lastError ?? '', /image refused: .*hash/)
  t.equal((await rejection(dst.device().setState('RUNNING'))).code, 'EINVAL')
  t.equal(dst.state, 'RESUMING', 'every walk out of RESUMING passes the refused load')
  await dst.device().reset()
  t.equal(dst.state, 'RUNNING')
})

t.test('fault injection: failing move and its recovery, async reset', async t => {
  const e = new native.EmulatedDevice({ stateSize: 4096 })
  const d = e.device()
  e.failNextMove('STOP_COPY', 'EIO', true)
  const err = await rejection(d.setState('STOP_COPY'))
  t.equal(err.code, 'EIO')
  t.equal(await d.getState(), 'STOP')
  t.equal((await rejection(d.setState('RUNNING'))).code, 'EIO')
  t.equal(e.state, 'ERROR')
  await d.reset()
  const fd = await d.setState('PRE_COPY')
  e.asyncReset(5)
  for (let i = 0; i < 200 && e.state !== 'RUNNING'; i++) await new Promise(r => setTimeout(r, 5))
  t.equal(e.state, 'RUNNING')
  t.equal((await rejection(fd!.read(Buffer.alloc(16)))).code, 'ENODEV')
  await fd!.close()
  t.equal(e.stats().resets, 2)
})

t.test('DMA engine writes guest memory and the device DMA log reports it', async t => {
  const e = new native.EmulatedDevice({ stateSize: 0 })
  const guest = Buffer.alloc(32 * 4096)
  const iova = 0x100000n
  e.attachGuestMemory(guest, iova)
  const d = e.device()
  t.equal(await d.dmaLoggingStart(4096n, [{ iova, length: BigInt(guest.length) }]), 4096n)
  e.startDma(2000)
  for (let i = 0; i < 400 && (e.loggedPages()?.length ?? 0) < 5; i++) await new Promise(r => setTimeout(r, 5))
  e.stopDma()
  const pages = e.loggedPages()!
  t.ok(pages.length >= 5)
  t.ok(guest.some(b => b !== 0), 'guest memory was written')
  const bitmap = await d.dmaLoggingReport(iova, BigInt(guest.length), 4096n)
  const bits = new Set<bigint>()
  for (let i = 0; i < 32; i++) if (bitmap[i >> 3] & (1 << (i & 7))) bits.add(iova + BigInt(i * 4096))
  t.same([...bits].sort(), [...pages].sort())
  t.same(e.loggedPages(), [], 'REPORT clears')
  await d.dmaLoggingStop()
  t.equal(e.loggedPages(), null)
  e.detachGuestMemory()
  t.throws(() => e.startDma(1), { code: 'EINVAL' })
})
