// Each way a TLS migration can be set up wrong fails with an error that says
// what is wrong, the source's guest keeps running, and the destination's
// listener keeps waiting: after each bad peer the real source still migrates
// through the same listener.
import t, { type Test } from 'tap'
import * as net from 'node:net'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { IncomingMigration, migrate, type MigratableVm } from '../../vmm/migration/index.js'
import { creds, days, mix, noOpenssl, relay, portOf, until, vms } from './helpers.js'
import { connect, listen } from '../../vmm/channel/connect.js'
import { loadTlsCreds } from '../../vmm/channel/tls.js'

t.setTimeout(180_000)
const skip = noOpenssl()

const good = skip ? '' : await creds()
const other = skip ? '' : await creds({ caSubject: '/CN=another CA' })

interface Dest {
  dst: MigratableVm
  address: string
  dropped: string[]
  done: Promise<unknown>
}

/** A destination waiting on tcp with `params`. */
async function destination(t: Test, params: Record<string, unknown>): Promise<Dest> {
  const { dst } = await vms()
  const stop = new AbortController()
  let address = ''
  const inc = new IncomingMigration(dst, { parameters: { handshakeTimeoutMs: 2000, ...params }, signal: stop.signal, onListening: (a) => { address = a } })
  const dropped: string[] = []
  inc.on('peer-dropped', (e) => dropped.push(e.reason))
  const done = inc.start('tcp:127.0.0.1:0')
  void done.catch(() => undefined)
  // A destination no good source reached still waits: end it with the test.
  t.teardown(() => stop.abort())
  await until('listening', () => address !== '')
  return { dst, address, dropped, done }
}

/** A bad source fails with `why`, its guest running; then a good one gets through. */
async function refusedThenGood(t: Test, dest: Dest, srcParams: Record<string, unknown>, why: RegExp, dropWhy?: RegExp, goodParams: Record<string, unknown> | null = { tlsCreds: good }) {
  const { src } = await vms()
  await t.rejects(migrate(src, dest.address, { parameters: { maxBandwidth: 0, handshakeTimeoutMs: 2000, ...srcParams } }), { message: why }, 'the source says why')
  t.equal(src.vm.state, 'running', "the source's guest still runs")
  if (dropWhy) {
    await until('the drop', () => dest.dropped.length > 0)
    t.match(dest.dropped[0], dropWhy, 'the destination says why it dropped the peer')
  }
  if (!goodParams) {
    // Its own certificate is the problem: no source gets in, but it still waits.
    let settled = false
    dest.done.then(() => (settled = true), () => (settled = true))
    await new Promise((r) => setTimeout(r, 100))
    t.notOk(settled, 'the destination still waits')
    return
  }
  const stats = await migrate(src, dest.address, { parameters: { maxBandwidth: 0, ...goodParams } })
  t.equal(stats.status, 'completed', 'the real source then migrates through the same listener')
  await dest.done
  t.equal(dest.dst.vm.state, 'running')
}

t.test('a destination certificate from another CA', { skip }, async (t) => {
  const dest = await destination(t, { tlsCreds: mix(good, other, ['server-cert.pem', 'server-key.pem']) })
  // The good source trusts only `good`'s CA: give it the other CA to accept the destination.
  await refusedThenGood(t, dest, { tlsCreds: good }, /invalid peer certificate: UnknownIssuer/, /received fatal alert: UnknownCA/,
    { tlsCreds: mix(good, other, ['ca-cert.pem']) })
})

t.test('a client certificate from another CA', { skip }, async (t) => {
  const dest = await destination(t, { tlsCreds: good })
  await refusedThenGood(t, dest, { tlsCreds: mix(good, other, ['client-cert.pem', 'client-key.pem']) }, /received fatal alert: UnknownCA/, /invalid peer certificate: UnknownIssuer/)
})

t.test('an expired destination certificate', { skip }, async (t) => {
  const expired = await creds({ ca: good, serverValidity: { from: days(-30), to: days(-1) } })
  const dest = await destination(t, { tlsCreds: expired })
  await refusedThenGood(t, dest, { tlsCreds: good }, /invalid peer certificate: certificate expired/, /received fatal alert: CertificateExpired/, null)
})

t.test('a client certificate not valid yet', { skip }, async (t) => {
  const future = await creds({ ca: good, clientValidity: { from: days(2), to: days(30) } })
  const dest = await destination(t, { tlsCreds: good })
  await refusedThenGood(t, dest, { tlsCreds: future }, /destination refused.*received fatal alert: CertificateExpired/, /invalid peer certificate: certificate not valid yet/)
})

t.test('a destination name that its certificate does not carry', { skip }, async (t) => {
  const dest = await destination(t, { tlsCreds: good })
  await refusedThenGood(t, dest, { tlsCreds: good, tlsHostname: 'elsewhere.example' }, /certificate not valid for name "elsewhere.example"/)
})

