// Typed errors of the savevm loader and VMState. Every error carries a stable
// `code`, the errno it maps to, the section it happened in (when known) and
// the stream offset where it was detected.
import { constants } from 'node:os'
import { VmmError } from '../core/errors.js'

const E = constants.errno

export interface LoadErrorInfo {
  section?: string
  offset?: number
  cause?: unknown
}

export class LoadError extends VmmError {
  readonly code: string
  readonly errno: number
  readonly section?: string
  readonly offset?: number
  constructor(code: string, errno: number, message: string, info: LoadErrorInfo = {}) {
    const where = [info.section ? `section ${info.section}` : '', info.offset !== undefined ? `offset ${info.offset}` : '']
      .filter(Boolean).join(', ')
    super(`${code}: ${message}${where ? ` (${where})` : ''}`, { cause: info.cause })
    this.name = new.target.name
    this.code = code
    this.errno = errno
    this.section = info.section
    this.offset = info.offset
  }
}

const make = (code: string, errno: number) =>
  class extends LoadError {
    constructor(message: string, info?: LoadErrorInfo) {
      super(code, errno, message, info)
    }
  }

export class BadMagicError extends make('ERR_SAVEVM_BAD_MAGIC', E.EINVAL) {}
export class UnsupportedVersionError extends make('ERR_SAVEVM_BAD_VERSION', E.ENOTSUP) {}
export class ConfigurationError extends make('ERR_SAVEVM_CONFIGURATION', E.EINVAL) {}
export class UnknownSectionTypeError extends make('ERR_SAVEVM_UNKNOWN_SECTION_TYPE', E.EINVAL) {}
export class UnknownSectionIdError extends make('ERR_SAVEVM_UNKNOWN_SECTION_ID', E.EINVAL) {}
export class UnknownIdstrError extends make('ERR_SAVEVM_UNKNOWN_IDSTR', E.ENOENT) {}
export class VersionTooNewError extends make('ERR_SAVEVM_VERSION_TOO_NEW', E.EINVAL) {}
export class VersionTooOldError extends make('ERR_SAVEVM_VERSION_TOO_OLD', E.EINVAL) {}
export class FooterMismatchError extends make('ERR_SAVEVM_FOOTER', E.EINVAL) {}
export class TruncatedError extends make('ERR_SAVEVM_TRUNCATED', E.ENODATA) {}
export class TrailingGarbageError extends make('ERR_SAVEVM_TRAILING_GARBAGE', E.EINVAL) {}
export class LengthLimitError extends make('ERR_SAVEVM_LENGTH_LIMIT', E.EMSGSIZE) {}
export class BadCommandError extends make('ERR_SAVEVM_BAD_COMMAND', E.EINVAL) {}
export class UnknownSubsectionError extends make('ERR_SAVEVM_UNKNOWN_SUBSECTION', E.EINVAL) {}
export class VmdescError extends make('ERR_SAVEVM_VMDESC', E.EINVAL) {}
export class HandlerError extends make('ERR_SAVEVM_HANDLER', E.EIO) {}
/** The stream ended without a section this side registered and needs (every one is named). */
export class MissingSectionError extends make('ERR_SAVEVM_MISSING_SECTION', E.ENOENT) {}
export class StreamFailedError extends make('ERR_SAVEVM_STREAM', E.EIO) {}
/** The source said it cancelled (the CANCEL_PING command): not a broken stream. */
export class MigrationCancelledError extends make('ERR_MIGRATION_CANCELLED', E.ECANCELED) {}

/**
 * A value this side cannot run with: a VMState field outside its declared
 * range or refused by its check, or a postLoad that refuses what it got (as
 * QEMU's post_load can fail). `field` names it ("microvm-timer.periodUs").
 */
export class InvalidFieldError extends LoadError {
  readonly field: string
  constructor(field: string, message: string, info?: LoadErrorInfo) {
    super('ERR_VMSTATE_INVALID', E.EINVAL, `${field}: ${message}`, info)
    this.field = field
  }
}

/** Errors of the saving side (bad device state, vetoed migration, ...). */
export class SaveError extends VmmError {
  readonly code: string
  readonly errno: number
  constructor(code: string, message: string, options?: { cause?: unknown; errno?: number }) {
    super(`${code}: ${message}`, options)
    this.name = 'SaveError'
    this.code = code
    this.errno = options?.errno ?? E.EINVAL
  }
}
