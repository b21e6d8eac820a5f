// fdTransfer and DataFd transfers against real pipes, socket pairs and Node's
// own non-blocking sockets: both directions, partial lengths, EOF, EAGAIN.
import t from 'tap'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { native } from '../../vmm/native/addon.js'

type NativeError = Error & { code: string; errno: number; syscall: string }

function pipe(t: Tap.Test): [number, number] {
  const [r, w] = native.testingPipe()
  t.teardown(() => closeQuietly(r, w))
  return [r, w]
}

function socketPair(t: Tap.Test): [number, number] {
  const [a, b] = native.testingSocketPair()
  t.teardown(() => closeQuietly(a, b))
  return [a, b]
}

function closeQuietly(...fds: number[]) {
  for (const fd of fds) {
    try {
      fs.closeSync(fd)
    } catch {
      // already closed by the test
    }
  }
}

function readExactly(fd: number, n: number): Buffer {
  const out = Buffer.alloc(n)
  let got = 0
  while (got < n) {
    const r = fs.readSync(fd, out, got, n - got, null)
    if (r === 0) break
    got += r
  }
  return out.subarray(0, got)
}

// A connected pair of Node sockets over a unix socket; the server side does
// not read (pauseOnConnect), so the native code owns its reads.
async function nodeSockets(t: Tap.Test): Promise<{ client: net.Socket; server: net.Socket; clientFd: number; serverFd: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fdtransfer-'))
  const sockPath = path.join(dir, 's')
  const srv = net.createServer({ pauseOnConnect: true })
  await new Promise<void>(res => srv.listen(sockPath, res))
  const accepted = new Promise<net.Socket>(res => srv.once('connection', res))
  const client = net.connect(sockPath)
  await new Promise<void>(res => client.once('connect', () => res()))
  const server = await accepted
  t.teardown(() => {
    client.destroy()
    server.destroy()
    srv.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const fdOf = (s: net.Socket) => (s as unknown as { _handle: { fd: number } })._handle.fd
  return { client, server, clientFd: fdOf(client), serverFd: fdOf(server) }
}

t.test('pipe to socket pair and back, with splice', async t => {
  const [pr, pw] = pipe(t)
  const [a, b] = socketPair(t)
  const data = randomBytes(50000)
  fs.writeSync(pw, data)
  const s1 = await native.fdTransferStats(pr, a, data.length)
  t.same(s1, { bytes: data.length, path: 'splice', end: 'limit' })
  const [qr, qw] = pipe(t)
  const s2 = await native.fdTransferStats(b, qw, data.length)
  t.equal(s2.path, 'splice')
  t.equal(s2.bytes, data.length)
  t.ok(readExactly(qr, data.length).equals(data))
})

t.test('socket to socket goes through a private pipe', async t => {
  const [a, b] = socketPair(t)
  const [c, d] = socketPair(t)
  const data = randomBytes(100000)
  const [zr] = pipe(t)
  t.equal(await native.fdTransfer(zr, a, 0), 0, 'length 0 moves nothing')
  // Fill a->b from a pipe in the background while b->c moves it on.
  const [pr, pw] = pipe(t)
  const feed = native.fdTransfer(pr, a, data.length)
  const move = native.fdTransferStats(b, c, data.length)
  await new Promise<void>((res, rej) => fs.write(pw, data, err => (err ? rej(err) : res())))
  t.equal(await feed, data.length)
  const s = await move
  t.equal(s.path, 'pipe-splice')
  t.equal(s.bytes, data.length)
  const [qr, qw] = pipe(t)
  const out = native.fdTransfer(d, qw, data.length)
  const got = await new Promise<Buffer>((res, rej) => {
    const buf = Buffer.alloc(data.length)
    let off = 0
    const step = () =>
      fs.read(qr, buf, off, data.length - off, null, (err, n) => {
        if (err) return rej(err)
        off += n
        if (n === 0 || off === data.length) res(buf.subarray(0, off))
        else step()
      })
    step()
  })
  t.equal(await out, data.length)
  t.ok(got.equals(data))
})

t.test('partial lengths stop exactly, EOF stops early', async t => {
  const [pr, pw] = pipe(t)
  const [qr, qw] = pipe(t)
  fs.writeSync(pw, Buffer.from('abcdefghij'))
  t.equal(await native.fdTransfer(pr, qw, 4), 4)
  t.equal(readExactly(qr, 4).toString(), 'abcd')
  fs.closeSync(pw)
  const s = await native.fdTransferStats(pr, qw, 1000)
  t.same([s.bytes, s.end], [6, 'eof'])
  t.equal(readExactly(qr, 6).toString(), 'efghij')
  // Same with the read/write path and a tiny chunk size.
  const [r2, w2] = pipe(t)
  const [q2r, q2w] = pipe(t)
  fs.writeSync(w2, Buffer.from('0123456789'))
  fs.closeSync(w2)
  const rw = await native.fdTransferStats(r2, q2w, 7, { allowSplice: false, chunkSize: 3 })
  t.same(rw, { bytes: 7, path: 'read-write', end: 'limit' })
  const rest = await native.fdTransferStats(r2, q2w, 100, { allowSplice: false, chunkSize: 3 })
  t.same([rest.bytes, rest.end], [3, 'eof'])
  t.equal(readExactly(q2r, 10).toString(), '0123456789')
})

t.test('a file source goes through the private pipe', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fdtransfer-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'f')
  const data = randomBytes(3 << 20)
  fs.writeFileSync(file, data)
  const fd = fs.openSync(file, 'r')
  t.teardown(() => closeQuietly(fd))
  const { clientFd, server } = await nodeSockets(t)
  const received: Buffer[] = []
  let total = 0
  const done = new Promise<void>(res =>
    server.on('data', (c: Buffer) => {
      received.push(c)
      total += c.length
      if (total >= data.length) res()
    })
  )
  // The reader starts late, so the sender's socket fills and answers EAGAIN.
  const sending = native.fdTransferStats(fd, clientFd, data.length, { idleTimeoutMs: 10000 })
  setTimeout(() => server.resume(), 100)
  const s = await sending
  await done
  t.equal(s.path, 'pipe-splice')
  t.equal(s.bytes, data.length)
  t.ok(Buffer.concat(received).equals(data))
})