t.test('a client DN outside tls-authz', { skip }, async (t) => {
  const dest = await destination(t, { tlsCreds: good, tlsAuthz: ['CN=source,O=vmm-migration'] })
  const stranger = await creds({ ca: good, clientSubject: '/O=vmm-migration/CN=stranger' })
  await refusedThenGood(t, dest, { tlsCreds: stranger }, /destination refused.*received fatal alert: CertificateUnknown/,
    /client certificate subject "CN=stranger,O=vmm-migration" is not in tls-authz/)
})

t.test('a plaintext source to a TLS destination', { skip }, async (t) => {
  const dest = await destination(t, { tlsCreds: good })
  await refusedThenGood(t, dest, {}, /./, /TLS handshake failed: .*is the peer speaking TLS/)
})

t.test('a TLS source to a plaintext destination', { skip }, async (t) => {
  const dest = await destination(t, {})
  await refusedThenGood(t, dest, { tlsCreds: good }, /TLS handshake failed: the peer closed the connection/, /a TLS ClientHello; the source uses TLS and this destination has no tls-creds/, {})
})

t.test('a destination that accepts and says nothing: the handshake is bounded', { skip }, async (t) => {
  const socks: net.Socket[] = []
  const server = net.createServer((s) => socks.push(s))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  t.teardown(() => { for (const s of socks) s.destroy(); server.close() })
  const { src } = await vms()
  const t0 = performance.now()
  await t.rejects(migrate(src, `tcp:127.0.0.1:${(server.address() as net.AddressInfo).port}`, { parameters: { tlsCreds: good, handshakeTimeoutMs: 300 } }),
    { code: 'ETIMEDOUT', message: /TLS handshake did not finish within 300 ms/ })
  t.ok(performance.now() - t0 < 5000, 'bounded')
  t.equal(src.vm.state, 'running')
})

t.test('a peer that connects to a TLS destination and says nothing is dropped; the source still gets in', { skip }, async (t) => {
  const dest = await destination(t, { tlsCreds: good, handshakeTimeoutMs: 300 })
  const idle = net.connect(portOf(dest.address), '127.0.0.1')
  idle.on('error', () => undefined)
  await new Promise<void>((r) => idle.on('close', () => r()))
  await until('the drop', () => dest.dropped.length > 0)
  t.match(dest.dropped[0], /handshake-timeout \(300 ms\)|TLS handshake did not finish/)
  const { src } = await vms()
  t.equal((await migrate(src, dest.address, { parameters: { tlsCreds: good, maxBandwidth: 0 } })).status, 'completed')
  await dest.done
})

t.test('a TLS stream cut in the middle of a record is an error, not an end', { skip }, async (t) => {
  const l = await listen('tcp:127.0.0.1:0', { tls: { creds: await loadTlsCreds(good, 'server') } })
  t.teardown(() => l.close())
  const r = await relay(portOf(l.address))
  t.teardown(() => r.close())
  const accepted = l.accept()
  const c = await connect(`tcp:127.0.0.1:${r.port}`, { tls: { creds: await loadTlsCreds(good, 'client') } })
  const a = await accepted
  // The handshake is over once connect() resolved: cut 5000 bytes into the first 16 KiB record.
  r.cutAfter(5000)
  await c.writev([Buffer.alloc(100_000, 7)]).catch(() => undefined)
  const buf = Buffer.alloc(1 << 16)
  await t.rejects((async () => { for (;;) if ((await a.read(buf, 0, buf.length)) === 0) return })(),
    { code: 'ECONNRESET', message: /without close_notify \(the stream is truncated\)/ })
  await c.close()
  await a.close()
})

t.test('missing credential files are named', { skip }, async (t) => {
  const broken = mix(good, good, [])
  rmSync(join(broken, 'client-key.pem'))
  const { src, dst } = await vms()
  await t.rejects(migrate(src, 'tcp:127.0.0.1:9', { parameters: { tlsCreds: broken } }), { code: 'ENOENT', message: /client-key\.pem/ })
  t.equal(src.vm.state, 'running')
  const noServer = mix(good, good, [])
  rmSync(join(noServer, 'server-cert.pem'))
  await t.rejects(new IncomingMigration(dst, { parameters: { tlsCreds: noServer } }).start('tcp:127.0.0.1:0'), { code: 'ENOENT', message: /server-cert\.pem/ })
  await t.rejects(migrate(src, 'tcp:127.0.0.1:9', { parameters: { tlsCreds: '/nonexistent-tls-dir' } }), { code: 'ENOENT', message: /tls-creds directory \/nonexistent-tls-dir/ })
  await t.rejects(async () => migrate(src, 'tcp:127.0.0.1:9', { parameters: { tlsHostname: 'x' } }), { code: 'EINVAL', message: /tls-hostname needs tls-creds/ })
})
