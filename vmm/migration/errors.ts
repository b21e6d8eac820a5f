import type { MigrationStats } from './types.js'
import { VmmError } from '../core/errors.js'

/** A failed, cancelled or refused migration; `stats` as they were at the end. */
export class MigrationError extends VmmError {
  readonly code: string
  stats?: MigrationStats
  constructor(message: string, code: string, options?: { cause?: unknown; stats?: MigrationStats }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'MigrationError'
    this.code = code
    this.stats = options?.stats
  }
}
