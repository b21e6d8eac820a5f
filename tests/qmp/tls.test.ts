// TLS migration driven over QMP as a manager drives QEMU's: object-add of a
// tls-creds-x509 on each side (client on the source, server on the
// destination) and of an authz object, migrate-set-parameters tls-creds /
// tls-hostname / tls-authz by id, then migrate-incoming and migrate. And what
// a manager gets wrong: unknown ids, the wrong endpoint, verify-peer off, a
// client the authz list does not name (the source's guest keeps running).
import t, { type Test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { QmpServer } from '../../vmm/qmp/index.js'
import { creds, noOpenssl, vms } from '../tls/helpers.js'
import { Raw, type Msg } from './raw-client.js'

const skip = noOpenssl()
const dir = await mkdtemp(join(tmpdir(), 'vmm-qmp-tls-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
let n = 0

async function pair(t: Test) {
  const { src, dst } = await vms()
  const i = n++
  const a = await QmpServer.listen(join(dir, `s${i}.qmp`), { machine: src })
  const b = await QmpServer.listen(join(dir, `d${i}.qmp`), { machine: dst, incoming: 'defer', onIncomingFailed: () => undefined })
  const ca = await Raw.connect(a.path)
  const cb = await Raw.connect(b.path)
  t.teardown(async () => {
    ca.close()
    cb.close()
    await Promise.all([a.close(), b.close()])
  })
  await ca.negotiate()
  await cb.negotiate()
  return { src, dst, a: ca, b: cb }
}

async function settled(c: Raw, ms = 20_000): Promise<Msg> {
  const deadline = Date.now() + ms
  for (;;) {
    const r = await c.x('query-migrate')
    if (['completed', 'failed', 'cancelled'].includes(r.return?.status) || Date.now() > deadline) return r
    await new Promise((res) => setTimeout(res, 50))
  }
}

t.test('a migration over TLS set up with object-add and tls-* parameters', { skip, timeout: 60_000 }, async (t) => {
  const dirCreds = await creds()
  const { src, dst, a, b } = await pair(t)
  t.match(await a.x('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: dirCreds, endpoint: 'client', 'verify-peer': true }), { return: {} })
  t.match(await b.x('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: dirCreds, endpoint: 'server' }), { return: {} })
  t.match(await b.x('object-add', { 'qom-type': 'authz-list', id: 'auth0', policy: 'deny', rules: [{ match: 'CN=source,O=vmm-migration', policy: 'allow', format: 'exact' }] }), { return: {} })
  t.match(await a.x('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-hostname': 'localhost' }), { return: {} })
  t.match(await b.x('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-authz': 'auth0' }), { return: {} })
  t.match(await a.x('query-migrate-parameters'), { return: { 'tls-creds': 'tls0', 'tls-hostname': 'localhost', 'tls-authz': '' } })
  t.match(await b.x('query-migrate-parameters'), { return: { 'tls-creds': 'tls0', 'tls-authz': 'auth0' } })
  const uri = `unix:${join(dir, 'mig0')}`
  t.match(await b.x('migrate-incoming', { uri }), { return: {} })
  t.match(await a.x('migrate', { uri }), { return: {} })
  t.match(await settled(a), { return: { status: 'completed' } }, 'source: completed over TLS')
  t.match(await settled(b), { return: { status: 'completed' } }, 'destination: completed')
  t.equal(dst.vm.state, 'running', 'the guest runs at the destination')
  t.not(src.vm.state, 'running', 'and not at the source')
})

t.test('what a manager gets wrong: each a QMP error, the guest untouched', { skip, timeout: 60_000 }, async (t) => {
  const dirCreds = await creds()
  const { src, a, b } = await pair(t)
  t.match(await a.x('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: dirCreds, 'verify-peer': false }),
    { error: { class: 'GenericError', desc: /verify-peer=off is not supported/ } })
  t.match(await a.x('object-add', { 'qom-type': 'tls-creds-psk', id: 'p', dir: dirCreds }), { error: { class: 'GenericError', desc: /not a supported object type/ } })
  t.match(await a.x('object-add', { 'qom-type': 'tls-creds-x509', id: '0bad', dir: dirCreds }), { error: { class: 'GenericError' } })
  t.match(await a.x('object-add', { 'qom-type': 'authz-list', id: 'l', policy: 'allow' }), { error: { class: 'GenericError', desc: /only policy 'deny'/ } })
  t.match(await a.x('object-add', { 'qom-type': 'authz-list', id: 'l', rules: [{ match: 'CN=*', policy: 'allow', format: 'glob' }] }), { error: { class: 'GenericError', desc: /only exact 'allow' rules/ } })
  t.match(await a.x('object-add', { 'qom-type': 'tls-creds-x509', id: 'srv', dir: dirCreds, endpoint: 'server' }), { return: {} })
  t.match(await a.x('object-add', { 'qom-type': 'tls-creds-x509', id: 'srv', dir: dirCreds }), { error: { class: 'GenericError', desc: /duplicate/ } })
  t.match(await a.x('migrate-set-parameters', { 'tls-creds': 42 }), { error: { class: 'GenericError', desc: "Invalid parameter type for 'tls-creds', expected: string" } })
  t.match(await a.x('migrate-set-parameters', { 'tls-creds': 'nope' }), { return: {} }, 'ids are looked up when a migration starts, as QEMU does')
  const uri = `unix:${join(dir, 'mig-bad')}`
  t.match(await a.x('migrate', { uri }), { error: { class: 'GenericError', desc: "No TLS credentials with id 'nope'" } })
  t.match(await a.x('migrate-set-parameters', { 'tls-creds': 'srv' }), { return: {} })
  t.match(await a.x('migrate', { uri }), { error: { class: 'GenericError', desc: 'Expected TLS credentials for a client endpoint' } }, 'server credentials on the source')
  t.match(await b.x('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: dirCreds, endpoint: 'server' }), { return: {} })
  t.match(await b.x('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-authz': 'missing' }), { return: {} })
  t.match(await b.x('migrate-incoming', { uri }), { error: { class: 'GenericError', desc: "No authorization object with id 'missing'" } })
  t.match(await a.x('object-del', { id: 'srv' }), { return: {} })
  t.match(await a.x('object-del', { id: 'srv' }), { error: { class: 'GenericError', desc: "object 'srv' not found" } })
  t.match(await a.x('migrate-set-parameters', { 'tls-creds': null }), { return: {} }, 'null resets, as QEMU\'s StrOrNull')
  t.match(await a.x('query-migrate-parameters'), { return: { 'tls-creds': '' } })
  t.equal(src.vm.state, 'running', 'the source guest runs on')
})

t.test('a client the destination\'s authz list does not name is refused; the source runs on', { skip, timeout: 60_000 }, async (t) => {
  const dirCreds = await creds()
  const { src, dst, a, b } = await pair(t)
  t.match(await a.x('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: dirCreds, endpoint: 'client' }), { return: {} })
  t.match(await b.x('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: dirCreds, endpoint: 'server' }), { return: {} })
  t.match(await b.x('object-add', { 'qom-type': 'authz-simple', id: 'auth0', identity: 'CN=someone-else,O=vmm-migration' }), { return: {} })
  t.match(await a.x('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-hostname': 'localhost', 'x-link-timeout': 2000 }), { return: {} })
  t.match(await b.x('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-authz': 'auth0', 'x-incoming-timeout': 3000 }), { return: {} })
  const uri = `unix:${join(dir, 'mig-authz')}`
  t.match(await b.x('migrate-incoming', { uri }), { return: {} })
  t.match(await a.x('migrate', { uri }), { return: {} })
  const r = await settled(a)
  t.match(r, { return: { status: 'failed' } }, 'source: failed')
  t.comment(`source: ${r.return?.['error-desc']}`)
  t.equal(src.vm.state, 'running', 'the source guest runs on')
  t.not(dst.vm.state, 'running', 'nothing runs at the destination')
})
