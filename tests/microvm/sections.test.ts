// The cpu section's bounds and kind check, the timer's vmstate, and the
// throttle's effect on the guest.
import t from 'tap'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { createVcpu } from '../../vmm/machine/index.js'
import { cpuSectionHandlers, stateKind, MAX_CPU_STATE, TimerDevice, VcpuRunner } from '../../vmm/microvm/index.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function pair(): Promise<[MigStream, MigStream]> {
  const [a, b] = memoryPair()
  return [new MigStream(a), new MigStream(b)]
}

t.test('cpu section round trip, oversized length and wrong kind', async (t) => {
  const v = await createVcpu(4 << 20, { kind: 'soft' })
  const w = await createVcpu(4 << 20, { kind: 'soft' })
  t.teardown(async () => {
    await v.destroy()
    await w.destroy()
  })
  await v.start()
  await sleep(50)
  await v.quiesce()
  const [out, inp] = await pair()
  await cpuSectionHandlers(v).saveState!(out)
  await out.flush()
  await cpuSectionHandlers(w).loadState!(inp, { sectionId: 0, versionId: 1, approveSwitchover: () => undefined })
  t.same(Buffer.from((await w.getState()).bytes), Buffer.from((await v.getState()).bytes), 'state arrives byte for byte')
  t.equal(stateKind((await v.getState()).bytes), 'soft')

  const [o2, i2] = await pair()
  o2.putBe32(MAX_CPU_STATE + 1)
  await o2.flush()
  await t.rejects(cpuSectionHandlers(w).loadState!(i2, { sectionId: 0, versionId: 1, approveSwitchover: () => undefined }), /exceeds/)

  const [o3, i3] = await pair()
  const fake = Buffer.alloc(64)
  fake.write('KVMVCPU1', 'latin1')
  o3.putBe32(fake.length)
  o3.putBuffer(fake)
  await o3.flush()
  await t.rejects(cpuSectionHandlers(w).loadState!(i3, { sectionId: 0, versionId: 1, approveSwitchover: () => undefined }), /kvm vCPU but this VM runs a soft/)

  const [o4, i4] = await pair()
  o4.putBe32(16)
  o4.putBuffer(Buffer.alloc(16, 0x41))
  await o4.flush()
  await t.rejects(cpuSectionHandlers(w).loadState!(i4, { sectionId: 0, versionId: 1, approveSwitchover: () => undefined }), /unknown magic/)
})

t.test('timer ticks only while running; alarm fires once', async (t) => {
  let now = 0
  const tm = new TimerDevice({ periodUs: 1000, alarmInTicks: 5 }, () => now)
  now = 100
  t.equal(tm.ticks(), 0n, 'not running yet')
  tm.start()
  now = 103.5
  t.equal(tm.ticks(), 3n)
  tm.stop()
  now = 500
  t.equal(tm.ticks(), 3n, 'stopped')
  tm.start()
  now = 503
  t.equal(tm.ticks(), 6n, 'carry of half a tick kept across the stop')
  t.equal(tm.regs.alarmAt, 0n, 'alarm disarmed after firing')
  t.equal(tm.regs.scratch[1], 1, 'alarm counted')
  t.throws(() => new TimerDevice({ periodUs: 0 }), /periodUs/)
})

t.test('throttle: bounds, and duty-cycling lowers the guest rate', async (t) => {
  const v = await createVcpu(4 << 20, { kind: 'soft', params: { regionPages: 64, pagesPerIter: 4 } })
  t.teardown(() => v.destroy())
  const r = new VcpuRunner(v)
  t.throws(() => r.setThrottle(100), /outside/)
  t.throws(() => r.setThrottle(-1), /outside/)
  t.throws(() => r.setThrottle(Number.NaN), /outside/)
  await r.vmStart()
  await sleep(100)
  const rate = async (ms: number) => {
    const c0 = v.counter()
    await sleep(ms)
    return Number(v.counter() - c0) / ms
  }
  // Alternate so load from other processes hits both alike.
  let free = 0
  let slowed = 0
  for (let i = 0; i < 2; i++) {
    r.setThrottle(0)
    await sleep(30)
    free += await rate(300)
    r.setThrottle(90)
    await sleep(30)
    slowed += await rate(300)
  }
  t.ok(slowed < free * 0.6, `90% throttle: ${slowed.toFixed(0)} vs ${free.toFixed(0)} iterations/ms`)
  t.ok(r.stats().pausedMs > 0)
  t.equal(r.percent, 90)
  await r.vmStop()
  t.notOk(v.running, 'stopped even while throttled')
})
