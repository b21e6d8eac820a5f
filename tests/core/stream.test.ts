import t from 'tap'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { FakeClock } from '../../vmm/stream/clock.js'
import { RateLimiter } from '../../vmm/stream/rate-limit.js'

function pair(opts = {}) {
  const [a, b] = memoryPair()
  return { w: new MigStream(a, opts), r: new MigStream(b, opts), a, b }
}

t.test('primitives round trip', async t => {
  const { w, r, a } = pair()
  w.putU8(0xab)
  w.putBe16(0xbeef)
  w.putBe32(0xdeadbeef)
  w.putBe64(0x0123456789abcdefn)
  w.putBe64(-1n)
  w.putBe64n(2 ** 53 - 1)
  w.putCountedString('pc-q35-9.0')
  w.putBuffer(Buffer.from([1, 2, 3]))
  const big = Buffer.alloc(100000, 7)
  w.putBufferAsync(big)
  w.putU8(0x55)
  t.equal(w.pendingBytes, 1 + 2 + 4 + 8 + 8 + 8 + 11 + 3 + 100000 + 1)
  await w.flush()
  await a.endWrites()
  t.equal(w.bytesWritten, w.transferred)
  t.ok(await r.fill(1 + 2 + 4 + 8 + 8 + 8))
  t.equal(r.peekU8(), 0xab)
  t.equal(r.u8(), 0xab)
  t.equal(r.be16(), 0xbeef)
  t.equal(r.be32(), 0xdeadbeef)
  t.equal(r.be64(), 0x0123456789abcdefn)
  t.equal(r.be64(), 0xffffffffffffffffn)
  t.equal(r.be64n(), 2 ** 53 - 1)
  t.equal(await r.getCountedString(), 'pc-q35-9.0')
  t.same([...(await r.getBuffer(3))], [1, 2, 3])
  const got = await r.getBuffer(100000)
  t.ok(got.equals(big))
  t.equal(await r.getU8(), 0x55)
  t.equal(r.bytesRead, w.transferred)
  t.ok(await r.atEnd())
  t.equal(r.error, null)
})

t.test('async getters and skip', async t => {
  const { w, r, a } = pair()
  for (let i = 0; i < 5000; i++) w.putBe32(i)
  w.putBe16(7)
  w.putBe64(9n)
  w.putBe64n(12)
  await w.flush()
  await a.endWrites()
  t.ok(await r.skip(4 * 4999))
  t.equal(await r.getBe32(), 4999)
  t.equal(await r.getBe16(), 7)
  t.equal(await r.getBe64(), 9n)
  t.equal(await r.getBe64n(), 12)
  t.equal(await r.getU8(), 0, 'EOF gives 0')
  t.equal(r.error?.code, 'ENODATA')
  t.match(r.error?.message, /end of stream/)
})

t.test('sticky errors: first error wins and later calls are no-ops', async t => {
  const { w, r, a } = pair()
  w.putBe64n(-1)
  t.equal(w.error?.code, 'EINVAL')
  const first = w.error
  w.putCountedString('x'.repeat(300))
  t.equal(w.error, first)
  w.putU8(1)
  t.equal(w.pendingBytes, 0)
  await a.endWrites()
  t.equal(r.u8(), 0, 'sync get beyond filled data')
  t.equal(r.error?.code, 'EINVAL')
  t.equal(await r.getBe32(), 0)
  t.equal(r.error?.code, 'EINVAL', 'still the first error')
})

t.test('be64n rejects values above 2^53', async t => {
  const { w, r } = pair()
  w.putBe64(1n << 60n)
  await w.flush()
  t.equal(await r.getBe64n(), 0)
  t.equal(r.error?.code, 'EINVAL')
})

t.test('ENOBUFS when a writer never flushes', async t => {
  const [a] = memoryPair()
  const w = new MigStream(a, { maxPending: 1000 })
  w.putBufferAsync(Buffer.alloc(1001))
  t.equal(w.error?.code, 'ENOBUFS')
})

