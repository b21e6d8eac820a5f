// The native pieces of a kernel VFIO device's local handover, on a machine
// without /dev/vfio: what a destination adopts is checked and, on any
// refusal, every descriptor closed; the vaddr calls reach the ioctl and say
// which; an eventfd waits boundedly; the emulated device has no fd to pass.
import t from 'tap'
import { openSync, writeSync } from 'node:fs'
import { native } from '../../vmm/native/addon.js'
import { rejection } from './helpers.js'
import { fdsSettle, openFds } from '../local/gate.js'

const devNulls = (k: number) => Array.from({ length: k }, () => openSync('/dev/null', 'r'))

t.test('PassedVfio.adopt refuses what is not a container and closes every descriptor it was given', async (t) => {
  const base = await openFds()
  const [c, g, d] = devNulls(3)
  const e = await rejection(native.PassedVfio.adopt([c!], [g!], [{ fd: d!, name: '0000:65:00.1' }]))
  t.equal(e.code, 'ENOTTY')
  t.equal(e.syscall, 'VFIO_GET_API_VERSION')
  t.match(e.message, /^passed container 1\/1: VFIO_GET_API_VERSION: ENOTTY .*the passed fd is not a VFIO container/)
  t.equal(await fdsSettle(base), base, 'container, group and device descriptors all closed')
})

t.test('PassedVfio.adopt refuses a descriptor listed twice, and a negative one, closing all it was given', async (t) => {
  const base = await openFds()
  const [a, b] = devNulls(2)
  const e = await rejection(native.PassedVfio.adopt([a!], [a!], [{ fd: b!, name: 'x' }]))
  t.equal(e.code, 'EINVAL')
  t.match(e.message, new RegExp(`fd ${a}.*the same descriptor is listed twice`))
  t.equal(await fdsSettle(base), base, 'both closed, the one listed twice once')
  const [c] = devNulls(1)
  const n = await rejection(native.PassedVfio.adopt([c!], [-1], []))
  t.equal(n.code, 'EBADF')
  t.match(n.message, /passed group: fd -1.*not a descriptor/)
  t.equal(await fdsSettle(base), base, 'nothing else left open')
})

t.test('the vaddr calls of a container reach the kernel and name the call', async (t) => {
  const c = await native.Container.open('/dev/null')
  t.same(c.mappings, [], 'no mapping made')
  const e = await rejection(c.supportsUpdateVaddr())
  t.equal(e.syscall, 'VFIO_CHECK_EXTENSION')
  const i = await rejection(c.invalidateVaddr())
  t.equal(i.code, 'ENOTTY')
  t.match(i.message, /\/dev\/null: VFIO_IOMMU_UNMAP_DMA VADDR/)
  t.equal(await c.revalidateVaddr(), 0, 'no mapping to give a vaddr back to')
})

t.test('EventFd: created at 0, a bounded wait, adopted, closed', async (t) => {
  const base = await openFds()
  const e = await native.EventFd.create()
  t.ok(e.fd >= 0)
  const t0 = performance.now()
  t.equal(await e.wait(50), 0n, 'nothing signalled: 0 after the timeout')
  t.ok(performance.now() - t0 >= 40, 'it did wait')
  // Another owner of the same file (what a destination gets) sees its signal.
  writeSync(e.fd, Buffer.from(new BigUint64Array([3n]).buffer))
  t.equal(await e.wait(1000), 3n, 'the count, read and cleared')
  t.equal(await e.wait(0), 0n)
  t.equal(await e.close(), true)
  t.equal(await e.close(), false, 'closed already')
  t.equal((await rejection(e.wait(10))).code, 'EBADF')
  t.throws(() => native.EventFd.adopt(-1), /not a descriptor/)
  t.equal(await fdsSettle(base), base, 'closed')
})

t.test('the emulated device has no fd to pass and raises no interrupt', async (t) => {
  const emu = new native.EmulatedDevice({ name: 'emu-h', flags: 7, stateSize: 4096, regionSize: 4096, dirtyRate: 0 })
  const d = emu.device()
  t.equal(d.fd, null)
  const e = await rejection(d.setIrqEventfds(0, 0, [5]))
  t.equal(e.code, 'ENOTTY')
  t.equal(e.syscall, 'VFIO_DEVICE_SET_IRQS')
})
