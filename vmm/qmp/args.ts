// Command arguments checked the way QEMU's QAPI input visitor checks them,
// with its messages: a missing member, a wrong type, a value outside an
// enum, a member nobody asked for.
import { QmpError } from './codec.js'

export type ArgType = 'str' | 'bool' | 'int' | 'uint' | 'any'

export interface ArgSpec {
  type: ArgType
  optional?: boolean
  /** For 'str': the values accepted (a QAPI enum). */
  values?: readonly string[]
}

const EXPECTED: Record<ArgType, string> = { str: 'string', bool: 'boolean', int: 'integer', uint: 'integer', any: 'any' }

/** Check one value against `spec`; `name` is its path as QEMU prints it ('capabilities[0].state'). */
export function checkValue(name: string, v: unknown, spec: ArgSpec): void {
  const bad = () => new QmpError('GenericError', `Invalid parameter type for '${name}', expected: ${EXPECTED[spec.type]}`)
  switch (spec.type) {
    case 'str':
      if (typeof v !== 'string') throw bad()
      if (spec.values && !spec.values.includes(v)) throw new QmpError('GenericError', `Parameter '${name}' does not accept value '${v}'`)
      return
    case 'bool':
      if (typeof v !== 'boolean') throw bad()
      return
    case 'int':
    case 'uint':
      if (typeof v !== 'number' || !Number.isInteger(v)) throw bad()
      // Past 2^53 a JSON number is no longer the integer the client wrote.
      if (!Number.isSafeInteger(v)) throw new QmpError('GenericError', `Parameter '${name}' expects an integer of at most 2^53-1`)
      if (spec.type === 'uint' && v < 0) throw new QmpError('GenericError', `Parameter '${name}' expects uint64`)
      return
    case 'any':
      return
  }
}

/**
 * The arguments of a command, every one checked; members not in `specs` are
 * refused, as QAPI does.
 */
export function parseArgs<T extends Record<string, unknown>>(args: Record<string, unknown>, specs: Record<string, ArgSpec>, prefix = ''): T {
  for (const k of Object.keys(args)) {
    if (!Object.hasOwn(specs, k)) throw new QmpError('GenericError', `Parameter '${prefix}${k}' is unexpected`)
  }
  const out: Record<string, unknown> = {}
  for (const [k, spec] of Object.entries(specs)) {
    if (!Object.hasOwn(args, k)) {
      if (!spec.optional) throw new QmpError('GenericError', `Parameter '${prefix}${k}' is missing`)
      continue
    }
    checkValue(`${prefix}${k}`, args[k], spec)
    out[k] = args[k]
  }
  return out as T
}
