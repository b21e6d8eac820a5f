import t from 'tap'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { execFileSync } from 'node:child_process'
import { connect, listen } from '../../vmm/channel/connect.js'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { nativeFdTransfer, type FdTransfer, type DirectTarget } from '../../vmm/stream/transfer.js'
import { readFd, writeAllFd } from '../../vmm/stream/fdio.js'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-fd-'))
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))

/** A FIFO opened read-write: both ends in one fd, never blocks on open. */
function fifo(name: string): number {
  const p = path.join(dir, name)
  execFileSync('mkfifo', [p])
  return fs.openSync(p, 'r+')
}

/** A JS stand-in with the native contract, so the zero-copy branch runs without the addon. */
const jsTransfer: FdTransfer & { calls: number } = Object.assign(async (from: DirectTarget, to: DirectTarget, n: number) => {
  if (typeof from !== 'number' || typeof to !== 'number') throw new Error('the stand-in moves between fds only')
  jsTransfer.calls++
  const b = Buffer.alloc(Math.min(n, 65536))
  const got = await readFd(from, b, 0, b.length)
  if (got > 0) await writeAllFd(to, b.subarray(0, got))
  return got
}, { calls: 0 })

const pattern = (n: number, seed: number) => {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff
  return b
}

const variants: [string, FdTransfer | null | undefined][] = [['bounce buffer', null], ['zero-copy path (JS stand-in)', jsTransfer]]
if (nativeFdTransfer()) variants.push(['native fdTransfer', undefined])

for (const [name, transfer] of variants) {
  t.test(`getToFd over tcp into a pipe: ${name}`, async t => {
    const l = await listen('tcp:127.0.0.1:0')
    const [src, dst] = await Promise.all([connect(l.address), l.accept()])
    const w = new MigStream(src)
    const r = new MigStream(dst, { fdTransfer: transfer })
    const data = pattern(48000, 1)
    w.putBe32(data.length)
    w.putBufferAsync(data)
    w.putBe32(0xfeedface)
    await w.flush()
    t.equal(await r.getBe32(), data.length)
    const pfd = fifo(`p-${Math.random()}`)
    t.ok(await r.getToFd(pfd, data.length), String(r.error))
    const back = Buffer.alloc(data.length)
    let got = 0
    while (got < back.length) got += fs.readSync(pfd, back, got, back.length - got, null)
    t.ok(back.equals(data), 'bytes intact')
    t.equal(await r.getBe32(), 0xfeedface, 'the stream continues after the transfer')
    t.equal(r.bytesRead, 4 + data.length + 4)
    fs.closeSync(pfd)
    await src.close()
    await dst.close()
    await l.close()
  })

  t.test(`putFromFd from a file into tcp, then getToFd into a file: ${name}`, async t => {
    const l = await listen('tcp:127.0.0.1:0')
    const [src, dst] = await Promise.all([connect(l.address), l.accept()])
    const w = new MigStream(src, { fdTransfer: transfer })
    const r = new MigStream(dst, { fdTransfer: transfer })
    const data = pattern(3 << 20, 7)
    const inPath = path.join(dir, `in-${Math.random()}`)
    fs.writeFileSync(inPath, data)
    const ifd = fs.openSync(inPath, 'r')
    const writer = (async () => {
      w.putBe64n(data.length)
      const moved = await w.putFromFd(ifd)
      w.putU8(0xee)
      await w.flush()
      fs.closeSync(ifd)
      return moved
    })()
    const n = await r.getBe64n()
    const outPath = path.join(dir, `out-${Math.random()}`)
    const ofd = fs.openSync(outPath, 'w')
    t.ok(await r.getToFd(ofd, n))
    fs.closeSync(ofd)
    t.equal(await writer, data.length)
    t.equal(w.transferred, 8 + data.length + 1)
    t.ok(fs.readFileSync(outPath).equals(data))
    t.equal(await r.getU8(), 0xee)
    await src.close()
    await dst.close()
    await l.close()
  })
}

t.test('putFromFd with a length from a pipe; early end of the fd', async t => {
  const [a, b] = memoryPair(1 << 30)
  const w = new MigStream(a)
  const pfd = fifo('p2')
  fs.writeSync(pfd, pattern(1000, 3))
  t.equal(await w.putFromFd(pfd, 600), 600)
  await w.flush()
  const r = new MigStream(b)
  t.ok((await r.getBuffer(600)).equals(pattern(1000, 3).subarray(0, 600)))
  fs.closeSync(pfd)
  const f = path.join(dir, 'short')
  fs.writeFileSync(f, Buffer.alloc(10))
  const sfd = fs.openSync(f, 'r')
  t.equal(await w.putFromFd(sfd, 100), 10, 'stops at the end of the fd')
  fs.closeSync(sfd)
  t.equal(await w.putFromFd(-5, 1), 0)
  t.equal(w.error?.code, 'EBADF')
  t.equal(await w.putFromFd(1, 1), 0, 'no-op after error')
})

