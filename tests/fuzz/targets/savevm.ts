// The destination of a migration, as `vmm-migrate restore` and `incoming`
// run it: the microVM's real registry (RAM, the vCPU, the timer's vmstate,
// the emulated VFIO device), a fresh destination for every input, the
// stream read from a file.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MicroVm, type MicroVmOptions } from '../../../vmm/microvm/index.js'
import { incoming } from '../../../vmm/migration/index.js'
import { MigrationError } from '../../../vmm/migration/errors.js'
import { LoadError } from '../../../vmm/savevm/errors.js'
import { StreamError } from '../../../vmm/stream/errors.js'
import { VfioMigrationError } from '../../../vmm/vfio/device-migration.js'
import { Finding, type Target } from '../engine.js'
import { assertTyped } from './typed.js'

/** The shape both ends of the seeds have: the smallest guest RAM and device state, so inputs stay small. */
export const SHAPE: Omit<MicroVmOptions, 'role'> = { ramSize: 2 << 20, vcpu: 'soft', vfio: { stateSize: 8192, regionSize: 4096 } }

const TYPED = [MigrationError, LoadError, StreamError, VfioMigrationError]

export async function target(): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'fuzz-savevm-'))
  const file = join(dir, 'stream')
  // The next destination is built while the current input loads: most of a
  // microVM's start is its vCPU thread's, which overlaps with the load.
  const make = () => MicroVm.create({ role: 'dest', ...SHAPE })
  let next: Promise<MicroVm> | undefined
  return {
    name: 'savevm',
    invariant: 'a typed error or a fully loaded, running microVM; never a crash, a hang past 10 s, or a Buffer larger than the 16 MiB vmdesc limit the destination sets',
    maxLen: 64 << 10,
    timeoutMs: 10_000,
    // The loader's own bound on what it reads in one piece (maxVmdescLength).
    allocLimit: 16 << 20,
    dict: [
      'microvm-1', 'microvm-timer', 'cpu', 'ram', '0000:00:02.0/vfio', 'pc.ram', 'configuration', 'capabilities',
      'x-handover', 'switchover-ack', 'target-page-bits',
    ].map(s => Buffer.from(s)).concat(
      [0x5145564d, 0xffffffffef100001n, 0xffffffffef100002n, 0xffffffffef100003n, 0xffffffffef100004n].map(v => {
        const b = Buffer.alloc(typeof v === 'bigint' ? 8 : 4)
        if (typeof v === 'bigint') b.writeBigUInt64BE(v)
        else b.writeUInt32BE(v)
        return b
      }),
      // Section types, footer, EOS and friends.
      [[0x01], [0x02], [0x03], [0x04], [0x05], [0x06], [0x07], [0x08], [0x7e], [0, 0, 0, 0x10]].map(a => Buffer.from(a)),
    ),
    async seeds() {
      return []
    },
    async run(input) {
      writeFileSync(file, input)
      const dst = await (next ?? make())
      next = make()
      next.catch(() => undefined)
      try {
        const r = await incoming(dst, `file:${file}`)
        // Accepted: then everything arrived and the guest runs on it.
        if (r.status !== 'completed') throw new Finding(`incoming resolved with status ${r.status}`)
        if (dst.vm.state !== 'running') throw new Finding(`incoming completed but the VM is ${dst.vm.state}`)
        const dev = dst.emu?.state
        if (dev !== 'RUNNING') throw new Finding(`incoming completed but the VFIO device is ${dev}`)
      } catch (e) {
        assertTyped(e, TYPED, 'incoming')
      } finally {
        await dst.destroy()
      }
    },
    async close() {
      await next?.then(vm => vm.destroy(), () => undefined)
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
