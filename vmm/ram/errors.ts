// Typed errors of the RAM loader. They extend the savevm LoadError so the
// loader passes them through unchanged (code, errno, section, offset).
import { constants } from 'node:os'
import { LoadError, type LoadErrorInfo } from '../savevm/errors.js'

const E = constants.errno

const make = (code: string, errno: number) =>
  class extends LoadError {
    constructor(message: string, info?: LoadErrorInfo) {
      super(code, errno, message, { section: 'ram', ...info })
    }
  }

/** A flag this loader does not support, or a combination QEMU's ram_load() refuses. */
export class RamBadFlagsError extends make('ERR_RAM_BAD_FLAGS', E.EINVAL) {}
/** A block id the destination does not have. */
export class RamUnknownBlockError extends make('ERR_RAM_UNKNOWN_BLOCK', E.ENOENT) {}
/** A block whose length differs from the destination's, or one listed twice. */
export class RamBlockSizeError extends make('ERR_RAM_BLOCK_SIZE', E.EINVAL) {}
/** The block list does not add up to the MEM_SIZE total, or leaves out a local block. */
export class RamMemSizeError extends make('ERR_RAM_MEM_SIZE', E.EINVAL) {}
/** A page offset past the end of its block. */
export class RamOffsetError extends make('ERR_RAM_OFFSET', E.EINVAL) {}
/** CONTINUE before any block was named. */
export class RamNoBlockError extends make('ERR_RAM_NO_BLOCK', E.EINVAL) {}
/** A ZERO page whose fill byte is not 0. */
export class RamZeroPageError extends make('ERR_RAM_ZERO_PAGE', E.EINVAL) {}
/** A section version other than 4. */
export class RamVersionError extends make('ERR_RAM_VERSION', E.EINVAL) {}
/** After the stream's end: pages of a block that no record ever carried. */
export class RamMissingPagesError extends make('ERR_RAM_MISSING_PAGES', E.ENODATA) {}
/**
 * A local migration's RAM record (blocks passed as file descriptors) that
 * cannot be taken: a destination not set up for one, a block that is not
 * fd-backed here, descriptors missing or of the wrong size.
 */
export class RamLocalError extends make('ERR_RAM_LOCAL', E.EPROTO) {}
