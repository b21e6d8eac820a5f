// Device-state throughput through the full save/load path: an emulated VFIO
// device on each side, SaveVM -> UNIX socket -> loadvm, driven step by step as
// the orchestrator does, with no downtime policy in the way (STOP_COPY only:
// every byte moves in the complete phase).
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { native } from '../../vmm/native/addon.js'
import type { EmulatedDevice } from '../../native/index.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { SaveVM } from '../../vmm/savevm/save.js'
import { loadvm } from '../../vmm/savevm/load.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { connect, listen } from '../../vmm/channel/connect.js'
import { VfioMigrationSet } from '../../vmm/vfio/vfio-set.js'

interface Side { vm: Vm; reg: SaveVMRegistry; set: VfioMigrationSet; emu: EmulatedDevice }

async function side(role: 'source' | 'dest', stateSize: number, seed: number, allowSplice: boolean): Promise<Side> {
  const vm = new Vm(role === 'source' ? 'prelaunch' : 'inmigrate')
  if (role === 'source') await vm.vmStart()
  const reg = new SaveVMRegistry()
  const set = new VfioMigrationSet(vm, reg)
  const emu = new native.EmulatedDevice({ name: `bench-${role}`, flags: 1, stateSize, seed })
  await set.add(emu.device(), { idstr: 'bench/vfio', allowSplice })
  return { vm, reg, set, emu }
}

export interface DeviceThroughput {
  bytes: number
  ms: number
  verified: boolean
}

/**
 * Migrates `stateSize` bytes of device state; resolves the time from prepare
 * to the destination running. `allowSplice` false reads and writes the data
 * fds (what a kernel VFIO data fd allows) instead of splicing them.
 */
export async function deviceThroughput(stateSize: number, verify: boolean, allowSplice = true): Promise<DeviceThroughput> {
  const src = await side('source', stateSize, 7, allowSplice)
  const dst = await side('dest', stateSize, 99, allowSplice)
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-dev-'))
  const l = await listen(`unix:${join(dir, 's')}`)
  const [a, b] = await Promise.all([connect(l.address), l.accept()])
  void l.close()
  const out = new MigStream(a)
  const inc = new MigStream(b)
  try {
    const t0 = performance.now()
    const loading = loadvm(inc, dst.reg, { machine: 'microvm' }).then(() => dst.set.finishIncoming())
    loading.catch(() => inc.shutdown('load failed'))
    const save = new SaveVM(out, src.reg, { machine: 'microvm' })
    await save.prepare()
    await save.header()
    await save.setup()
    await src.vm.vmStop('finish-migrate')
    await save.complete()
    await save.nonIterable()
    await save.finish()
    await out.close()
    await loading
    await dst.vm.vmStart()
    const ms = performance.now() - t0
    await save.cleanup()
    let verified = false
    if (verify) {
      const [x, y] = await Promise.all([src.emu.digest(), dst.emu.digest()])
      if (x !== y) throw new Error(`device state differs after migration (${stateSize} bytes): ${x} != ${y}`)
      verified = true
    }
    return { bytes: stateSize, ms, verified }
  } finally {
    await inc.close().catch(() => undefined)
    await out.close().catch(() => undefined)
    rmSync(dir, { recursive: true, force: true })
  }
}
