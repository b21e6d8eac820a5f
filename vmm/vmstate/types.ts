// Declarative device state, modelled on QEMU's VMStateDescription. A device
// describes its fields in data; the same description drives saving, loading
// and the vmdesc JSON.

export type ScalarType = 'uint8' | 'uint16' | 'uint32' | 'uint64' | 'int8' | 'int16' | 'int32' | 'int64' | 'bool'

/** Anything with named properties; fields are read and written by name. */
export type State = Record<string, unknown>

interface FieldCommon {
  name: string
  /** First version of the description that has this field (QEMU's field version_id). */
  since?: number
  /** Dynamic presence test (QEMU's field_exists). */
  exists?: (obj: State, versionId: number) => boolean
  /**
   * Destination: whether this side can run with the value just loaded
   * (QEMU's VMSTATE_VALIDATE): a reason when it cannot, which refuses the
   * stream with an InvalidFieldError naming the field. Sees the whole
   * object, so it may compare with fields loaded before.
   */
  check?: (value: unknown, obj: State) => string | undefined
}

/**
 * Element count: a constant, or the name of an earlier integer field holding
 * it. Counts read from the stream are checked against maxCount before
 * anything is allocated.
 */
interface Countable {
  count?: number | string
  maxCount?: number
}

export interface ScalarField extends FieldCommon, Countable {
  type: ScalarType
  /** Integer types: the smallest value (of every element) this side accepts from a stream. */
  min?: number | bigint
  /** Integer types: the largest value (an index's last slot, say) this side accepts from a stream. */
  max?: number | bigint
}

export interface BufferField extends FieldCommon {
  type: 'buffer'
  /** Fixed byte length, or the name of an earlier integer field holding it. */
  length: number | string
  /** Upper bound for a field-given length (default 1 MiB). */
  maxLength?: number
}

export interface StructField extends FieldCommon, Countable {
  type: 'struct'
  vmsd: VMStateDescription
}

export type VMStateField = ScalarField | BufferField | StructField

export interface VMStateDescription {
  name: string
  versionId: number
  /** Oldest version this code can still load (default: versionId). */
  minimumVersionId?: number
  fields: VMStateField[]
  subsections?: VMStateDescription[]
  /** For subsections: whether to send it at all. */
  needed?: (obj: State) => boolean
  preSave?: (obj: State) => void | Promise<void>
  preLoad?: (obj: State) => void | Promise<void>
  /** After the fields (and subsections) loaded; throw an InvalidFieldError to refuse values that cannot run together. */
  postLoad?: (obj: State, versionId: number) => void | Promise<void>
}

/** One field in QEMU's vmdesc JSON. */
export interface VmdescField {
  name: string
  array_len?: number
  index?: number
  type: string
  struct?: VmdescVmsd
  size: number
}

export interface VmdescVmsd {
  vmsd_name: string
  version: number
  fields: VmdescField[]
  subsections?: VmdescVmsd[]
}

export const SCALAR_SIZE: Record<ScalarType, number> = {
  uint8: 1, int8: 1, bool: 1, uint16: 2, int16: 2, uint32: 4, int32: 4, uint64: 8, int64: 8,
}

export const DEFAULT_MAX_LENGTH = 1 << 20
export const DEFAULT_MAX_COUNT = 1 << 16