t.test('fill beyond the limit is EMSGSIZE', async t => {
  const { r } = pair()
  t.equal(await r.tryFill(64 << 20), 0)
  t.equal(r.error?.code, 'EMSGSIZE')
})

t.test('shutdown fails both ends', async t => {
  const { w, r } = pair()
  const p = r.getU8()
  w.shutdown('test over')
  t.equal(w.error?.code, 'ECANCELED')
  t.equal(await p, 0)
  t.equal(r.error?.code, 'ECANCELED')
  w.putU8(1)
  await w.flush()
  t.equal(await w.close(), w.error)
})

t.test('maybeFlush writes only past the threshold; peek and view', async t => {
  const { w, r } = pair()
  w.putBuffer(Buffer.alloc(1000))
  await w.maybeFlush()
  t.equal(w.bytesWritten, 0)
  w.putBufferAsync(Buffer.alloc(600 << 10))
  await w.maybeFlush()
  t.equal(w.bytesWritten, 1000 + (600 << 10))
  t.ok(await r.fill(10))
  t.equal(r.peek(2, 1).length, 2)
  t.equal(r.view(4).length, 4)
  t.equal(r.bytes(4).length, 4)
})

t.test('many small puts cross buffer boundaries', async t => {
  const { w, r, a } = pair()
  for (let i = 0; i < 100000; i++) {
    w.putU8(i & 0xff)
    if (i % 1000 === 0) w.putBufferAsync(Buffer.alloc(4096, i & 0xff))
    if (i % 10000 === 0) await w.flush()
  }
  await w.flush()
  await a.endWrites()
  for (let i = 0; i < 100000; i++) {
    if (r.available < 1) await r.fill(1)
    if (r.u8() !== (i & 0xff)) return t.fail(`byte ${i}`)
    if (i % 1000 === 0) {
      const b = await r.getBuffer(4096)
      if (b[4095] !== (i & 0xff)) return t.fail(`page ${i}`)
    }
  }
  t.ok(await r.atEnd())
})

t.test('rate limiter against a fake clock', async t => {
  const clock = new FakeClock()
  const rl = new RateLimiter(clock, 1_000_000)
  t.equal(rl.budget, 100_000)
  rl.account(50_000)
  t.notOk(rl.exceeded())
  rl.account(50_000)
  t.ok(rl.exceeded())
  t.equal(await rl.wait(), 100)
  t.notOk(rl.exceeded())
  // A burst of 1 MB at 1 MB/s costs one second of (fake) time.
  const start = clock.now()
  rl.account(1_000_000)
  await rl.wait()
  t.equal(clock.now() - start, 1000)
  rl.maxBandwidth = 0
  rl.account(1e12)
  t.notOk(rl.exceeded())
  t.equal(rl.budget, Infinity)
  t.throws(() => { rl.maxBandwidth = -1 }, RangeError)
  t.throws(() => new RateLimiter(clock, NaN), RangeError)
  t.equal(rl.total, 1e12 + 1_100_000)
})

t.test('a halted rate limiter has no budget, limited or not, and never waits', async t => {
  for (const bps of [0, 1_000_000]) {
    const clock = new FakeClock()
    const rl = new RateLimiter(clock, bps)
    t.notOk(rl.exceeded(), `${bps}: budget before`)
    rl.halt()
    t.ok(rl.exceeded(), `${bps}: none after halt()`)
    t.equal(rl.allowance(), 0)
    t.equal(await rl.wait(), 0, 'wait() returns at once')
    clock.advance(10_000)
    t.ok(rl.exceeded(), 'and no later window brings any back')
  }
})

t.test('stream throttle uses the injected clock', async t => {
  const clock = new FakeClock()
  const { w } = pair({ clock, maxBandwidth: 10_000 })
  w.putBufferAsync(Buffer.alloc(5000))
  t.ok(w.rateLimitExceeded())
  const slept = await w.throttle()
  t.equal(slept, 500)
  t.same(clock.sleeps, [100, 100, 100, 100, 100])
  t.notOk(w.rateLimitExceeded())
})
