// The trace points on `vmm-migration:vfio`: every step of a migration shows,
// each block of device data once, and the byte counts add up to the stats.
import t from 'tap'
import diagnostics_channel from 'node:diagnostics_channel'
import { VFIO_TRACE_CHANNEL, type VfioTraceEvent } from '../../vmm/vfio/trace.js'
import { native } from '../../vmm/native/addon.js'
import type { PumpFramesResult } from '../../native/index.js'
import { makeSide, migrate } from './harness.js'

function record(): { events: VfioTraceEvent[]; stop: () => void } {
  const events: VfioTraceEvent[] = []
  const fn = (m: unknown) => { events.push(m as VfioTraceEvent) }
  diagnostics_channel.subscribe(VFIO_TRACE_CHANNEL, fn)
  return { events, stop: () => diagnostics_channel.unsubscribe(VFIO_TRACE_CHANNEL, fn) }
}

const of = <K extends VfioTraceEvent['event']>(ev: VfioTraceEvent[], k: K, device?: string) =>
  ev.filter((e): e is Extract<VfioTraceEvent, { event: K }> => e.event === k && (device === undefined || ('device' in e && e.device === device)))

t.test('a pre-copy migration traces every step, block by block', async t => {
  const size = (6 << 20) + 99
  const src = await makeSide('source', [{ flags: 5, stateSize: size, seed: 41 }])
  const dst = await makeSide('dest', [{ flags: 5, stateSize: size, seed: 42 }])
  const rec = record()
  let r
  try {
    r = await migrate(src, dst)
  } finally {
    rec.stop()
  }
  t.ok(r.ok, r.error?.message ?? 'migrated')
  const ev = rec.events
  const moves = of(ev, 'set-state', 'source0').map(e => `${e.from}->${e.to}`)
  t.same(moves.slice(0, 2), ['RUNNING->PRE_COPY', 'PRE_COPY->STOP_COPY'], `source moves: ${moves.join(' ')}`)
  t.ok(of(ev, 'set-state', 'source0').every(e => e.ok && typeof e.recover === 'string'), 'each move names its recover state')
  t.ok(of(ev, 'set-state', 'dest0').some(e => e.to === 'RESUMING'), 'destination enters RESUMING')
  t.equal(of(ev, 'save-setup', 'source0').length, 1)
  const iters = of(ev, 'save-iterate', 'source0')
  t.ok(iters.length >= 1 && iters.every(e => e.initialBytes >= 0 && e.dirtyBytes >= 0), `${iters.length} iterations with initial and dirty bytes`)
  const blocks = of(ev, 'save-block', 'source0')
  t.ok(blocks.length >= Math.ceil(size / (1 << 20)), `${blocks.length} block events for ${size} bytes`)
  t.ok(blocks.every(b => b.size > 0 && b.size <= 1 << 20), 'each block event is one block of at most 1 MiB')
  const s = src.set.stats()['source0']
  t.equal(blocks.reduce((n, b) => n + b.size, 0), s.bytesSaved, 'block sizes add up to the bytes saved')
  t.equal(of(ev, 'save-complete', 'source0').length, 1)
  t.ok(of(ev, 'save-cleanup', 'source0').length >= 1)
  t.ok(of(ev, 'pending', 'source0').length >= 1)
  const tags = new Set(of(ev, 'load-tag', 'dest0').map(e => e.tag))
  for (const tag of ['DEV_SETUP_STATE', 'DEV_DATA_STATE', 'END_OF_STATE']) t.ok(tags.has(tag), `load tag ${tag}`)
  const loads = of(ev, 'load-data', 'dest0')
  t.ok(loads.length >= blocks.length, `${loads.length} load events, one per frame`)
  t.equal(loads.reduce((n, b) => n + b.size, 0), dst.set.stats()['dest0'].bytesLoaded, 'load sizes add up to the bytes loaded')
  t.equal(dst.set.stats()['dest0'].bytesLoaded, s.bytesSaved)
  t.ok(of(ev, 'load-cleanup', 'dest0').length >= 1)
})

t.test('without a listener the native path moves the whole stop-copy state in one call', async t => {
  t.notOk(diagnostics_channel.channel(VFIO_TRACE_CHANNEL).hasSubscribers)
  const proto = native.DataFd.prototype as unknown as { pumpFrames: (...a: unknown[]) => Promise<PumpFramesResult> }
  const real = proto.pumpFrames
  const calls: PumpFramesResult[] = []
  proto.pumpFrames = async function (this: unknown, ...a: unknown[]) {
    const r = await real.apply(this, a)
    calls.push(r)
    return r
  }
  t.teardown(() => { proto.pumpFrames = real })
  const run = async (listen: boolean) => {
    calls.length = 0
    const src = await makeSide('source', [{ flags: 1, stateSize: 3 << 20, seed: 43 }])
    const dst = await makeSide('dest', [{ flags: 1, stateSize: 3 << 20, seed: 44 }])
    const rec = listen ? record() : null
    try {
      const r = await migrate(src, dst)
      t.ok(r.ok, r.error?.message ?? 'migrated')
      t.equal(await dst.emus[0].digest(), r.sourceDigests[0])
    } finally {
      rec?.stop()
    }
    return calls.filter(c => c.bytes > 0).length
  }
  t.equal(await run(false), 1, 'one call, until the end of the state')
  t.ok(await run(true) >= 3, 'with a listener, a call per block')
})
