// NativeChannel and NativeListener (crates/vmm-native/src/channel/): the
// sockets and pipes under every migration channel but file:. Non-blocking
// tries on the JavaScript thread, waits settled from the runtime, errors
// with their errno code, closing and shutting down as the channel layer
// relies on.
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { native } from '../../vmm/native/addon.js'
import { rejection } from './helpers.js'

const { NativeChannel, NativeListener } = native
type Chan = InstanceType<typeof NativeChannel>

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-native-chan-'))
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))

async function tcpPair(t: Tap.Test): Promise<[Chan, Chan]> {
  const l = NativeListener.tcp('127.0.0.1', 0)
  t.teardown(() => l.close())
  const c = NativeChannel.tcp('127.0.0.1', l.port!)
  const [, s] = await Promise.all([c.connect(5000), l.accept()])
  t.teardown(() => { c.close(); s.close() })
  return [c, s]
}

/** Reads exactly n bytes the way the channel layer does: a try, then a wait. */
async function readN(ch: Chan, n: number): Promise<Buffer> {
  const out = Buffer.alloc(n)
  let got = 0
  while (got < n) {
    let r = ch.tryRead(out, got, n - got)
    if (r < 0) r = await ch.read(out, got, n - got)
    if (r === 0) break
    got += r
  }
  return out.subarray(0, got)
}

t.test('tcp: listen on port 0, connect, bytes both ways, the peer address', async t => {
  const [c, s] = await tcpPair(t)
  t.ok(c.isSocket)
  t.type(c.fd, 'number')
  t.equal(c.fd, c.writeFd, 'one socket both ways')
  t.match(s.peer, /^127\.0\.0\.1:\d+$/)
  const buf = Buffer.alloc(16)
  t.equal(s.tryRead(buf, 0, 16), -1, 'nothing there: -1, no wait')
  const pending = s.read(buf, 0, 16)
  t.equal(c.tryWritev([Buffer.from('hello, '), Buffer.from('world')], 0), 12)
  t.equal(await pending, 12)
  t.equal(buf.subarray(0, 12).toString(), 'hello, world')
  t.equal(s.tryWritev([Buffer.from('skip-me|back')], 8), 4, 'skip drops bytes from the front')
  t.equal((await readN(c, 4)).toString(), 'back')
  t.ok(c.setOptions({ noDelay: true, keepalive: { idleS: 5, intervalS: 1, count: 10 }, userTimeoutMs: 20000 }), 'TCP options apply')
  t.throws(() => c.setOptions({ keepalive: { idleS: 0, intervalS: 1, count: 3 } }), { code: 'EINVAL' })
  t.throws(() => s.tryRead(buf, 10, 10), { code: 'EINVAL' }, 'a range past the buffer')
})

t.test('waiting costs no CPU: pending accepts and reads on idle sockets do not spin', async t => {
  // A stream socket registered with the runtime's epoll before listen(2) or
  // connect(2) polls as hung up, a readiness tokio never clears: every wait
  // on it then returned at once, and the accept and read loops spun on the
  // runtime's threads (the first switch of connect() stalled on it).
  const sleep = (ms: number) => new Promise(r => setTimeout(r, ms))
  const ul = await NativeListener.unix(path.join(dir, 'idle.sock'))
  const tl = NativeListener.tcp('127.0.0.1', 0)
  t.teardown(async () => { await ul.close(); await tl.close() })
  const uc = NativeChannel.unix(path.join(dir, 'idle.sock'))
  const tc = NativeChannel.tcp('127.0.0.1', tl.port!)
  // Time for the runtime to see the sockets as they are before connecting.
  await sleep(100)
  const [, us, , ts] = await Promise.all([uc.connect(5000), ul.accept(), tc.connect(5000), tl.accept()])
  t.teardown(() => { for (const c of [uc, us, tc, ts]) c.close() })
  const pending = [ul.accept(), tl.accept(), ...[uc, us, tc, ts].map(c => c.read(Buffer.alloc(8), 0, 8))]
  for (const p of pending) p.catch(() => undefined)
  const before = process.cpuUsage()
  const t0 = performance.now()
  await sleep(1000)
  const used = process.cpuUsage(before)
  const ms = (used.user + used.system) / 1000
  t.ok(ms < 100, `${ms.toFixed(0)} ms of CPU in ${(performance.now() - t0).toFixed(0)} ms with 2 accepts and 4 reads waiting`)
  uc.tryWritev([Buffer.from('x')], 0)
  t.equal(await pending[3], 1, 'a waiting read still wakes for its byte')
})

