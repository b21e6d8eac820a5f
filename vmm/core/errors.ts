// The one base of every error this library throws for a reason of its own
// (a refused input, a failed migration, a device that would not move), so an
// embedder can tell them from bugs and from Node's own errors with one
// instanceof, and always finds a string `code` to branch on.

/**
 * Base of the library's errors. `code` is stable and meant for programs:
 * an errno name ('ECONNRESET', 'ETIMEDOUT') where a system call's verdict is
 * passed on, else an `ERR_*` name of this library.
 *
 * @example
 * import { VmmError } from 'vmm-migration'
 * try {
 *   await migration.start('tcp:dst:4444')
 * } catch (e) {
 *   if (e instanceof VmmError && e.code === 'ETIMEDOUT') console.error('link lost:', e.message)
 *   else throw e
 * }
 */
export abstract class VmmError extends Error {
  abstract readonly code: string
}
