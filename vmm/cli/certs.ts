// Throwaway x509 credentials in QEMU's tls-creds-x509 layout, made with the
// openssl command: for `demo --tls` and the TLS tests. One directory holds
// both ends' files (QEMU accepts that too): ca-cert.pem, server-cert.pem,
// server-key.pem, client-cert.pem, client-key.pem. Never for production:
// the CA's key is left beside them.
import { execFile } from 'node:child_process'
import { copyFile, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

export interface CertOptions {
  /** subjectAltNames of the server certificate [localhost, 127.0.0.1, ::1]. */
  serverNames?: string[]
  /** The client certificate's subject, openssl style ['/O=vmm-migration/CN=source']. */
  clientSubject?: string
  /** Validity of the server and client certificates (UTC), default from an hour ago for a year. */
  serverValidity?: { from: Date; to: Date }
  clientValidity?: { from: Date; to: Date }
  /** The CA's subject ['/CN=vmm-migration throwaway CA']. */
  caSubject?: string
  /** A directory made by makeTlsCreds whose CA (ca-cert.pem, ca-key.pem) signs these too, instead of a new one. */
  ca?: string
}

function run(args: string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { cwd }, (e, _out, err) => {
      if (!e) return resolve()
      const code = (e as NodeJS.ErrnoException).code
      if (code === 'ENOENT') reject(new Error('making certificates needs the openssl command (apt-get install openssl)'))
      else reject(new Error(`openssl ${args[0]} failed: ${String(err).trim() || e.message}`))
    })
  })
}

/** openssl ca's date form. */
function asn1(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, '').replace(/\.\d+Z$/, 'Z')
}

const CONFIG = `[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ ca ]
default_ca = ca_here
[ ca_here ]
dir = .
database = ./ca-db/index.txt
new_certs_dir = ./ca-db
serial = ./ca-db/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[ anything ]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
countryName = optional
`

/** Makes a CA and a server and a client certificate signed by it in `dir` (created if missing). */
export async function makeTlsCreds(dir: string, o: CertOptions = {}): Promise<void> {
  await mkdir(join(dir, 'ca-db'), { recursive: true, mode: 0o700 })
  await writeFile(join(dir, 'ca-db', 'index.txt'), '')
  await writeFile(join(dir, 'ca-db', 'serial'), `${Date.now().toString(16).padStart(16, '0')}\n`)
  await writeFile(join(dir, 'openssl.cnf'), CONFIG)
  const key = (name: string) => run(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', name], dir)
  if (o.ca) {
    for (const f of ['ca-cert.pem', 'ca-key.pem']) await copyFile(join(o.ca, f), join(dir, f))
  } else {
    await key('ca-key.pem')
    await run(['req', '-config', 'openssl.cnf', '-x509', '-new', '-key', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '3650',
      '-subj', o.caSubject ?? '/CN=vmm-migration throwaway CA', '-extensions', 'v3_ca'], dir)
  }
  const hourAgo = new Date(Date.now() - 3600_000)
  const year = { from: hourAgo, to: new Date(Date.now() + 365 * 86400_000) }
  const names = o.serverNames ?? ['localhost', '127.0.0.1', '::1']
  const san = names.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',')
  const leaf = async (who: 'server' | 'client', subject: string, ext: string, validity: { from: Date; to: Date }) => {
    await key(`${who}-key.pem`)
    await run(['req', '-config', 'openssl.cnf', '-new', '-key', `${who}-key.pem`, '-out', `${who}.csr`, '-subj', subject], dir)
    await writeFile(join(dir, `${who}.ext`), `[ leaf ]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n${ext}\n`)
    await run(['ca', '-batch', '-config', 'openssl.cnf', '-notext', '-preserveDN', '-cert', 'ca-cert.pem', '-keyfile', 'ca-key.pem',
      '-in', `${who}.csr`, '-out', `${who}-cert.pem`, '-startdate', asn1(validity.from), '-enddate', asn1(validity.to),
      '-extfile', `${who}.ext`, '-extensions', 'leaf'], dir)
  }
  await leaf('server', '/O=vmm-migration/CN=destination', `extendedKeyUsage = serverAuth\nsubjectAltName = ${san}`, o.serverValidity ?? year)
  await leaf('client', o.clientSubject ?? '/O=vmm-migration/CN=source', 'extendedKeyUsage = clientAuth', o.clientValidity ?? year)
}
