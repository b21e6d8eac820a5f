// QEMU-style migration addresses: tcp:HOST:PORT, unix:PATH, file:PATH,
// exec:CMD, fd:N.
import { StreamError } from '../stream/errors.js'

export type MigrationAddress =
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'unix'; path: string }
  | { kind: 'file'; path: string }
  | { kind: 'exec'; command: string }
  | { kind: 'fd'; fd: number }

export class UriError extends StreamError {
  /** The message without the errno code, for callers that report it as a usage mistake. */
  readonly detail: string
  constructor(uri: string, why: string) {
    const detail = `invalid migration URI ${JSON.stringify(uri)}: ${why}`
    super('EINVAL', detail)
    this.name = 'UriError'
    this.detail = detail
  }
}

export function parseUri(uri: string): MigrationAddress {
  if (typeof uri !== 'string' || uri.length === 0) throw new UriError(String(uri), 'empty')
  const colon = uri.indexOf(':')
  if (colon < 0) throw new UriError(uri, 'expected SCHEME:ADDRESS (tcp:, unix:, file:, exec:, fd:)')
  const scheme = uri.slice(0, colon)
  const rest = uri.slice(colon + 1)
  switch (scheme) {
    case 'tcp': {
      let host: string
      let portStr: string
      if (rest.startsWith('[')) {
        const close = rest.indexOf(']')
        if (close < 0 || rest[close + 1] !== ':') throw new UriError(uri, 'IPv6 host must be [ADDR]:PORT')
        host = rest.slice(1, close)
        portStr = rest.slice(close + 2)
      } else {
        const c = rest.lastIndexOf(':')
        if (c < 0) throw new UriError(uri, 'expected tcp:HOST:PORT')
        host = rest.slice(0, c)
        portStr = rest.slice(c + 1)
        if (host.includes(':')) throw new UriError(uri, 'IPv6 host must be bracketed: tcp:[ADDR]:PORT')
      }
      if (!/^\d{1,5}$/.test(portStr) || Number(portStr) > 65535) throw new UriError(uri, `port ${JSON.stringify(portStr)} is not a number in 0..65535`)
      return { kind: 'tcp', host: host || '0.0.0.0', port: Number(portStr) }
    }
    case 'unix':
      if (!rest) throw new UriError(uri, 'expected unix:PATH')
      if (Buffer.byteLength(rest) > 107) throw new UriError(uri, 'socket path longer than 107 bytes')
      return { kind: 'unix', path: rest }
    case 'file':
      if (!rest) throw new UriError(uri, 'expected file:PATH')
      return { kind: 'file', path: rest }
    case 'exec':
      if (!rest.trim()) throw new UriError(uri, 'expected exec:COMMAND')
      return { kind: 'exec', command: rest }
    case 'fd':
      if (!/^\d+$/.test(rest) || Number(rest) > 0x7fffffff) throw new UriError(uri, 'expected fd:N with N a non-negative integer')
      return { kind: 'fd', fd: Number(rest) }
    default:
      throw new UriError(uri, `unknown scheme ${JSON.stringify(scheme)}`)
  }
}

export function formatUri(a: MigrationAddress): string {
  switch (a.kind) {
    case 'tcp': return a.host.includes(':') ? `tcp:[${a.host}]:${a.port}` : `tcp:${a.host}:${a.port}`
    case 'unix': return `unix:${a.path}`
    case 'file': return `file:${a.path}`
    case 'exec': return `exec:${a.command}`
    case 'fd': return `fd:${a.fd}`
  }
}
