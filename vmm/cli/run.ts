// vmm-migrate run: a microVM that lives until told to end, controlled only
// through QMP (docs/qmp.md), as qemu-system-x86_64 -qmp unix:PATH,server
// [-incoming defer] is; so a manager drives it with what it drives QEMU with.
import { QmpServer } from '../qmp/index.js'
import type { Options } from './args.js'
import type { Out } from './commands.js'
import { createMicroVm, parameters, capabilities } from './vm-options.js'

export async function cmdRun(o: Options, out: Out, signal?: AbortSignal): Promise<number> {
  const dest = o.incoming !== undefined
  const vm = await createMicroVm(dest ? 'dest' : 'source', o, dest && !o.noVerify)
  let end: (code: number) => void = () => undefined
  const ended = new Promise<number>((resolve) => (end = resolve))
  let server: QmpServer
  try {
    server = await QmpServer.listen(o.qmp!, {
      machine: vm,
      incoming: o.incoming,
      parameters: parameters(o),
      capabilities: capabilities(o),
      ram: vm.ram,
      // The device's markers depend on it (INIT_DATA_SENT); QMP may change it before each migration.
      beforeMigration: (c) => (vm.switchoverAck = c.switchoverAck),
      onIncomingFailed: (e) => {
        // QEMU exits too: a half-loaded guest can never run.
        process.stderr.write(`vmm-migrate run: incoming migration failed: ${e.message}\n`)
        end(1)
      },
      onQuit: () => end(0),
      vfioMigrationEvents: true,
    })
  } catch (e) {
    await vm.destroy().catch(() => undefined)
    throw e
  }
  const onAbort = () => end(0)
  signal?.addEventListener('abort', onAbort, { once: true })
  if (signal?.aborted) end(0)
  // What a supervisor waits for before it connects (QEMU says nothing; its socket appearing is the sign).
  if (o.events) out.line(JSON.stringify({ event: 'qmp-listening', path: server.path, role: dest ? 'destination' : 'source', vcpu: vm.vcpu.kind }))
  else if (!o.json) process.stderr.write(`vmm-migrate run: QMP on ${server.path} (${dest ? `destination, incoming ${o.incoming}` : 'source, guest running'})\n`)
  try {
    return await ended
  } finally {
    signal?.removeEventListener('abort', onAbort)
    await server.close()
    await vm.destroy().catch(() => undefined)
  }
}
