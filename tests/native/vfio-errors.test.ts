// The kernel path's error contract, on a machine without /dev/vfio: every
// failure is an Error with code, errno, syscall and a message naming the
// object, and bad arguments are refused before any syscall.
import t from 'tap'
import { native } from '../../vmm/native/addon.js'

import { rejection } from './helpers.js'

t.test('opening the container without VFIO fails ENOENT with the full error shape', async t => {
  const e = await rejection(native.Container.open())
  t.type(e, Error)
  t.equal(e.code, 'ENOENT')
  t.equal(e.errno, 2)
  t.equal(e.syscall, 'open')
  t.equal(e.message, '/dev/vfio/vfio: open: ENOENT (No such file or directory)')
})

t.test('a group that does not exist fails ENOENT naming its path', async t => {
  const e = await rejection(native.Group.open(42))
  t.equal(e.code, 'ENOENT')
  t.match(e.message, /^\/dev\/vfio\/42: open: ENOENT/)
})

t.test('a container over a file that is not VFIO answers the ioctl with ENOTTY', async t => {
  const c = await native.Container.open('/dev/null')
  t.ok(c.fd >= 0)
  const e = await rejection(c.apiVersion())
  t.equal(e.code, 'ENOTTY')
  t.equal(e.syscall, 'VFIO_GET_API_VERSION')
  t.match(e.message, /^\/dev\/null: VFIO_GET_API_VERSION/)
  t.equal((await rejection(c.checkExtension(3))).code, 'ENOTTY')
  t.equal((await rejection(c.setIommu())).syscall, 'VFIO_SET_IOMMU')
  t.equal((await rejection(c.dirtyStart())).syscall, 'VFIO_IOMMU_DIRTY_PAGES')
  t.equal((await rejection(c.iommuInfo())).code, 'ENOTTY')
})

t.test('container argument validation happens before the ioctl', async t => {
  const c = await native.Container.open('/dev/null')
  const neg = await rejection(c.mapDma(Buffer.alloc(4096), -1n))
  t.equal(neg.code, 'EINVAL')
  t.match(neg.message, /iova/)
  const wide = await rejection(c.mapDma(Buffer.alloc(4096), 1n << 64n))
  t.equal(wide.code, 'EINVAL')
  const empty = await rejection(c.mapDma(Buffer.alloc(0), 0n))
  t.equal(empty.code, 'EINVAL')
  t.match(empty.message, /buffer is empty/)
  // The kernel refuses the map: nothing is left referenced, so unmap finds nothing.
  t.equal((await rejection(c.mapDma(Buffer.alloc(4096), 0x1000n))).code, 'ENOTTY')
  const unmapped = await rejection(c.unmapDma(0x1000n))
  t.equal(unmapped.code, 'EINVAL')
  t.match(unmapped.message, /no buffer was mapped/)
  const pg = await rejection(c.dirtyBitmap(0n, 0x10000n, 3000n))
  t.match(pg.message, /power of two/)
  const small = await rejection(c.dirtyBitmap(0n, 64n * 4096n * 2n, 4096n, Buffer.alloc(8)))
  t.equal(small.code, 'EINVAL')
  t.match(small.message, /bitmap of 8 bytes is too small, 16 needed/)
  const huge = await rejection(c.dirtyBitmap(0n, 1n << 60n, 4096n))
  t.match(huge.message, /over the .*-byte limit/)
})

t.test('group argument validation', async t => {
  const g = await native.Group.open(0, '/dev/null')
  t.equal((await rejection(g.status())).code, 'ENOTTY')
  const nul = await rejection(g.getDevice('a\0b'))
  t.equal(nul.code, 'EINVAL')
  t.match(nul.message, /NUL byte/)
  t.equal((await rejection(g.getDevice(''))).code, 'EINVAL')
  const c = await native.Container.open('/dev/null')
  t.equal((await rejection(g.setContainer(c))).syscall, 'VFIO_GROUP_SET_CONTAINER')
  t.equal((await rejection(native.Device.open(g, 'x'))).syscall, 'VFIO_GROUP_GET_DEVICE_FD')
})

t.test('transfer arguments: negative fds, bad lengths and options', async t => {
  const [r, w] = native.testingPipe()
  try {
    const neg = await rejection(native.fdTransfer(-1, w, 10))
    t.equal(neg.code, 'EBADF')
    t.match(neg.message, /fromFd = -1/)
    t.equal((await rejection(native.fdTransfer(r, -5, 10))).code, 'EBADF')
    t.equal((await rejection(native.fdTransfer(r, w, -1))).code, 'EINVAL')
    t.equal((await rejection(native.fdTransfer(r, w, 1.5))).code, 'EINVAL')
    t.equal((await rejection(native.fdTransfer(r, w, Number.NaN))).code, 'EINVAL')
    t.equal((await rejection(native.fdTransfer(r, w, 10, { chunkSize: 0 }))).code, 'EINVAL')
    t.equal((await rejection(native.fdTransfer(r, w, 10, { idleTimeoutMs: -3 }))).code, 'EINVAL')
    // 100000 is (almost certainly) not an open fd.
    const closed = await rejection(native.fdTransfer(100000, w, 10))
    t.equal(closed.code, 'EBADF')
    t.equal(await native.fdTransfer(r, w, 0), 0)
  } finally {
    const fs = await import('node:fs')
    fs.closeSync(r)
    fs.closeSync(w)
  }
})
