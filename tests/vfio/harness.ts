// A source and a destination VM, each with emulated VFIO devices, and a
// migration between them over a UNIX socket, driven step by step so tests can
// stop it anywhere. Deliberately small: the orchestrator proper lives in
// vmm/migration; this drives the savevm/loadvm calls directly.
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { native } from '../../vmm/native/addon.js'
import type { EmulatedDevice, EmulatedDeviceOptions } from '../../native/index.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { SaveVM } from '../../vmm/savevm/save.js'
import { loadvm } from '../../vmm/savevm/load.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { connect, listen } from '../../vmm/channel/connect.js'
import { VfioMigrationSet } from '../../vmm/vfio/vfio-set.js'
import type { VfioDeviceMigration, VfioDeviceMigrationOptions } from '../../vmm/vfio/device-migration.js'

export interface Side {
  vm: Vm
  reg: SaveVMRegistry
  set: VfioMigrationSet
  emus: EmulatedDevice[]
  devs: VfioDeviceMigration[]
}

export async function makeSide(role: 'source' | 'dest', devices: EmulatedDeviceOptions[], switchoverAck = false, add: Omit<VfioDeviceMigrationOptions, 'idstr'> = {}): Promise<Side> {
  const vm = new Vm(role === 'source' ? 'prelaunch' : 'inmigrate')
  if (role === 'source') await vm.vmStart()
  const reg = new SaveVMRegistry()
  const set = new VfioMigrationSet(vm, reg, { switchoverAck: () => switchoverAck })
  const emus: EmulatedDevice[] = []
  const devs: VfioDeviceMigration[] = []
  for (const [i, o] of devices.entries()) {
    const emu = new native.EmulatedDevice({ name: `${role}${i}`, ...o })
    emus.push(emu)
    devs.push(await set.add(emu.device(), { idstr: `dev${i}/vfio`, ...add }))
  }
  return { vm, reg, set, emus, devs }
}

export async function socketPair(): Promise<[MigStream, MigStream]> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-'))
  const l = await listen(`unix:${join(dir, 's')}`)
  const [a, b] = await Promise.all([connect(l.address), l.accept()])
  void l.close() // server.close resolves only once every connection ended
  return [new MigStream(a), new MigStream(b)]
}

export interface RunOptions {
  /** Stop iterating once exact pending is at most this many bytes (default 0: until converged or maxRounds). */
  threshold?: number
  maxRounds?: number
  /** Called at named points; throw to fail the migration there. */
  hook?: (point: string) => void | Promise<void>
}

export interface RunResult {
  ok: boolean
  error?: Error
  loadError?: Error
  rounds: number
  sourceDigests: string[]
  acked: boolean
}

/**
 * Migrate `src` to `dst`. On failure the source is brought back the way the
 * orchestrator does it (cleanup, VM restarted) and the destination aborts.
 */
export async function migrate(src: Side, dst: Side, o: RunOptions = {}): Promise<RunResult> {
  const [out, inc] = await socketPair()
  const save = new SaveVM(out, src.reg, { machine: 'microvm' })
  let acked = false
  const loading = (async () => {
    await loadvm(inc, dst.reg, { machine: 'microvm', onSwitchoverAck: () => { acked = true } })
    await dst.set.finishIncoming()
  })()
  // A destination that fails closes its end, as the orchestrator's does, so the source's writes fail instead of waiting.
  loading.catch(() => inc.shutdown('load failed'))
  const res: RunResult = { ok: false, rounds: 0, sourceDigests: [], acked: false }
  const hook = async (p: string) => { await o.hook?.(p) }
  try {
    await hook('prepare')
    await save.prepare()
    await save.header()
    await hook('setup')
    await save.setup()
    const max = o.maxRounds ?? 1000
    for (;;) {
      await hook('iterate')
      const done = await save.iterate()
      res.rounds++
      const pending = (await save.pendingExact()).precopyOnly
      if (done || pending <= (o.threshold ?? 0) || res.rounds >= max) break
    }
    await hook('stop')
    await src.vm.vmStop('finish-migrate')
    res.sourceDigests = await Promise.all(src.emus.map(e => e.digest()))
    await hook('complete')
    await save.complete()
    await save.nonIterable()
    await save.finish()
    await hook('finish')
    await out.close()
    await loading
    await hook('loaded')
    await dst.vm.vmStart()
    await save.cleanup()
    src.vm.runstateSet('postmigrate')
    res.ok = true
  } catch (e) {
    res.error = e as Error
    out.shutdown('migration failed')
    await out.close().catch(() => undefined)
    inc.shutdown('migration failed')
    try { await loading } catch (le) { res.loadError = le as Error }
    await dst.set.abortIncoming().catch(() => undefined)
    await save.cleanup()
    if (src.vm.state !== 'running') await src.vm.vmStart()
  }
  res.acked = acked
  await inc.close().catch(() => undefined)
  return res
}
