// Live migration of a running microVM between two real processes of the
// built program, over every transport: TCP, a UNIX socket, exec (the source
// runs `incoming fd:0` as a child with the stream on its stdin, as QEMU's
// exec: migration), a file (save, then restore) and a file read through
// `incoming exec:cat FILE`; with the software vCPU always and KVM where it works.
import t from 'tap'
import { checkArrived, kvmReason, killAll, missingBuild, tempDir, MiB } from './helpers.js'
import { migratePair, type Transport } from './lib.js'

t.setTimeout(240_000)
t.teardown(killAll)

const noBuild = missingBuild()
const noKvm = noBuild ? 'no build' : (process.env.VMM_E2E_KVM === '0' ? 'VMM_E2E_KVM=0' : await kvmReason())
if (noKvm) t.comment(`KVM cases skipped: ${noKvm}`)

const cases: [Transport, 'soft' | 'kvm'][] = [
  ['tcp', 'soft'], ['unix', 'soft'], ['exec', 'soft'], ['file', 'soft'], ['exec-restore', 'soft'],
  ['tcp', 'kvm'], ['unix', 'kvm'], ['exec', 'kvm'], ['file', 'kvm'],
]

for (const [transport, vcpu] of cases) {
  const skip = noBuild ?? (vcpu === 'kvm' ? noKvm : undefined)
  t.test(`${transport}, ${vcpu} vCPU, 64 MiB`, { skip }, async (t) => {
    const ram = 64 * MiB
    const { src, dst } = await migratePair({ transport, vcpu, ram, dir: tempDir(t) })
    checkArrived(t, ram, vcpu, src, dst)
  })
}
