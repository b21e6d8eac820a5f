// From command-line options to a microVM and the orchestrator's settings.
import { MicroVm } from '../microvm/index.js'
import type { MigrationCapabilities, MigrationParameters } from '../migration/types.js'
import type { Options } from './args.js'

export async function createMicroVm(role: 'source' | 'dest', o: Options, verifyBeforeStart = false): Promise<MicroVm> {
  const vm = await MicroVm.create({
    role,
    ramSize: o.ram,
    vcpu: o.vcpu,
    workingSet: o.workingSet,
    vfio: o.deviceState > 0
      ? { stateSize: o.deviceState, dirtyRate: o.dirtyRate, dmaLogging: !o.noDmaLogging }
      : false,
    dmaPagesPerSec: o.deviceState > 0 ? o.dmaRate : 0,
    verifyBeforeStart,
    ramProof: !o.noRamProof,
  })
  vm.switchoverAck = o.switchoverAck
  return vm
}

export function parameters(o: Options): Partial<MigrationParameters> {
  return {
    downtimeLimitMs: o.downtimeLimitMs, maxBandwidth: o.maxBandwidth, linkTimeoutMs: o.linkTimeoutMs,
    handoverTimeoutMs: o.handoverTimeoutMs, handshakeTimeoutMs: o.handshakeTimeoutMs, incomingTimeoutMs: o.incomingTimeoutMs,
    tlsCreds: o.tlsCreds ?? '', tlsHostname: o.tlsHostname ?? '', tlsAuthz: o.tlsAuthz,
  }
}

export function capabilities(o: Options): Partial<MigrationCapabilities> {
  return { switchoverAck: o.switchoverAck, autoConverge: o.autoConverge, handover: o.handover }
}

/** Resolves after `ms`, or early once `signal` aborts (the caller checks which). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve()
  return new Promise<void>((r) => {
    const done = () => {
      clearTimeout(t)
      signal?.removeEventListener('abort', done)
      r()
    }
    const t = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })
}
