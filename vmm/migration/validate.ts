// Parameters and capabilities come from users (CLI flags, QMP-like calls):
// each bad value is refused with its name, before anything starts.
import { MigrationError } from './errors.js'
import type { MigrationCapabilities, MigrationParameters } from './types.js'

function intIn(name: string, v: unknown, min: number, max: number): void {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new MigrationError(`parameter ${name} must be an integer in ${min}..${max}, got ${JSON.stringify(v)}`, 'EINVAL')
  }
}

export function checkParameters(p: MigrationParameters): MigrationParameters {
  intIn('downtime-limit', p.downtimeLimitMs, 0, 2000000)
  intIn('max-bandwidth', p.maxBandwidth, 0, Number.MAX_SAFE_INTEGER)
  intIn('avail-switchover-bandwidth', p.availSwitchoverBandwidth, 0, Number.MAX_SAFE_INTEGER)
  if (p.sendSwitchoverStart !== true && p.sendSwitchoverStart !== false && p.sendSwitchoverStart !== 'auto') {
    throw new MigrationError(`parameter send-switchover-start must be true, false or 'auto', got ${JSON.stringify(p.sendSwitchoverStart)}`, 'EINVAL')
  }
  intIn('cpu-throttle-initial', p.cpuThrottleInitial, 1, 99)
  intIn('cpu-throttle-increment', p.cpuThrottleIncrement, 1, 99)
  intIn('max-cpu-throttle', p.maxCpuThrottle, 1, 99)
  intIn('x-max-iterations', p.xMaxIterations, 0, Number.MAX_SAFE_INTEGER)
  intIn('link-timeout', p.linkTimeoutMs, 0, 3600000)
  intIn('handover-timeout', p.handoverTimeoutMs, 1, 3600000)
  intIn('handshake-timeout', p.handshakeTimeoutMs, 1, 3600000)
  intIn('incoming-timeout', p.incomingTimeoutMs, 0, 86400000)
  if (typeof p.tlsCreds !== 'string') throw new MigrationError(`parameter tls-creds must be a directory path or '', got ${JSON.stringify(p.tlsCreds)}`, 'EINVAL')
  if (typeof p.tlsHostname !== 'string') throw new MigrationError(`parameter tls-hostname must be a string, got ${JSON.stringify(p.tlsHostname)}`, 'EINVAL')
  if (!Array.isArray(p.tlsAuthz) || p.tlsAuthz.some(d => typeof d !== 'string' || d.trim() === '')) {
    throw new MigrationError(`parameter tls-authz must be a list of distinguished names, got ${JSON.stringify(p.tlsAuthz)}`, 'EINVAL')
  }
  // Settings that would silently do nothing without TLS are refused.
  if (!p.tlsCreds && (p.tlsHostname || p.tlsAuthz.length)) {
    throw new MigrationError(`parameter ${p.tlsHostname ? 'tls-hostname' : 'tls-authz'} needs tls-creds`, 'EINVAL')
  }
  for (const k of Object.keys(p)) {
    if (!(k in KNOWN_PARAMS)) throw new MigrationError(`unknown migration parameter '${k}'`, 'EINVAL')
  }
  return p
}

const KNOWN_PARAMS: Record<keyof MigrationParameters, true> = {
  downtimeLimitMs: true, maxBandwidth: true, availSwitchoverBandwidth: true, cpuThrottleInitial: true,
  sendSwitchoverStart: true,
  cpuThrottleIncrement: true, maxCpuThrottle: true, xMaxIterations: true, linkTimeoutMs: true,
  handoverTimeoutMs: true, handshakeTimeoutMs: true, incomingTimeoutMs: true,
  tlsCreds: true, tlsHostname: true, tlsAuthz: true,
}

export function checkCapabilities(c: MigrationCapabilities): MigrationCapabilities {
  for (const [k, v] of Object.entries(c)) {
    if (k !== 'switchoverAck' && k !== 'autoConverge' && k !== 'handover' && k !== 'pauseBeforeSwitchover') throw new MigrationError(`unknown migration capability '${k}'`, 'EINVAL')
    if (typeof v !== 'boolean') throw new MigrationError(`capability ${k} must be true or false, got ${JSON.stringify(v)}`, 'EINVAL')
  }
  return c
}

/**
 * The capabilities both ends must agree on, by QEMU's names: switchover-ack
 * changes the stream (INIT_DATA_SENT) and the return path, so a mismatch is
 * refused in the configuration section. auto-converge is the source's own.
 */
export function validatedCapabilities(c: MigrationCapabilities): string[] {
  return c.switchoverAck ? ['switchover-ack'] : []
}

/**
 * The handover's name in the configuration section. The source lists it when
 * it will use the handover (its capability is on and the channel has a return
 * path); a destination with the capability off refuses such a stream, one with
 * it on follows whatever the source declared (a QEMU source, or a save to a
 * file, declares nothing: the destination then starts the guest itself).
 */
export const HANDOVER_CAPABILITY = 'x-handover'
