// The destination side: accept one migration, load it, start the VM, and tell
// the source over the return path — RESUME_OK once the guest runs, SHUT with
// an errno if anything failed, so the source can resume its own VM.
import { listen, type Listener } from '../channel/connect.js'
import type { Channel } from '../channel/types.js'
import { ReturnPathWriter } from '../channel/return-path.js'
import { MigStream } from '../stream/stream.js'
import { loadvm } from '../savevm/load.js'
import { MigrationError } from './errors.js'
import { DEFAULT_CAPABILITIES, type MigratableVm, type MigrationCapabilities } from './types.js'
import { checkCapabilities, validatedCapabilities } from './validate.js'

export interface IncomingOptions {
  capabilities?: Partial<MigrationCapabilities>
  /** Called with the bound address once listening (tcp port 0 becomes the real port). */
  onListening?(address: string): void
  signal?: AbortSignal
}

export interface IncomingResult {
  status: 'completed'
  /** From the first byte to the end of the stream, ms. */
  loadTimeMs: number
  /** From the end of the stream to the VM running, ms. */
  resumeTimeMs: number
  sections: number
}

const duplex = (c: Channel) => c.kind === 'tcp' || c.kind === 'unix' || c.kind === 'memory'
const errnoOf = (e: unknown) => Math.abs(Number((e as { errno?: number }).errno)) || 5

/** Accept one incoming migration on `source` (a URI, a Listener, or an accepted channel) into `machine`. */
export async function incoming(machine: MigratableVm, source: string | Listener | Channel, opts: IncomingOptions = {}): Promise<IncomingResult> {
  const caps = checkCapabilities({ ...DEFAULT_CAPABILITIES, ...opts.capabilities })
  const { vm, registry } = machine
  if (vm.state !== 'inmigrate' && vm.state !== 'prelaunch') {
    throw new MigrationError(`cannot receive a migration into a VM in run state '${vm.state}'`, 'EINVAL')
  }
  let channel: Channel
  if (typeof source === 'string' || 'accept' in source) {
    const listener = typeof source === 'string' ? await listen(source) : source
    opts.onListening?.(listener.address)
    const onAbort = () => void listener.close()
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    try {
      channel = await listener.accept()
    } finally {
      opts.signal?.removeEventListener('abort', onAbort)
      if (typeof source === 'string') void listener.close()
    }
  } else {
    channel = source
  }
  if (vm.state === 'prelaunch') vm.runstateSet('inmigrate')
  const f = new MigStream(channel)
  const rp = duplex(channel) ? new ReturnPathWriter(f) : null
  const onAbort = () => f.shutdown('incoming migration cancelled')
  opts.signal?.addEventListener('abort', onAbort, { once: true })
  const t0 = performance.now()
  // Tell the source how far loading has got, so it can count what is still
  // queued here as pending (see the pre-copy loop in outgoing.ts).
  let reported = -1
  const ticker = rp
    ? setInterval(() => {
      const n = f.bytesRead
      if (n !== reported && !f.error) {
        reported = n
        rp.loadProgress(n).catch(() => undefined)
      }
    }, 20)
    : undefined
  try {
    const res = await loadvm(f, registry, {
      machine: machine.machine,
      capabilities: validatedCapabilities(caps),
      onSwitchoverAck: rp ? () => rp.switchoverAck() : undefined,
    })
    clearInterval(ticker)
    const loaded = performance.now()
    await machine.vfio?.finishIncoming()
    await vm.vmStart()
    const resumed = performance.now()
    if (rp) await rp.resumeOk({ loadTimeUs: (loaded - t0) * 1000, resumedAtMs: Date.now() }).catch(() => undefined)
    return { status: 'completed', loadTimeMs: loaded - t0, resumeTimeMs: resumed - loaded, sections: res.sections }
  } catch (e) {
    await machine.vfio?.abortIncoming().catch(() => undefined)
    if (rp && !f.error) {
      await rp.failReason((e as Error).message ?? String(e)).catch(() => undefined)
      await rp.shut(errnoOf(e)).catch(() => undefined)
    }
    throw e instanceof MigrationError ? e : new MigrationError(`incoming migration failed: ${(e as Error).message}`, (e as { code?: string }).code ?? 'EIO', { cause: e })
  } finally {
    clearInterval(ticker)
    opts.signal?.removeEventListener('abort', onAbort)
    await f.close().catch(() => undefined)
  }
}
