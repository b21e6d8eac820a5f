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
  await rpw.resumeOk({ loadTimeUs: 1234, resumedAtMs: 1700000000000 })
  await rpw.shut(0)
  const m1 = await rpr.next()
  t.equal(m1?.type, RpMsg.SWITCHOVER_ACK)
  t.equal((await rpr.next())?.data.readUInt32BE(0), 7)
  t.equal((await rpr.next())?.type, RpMsg.RESUME_ACK)
  const ok = await rpr.next()
  t.same(ReturnPathReader.resumeTiming(ok!), { loadTimeUs: 1234, resumedAtMs: 1700000000000 })
  t.throws(() => ReturnPathReader.resumeTiming(m1!))
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

t.test('exec: outgoing writes to the command, incoming reads its output', async t => {
  const p = path.join(dir, 'exec.bin')
  const src = await connect(`exec:cat > ${p}`)
  t.equal(src.kind, 'exec')
  // The command's stdout is read, its stdin written: two fds, and a direct
  // write must go to the one that reaches the command.
  t.ok(src.fd !== undefined && src.writeFd !== undefined && src.fd !== src.writeFd, `read fd ${src.fd}, write fd ${src.writeFd}`)
  const w = new MigStream(src)
  w.putBufferAsync(Buffer.alloc(300000, 9))
  t.ok(await w.writeDirect(async fd => {
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

  // A socket fd handed over by number.
  const l = await listen('tcp:127.0.0.1:0')
  const [a, b] = await Promise.all([connect(l.address), l.accept()])
  const lfd = await listen(`fd:${a.fd}`)
  const viaFd = await lfd.accept()
  await lfd.close()
  const w2 = new MigStream(b)
  w2.putBe32(77)
  await w2.flush()
  t.equal(await new MigStream(viaFd).getBe32(), 77)
  await b.close()
  await l.close()
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
  const waiting = l2.accept()
  await l2.close()
  await t.rejects(waiting, { code: 'ECANCELED' })
})
