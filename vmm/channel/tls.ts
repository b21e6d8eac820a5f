// TLS on migration channels: credentials in QEMU's tls-creds-x509 layout,
// loaded by the native layer (on a worker thread) and handed to connect()
// and listen(). The session itself is native (crates/vmm-native/src/channel/
// tls.rs); see docs/tls.md.
import type { NativeTlsCreds } from '../../native/index.js'
import { native } from '../native/addon.js'
import { StreamError, toStreamError } from '../stream/errors.js'

export type TlsCreds = NativeTlsCreds

/** How long a TLS handshake may take unless the caller says otherwise, ms. */
export const DEFAULT_TLS_HANDSHAKE_MS = 5000

export interface TlsOptions {
  /** Credentials loaded with loadTlsCreds() for this side's role. */
  creds: TlsCreds
  /**
   * Outgoing only: the name the destination's certificate must carry (a
   * subjectAltName DNS name or IP address). Default: the URI's host; a
   * unix: URI has none, so it must be given.
   */
  hostname?: string
  /** Bound on the handshake, ms (default DEFAULT_TLS_HANDSHAKE_MS). */
  handshakeTimeoutMs?: number
}

/**
 * Loads the x509 credentials in `dir` for `endpoint`: 'server' (the
 * destination: ca-cert.pem, server-cert.pem, server-key.pem) or 'client'
 * (the source: ca-cert.pem, client-cert.pem, client-key.pem); ca-crl.pem is
 * used when present, dh-params.pem ignored (TLS 1.3 has no such thing).
 * `authz` (server only): the client certificate subject DNs let in, in
 * RFC 4514 form ("CN=src,O=Example"); empty or omitted lets in every client
 * the CA signed. Rejects with a StreamError naming the file at fault.
 */
export async function loadTlsCreds(dir: string, endpoint: 'server' | 'client', authz?: readonly string[]): Promise<TlsCreds> {
  if (typeof dir !== 'string' || dir === '') throw new StreamError('EINVAL', 'tls-creds: a directory is required')
  try {
    return await native.NativeTlsCreds.load(dir, endpoint, authz && authz.length ? [...authz] : undefined)
  } catch (e) {
    throw toStreamError(e, `tls-creds ${dir}`)
  }
}
