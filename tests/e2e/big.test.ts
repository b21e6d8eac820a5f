// [big] Large guests: 1022 MiB and 2 GiB (the vCPUs take up to 3 GiB). Few
// and marked: each moves gigabytes through loopback (plus hashing on both
// sides).
// VMM_E2E_BIG=0 skips them.
import t from 'tap'
import { Proc, checkArrived, killAll, kvmReason, missingBuild, tempDir, MiB } from './helpers.js'
import { migratePair } from './lib.js'

t.setTimeout(480_000)
t.teardown(killAll)

const noBuild = missingBuild()
const noBig = noBuild ?? (process.env.VMM_E2E_BIG === '0' ? 'VMM_E2E_BIG=0' : undefined)
const noKvm = noBig ?? (process.env.VMM_E2E_KVM === '0' ? 'VMM_E2E_KVM=0' : await kvmReason())
const RAM = 1022 * MiB
// Unlimited bandwidth: at QEMU's default 128 MiB/s a gigabyte alone takes 8 s.
const common = ['--max-bandwidth', '0', '--working-set', '8M']

t.test('[big] unix, soft vCPU, 1022 MiB', { skip: noBig }, async (t) => {
  const { src, dst } = await migratePair({ transport: 'unix', vcpu: 'soft', ram: RAM, dir: tempDir(t), common, timeoutMs: 150_000 })
  checkArrived(t, RAM, 'soft', src, dst)
})

// 2 GiB, the top of the range the issue asks for: on KVM where it works, else
// on the software vCPU, so the size is always covered.
const BIG = 2048 * MiB
const bigVcpu = noKvm ? 'soft' : 'kvm'
t.test(`[big] tcp, ${bigVcpu} vCPU, 2 GiB`, { skip: noBig }, async (t) => {
  const { src, dst } = await migratePair({ transport: 'tcp', vcpu: bigVcpu, ram: BIG, dir: tempDir(t), common, timeoutMs: 300_000 })
  checkArrived(t, BIG, bigVcpu, src, dst)
})

t.test('beyond the limit: 4 GiB + 2 MiB is refused with the reason, before any VM exists', { skip: noBuild }, async (t) => {
  const p = new Proc(['migrate', 'tcp:127.0.0.1:1', '--ram', '4098M', '--vcpu', 'soft'], 'source')
  const ex = await p.exit(30_000)
  t.equal(ex.code, 2, 'usage error')
  t.match(p.stderr, /--ram: must be between 4M and 4096M/, 'names the option and the range')
})
