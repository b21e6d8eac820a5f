import t from 'tap'
import type { Test } from 'tap'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { parseUri, formatUri, UriError } from '../../vmm/channel/uri.js'
import { connect, listen } from '../../vmm/channel/connect.js'
import { memoryPair } from '../../vmm/channel/memory.js'
import { advanceIov } from '../../vmm/channel/file.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { ReturnPathReader, ReturnPathWriter, RpMsg } from '../../vmm/channel/return-path.js'
import type { Channel } from '../../vmm/channel/types.js'
import { SaveVM } from '../../vmm/savevm/save.js'
import { loadvm } from '../../vmm/savevm/load.js'
import { MigCmd } from '../../vmm/savevm/constants.js'
import { sourceRegistry, destRegistry } from './helpers.js'
import { native } from '../../vmm/native/addon.js'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-core-'))
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))

t.test('URI parsing', async t => {
  t.same(parseUri('tcp:127.0.0.1:4444'), { kind: 'tcp', host: '127.0.0.1', port: 4444 })
  t.same(parseUri('tcp:[::1]:5'), { kind: 'tcp', host: '::1', port: 5 })
  t.same(parseUri('tcp::7'), { kind: 'tcp', host: '0.0.0.0', port: 7 })
  t.same(parseUri('unix:/tmp/x.sock'), { kind: 'unix', path: '/tmp/x.sock' })
  t.same(parseUri('file:/tmp/f'), { kind: 'file', path: '/tmp/f' })
  t.same(parseUri('exec:cat > /dev/null'), { kind: 'exec', command: 'cat > /dev/null' })
  t.same(parseUri('fd:3'), { kind: 'fd', fd: 3 })
  for (const u of ['tcp:[::1]:1', 'tcp:h:2', 'unix:/a', 'file:/b', 'exec:c', 'fd:4']) t.equal(formatUri(parseUri(u)), u)
  const bad = ['', 'nope', 'ftp:x', 'tcp:host', 'tcp:host:99999', 'tcp:host:abc', 'tcp:::1:80', 'tcp:[::1]80',
    'unix:', 'unix:/' + 'a'.repeat(200), 'file:', 'exec:  ', 'fd:-1', 'fd:x']
  for (const u of bad) {
    const e = (() => { try { parseUri(u); return null } catch (err) { return err } })()
    t.ok(e instanceof UriError, `${u} rejected`)
    t.equal((e as UriError).code, 'EINVAL')
  }
  t.throws(() => parseUri(undefined as never), UriError)
})

t.test('paths in missing directories are named as such, not as EACCES', async t => {
  const missing = path.join(dir, 'no-such-dir')
  // libuv turns bind()'s ENOENT into EACCES: the error must still say what is wrong.
  await t.rejects(listen(`unix:${missing}/sock`), { code: 'ENOENT', message: new RegExp(`listen unix:${missing}/sock: directory ${missing} does not exist$`) })
  await t.rejects(connect(`unix:${missing}/sock`), { code: 'ENOENT', message: new RegExp(`directory ${missing} does not exist$`) })
  await t.rejects(connect(`unix:${dir}/nobody.sock`), { code: 'ENOENT', message: /no socket .*nobody\.sock \(is the destination listening\?\)$/ })
  await t.rejects(connect(`file:${missing}/f`), { code: 'ENOENT', message: new RegExp(`open file:${missing}/f: directory ${missing} does not exist$`) })
  const l = await listen(`file:${missing}/f`)
  await t.rejects(l.accept(), { code: 'ENOENT', message: /does not exist$/ })
  const plain = path.join(dir, 'plain-file')
  fs.writeFileSync(plain, '')
  await t.rejects(listen(`unix:${plain}/sock`), { code: 'ENOTDIR', message: new RegExp(`${plain} is not a directory$`) })
  if (process.getuid?.() !== 0) {
    // A real permission problem stays one.
    const locked = path.join(dir, 'locked')
    fs.mkdirSync(locked, { mode: 0o500 })
    await t.rejects(listen(`unix:${locked}/sock`), { code: 'EACCES' })
  }
})