t.test('writev waits for room: 24 MiB through one socket, in order', async t => {
  const [c, s] = await tcpPair(t)
  const data = randomBytes(24 << 20)
  const parts = [data.subarray(0, 1000), data.subarray(1000, 9 << 20), data.subarray(9 << 20)]
  const first = c.tryWritev(parts, 0)
  t.ok(first > 0 && first < data.length, `the kernel took ${first} bytes at once, not all`)
  const sent = c.writev(parts, first)
  const got = await readN(s, data.length)
  await sent
  t.ok(got.equals(data), 'every byte, in order')
})

t.test('end of writes, shutdown and close', async t => {
  const [c, s] = await tcpPair(t)
  c.endWrites()
  t.equal(await s.read(Buffer.alloc(4), 0, 4), 0, 'end of stream after endWrites')
  t.equal(s.tryWritev([Buffer.from('late')], 0), 4, 'the other way still works')
  t.equal((await readN(c, 4)).toString(), 'late')
  await t.rejects(c.writev([Buffer.from('x')], 0), { code: 'EPIPE' }, 'writing after the end')

  const [a, b] = await tcpPair(t)
  const reading = b.read(Buffer.alloc(4), 0, 4)
  b.shutdown()
  const e = await rejection(reading)
  t.equal(e.code, 'ECANCELED', 'a pending read ends at shutdown')
  t.equal(await a.read(Buffer.alloc(4), 0, 4), 0, 'the peer sees the end')
  t.type(b.fd, 'number', 'the descriptor stays until close')
  b.close()
  t.equal(b.fd, null)
  t.throws(() => b.tryRead(Buffer.alloc(1), 0, 1), { code: 'EBADF' })
  b.close()
})

t.test('connect errors carry their code; close cancels a connect and an accept', async t => {
  const l = NativeListener.tcp('127.0.0.1', 0)
  const port = l.port!
  const accepting = l.accept()
  l.close()
  t.equal((await rejection(accepting)).code, 'ECANCELED')
  t.equal((await rejection(l.accept())).code, 'ECANCELED', 'closed: no more accepts')
  t.equal((await rejection(NativeChannel.tcp('127.0.0.1', port).connect())).code, 'ECONNREFUSED')
  const missing = NativeChannel.unix(path.join(dir, 'nobody.sock'))
  const e = await rejection(missing.connect())
  t.equal(e.code, 'ENOENT')
  t.equal(e.syscall, 'connect')
  t.throws(() => NativeChannel.tcp('localhost', 1), { code: 'EINVAL' }, 'names are resolved by the caller')
  const l2 = NativeListener.tcp('127.0.0.1', 0)
  t.teardown(() => l2.close())
  t.throws(() => NativeListener.tcp('127.0.0.1', l2.port!), { code: 'EADDRINUSE' })
  const closed = NativeChannel.tcp('127.0.0.1', l2.port!)
  closed.close()
  t.equal((await rejection(closed.connect())).code, 'EBADF', 'closed before it connected')
  // A UNIX listener whose backlog is full keeps a connect waiting.
  const p = path.join(dir, 'full.sock')
  const full = await NativeListener.unix(p, 0)
  t.teardown(() => full.close())
  const first = NativeChannel.unix(p)
  await first.connect()
  const waiting = NativeChannel.unix(p)
  const pending = waiting.connect()
  await new Promise(r => setTimeout(r, 50))
  waiting.close()
  t.equal((await rejection(pending)).code, 'ECANCELED', 'closed while it waited')
  first.close()
})

t.test('unix: the path exists while listening and goes with close', async t => {
  const p = path.join(dir, 'u.sock')
  // The bind makes a file: it runs on a blocking thread, and resolves.
  const bound = NativeListener.unix(p)
  t.type(bound.then, 'function', 'a promise, not a bind on this thread')
  const l = await bound
  t.equal(l.port, null)
  t.ok(fs.statSync(p).isSocket())
  await t.rejects(NativeListener.unix(p), { code: 'EADDRINUSE' })
  const c = NativeChannel.unix(p)
  const [, s] = await Promise.all([c.connect(), l.accept()])
  t.equal(s.peer, null, 'an unnamed peer')
  t.ok(!c.setOptions({ userTimeoutMs: 1000, sendBuffer: 1 << 20 }), 'no TCP options on a UNIX socket')
  c.tryWritev([Buffer.from('u')], 0)
  t.equal((await readN(s, 1)).toString(), 'u')
  await l.close()
  t.notOk(fs.existsSync(p), 'removed when close settles')
  c.close()
  s.close()
})

