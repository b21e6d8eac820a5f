// What the source reports after a failed or cancelled migration: the
// orchestrator promises that the guest runs again with nothing lost, and this
// checks it from the outside — the VM is running, its guest checksum still
// matches its RAM, and its vCPU keeps counting — and from the inside: a
// device reset on the way lost its state, whatever the guest's RAM says.
import type { MicroVm, Verification } from '../microvm/index.js'
import type { MigrationStats } from '../migration/types.js'
import { sleep } from './vm-options.js'

export interface FailureReport {
  error: string
  code?: string
  /** 'failed' or 'cancelled'. */
  status: string
  /** The last migration status before it failed: none, setup, active or device. */
  phase: string
  stats?: MigrationStats
  /** The source VM's run state right after the migration gave up. */
  runState: string
  counterAtFailure: string
  /** Taken with the VM stopped after running `afterMs`; absent when the VM was not running. */
  verification?: Verification
  /** After another `afterMs` of running, stopped again. */
  counterAfter?: string
  checksumConsistentAfter?: boolean
  /** VFIO devices reset during the migration: back in their power-on state, their state lost. */
  devicesReset: string[]
  /** The guest ran on intact: counters strictly increasing, its checksum matching RAM both times, no device reset. */
  guestOk: boolean
}

export async function reportAfterFailure(vm: MicroVm, e: unknown, phase: string, afterMs: number): Promise<FailureReport> {
  const err = e as Error & { code?: string; stats?: MigrationStats }
  const runState = vm.vm.state
  const counterAtFailure = vm.vcpuCounter()
  const base: FailureReport = {
    error: err?.message ?? String(e),
    code: err?.code,
    status: err?.code === 'ECANCELED' ? 'cancelled' : 'failed',
    phase,
    stats: err?.stats,
    runState,
    counterAtFailure: counterAtFailure.toString(),
    devicesReset: vm.vfio.devicesReset(),
    guestOk: false,
  }
  if (runState !== 'running') return base
  await sleep(afterMs)
  await vm.vm.vmStop('paused')
  const verification = await vm.verify()
  await vm.vm.vmStart()
  await sleep(afterMs)
  await vm.vm.vmStop('paused')
  const after = await vm.verify()
  const c1 = BigInt(verification.counter)
  const c2 = BigInt(after.counter)
  return {
    ...base,
    verification,
    counterAfter: after.counter,
    checksumConsistentAfter: after.checksumConsistent,
    guestOk: c1 > counterAtFailure && c2 > c1 && verification.checksumConsistent && after.checksumConsistent && base.devicesReset.length === 0,
  }
}