t.test('connect: an abort signal abandons a connect in progress', async t => {
  const l = await listen('tcp:127.0.0.1:0')
  t.teardown(() => l.close())
  const ac = new AbortController()
  const pending = connect(l.address, { signal: ac.signal })
  ac.abort()
  await t.rejects(pending, { code: 'ECANCELED', message: /connect tcp:127\.0\.0\.1:\d+: cancelled/ })
  await t.rejects(connect(`unix:${dir}/x.sock`, { signal: ac.signal }), { code: 'ECANCELED' }, 'already aborted: not even tried')
  const ok = await connect(l.address, { signal: new AbortController().signal })
  await ok.close()
})

async function exchange(t: Test, src: Channel, dst: Channel, size = 3 << 20) {
  const w = new MigStream(src)
  const r = new MigStream(dst)
  const payload = Buffer.alloc(size)
  for (let i = 0; i < size; i += 4) payload.writeUInt32BE(i, i)
  w.putBe32(size)
  w.putBufferAsync(payload)
  const flushed = w.flush()
  t.equal(await r.getBe32(), size)
  const got = await r.getBuffer(size)
  await flushed
  t.ok(got.equals(payload), `${src.kind}: payload intact`)
  t.equal(w.error, null)
  t.equal(r.error, null)
  return { w, r }
}

t.test('tcp: listen, accept, stream both ways, return path', async t => {
  const l = await listen('tcp:127.0.0.1:0')
  t.match(l.address, /^tcp:127\.0\.0\.1:\d+$/)
  const [src, dst] = await Promise.all([connect(l.address), l.accept()])
  t.equal(src.kind, 'tcp')
  t.type(src.fd, 'number')
  await exchange(t, src, dst)
  // The return path: the destination writes back over the same socket.
  const rpw = new ReturnPathWriter(new MigStream(dst))
  const rpr = new ReturnPathReader(new MigStream(src))
  await rpw.switchoverAck()
  await rpw.pong(7)
  await rpw.resumeAck(1)
  await rpw.resumeOk({ loadTimeUs: 1234, resumedAtMs: 1700000000000, verificationUs: 5678, startedMonoNs: 98765432101234n })
  await rpw.shut(0)
  const m1 = await rpr.next()
  t.equal(m1?.type, RpMsg.SWITCHOVER_ACK)
  t.equal((await rpr.next())?.data.readUInt32BE(0), 7)
  t.equal((await rpr.next())?.type, RpMsg.RESUME_ACK)
  const ok = await rpr.next()
  t.equal(ok!.data.length, 32)
  t.same(ReturnPathReader.resumeTiming(ok!), { loadTimeUs: 1234, resumedAtMs: 1700000000000, verificationUs: 5678, startedMonoNs: 98765432101234n })
  t.throws(() => ReturnPathReader.resumeTiming(m1!))
  // A destination from before the verification field sends 16 bytes: it verified nothing it reports.
  const old = { type: RpMsg.RESUME_OK, data: ok!.data.subarray(0, 16) }
  t.same(ReturnPathReader.resumeTiming(old), { loadTimeUs: 1234, resumedAtMs: 1700000000000, verificationUs: 0, startedMonoNs: 0n })
  // One from before the start time sends 24: no shared-clock downtime then.
  t.same(ReturnPathReader.resumeTiming({ type: RpMsg.RESUME_OK, data: ok!.data.subarray(0, 24) }), { loadTimeUs: 1234, resumedAtMs: 1700000000000, verificationUs: 5678, startedMonoNs: 0n })
  t.throws(() => ReturnPathReader.resumeTiming({ type: RpMsg.RESUME_OK, data: ok!.data.subarray(0, 20) }), /not a RESUME_OK/)
  t.equal((await rpr.next())?.type, RpMsg.SHUT)
  await dst.endWrites()
  t.equal(await rpr.next(), null, 'closed path')
  await src.close()
  await dst.close()
  await l.close()
  await t.rejects(l.accept(), { code: 'EBADF' })
})

