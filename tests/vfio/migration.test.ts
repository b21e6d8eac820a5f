import t from 'tap'
import { makeSide, migrate } from './harness.js'

const FLAG_SETS = [
  { flags: 1, label: 'STOP_COPY' },
  { flags: 3, label: 'STOP_COPY|P2P' },
  { flags: 5, label: 'STOP_COPY|PRE_COPY' },
  { flags: 7, label: 'STOP_COPY|P2P|PRE_COPY' },
]

for (const { flags, label } of FLAG_SETS) {
  for (const stateSize of [0, 1, 4095, (1 << 20) + 3, 32 << 20]) {
    t.test(`${label}: ${stateSize} bytes arrive byte-exact`, async t => {
      const src = await makeSide('source', [{ flags, stateSize, seed: 7 }])
      const dst = await makeSide('dest', [{ flags, stateSize, seed: 99 }])
      const before = await src.emus[0].digest()
      if (stateSize > 0) t.not(before, await dst.emus[0].digest(), 'the two devices start different')
      const r = await migrate(src, dst)
      t.ok(r.ok, r.error?.message ?? 'migrated')
      t.equal(r.sourceDigests[0], before, 'nothing dirtied: state as it was')
      t.equal(await dst.emus[0].digest(), r.sourceDigests[0], 'destination holds the source state')
      t.equal(dst.emus[0].state, 'RUNNING')
      t.equal(dst.vm.state, 'running')
      t.equal(src.emus[0].state, 'STOP', 'source device released after cleanup')
      t.equal(src.vm.state, 'postmigrate')
      const s = src.set.stats()['source0']
      t.ok(s.bytesSaved >= stateSize, 'bytes counted')
      if (flags & 4) t.ok(s.precopyBytes > 0, 'pre-copy moved data while running')
      else t.equal(s.precopyBytes, 0)
    })
  }
}

t.test('pre-copy with a device that keeps dirtying converges on the threshold and stays exact', async t => {
  const src = await makeSide('source', [{ flags: 7, stateSize: 8 << 20, regionSize: 65536, dirtyRate: 4 << 20 }])
  const dst = await makeSide('dest', [{ flags: 7, stateSize: 8 << 20, regionSize: 65536 }])
  const r = await migrate(src, dst, { threshold: 1 << 20, maxRounds: 200 })
  t.ok(r.ok, r.error?.message)
  t.ok(r.rounds >= 1)
  t.equal(await dst.emus[0].digest(), r.sourceDigests[0])
  const s = src.set.stats()['source0']
  t.ok(s.precopyBytes >= 8 << 20, 'the initial state went in pre-copy')
})

t.test('switchover-ack: the destination acks after the initial data', async t => {
  const src = await makeSide('source', [{ flags: 7, stateSize: 2 << 20 }], true)
  const dst = await makeSide('dest', [{ flags: 7, stateSize: 2 << 20 }], true)
  const r = await migrate(src, dst)
  t.ok(r.ok, r.error?.message)
  t.ok(r.acked, 'switchover acked')
  t.equal(await dst.emus[0].digest(), r.sourceDigests[0])
})

t.test('INIT_DATA_SENT without switchover-ack on the destination is refused', async t => {
  const src = await makeSide('source', [{ flags: 7, stateSize: 1 << 16 }], true)
  const dst = await makeSide('dest', [{ flags: 7, stateSize: 1 << 16 }], false)
  const before = await src.emus[0].digest()
  const r = await migrate(src, dst)
  t.notOk(r.ok)
  t.match(r.loadError?.message ?? r.error?.message, /switchover|INIT_DATA_SENT|failed/)
  t.equal(src.vm.state, 'running')
  t.equal(src.emus[0].state, 'RUNNING')
  t.equal(await src.emus[0].digest(), before, 'source state kept')
  t.equal(dst.emus[0].state, 'RUNNING', 'destination left RESUMING by reset')
})

t.test('two devices with P2P migrate together; prepare pass quiesces both first', async t => {
  const src = await makeSide('source', [{ flags: 7, stateSize: 1 << 20, seed: 1 }, { flags: 3, stateSize: 3 << 20, seed: 2 }])
  const dst = await makeSide('dest', [{ flags: 7, stateSize: 1 << 20 }, { flags: 3, stateSize: 3 << 20 }])
  const seen: string[] = []
  for (const d of src.devs) d.on('state-change', e => seen.push(`${e.device}:${e.to}`))
  const r = await migrate(src, dst)
  t.ok(r.ok, r.error?.message)
  t.equal(await dst.emus[0].digest(), r.sourceDigests[0])
  t.equal(await dst.emus[1].digest(), r.sourceDigests[1])
  const p2p = seen.filter(s => s.endsWith('_P2P'))
  const firstStop = seen.findIndex(s => s.endsWith(':STOP_COPY') || s.endsWith(':STOP'))
  t.equal(p2p.length, 2, 'both devices entered a P2P state')
  t.ok(seen.indexOf(p2p[1]) < firstStop, 'both quiesced before either stopped')
})

t.test('two devices without P2P are blocked with a clear reason, and nothing changes', async t => {
  const src = await makeSide('source', [{ flags: 5, stateSize: 1 << 16 }, { flags: 7, stateSize: 1 << 16 }])
  const dst = await makeSide('dest', [{ flags: 5, stateSize: 1 << 16 }, { flags: 7, stateSize: 1 << 16 }])
  t.match(src.set.blockers().join(), /P2P.*source0/)
  const r = await migrate(src, dst)
  t.notOk(r.ok)
  t.match(r.error?.message, /needs P2P support on all of them; lacking: source0/)
  t.equal(src.emus[0].state, 'RUNNING')
  t.equal(src.emus[1].state, 'RUNNING')
  t.equal(src.vm.state, 'running')
})

t.test('a device without migration support is a blocker, not a crash', async t => {
  const { realizeVfioMigration } = await import('../../vmm/vfio/device-migration.js')
  const fake = {
    name: 'nomig', migrationFlags: async () => { throw Object.assign(new Error('ENOTTY'), { code: 'ENOTTY' }) },
    probe: async () => false,
  }
  const dev = await realizeVfioMigration(fake as never)
  t.match(dev.blocker, /migration v2 is not supported/)
})
