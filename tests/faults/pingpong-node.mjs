// One side of the fault lab's ping-pong (docs/faults.md): a long-lived
// process that migrates one microVM back and forth with its peer, through the
// library as built (dist/), each migration into a fresh VM in the same
// process. After every round trip it prints what it holds: fds, threads,
// RSS. A leak per migration shows as a slope over 50 round trips.
//
//   node pingpong-node.mjs A|B SELF_ADDR PEER_ADDR ROUND_TRIPS
//
// A starts with the running guest. Output: JSON lines on stdout.
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '../..')
const { MicroVm } = await import(join(root, 'dist/vmm/microvm/index.js'))
const { OutgoingMigration, IncomingMigration } = await import(join(root, 'dist/vmm/migration/index.js'))
const { connect, listen } = await import(join(root, 'dist/vmm/channel/index.js'))

const [role, self, peer, tripsArg] = process.argv.slice(2)
const trips = Number(tripsArg)
const PORT = 4444
const RAM = 32 << 20
const parameters = { linkTimeoutMs: 5000, handoverTimeoutMs: 10_000, maxBandwidth: 0 }
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`)

function sample() {
  const status = readFileSync('/proc/self/status', 'utf8')
  const field = (name) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1])
  const m = process.memoryUsage()
  return { fds: readdirSync('/proc/self/fd').length, threads: field('Threads'), rss: field('VmRSS') * 1024, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers }
}

const create = (r) => MicroVm.create({
  role: r, ramSize: RAM, vcpu: 'soft', workingSet: 2 << 20,
  vfio: { stateSize: 1 << 20, dirtyRate: 1 << 20 }, dmaPagesPerSec: 100, verifyBeforeStart: r === 'dest',
})

/** The peer listens from its start, but may not have started yet: retry, bounded. */
async function connectPeer() {
  const deadline = Date.now() + 20_000
  for (;;) {
    try {
      return await connect(`tcp:${peer}:${PORT}`)
    } catch (e) {
      if (e.code !== 'ECONNREFUSED' || Date.now() > deadline) throw e
      await new Promise((r) => setTimeout(r, 50))
    }
  }
}

const listener = await listen(`tcp:${self}:${PORT}`)
out({ event: 'listening' })
let vm = role === 'A' ? await create('source') : undefined
try {
  for (let i = 0; i < 2 * trips; i++) {
    const sending = (i % 2 === 0) === (role === 'A')
    if (sending) {
      // Let the guest run a little on this side before it leaves again.
      await new Promise((r) => setTimeout(r, 50))
      const stats = await new OutgoingMigration(vm, { parameters }).start(await connectPeer())
      const v = await vm.verify()
      out({ event: 'sent', i, ramDigest: v.ramDigest, deviceDigest: v.deviceDigest, counter: v.counter, downtime: stats.downtime })
      await vm.destroy()
      vm = undefined
    } else {
      vm = await create('dest')
      await new IncomingMigration(vm, { parameters }).start(listener)
      const v = await vm.verificationBeforeStart()
      out({ event: 'received', i, ramDigest: v.ramDigest, deviceDigest: v.deviceDigest, counter: v.counter, running: vm.vm.state === 'running' })
    }
    // Once per round trip, at the same point of it on each side.
    if (i % 2 === 1) {
      // What the process holds, not what it is still tearing down: a
      // terminated vCPU worker's thread and its shared guest RAM go a little
      // after destroy() returns, and V8 frees a collected buffer's memory
      // later still, off the main thread. So: the least of a few samples,
      // each after a full collection. A leak is in every one of them.
      await new Promise((r) => setTimeout(r, 200))
      let least
      for (let k = 0; k < 5; k++) {
        globalThis.gc?.()
        await new Promise((r) => setTimeout(r, 100))
        const s = sample()
        least = least === undefined ? s : Object.fromEntries(Object.entries(s).map(([key, v]) => [key, Math.min(v, least[key])]))
      }
      out({ event: 'sample', trip: (i - 1) / 2, ...least })
    }
  }
} finally {
  await vm?.destroy()
  await listener.close()
}
out({ event: 'done' })
