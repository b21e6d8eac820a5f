// How a VMM embeds vmm-migration: its own run state, its guest RAM, one plain
// device described declaratively, one VFIO device that writes guest RAM by
// DMA, and a live migration to a destination (here in the same process, over
// a UNIX socket). It imports the package by its name, as a VMM would.
//
//   npm run build && node dist/examples/embed.js
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  Vm, SaveVMRegistry, registerRam, VfioMigrationSet, EmulatedDevice, DirtyBitmap, migrate, incoming, listen,
  type VMStateDescription, type MigratableVm,
} from 'vmm-migration'

/** A VMM's plain device: its state described once, for saving, loading and the vmdesc. */
type Uart = { lcr: number; scratch: number; fifo: Buffer }
const uartVmsd: VMStateDescription = {
  name: 'uart', versionId: 1, minimumVersionId: 1,
  fields: [
    { name: 'lcr', type: 'uint8' },
    { name: 'scratch', type: 'uint32' },
    { name: 'fifo', type: 'buffer', length: 16 },
  ],
}

/** Everything one side of the migration owns. */
async function buildVmm(role: 'source' | 'dest', ramBytes: number) {
  const vm = new Vm('prelaunch')
  const registry = new SaveVMRegistry()
  // Guest RAM: here a plain Buffer; a real VMM passes its guest memory mapping.
  const ram = Buffer.alloc(ramBytes)
  // Pages the VMM itself wrote since the last sync (a real VMM reads KVM's dirty log).
  const written = new Set<number>()
  registerRam(registry, {
    blocks: [{ name: 'pc.ram', memory: ram }],
    dirtySources: [async (into: DirtyBitmap) => { for (const p of written) into.markPage(p); written.clear() }],
  })
  const uart: Uart = { lcr: 0, scratch: 0, fifo: Buffer.alloc(16) }
  registry.register({ idstr: 'uart', vmsd: uartVmsd, state: uart })
  // VFIO: a kernel device would come from Group.open(n).getDevice(name); the
  // emulated device answers the same calls with the kernel's semantics. Its
  // DMA into guest RAM needs no dirty source above: the set tracks it with
  // the RAM migration (the device's own DMA logging here).
  const vfio = new VfioMigrationSet(vm, registry)
  const nic = new EmulatedDevice({ name: `${role}-nic`, stateSize: 2 << 20, seed: role === 'source' ? 1 : 2 })
  nic.attachGuestMemory(ram, 0)
  await vfio.add(nic.device(), { idstr: 'nic/vfio' })
  const machine: MigratableVm = { vm, registry, machine: 'example-vmm', vfio }
  const write = (page: number, byte: number) => { ram.fill(byte, page * 4096, page * 4096 + 4096); written.add(page) }
  // The "vCPU": writes guest pages while the VM runs. Its change-state
  // handler is how the migration stops it at the switchover.
  let vcpu: NodeJS.Timeout | undefined
  vm.addChangeStateHandler({
    name: 'vcpu',
    cb: running => {
      clearInterval(vcpu)
      vcpu = running ? setInterval(() => write(Math.floor(Math.random() * 4096), 0x5a), 1) : undefined
    },
  })
  const destroy = () => {
    clearInterval(vcpu)
    nic.stopDma()
    nic.detachGuestMemory()
  }
  return { vm, ram, uart, nic, machine, write, destroy }
}

export async function main(): Promise<{ ok: boolean; report: string }> {
  const src = await buildVmm('source', 16 << 20)
  const dst = await buildVmm('dest', 16 << 20)
  await src.vm.vmStart()
  src.uart.lcr = 3
  src.uart.scratch = 0xdeadbeef
  src.uart.fifo.write('hello', 0)
  for (let p = 0; p < 4096; p += 3) src.write(p, p & 0xff)
  // The NIC writes random guest pages by DMA while the guest runs (it stops with the VM).
  src.nic.startDma(2000)

  const dir = mkdtempSync(join(tmpdir(), 'embed-'))
  const listener = await listen(`unix:${join(dir, 'migration.sock')}`)
  // What the destination's guest will start from, taken the moment it resumes.
  let landed = Buffer.alloc(0)
  dst.vm.on('resume', () => { landed = Buffer.from(dst.ram) })
  const arrived = incoming(dst.machine, listener)
  const stats = await migrate(src.machine, listener.address, { parameters: { downtimeLimitMs: 100, maxBandwidth: 0 } })
  await arrived
  void listener.close()

  const same = src.ram.equals(landed) && dst.uart.scratch === 0xdeadbeef && dst.uart.fifo.toString('latin1', 0, 5) === 'hello' &&
    (await src.nic.digest()) === (await dst.nic.digest())
  const report = `status ${stats.status}, ${stats.iterations} iterations, ${stats.transferred} bytes, downtime ${stats.downtime} ms, ` +
    `${src.nic.stats().dmaWrites} DMA writes tracked by ${stats.dirtyTracker}; state identical on the destination: ${same}`
  src.destroy()
  dst.destroy()
  return { ok: stats.status === 'completed' && same, report }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().then(r => {
    console.log(r.report)
    process.exitCode = r.ok ? 0 : 1
  }, e => {
    console.error(`embed example failed: ${(e as Error).message}`)
    process.exitCode = 1
  })
}