t.test('a whole migration over tcp with switchover ack on the return path', async t => {
  const l = await listen('tcp:127.0.0.1:0')
  const [src, dst] = await Promise.all([connect(l.address), l.accept()])
  const fx = sourceRegistry()
  const out = new MigStream(src)
  const rp = new ReturnPathReader(new MigStream(src))
  const save = new SaveVM(out, fx.reg, { machine: 'pc' })
  const dstFx = destRegistry(true)
  const rpw = new ReturnPathWriter(new MigStream(dst))
  const loaded = loadvm(new MigStream(dst), dstFx.reg, { machine: 'pc', onSwitchoverAck: () => rpw.switchoverAck() })
  await save.header()
  await save.command(MigCmd.OPEN_RETURN_PATH)
  await save.setup()
  await save.iterate()
  const ack = await rp.next()
  t.equal(ack?.type, RpMsg.SWITCHOVER_ACK, 'source sees the ack before switchover')
  while (!(await save.iterate())) { /* */ }
  await save.switchoverStart()
  await save.complete()
  await save.nonIterable()
  await save.finish()
  const res = await loaded
  t.equal(dstFx.old.value, 0x1234)
  t.ok(res.vmdesc)
  await src.close()
  await dst.close()
  await l.close()
})

t.test('unix socket', async t => {
  const p = path.join(dir, 'mig.sock')
  const l = await listen(`unix:${p}`)
  const [src, dst] = await Promise.all([connect(`unix:${p}`), l.accept()])
  t.equal(src.kind, 'unix')
  await exchange(t, src, dst, 1 << 20)
  await src.close()
  await dst.close()
  await l.close()
  await t.rejects(connect(`unix:${p}`), { code: 'ENOENT' })
})

t.test('file', async t => {
  const p = path.join(dir, 'state.bin')
  const src = await connect(`file:${p}`)
  t.equal(src.kind, 'file')
  const w = new MigStream(src)
  w.putBe32(0x11223344)
  w.putBufferAsync(Buffer.alloc(200000, 3))
  t.equal(await w.close(), null)
  t.equal(fs.statSync(p).size, 200004)
  const l = await listen(`file:${p}`)
  const dst = await l.accept()
  await t.rejects(l.accept(), { code: 'EINVAL' })
  const r = new MigStream(dst)
  t.equal(await r.getBe32(), 0x11223344)
  t.equal((await r.getBuffer(200000))[199999], 3)
  t.ok(await r.atEnd())
  await r.close()
  await t.rejects(dst.read(Buffer.alloc(1), 0, 1), { code: 'EBADF' })
  await l.close()
  await t.rejects(connect(`file:${dir}/no/such/dir/x`), { code: 'ENOENT' })
  await t.rejects((await listen(`file:${dir}/missing`)).accept(), { code: 'ENOENT' })
  t.same(advanceIov([Buffer.alloc(3), Buffer.alloc(2)], 4).map(b => b.length), [1])
})

t.test('exec: what the command writes comes back on the same channel (the return path)', async t => {
  const c = await connect('exec:cat')
  const m = new MigStream(c)
  m.putBuffer(Buffer.from('echo through the command'))
  await m.flush()
  t.equal((await m.getBuffer(24)).toString(), 'echo through the command')
  await c.endWrites()
  t.ok(await m.atEnd(), 'the command ends when its input does')
  await m.close()
  const l = await listen(`file:${path.join(dir, 'nothing-here')}`)
  t.equal(l.acceptsMany, false, 'file:, exec: and fd: listeners give one channel')
})

