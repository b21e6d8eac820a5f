// Waking native calls that use a channel's socket. A native transfer holds
// its own reference to the socket (a dup), so closing Node's fd neither
// stops it nor lets it write into whatever file reuses the number; shutdown(2)
// reaches the socket itself, so a blocked splice, read, write or poll on any
// reference returns (EPIPE, end of file, POLLHUP) at once.
import { optionalNative } from '../native/optional.js'

const shutdownSocket = optionalNative<(fd: number) => boolean>('shutdownSocket')

/** shutdown(2) both ways; false when not a connected socket or without the addon. */
export function wakeSocket(fd: number | undefined): boolean {
  return fd !== undefined && shutdownSocket !== null && shutdownSocket(fd)
}
