// The TLS options of the command line: where each applies, what it refuses,
// the warning of a destination that listens beyond loopback in the clear, and
// `demo --tls` (throwaway certificates, a migration over TLS between two
// processes, the guest checked on arrival).
import t from 'tap'
import { execFile } from 'node:child_process'
import { parseArgs, commandHelp } from '../../vmm/cli/args.js'
import { parameters } from '../../vmm/cli/vm-options.js'
import { plaintextWarning } from '../../vmm/cli/commands.js'
import { MAIN, missingBuild, childEnv } from '../e2e/helpers.js'
import { creds, noOpenssl } from './helpers.js'

t.setTimeout(240_000)
const skip = noOpenssl()

t.test('flags: where they apply, repeatable tls-authz, what they become', async (t) => {
  const p = parseArgs(['incoming', 'tcp:0.0.0.0:4444', '--tls-creds-x509', '/etc/tls', '--tls-authz', 'CN=a,O=x', '--tls-authz=CN=b'])
  t.equal(p.options.tlsCreds, '/etc/tls')
  t.same(p.options.tlsAuthz, ['CN=a,O=x', 'CN=b'])
  t.same(parameters(p.options), { ...parameters(p.options), tlsCreds: '/etc/tls', tlsHostname: '', tlsAuthz: ['CN=a,O=x', 'CN=b'] })
  t.same(parseArgs(['incoming', 'tcp:0.0.0.0:1']).options.tlsAuthz, [], 'the default list is not shared with a parse that added to it')
  const m = parseArgs(['migrate', 'tcp:hostB:4444', '--tls-creds-x509', 'd', '--tls-hostname', 'hostB.example'])
  t.equal(parameters(m.options).tlsHostname, 'hostB.example')
  t.equal(parseArgs(['demo', '--tls']).options.tls, true)
  const bad: [string[], RegExp][] = [
    [['save', 'file:/x', '--tls-creds-x509', 'd'], /--tls-creds-x509 does not apply to save/],
    [['incoming', 'tcp:h:1', '--tls-creds-x509', 'd', '--tls-hostname', 'n'], /--tls-hostname does not apply to incoming/],
    [['migrate', 'tcp:h:1', '--tls-creds-x509', 'd', '--tls-authz', 'CN=a'], /--tls-authz does not apply to migrate/],
    [['migrate', 'tcp:h:1', '--tls'], /--tls does not apply to migrate/],
    [['incoming', 'tcp:h:1', '--tls-authz', 'CN=a'], /--tls-authz needs --tls-creds-x509/],
    [['migrate', 'tcp:h:1', '--tls-hostname', 'h'], /--tls-hostname needs --tls-creds-x509/],
    [['demo', '--tls', '--tls-creds-x509', 'd'], /give one of them/],
    [['incoming', 'tcp:h:1', '--tls-creds-x509', 'd', '--tls-authz', 'nodn'], /not a distinguished name/],
    [['incoming', 'tcp:h:1', '--tls-creds-x509', ''], /needs a directory/],
    [['incoming', 'tcp:h:1', '--tls-creds-psk', '/etc/psk'], /PSK credentials are not supported/],
    [['migrate', 'tcp:h:1', '--tls-username', 'bob'], /PSK credentials, which are not supported/],
  ]
  for (const [argv, why] of bad) t.throws(() => parseArgs(argv), { name: 'UsageError', message: why }, argv.join(' '))
  t.match(commandHelp('incoming'), /--tls-creds-x509 DIR/)
  t.match(commandHelp('migrate'), /--tls-hostname NAME/)
  t.match(commandHelp('demo'), /--tls /)
})

t.test('a destination listening beyond loopback in the clear is warned about', async (t) => {
  const o = (argv: string[]) => parseArgs(['incoming', ...argv]).options
  t.match(plaintextWarning('tcp:0.0.0.0:4444', o(['tcp:0.0.0.0:4444'])), /WARNING: listening on 0\.0\.0\.0 without TLS.*--tls-creds-x509/)
  t.match(plaintextWarning('tcp:[::]:4444', o(['tcp:[::]:4444'])), /WARNING/)
  t.equal(plaintextWarning('tcp:0.0.0.0:4444', o(['tcp:0.0.0.0:4444', '--tls-creds-x509', 'd'])), undefined, 'not with TLS')
  for (const local of ['tcp:127.0.0.1:1', 'tcp:localhost:1', 'tcp:[::1]:1', 'unix:/tmp/s', 'file:/tmp/f']) {
    t.equal(plaintextWarning(local, o([local])), undefined, `not for ${local}`)
  }
})

const noBuild = missingBuild()
if (noBuild && process.env.CI === 'true') throw new Error(noBuild)

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { env: childEnv(), timeout: 180_000 }, (e, stdout, stderr) => {
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, stdout, stderr })
    })
  })
}

t.test('demo --tls migrates between two processes over TLS and checks the guest', { skip: skip ?? noBuild }, async (t) => {
  const r = await cli(['demo', '--tls', '--ram', '32M', '--vcpu', 'soft', '--device-state', '1M', '--run', '200', '--run-after', '200', '--json'])
  t.equal(r.code, 0, r.stderr)
  const res = JSON.parse(r.stdout) as { ok: boolean; tls: boolean; checks: { ok: boolean }[] }
  t.equal(res.tls, true)
  t.equal(res.ok, true)
  t.ok(res.checks.length >= 6 && res.checks.every((c) => c.ok))
})

t.test('incoming with a credentials directory missing its key: the file is named', { skip: skip ?? noBuild }, async (t) => {
  const dir = await creds()
  const { rmSync } = await import('node:fs')
  rmSync(`${dir}/server-key.pem`)
  const r = await cli(['incoming', 'tcp:127.0.0.1:0', '--ram', '8M', '--vcpu', 'soft', '--tls-creds-x509', dir])
  t.not(r.code, 0)
  t.match(r.stderr, /server-key\.pem/)
})