t.test('exec: outgoing writes to the command, incoming reads its output', async t => {
  const p = path.join(dir, 'exec.bin')
  const src = await connect(`exec:cat > ${p}`)
  t.equal(src.kind, 'exec')
  // The command's stdin and stdout are one socket: one fd both ways, so a
  // direct write reaches the command and its answers come back (the return path).
  t.ok(src.fd !== undefined && src.fd === src.writeFd, `read fd ${src.fd}, write fd ${src.writeFd}`)
  t.equal(src.duplex, true, 'an exec channel carries a return path')
  const w = new MigStream(src)
  w.putBufferAsync(Buffer.alloc(300000, 9))
  t.ok(await w.writeDirect(async fd => {
    if (typeof fd !== 'number') throw new Error('a plaintext channel hands out its fd')
    const tail = Buffer.alloc(1000, 7)
    let off = 0
    while (off < tail.length) {
      try {
        off += fs.writeSync(fd, tail, off)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e
        await new Promise(r => setTimeout(r, 5))
      }
    }
    return tail.length
  }), 'direct write taken')
  t.equal(w.error, null)
  await src.endWrites()
  await w.close()
  const got = fs.readFileSync(p)
  t.equal(got.length, 301000, 'the direct bytes reached the command, after the buffered ones')
  t.equal(got[299999], 9)
  t.equal(got[300000], 7)
  const l = await listen(`exec:cat ${p}`)
  const dst = await l.accept()
  const r = new MigStream(dst)
  t.equal((await r.getBuffer(300000))[12345], 9)
  t.equal((await r.getBuffer(1000))[999], 7)
  t.ok(await r.atEnd())
  await r.close()
})

t.test('fd: regular file and socket fds', async t => {
  const p = path.join(dir, 'fd.bin')
  const fd = fs.openSync(p, 'w+')
  const ch = await connect(`fd:${fd}`)
  t.equal(ch.kind, 'fd')
  t.equal(ch.fd, fd)
  t.equal(ch.writeFd, fd)
  const w = new MigStream(ch)
  w.putBe64(42n)
  await w.close()
  t.equal(fs.readFileSync(p).readBigUInt64BE(0), 42n)
  fs.closeSync(fd)
  await t.rejects(connect('fd:987654'), { code: 'EBADF' })

  // A socket fd handed over by number: the channel takes it over (closes
  // the number, keeps its own copy), as QEMU's fd: does.
  const [mine, handed] = native.testingSocketPair()
  const lfd = await listen(`fd:${handed}`)
  const viaFd = await lfd.accept()
  await lfd.close()
  t.throws(() => fs.fstatSync(handed), { code: 'EBADF' }, 'the number handed over is closed')
  t.equal(viaFd.duplex, true, 'a socket carries the return path')
  fs.writeSync(mine, Buffer.from([0, 0, 0, 77]))
  t.equal(await new MigStream(viaFd).getBe32(), 77)
  const back = new MigStream(viaFd)
  back.putBe32(78)
  await back.flush()
  const got = Buffer.alloc(4)
  t.equal(fs.readSync(mine, got), 4)
  t.equal(got.readUInt32BE(0), 78, 'and it answers on the same socket')
  await viaFd.close()
  t.equal(fs.readSync(mine, got), 0, 'closing the channel closed the last copy: the peer sees the end')
  fs.closeSync(mine)

  // A pipe goes one way: no return path, and its end reaches the reader.
  const [pr, pw] = native.testingPipe()
  const out = await connect(`fd:${pw}`)
  t.equal(out.duplex, false, 'a pipe has no return path')
  const wp = new MigStream(out)
  wp.putBe32(79)
  await wp.close()
  const pgot = Buffer.alloc(8)
  t.equal(fs.readSync(pr, pgot), 4)
  t.equal(fs.readSync(pr, pgot), 0, 'end of stream once the channel closed')
  fs.closeSync(pr)
})

t.test('memory pair: backpressure, end, shutdown', async t => {
  const [a, b] = memoryPair(1000)
  t.equal(a.fd, undefined)
  let done = false
  const p = a.writev([Buffer.alloc(5000)]).then(() => { done = true })
  await new Promise(r => setImmediate(r))
  t.equal(done, false, 'writer waits while the peer holds too much')
  t.equal(a.writableLength, 5000)
  const buf = Buffer.alloc(5000)
  let got = 0
  while (got < 5000) got += await b.read(buf, got, 5000 - got)
  await p
  t.equal(done, true)
  t.same(await a.quiesce(), [])
  a.resumeReads()
  t.equal(await b.read(buf, 0, 0), 0)
  await a.endWrites()
  t.equal(await b.read(buf, 0, 10), 0)
  await t.rejects(a.writev([Buffer.alloc(1)]), { code: 'EPIPE' })
  const [c, d] = memoryPair()
  const pending = d.read(buf, 0, 1)
  c.shutdown()
  await t.rejects(pending, { code: 'ECANCELED' })
  await t.rejects(c.writev([Buffer.alloc(1)]), { code: 'ECANCELED' })
  await c.close()
})

