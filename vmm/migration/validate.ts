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
  intIn('cpu-throttle-initial', p.cpuThrottleInitial, 1, 99)
  intIn('cpu-throttle-increment', p.cpuThrottleIncrement, 1, 99)
  intIn('max-cpu-throttle', p.maxCpuThrottle, 1, 99)
  intIn('x-max-iterations', p.xMaxIterations, 0, Number.MAX_SAFE_INTEGER)
  intIn('x-resume-timeout', p.xResumeTimeoutMs, 1, 3600000)
  for (const k of Object.keys(p)) {
    if (!(k in KNOWN_PARAMS)) throw new MigrationError(`unknown migration parameter '${k}'`, 'EINVAL')
  }
  return p
}

const KNOWN_PARAMS: Record<keyof MigrationParameters, true> = {
  downtimeLimitMs: true, maxBandwidth: true, availSwitchoverBandwidth: true, cpuThrottleInitial: true,
  cpuThrottleIncrement: true, maxCpuThrottle: true, xMaxIterations: true, xResumeTimeoutMs: true,
}

export function checkCapabilities(c: MigrationCapabilities): MigrationCapabilities {
  for (const [k, v] of Object.entries(c)) {
    if (k !== 'switchoverAck' && k !== 'autoConverge') throw new MigrationError(`unknown migration capability '${k}'`, 'EINVAL')
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