t.test('EAGAIN on a non-blocking Node socket source waits in the worker thread', async t => {
  const { client, serverFd } = await nodeSockets(t)
  const [qr, qw] = pipe(t)
  const data = randomBytes(200000)
  const moving = native.fdTransferStats(serverFd, qw, data.length, { idleTimeoutMs: 10000 })
  // Nothing to read yet: the transfer must be waiting, not failing.
  setTimeout(() => client.write(data), 50)
  const reader = new Promise<Buffer>((res, rej) => {
    const buf = Buffer.alloc(data.length)
    let off = 0
    const step = () =>
      fs.read(qr, buf, off, data.length - off, null, (err, n) => {
        if (err) return rej(err)
        off += n
        if (n === 0 || off === data.length) res(buf.subarray(0, off))
        else step()
      })
    step()
  })
  const s = await moving
  t.equal(s.bytes, data.length)
  t.equal(s.path, 'splice')
  t.ok((await reader).equals(data))
  // And the same wait on the read/write path.
  const rw = native.fdTransferStats(serverFd, qw, 1000, { allowSplice: false, idleTimeoutMs: 10000 })
  setTimeout(() => client.write(Buffer.alloc(1000, 7)), 50)
  t.same(await rw, { bytes: 1000, path: 'read-write', end: 'limit' })
  t.ok(readExactly(qr, 1000).equals(Buffer.alloc(1000, 7)))
})

t.test('an idle non-blocking source times out with ETIMEDOUT', async t => {
  const { serverFd } = await nodeSockets(t)
  const [, qw] = pipe(t)
  for (const allowSplice of [true, false]) {
    try {
      await native.fdTransfer(serverFd, qw, 10, { idleTimeoutMs: 30, allowSplice })
      t.fail('should time out')
    } catch (e) {
      const err = e as NativeError
      t.equal(err.code, 'ETIMEDOUT')
      t.equal(err.syscall, 'poll')
      t.match(err.message, /not ready within 30 ms/)
    }
  }
})

