// The destination's listener: a client that sends nothing, or not a stream,
// is dropped after the handshake timeout (or at once) and the real source
// still gets through; no source at all ends at the incoming timeout; a unix
// socket left by a killed process is replaced, a live one refused.
import t from 'tap'
import * as net from 'node:net'
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { listen } from '../../vmm/channel/connect.js'
import { IncomingMigration, migrate, type MigratableVm } from '../../vmm/migration/index.js'

const tmp = () => mkdtempSync(join(tmpdir(), 'listener-'))

async function vms(): Promise<{ src: MigratableVm; dst: MigratableVm }> {
  const src = { vm: new Vm('prelaunch'), registry: new SaveVMRegistry(), machine: 'm' }
  await src.vm.vmStart()
  return { src, dst: { vm: new Vm('prelaunch'), registry: new SaveVMRegistry(), machine: 'm' } }
}

function connectIdle(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path, () => resolve(s))
    s.on('error', reject)
  })
}

t.test('an idle client first: dropped after handshake-timeout, the real source migrates', async (t) => {
  const { src, dst } = await vms()
  const path = join(tmp(), 'in')
  const inc = new IncomingMigration(dst, { parameters: { handshakeTimeoutMs: 300 } })
  const dropped: { peer: string; reason: string }[] = []
  inc.on('peer-dropped', (e) => dropped.push(e))
  const done = inc.start(`unix:${path}`)
  for (let i = 0; i < 100 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 10))
  const a = await connectIdle(path)
  const aClosed = new Promise<void>((r) => a.on('close', () => r()))
  await aClosed
  for (let i = 0; i < 100 && dropped.length === 0; i++) await new Promise((r) => setTimeout(r, 10))
  t.equal(dropped.length, 1, 'the idle peer was dropped')
  t.match(dropped[0]?.reason, /no stream header within handshake-timeout \(300 ms\)/)
  // Another idle client holds its connection while the real source comes: it does not wait for it.
  const b = await connectIdle(path)
  const bClosed = new Promise<void>((r) => b.on('close', () => r()))
  const stats = await migrate(src, `unix:${path}`, { parameters: { maxBandwidth: 0 } })
  const r = await done
  t.equal(stats.status, 'completed')
  t.equal(r.status, 'completed')
  t.equal(dst.vm.state, 'running')
  await bClosed
  t.pass('the other idle client was closed once the source was accepted')
})

t.test('a client that sends garbage is dropped at once', async (t) => {
  const { src, dst } = await vms()
  const path = join(tmp(), 'in')
  const inc = new IncomingMigration(dst)
  const dropped: string[] = []
  inc.on('peer-dropped', (e) => dropped.push(e.reason))
  const done = inc.start(`unix:${path}`)
  for (let i = 0; i < 100 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 10))
  const s = await connectIdle(path)
  s.write('GET / HTTP/1.1\r\n\r\n')
  await new Promise<void>((r) => s.on('close', () => r()))
  for (let i = 0; i < 100 && dropped.length === 0; i++) await new Promise((r) => setTimeout(r, 10))
  t.match(dropped[0], /not a migration stream \(first bytes 47455420\)/)
  await migrate(src, `unix:${path}`, { parameters: { maxBandwidth: 0 } })
  t.equal((await done).status, 'completed')
})

t.test('no source within incoming-timeout: a clear error, the listener gone', async (t) => {
  const { dst } = await vms()
  const path = join(tmp(), 'in')
  const inc = new IncomingMigration(dst, { parameters: { incomingTimeoutMs: 200 } })
  const t0 = performance.now()
  await t.rejects(inc.start(`unix:${path}`), { code: 'ETIMEDOUT', message: /no migration arrived on unix:.* within incoming-timeout \(200 ms\)/ })
  t.ok(performance.now() - t0 < 3000, 'bounded')
  t.equal(inc.status, 'failed')
  await new Promise((r) => setTimeout(r, 50))
  t.notOk(existsSync(path), 'the socket is gone')
})

t.test('a stale unix socket (its process killed) is replaced; a live one and a plain file are refused', async (t) => {
  const dir = tmp()
  const path = join(dir, 'stale')
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] })
  await new Promise<void>((r) => child.stdout!.once('data', () => r()))
  child.kill('SIGKILL')
  await new Promise((r) => child.once('exit', r))
  t.ok(existsSync(path), 'kill -9 left the socket file')
  const l = await listen(`unix:${path}`)
  t.equal(l.address, `unix:${path}`, 'listening on the stale path')
  await t.rejects(listen(`unix:${path}`), { code: 'EADDRINUSE', message: /another process is listening on/ })
  await l.close()
  const plain = join(dir, 'plain')
  writeFileSync(plain, 'x')
  await t.rejects(listen(`unix:${plain}`), { code: 'EADDRINUSE', message: /exists and is not a socket/ })
})