t.test('the link timeout reaches the kernel on TCP only', async t => {
  const { linkTimeouts, LOSS_RECOVERY_MS, FdChannel } = await import('../../vmm/channel/fd-channel.js')
  t.same(linkTimeouts(15000), { userTimeoutMs: 15000, keepalive: { idleS: 5, intervalS: 2, count: 3 }, lossRecoveryMs: LOSS_RECOVERY_MS }, 'probes from a third of it, every ninth')
  t.same(linkTimeouts(500), { userTimeoutMs: 500, keepalive: { idleS: 1, intervalS: 1, count: 3 }, lossRecoveryMs: LOSS_RECOVERY_MS }, 'the kernel counts whole seconds, from 1')
  t.equal(linkTimeouts(0), null, 'no link timeout: the kernel defaults stay')
  const l = await listen('tcp:127.0.0.1:0')
  const [a, b] = await Promise.all([connect(l.address), l.accept()])
  t.equal(a.setLinkTimeout?.(15000), true, 'TCP_USER_TIMEOUT and keepalive set on the connected side')
  t.equal(b.setLinkTimeout?.(15000), true, 'and on the accepted side')
  // Linux 6.15+ has TCP_RTO_MIN_US; older kernels keep their 200 ms and say null.
  const fa = a as InstanceType<typeof FdChannel>
  const lr = fa.lossRecovery()
  if (lr === null) {
    t.comment('this kernel has no TCP_RTO_MIN_US (before 6.15): the 200 ms defaults stay')
  } else {
    t.ok(lr.rtoMinUs <= 20_000 && lr.delackMaxUs <= 20_000, `a lost segment is resent after ${lr.rtoMinUs} us, an ACK held at most ${lr.delackMaxUs} us, not 200 ms`)
    t.ok((b as InstanceType<typeof FdChannel>).lossRecovery()!.rtoMinUs <= 20_000, 'on the accepted side too')
  }
  const ls = a.linkStats?.()
  t.ok(ls && ls.rtoUs > 0 && ls.rttUs >= 0 && ls.totalRetrans === 0, `TCP_INFO read: ${JSON.stringify(ls)}`)
  t.equal(a.setLinkTimeout?.(0), false, '0 sets nothing')
  await a.close()
  await b.close()
  await l.close()
  const ul = await listen(`unix:${path.join(dir, 'lt.sock')}`)
  const [c, d] = await Promise.all([connect(ul.address), ul.accept()])
  t.equal(c.setLinkTimeout?.(15000), false, 'a unix socket has no network to time out')
  t.equal((c as InstanceType<typeof FdChannel>).lossRecovery(), null, 'nor a retransmission timeout')
  t.equal(c.linkStats?.(), null, 'nor TCP_INFO')
  await c.close()
  await d.close()
  await ul.close()
})

t.test('socket errors and shutdown', async t => {
  const l = await listen('tcp:127.0.0.1:0')
  const [src, dst] = await Promise.all([connect(l.address), l.accept()])
  const r = new MigStream(dst)
  const reading = r.getBe32()
  src.shutdown()
  t.equal(await reading, 0)
  t.ok(r.error)
  await t.rejects(src.writev([Buffer.alloc(1)]))
  await src.close()
  await dst.close()
  const port = Number(l.address.split(':').pop())
  await l.close()
  await t.rejects(connect(`tcp:127.0.0.1:${port}`), { code: 'ECONNREFUSED' })
  const l2 = await listen('tcp:127.0.0.1:0')
  await t.rejects(listen(l2.address), { code: 'EADDRINUSE' })
  // close() settles after the native side let go (a unix path is removed on
  // a blocking thread), so the waiting accept may reject first: handled now.
  const waiting = t.rejects(l2.accept(), { code: 'ECANCELED' })
  await l2.close()
  await waiting
})
