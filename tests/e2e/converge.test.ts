// Auto-converge between two processes: a guest that dirties its 4 MiB hot set
// far faster than a 16 MiB/s link with a 50 ms downtime limit can ever send it.
// Without throttling pre-copy would never end; with --auto-converge the
// source must raise the vCPU throttle (QEMU's 20 % + 10 % steps) until the
// switchover fits, and the guest must still arrive intact.
import t from 'tap'
import { checkArrived, killAll, kvmReason, missingBuild, tempDir, MiB } from './helpers.js'
import { migratePair } from './lib.js'

t.setTimeout(240_000)
t.teardown(killAll)

const noBuild = missingBuild()
const noKvm = noBuild ?? (process.env.VMM_E2E_KVM === '0' ? 'VMM_E2E_KVM=0' : await kvmReason())
const RAM = 64 * MiB
const common = ['--working-set', '4M']
const source = ['--max-bandwidth', '16M', '--downtime-limit', '50', '--auto-converge']

for (const vcpu of ['soft', 'kvm'] as const) {
  t.test(`auto-converge, ${vcpu} vCPU`, { skip: vcpu === 'kvm' ? noKvm : noBuild }, async (t) => {
    const { src, dst } = await migratePair({ transport: 'tcp', vcpu, ram: RAM, dir: tempDir(t), common, source, timeoutMs: 120_000 })
    t.comment(`throttle reached ${src.maxThrottle} % after ${src.stats.iterations} iterations`)
    t.ok(src.maxThrottle > 0, `the throttle rose above 0 (${src.maxThrottle} %)`)
    t.ok(src.maxThrottle >= 20, 'at least cpu-throttle-initial (20 %)')
    checkArrived(t, RAM, vcpu, src, dst)
  })
}