t.test('getToFd errors: truncated stream, bad length, bad fd', async t => {
  const [a, b] = memoryPair()
  const w = new MigStream(a)
  w.putBuffer(Buffer.alloc(10))
  await w.flush()
  await a.endWrites()
  const r = new MigStream(b)
  const f = path.join(dir, 'sink')
  const fd = fs.openSync(f, 'w')
  t.notOk(await r.getToFd(fd, 20))
  t.equal(r.error?.code, 'ENODATA')
  t.match(r.error?.message, /10 of 20 bytes missing/)
  const r2 = new MigStream(memoryPair()[1])
  t.notOk(await r2.getToFd(fd, -1))
  t.equal(r2.error?.code, 'EINVAL')
  t.equal(await new MigStream(memoryPair()[0]).putFromFd(fd, 1.5), 0)
  fs.closeSync(fd)
  const [c, d] = memoryPair()
  const wc = new MigStream(c)
  wc.putBuffer(Buffer.alloc(10))
  await wc.flush()
  const r3 = new MigStream(d)
  await r3.fill(1)
  t.notOk(await r3.getToFd(123456, 5))
  t.equal(r3.error?.code, 'EBADF')
})

t.test('reads resume after a zero-copy getToFd when later data arrives late', async t => {
  const l = await listen('tcp:127.0.0.1:0')
  const [src, dst] = await Promise.all([connect(l.address), l.accept()])
  const w = new MigStream(src)
  const r = new MigStream(dst, { fdTransfer: jsTransfer })
  w.putBuffer(Buffer.alloc(1000, 1))
  await w.flush()
  const sink = path.join(dir, 'late')
  const fd = fs.openSync(sink, 'w')
  t.ok(await r.fill(1))
  t.ok(await r.getToFd(fd, 1000))
  fs.closeSync(fd)
  const later = r.getBe32()
  await new Promise(res => setTimeout(res, 50))
  w.putBe32(0xabcdef01)
  await w.flush()
  t.equal(await later, 0xabcdef01)
  await src.close()
  await dst.close()
  await l.close()
})

t.test('readDirect hands the fd over only when nothing was read ahead', async t => {
  const l = await listen('tcp:127.0.0.1:0')
  const [src, dst] = await Promise.all([connect(l.address), l.accept()])
  const w = new MigStream(src)
  const r = new MigStream(dst, { fdTransfer: jsTransfer })
  w.putBe32(7)
  w.putBuffer(pattern(300, 3))
  await w.flush()
  t.equal(await r.getBe32(), 7)
  let called = 0
  const take8 = async (fd: DirectTarget) => {
    if (typeof fd !== 'number') throw new Error('a plaintext channel hands out its fd')
    called++
    const b = Buffer.alloc(8)
    let got = 0
    while (got < 8) got += await readFd(fd, b, got, 8 - got)
    t.equal(b.readBigUInt64BE(0), 0x0102030405060708n, 'fn reads the bytes that come next')
    return 8
  }
  t.notOk(await r.readDirect(take8), 'bytes read ahead: the caller goes on through the stream')
  t.equal(called, 0)
  t.ok((await r.getBuffer(300)).equals(pattern(300, 3)), 'what was read ahead is still there, in order')
  const at = r.bytesRead
  w.putBe64(0x0102030405060708n)
  w.putBe32(0xc0ffee)
  await w.flush()
  await new Promise(res => setTimeout(res, 30))
  t.ok(await r.readDirect(take8), 'nothing read ahead: fn reads the fd itself')
  t.equal(called, 1)
  t.equal(r.bytesRead, at + 8, 'what fn took counts as read')
  t.equal(await r.getBe32(), 0xc0ffee, 'reads resume after it')
  t.notOk(await r.readDirect(async () => { throw new Error('no fd here') }).then(ok => ok && !r.error), 'a throw from fn fails the stream')
  t.match(r.error?.message, /no fd here/)
  await src.close()
  await dst.close()
  await l.close()
})

t.test('readDirect refuses a channel without an fd, and a stream without the transfer', async t => {
  const [a, b] = memoryPair()
  const w = new MigStream(a)
  w.putBe32(1)
  await w.flush()
  const r = new MigStream(b)
  t.notOk(await r.readDirect(async () => 0))
  t.equal(await r.getBe32(), 1)
  const l = await listen('tcp:127.0.0.1:0')
  const [src, dst] = await Promise.all([connect(l.address), l.accept()])
  const nofd = new MigStream(dst, { fdTransfer: null })
  t.notOk(await nofd.readDirect(async () => 0))
  await src.close()
  await dst.close()
  await l.close()
})
