// Waking native calls that use a channel's socket. A native transfer holds
// its own reference to the socket (a dup), so closing Node's fd neither
// stops it nor lets it write into whatever file reuses the number; shutdown(2)
// reaches the socket itself, so a blocked splice, read, write or poll on any
// reference returns (EPIPE, end of file, POLLHUP) at once.
let shutdownSocket: ((fd: number) => boolean) | null = null
try {
  const m = (await import('../native/addon.js')) as { native: Record<string, unknown> }
  const f = m.native.shutdownSocket
  if (typeof f === 'function') shutdownSocket = fd => (f as (fd: number) => boolean).call(m.native, fd)
} catch {
  shutdownSocket = null
}

/** shutdown(2) both ways; false when not a connected socket or without the addon. */
export function wakeSocket(fd: number | undefined): boolean {
  return fd !== undefined && shutdownSocket !== null && shutdownSocket(fd)
}
