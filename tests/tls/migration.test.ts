// A whole microVM (RAM, vCPU, timer, emulated VFIO device) migrated over TLS
// 1.3 with mutual x509 auth arrives intact, and nothing of it crosses the wire
// in the clear: a relay between the two sides records every byte, and the
// same relay on a plaintext migration sees the stream (so the check can fail).
import t, { type Test } from 'tap'
import { MicroVm } from '../../vmm/microvm/index.js'
import { migrate, incoming, IncomingMigration } from '../../vmm/migration/index.js'
import { listen, connect } from '../../vmm/channel/connect.js'
import { loadTlsCreds } from '../../vmm/channel/tls.js'
import type { FdChannel } from '../../vmm/channel/fd-channel.js'
import { creds, noOpenssl, relay, portOf, until, vms } from './helpers.js'
import { existsSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

t.setTimeout(180_000)
const skip = noOpenssl()
const QEVM = Buffer.from('QEVM')

async function pair() {
  const opts = { ramSize: 16 << 20, vcpu: 'soft' as const, workingSet: 1 << 20, vfio: { stateSize: 1 << 20, dirtyRate: 256 << 10 } }
  const src = await MicroVm.create({ role: 'source', ...opts })
  const dst = await MicroVm.create({ role: 'dest', ...opts, verifyBeforeStart: true })
  return { src, dst }
}

/** Migrates a microVM through a recording relay over TLS. */
async function run(t: Test, dir: string) {
  const { src, dst } = await pair()
  t.teardown(async () => { await src.destroy(); await dst.destroy() })
  await until('the guest to run', () => src.vcpuCounter() > 100n)
  let address = ''
  const tlsParams = { tlsCreds: dir }
  const inc = incoming(dst, 'tcp:127.0.0.1:0', { parameters: tlsParams, onListening: (a) => { address = a } })
  await until('listening', () => address !== '')
  const r = await relay(portOf(address))
  t.teardown(() => r.close())
  // The relay's address is 127.0.0.1 too: the certificate's IP SAN matches.
  const stats = await migrate(src, `tcp:127.0.0.1:${r.port}`, { parameters: { maxBandwidth: 0, ...tlsParams } })
  t.comment('source done')
  const res = await inc
  t.comment('destination done')
  t.equal(stats.status, 'completed')
  t.equal(res.status, 'completed')
  const s = await src.verify()
  const d = (await dst.verificationBeforeStart())!
  t.equal(d.ramDigest, s.ramDigest, 'RAM digest')
  t.equal(d.deviceDigest, s.deviceDigest, 'device digest')
  t.equal(d.counter, s.counter, 'vCPU counter')
  t.same(d.timer, s.timer, 'timer state')
  t.ok(s.checksumConsistent && d.checksumConsistent, 'guest checksum')
  await until('the destination guest to run', () => dst.vcpuCounter() > BigInt(d.counter))
  t.equal(r.up.length, 1, 'one connection')
  return { up: Buffer.concat(r.up[0]!), down: Buffer.concat(r.down[0]!), stats }
}

t.test('a microVM over TLS arrives intact, and the wire carries only TLS records', { skip }, async (t) => {
  const dir = await creds()
  const { up, down, stats } = await run(t, dir)
  t.ok(up.length > 2 << 20, `the guest's RAM went through the relay (${up.length} bytes)`)
  t.same([up[0], up[1]], [0x16, 0x03], 'the source begins with a TLS handshake record')
  t.same([down[0], down[1]], [0x16, 0x03], 'the destination answers with one')
  t.equal(up.indexOf(QEVM), -1, 'no stream header in the clear')
  t.equal(up.indexOf(Buffer.from('microvm-1')), -1, 'no machine type in the clear')
  t.equal(up.indexOf(Buffer.from('0000:00:01.0')), -1, 'no device name in the clear')
  t.ok(stats.totalTime! > 0)
})

t.test('the same relay sees a plaintext migration in the clear, and the same one over TLS not', { skip }, async (t) => {
  const dir = await creds()
  for (const tls of [false, true]) {
    const { src, dst } = await vms()
    let address = ''
    const params = tls ? { tlsCreds: dir } : {}
    const inc = incoming(dst, 'tcp:127.0.0.1:0', { parameters: params, onListening: (a) => { address = a } })
    await until('listening', () => address !== '')
    const r = await relay(portOf(address))
    t.equal((await migrate(src, `tcp:127.0.0.1:${r.port}`, { parameters: params })).status, 'completed')
    await inc
    await r.close()
    const up = Buffer.concat(r.up[0]!)
    const machine = up.indexOf(Buffer.from('tls-test-machine'))
    if (tls) {
      t.equal(up.indexOf(QEVM), -1, 'TLS: no stream header in the clear')
      t.equal(machine, -1, 'TLS: no machine type in the clear')
    } else {
      t.equal(up.indexOf(QEVM), 0, 'plaintext: the stream header is the first thing on the wire')
      t.not(machine, -1, 'plaintext: the machine type is readable')
    }
  }
})

t.test('over a unix socket: tls-hostname names the certificate, tls-authz matches the DN as typed', { skip }, async (t) => {
  const dir = await creds()
  const { src, dst } = await vms()
  const path = join(mkdtempSync(join(tmpdir(), 'tls-unix-')), 's')
  const inc = new IncomingMigration(dst, { parameters: { tlsCreds: dir, tlsAuthz: ['cn = source, o=vmm-migration'] } })
  const done = inc.start(`unix:${path}`)
  await until('listening', () => existsSync(path))
  await t.rejects(migrate(src, `unix:${path}`, { parameters: { tlsCreds: dir } }), { message: /tls-hostname/ }, 'a unix: URI has no host to verify')
  t.equal(src.vm.state, 'running')
  // The refused attempt never connected: the destination still waits.
  const stats = await migrate(src, `unix:${path}`, { parameters: { tlsCreds: dir, tlsHostname: 'localhost' } })
  t.equal(stats.status, 'completed')
  t.equal((await done).status, 'completed')
})

t.test('channels: connect and listen with TLS report what was negotiated and hide the fd', { skip }, async (t) => {
  const dir = await creds()
  const server = await loadTlsCreds(dir, 'server')
  const client = await loadTlsCreds(dir, 'client')
  t.equal(server.endpoint, 'server')
  t.equal(client.dir, dir)
  const l = await listen('tcp:127.0.0.1:0', { tls: { creds: server } })
  t.teardown(() => l.close())
  t.equal(l.tls, true)
  const accepted = l.accept()
  const c = await connect(l.address, { tls: { creds: client } }) as FdChannel
  const a = await accepted as FdChannel
  t.equal(c.fd, undefined, 'no fd for native transfers under TLS')
  t.equal(a.writeFd, undefined)
  await a.handshake()
  t.equal(c.tlsInfo?.version, 'TLSv1_3')
  t.match(c.tlsInfo?.cipher, /^TLS13_/)
  t.equal(c.tlsInfo?.peerSubject, 'CN=destination,O=vmm-migration', 'the server certificate, RFC 4514 order')
  t.equal(a.tlsInfo?.peerSubject, 'CN=source,O=vmm-migration', 'the client certificate')
  // Both ways, big and small, then a clean end (close_notify) each way.
  const big = Buffer.alloc(3 << 20)
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff
  const got: Buffer[] = []
  const reading = (async () => {
    const buf = Buffer.alloc(1 << 16)
    for (;;) {
      const n = await a.read(buf, 0, buf.length)
      if (n === 0) return
      got.push(Buffer.from(buf.subarray(0, n)))
    }
  })()
  await c.writev([Buffer.from('hello '), big])
  await c.endWrites()
  await reading
  t.ok(Buffer.concat(got).equals(Buffer.concat([Buffer.from('hello '), big])), 'every byte arrived in order')
  await a.writev([Buffer.from('back')])
  await a.endWrites()
  const buf = Buffer.alloc(16)
  t.equal(await c.read(buf, 0, 16), 4)
  t.equal(buf.subarray(0, 4).toString(), 'back')
  t.equal(await c.read(buf, 0, 16), 0, 'a clean end after close_notify')
  await c.close()
  await a.close()
  await t.rejects(connect('file:/tmp/x', { tls: { creds: client } }), { code: 'EINVAL', message: /tcp: and unix: channels only/ })
  await t.rejects(listen('tcp:127.0.0.1:0', { tls: { creds: client } }), { code: 'EINVAL', message: /needs 'server' ones/ })
  await t.rejects(connect(l.address, { tls: { creds: server } }), { code: 'EINVAL', message: /needs 'client' ones/ })
})