t.test('adopt: a dup of an inherited socket or pipe; the original stays the caller\'s', async t => {
  const [x, y] = native.testingSocketPair()
  const a = NativeChannel.adopt(x)
  t.ok(a.isSocket)
  t.not(a.fd, x, 'a dup')
  fs.writeSync(y, 'via y')
  t.equal((await readN(a, 5)).toString(), 'via y')
  a.close()
  fs.writeSync(x, 'x open')
  const back = Buffer.alloc(6)
  t.equal(fs.readSync(y, back), 6, 'the caller\'s fd still works')
  fs.closeSync(x)
  fs.closeSync(y)

  const [r, w] = native.testingPipe()
  const pw = NativeChannel.adopt(w)
  t.notOk(pw.isSocket)
  t.equal(pw.tryWritev([Buffer.from('pipe')], 0), 4)
  pw.endWrites()
  fs.closeSync(w)
  const got = Buffer.alloc(8)
  t.equal(fs.readSync(r, got), 4)
  t.equal(fs.readSync(r, got), 0, 'end of stream: every write end is closed')
  fs.closeSync(r)
  const f = path.join(dir, 'plain')
  const ffd = fs.openSync(f, 'w')
  t.throws(() => NativeChannel.adopt(ffd), { code: /^E(NOTSUP|OPNOTSUPP)$/ }, 'a regular file is not adopted')
  fs.closeSync(ffd)
  t.throws(() => NativeChannel.adopt(-1), { code: 'EBADF' })
})

t.test('forChild: a command reads our writes and we read its output on one socket', async t => {
  const ch = NativeChannel.forChild()
  const theirs = ch.childFd!
  const child = spawn('/bin/sh', ['-c', 'tr a-z A-Z'], { stdio: [theirs, theirs, 'inherit'] })
  ch.releaseChildFd()
  t.equal(ch.childFd, null)
  t.ok(ch.isSocket)
  t.equal(ch.fd, ch.writeFd, 'one socket both ways')
  const exited = new Promise(r => child.once('exit', r))
  const data = Buffer.alloc(3 << 20, 'q')
  const sent = ch.writev([data], ch.tryWritev([data], 0)).then(() => ch.endWrites())
  const got = await readN(ch, data.length + 1)
  await sent
  t.equal(got.length, data.length, 'everything, then the end when the command exits')
  t.ok(got.equals(Buffer.alloc(data.length, 'Q')))
  await exited
  ch.close()
})

t.test('FdChannel over a native socket pair: a stream both ways, lend, close under a waiting read', async t => {
  const { FdChannel } = await import('../../vmm/channel/fd-channel.js')
  const { MigStream } = await import('../../vmm/stream/stream.js')
  const [c, s] = await tcpPair(t)
  const a = new FdChannel('tcp', 'a', c)
  const b = new FdChannel('tcp', 'b', s)
  const payload = randomBytes(5 << 20)
  const w = new MigStream(a)
  w.putBe32(payload.length)
  w.putBufferAsync(payload)
  const flushed = w.flush()
  const r = new MigStream(b)
  t.equal(await r.getBe32(), payload.length)
  t.ok((await r.getBuffer(payload.length)).equals(payload), 'payload intact')
  await flushed
  t.equal(w.error, null)
  t.same(await b.quiesce(), [], 'nothing read ahead')
  const view = b.lend()
  await b.writev([Buffer.from('back')])
  t.equal((await a.read(Buffer.alloc(4), 0, 4)), 4)
  await a.writev([Buffer.from('lent')])
  t.equal(Buffer.from((await view)!).toString(), 'lent')
  const pending = b.read(Buffer.alloc(4), 0, 4)
  b.shutdown()
  await t.rejects(pending, { code: 'ECANCELED' })
  await b.close()
  await a.close()
  const [c2, s2] = await tcpPair(t)
  const x = new FdChannel('tcp', 'x', c2)
  const waiting = x.read(Buffer.alloc(4), 0, 4)
  await x.close()
  t.equal(await waiting, 0, 'closed under a waiting read: the end, not a failure')
  s2.close()
})
