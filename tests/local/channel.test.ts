// File descriptor passing (SCM_RIGHTS) on a unix: channel, as a local
// migration uses it: descriptors go with bytes, in order with the writes
// around them, wait on the receiving channel for whoever claims them, and
// every one nobody asked for (or past the bound) fails the read and is
// closed. No descriptor may outlive its channel: /proc/self/fd is counted.
import t from 'tap'
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect, listen } from '../../vmm/channel/connect.js'
import type { Channel } from '../../vmm/channel/types.js'
import { fdsSettle, steadyFds } from './gate.js'

const dir = mkdtempSync(join(tmpdir(), 'vmm-local-ch-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

let n = 0
/** A connected pair of unix: channels: [accepted, connected]. */
async function pair(): Promise<[Channel, Channel]> {
  const l = await listen(`unix:${join(dir, `s${n++}.sock`)}`)
  const [a, b] = await Promise.all([l.accept(), connect(l.address)])
  await l.close()
  return [a, b]
}

/** Files to pass, each with its own content. */
function files(k: number): number[] {
  return Array.from({ length: k }, (_, i) => {
    const p = join(dir, `f${n}-${i}`)
    writeFileSync(p, `file ${i}`)
    return openSync(p, 'r')
  })
}

async function readN(c: Channel, len: number): Promise<Buffer> {
  const b = Buffer.alloc(len)
  let got = 0
  while (got < len) {
    const r = await c.read(b, got, len - got)
    if (r === 0) throw new Error(`end of stream after ${got} bytes`)
    got += r
  }
  return b
}

t.test('descriptors go with their bytes, in order, and wait for their taker', async (t) => {
  const base = await steadyFds()
  const [a, b] = await pair()
  const fds = files(2)
  a.acceptFds!(2)
  t.equal(a.queuedFds, 0)
  const w = [b.writev([Buffer.from('before|')]), b.sendFds!(fds, Buffer.from('record|')), b.writev([Buffer.from('after')])]
  await Promise.all(w)
  t.equal((await readN(a, 19)).toString(), 'before|record|after', 'the bytes arrive in write order')
  t.equal(a.queuedFds, 2)
  t.throws(() => a.takeFds!(3), { code: 'EPROTO', message: /expected 3 passed file descriptor\(s\), 2 arrived/ })
  const got = a.takeFds!(2)
  t.equal(a.queuedFds, 0, 'taken')
  for (let i = 0; i < 2; i++) t.equal(fstatSync(got[i]!).ino, fstatSync(fds[i]!).ino, `descriptor ${i} is the same file`)
  for (const fd of [...got, ...fds]) closeSync(fd)
  await a.close()
  await b.close()
  t.equal(await fdsSettle(base), base, 'no descriptor left open')
})

t.test('descriptors nobody asked for fail the read, clearly, and are closed', async (t) => {
  const base = await steadyFds()
  const [a, b] = await pair()
  const fds = files(3)
  await b.sendFds!(fds, Buffer.from('x'))
  // The bytes that came with them are the stream's; the next read fails.
  t.equal(await a.read(Buffer.alloc(8), 0, 8), 1, 'the byte sent with them is delivered')
  await t.rejects(a.read(Buffer.alloc(8), 0, 8), { code: 'EPROTO', message: /passed 3 file descriptor\(s\) unasked; closed them/ })
  await t.rejects(a.read(Buffer.alloc(8), 0, 8), { code: 'EPROTO' }, 'the channel stays failed')
  for (const fd of fds) closeSync(fd)
  await a.close()
  await b.close()
  t.equal(await fdsSettle(base), base, 'the passed copies were closed')
})

t.test('more descriptors than accepted fail the read and all are closed', async (t) => {
  const base = await steadyFds()
  const [a, b] = await pair()
  const fds = files(3)
  a.acceptFds!(2)
  await b.sendFds!(fds.slice(0, 1), Buffer.from('a'))
  await b.sendFds!(fds.slice(1), Buffer.from('b'))
  const buf = Buffer.alloc(4)
  // The first message is within the budget; the kernel ends a read after a message with descriptors.
  t.equal(await a.read(buf, 0, 4), 1)
  t.equal(await a.read(buf, 0, 4), 1, 'the byte sent with the refused ones is delivered')
  await t.rejects(a.read(buf, 0, 4), { code: 'EPROTO', message: /passed 2 file descriptor\(s\), 1 more were expected; closed them/ })
  t.equal(a.queuedFds, 0, 'the one queued before was closed too')
  for (const fd of fds) closeSync(fd)
  await a.close()
  await b.close()
  t.equal(await fdsSettle(base), base)
})

t.test('dropFds closes what was not taken; close() does too', async (t) => {
  const base = await steadyFds()
  const [a, b] = await pair()
  const fds = files(2)
  a.acceptFds!(2)
  await b.sendFds!(fds.slice(0, 1), Buffer.from('a'))
  await readN(a, 1)
  t.equal(a.queuedFds, 1)
  a.dropFds!()
  t.equal(a.queuedFds, 0)
  await b.sendFds!(fds.slice(1), Buffer.from('b'))
  await readN(a, 1)
  await t.rejects(readN(a, 1), { code: 'EPROTO', message: /unasked/ }, 'accepts no more after dropFds')
  const [c, d] = await pair()
  c.acceptFds!(1)
  await d.sendFds!(fds.slice(0, 1), Buffer.from('c'))
  await readN(c, 1)
  t.equal(c.queuedFds, 1)
  for (const ch of [a, b, c, d]) await ch.close()
  t.equal(c.queuedFds, 0, 'a closed channel holds none')
  for (const fd of fds) closeSync(fd)
  t.equal(await fdsSettle(base), base, 'closing the channel closed the queued descriptor')
})

t.test('bad arguments and channels that cannot pass descriptors', async (t) => {
  const [a, b] = await pair()
  t.throws(() => a.acceptFds!(17), { message: /at most 16 descriptors may be passed, asked for 17/ })
  const fds = files(1)
  await t.rejects(b.sendFds!([], Buffer.from('x')), { message: /1\.\.16 descriptor numbers/ })
  await t.rejects(b.sendFds!(Array(17).fill(fds[0]), Buffer.from('x')), { message: /1\.\.16 descriptor numbers/ })
  await t.rejects(b.sendFds!(fds, Buffer.alloc(0)), { message: /at least one byte/ })
  await a.close()
  await b.close()
  await t.rejects(b.sendFds!(fds, Buffer.from('x')), { code: 'EPIPE' }, 'after close')
  const l = await listen('tcp:127.0.0.1:0')
  const [x, y] = await Promise.all([l.accept(), connect(l.address)])
  await l.close()
  t.throws(() => x.acceptFds!(1), { code: 'ENOTSUP', message: /only a unix: channel passes file descriptors/ })
  await t.rejects(y.sendFds!(fds, Buffer.from('x')), { code: 'ENOTSUP', message: /only a unix: channel/ })
  await x.close()
  await y.close()
  closeSync(fds[0]!)
})