t.test('a broken destination reports EPIPE with the bytes moved so far', async t => {
  const [pr, pw] = pipe(t)
  const [qr, qw] = pipe(t)
  fs.writeSync(pw, Buffer.alloc(100, 1))
  fs.closeSync(qr)
  for (const allowSplice of [true, false]) {
    try {
      await native.fdTransfer(pr, qw, 10, { allowSplice })
      t.fail('should fail')
    } catch (e) {
      const err = e as NativeError
      t.equal(err.code, 'EPIPE')
      t.match(err.message, /after 0 bytes/)
      t.equal(err.syscall, allowSplice ? 'splice' : 'write')
    }
  }
})

t.test('DataFd over a pipe: read, write, poll, transfer, close', async t => {
  const [pr, pw] = pipe(t)
  const reader = native.DataFd.testingFromFd(pr)
  const writer = native.DataFd.testingFromFd(pw)
  t.ok(reader.fd !== null && reader.fd !== pr, 'owns a dup of the fd')
  // Only the DataFds hold the pipe now, so closing the writer means EOF.
  fs.closeSync(pr)
  fs.closeSync(pw)

  const idle = await reader.poll('in', 20)
  t.equal(idle.timedOut, true)
  t.equal((await writer.poll('out', 1000)).writable, true)
  t.equal(await writer.write(Buffer.from('hello world')), 11)
  t.equal((await reader.poll('in', 1000)).readable, true)
  const buf = Buffer.alloc(5)
  t.equal(await reader.read(buf), 5)
  t.equal(buf.toString(), 'hello')

  // The rest goes to a socket pair without passing through JavaScript.
  const [a, b] = socketPair(t)
  const s = await reader.transferTo(a, 6)
  t.same(s, { bytes: 6, path: 'splice', end: 'limit' })
  t.equal(readExactly(b, 6).toString(), ' world')

  // And back in from a socket.
  fs.writeSync(b, Buffer.from('resume-bytes'))
  const back = await writer.transferFrom(a, 12)
  t.equal(back.bytes, 12)
  const out = Buffer.alloc(12)
  t.equal(await reader.read(out), 12)
  t.equal(out.toString(), 'resume-bytes')

  // PRECOPY_INFO on something that is not a data fd: the kernel says ENOTTY.
  try {
    await reader.precopyInfo()
    t.fail('pipe has no precopy info')
  } catch (e) {
    t.equal((e as NativeError).code, 'ENOTTY')
    t.equal((e as NativeError).syscall, 'VFIO_MIG_GET_PRECOPY_INFO')
  }

  await writer.close()
  t.equal(writer.fd, null)
  t.equal(await reader.read(Buffer.alloc(4)), 0, 'EOF after the writer closed')
  const ts = await reader.transferTo(a)
  t.same([ts.bytes, ts.end], [0, 'eof'])
  try {
    await writer.write(Buffer.from('x'))
    t.fail('closed')
  } catch (e) {
    t.equal((e as NativeError).code, 'EBADF')
    t.match((e as NativeError).message, /closed/)
  }
  await writer.close() // twice is fine
  await reader.close()
  try {
    await reader.poll('in', 1)
    t.fail('closed')
  } catch (e) {
    t.equal((e as NativeError).code, 'EBADF')
  }
})

t.test('DataFd argument validation', async t => {
  t.throws(() => native.DataFd.testingFromFd(-1), { code: 'EBADF' })
  const [pr] = pipe(t)
  const d = native.DataFd.testingFromFd(pr)
  t.teardown(() => d.close())
  await t.rejects(d.poll('sideways' as 'in', 1), { code: 'EINVAL' })
  await t.rejects(d.transferTo(-1, 10), { code: 'EBADF' })
  await t.rejects(d.transferTo(100000, 10), { code: 'EBADF' })
  await t.rejects(d.transferFrom(pr, -10), { code: 'EINVAL' })
  await t.rejects(d.transferTo(pr, 10, { chunkSize: 1 << 30 }), { code: 'EINVAL' })
})
