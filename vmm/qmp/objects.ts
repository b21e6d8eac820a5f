// The QOM objects a manager makes for a TLS migration, by QEMU's names:
// `object-add` of a `tls-creds-x509` (a credentials directory and which end
// it is for) and of an `authz-simple` or `authz-list` (which client
// certificate names the destination lets in); migrate-set-parameters then
// names them by id (tls-creds, tls-authz), as a manager drives QEMU.
import { QmpError } from './codec.js'
import { checkValue, parseArgs } from './args.js'

export interface TlsCredsObject {
  type: 'tls-creds-x509'
  dir: string
  endpoint: 'client' | 'server'
}

export interface AuthzObject {
  type: 'authz-simple' | 'authz-list'
  /** The client certificate subject DNs let in. */
  identities: string[]
}

export type QomObject = TlsCredsObject | AuthzObject

/** QEMU's rule for an object id: a letter, then letters, digits, '-', '.', '_'. */
const ID = /^[A-Za-z][A-Za-z0-9_.-]*$/

export class QomObjects {
  private readonly objects = new Map<string, QomObject>()

  /** object-add: `qom-type`, `id` and the type's own properties at the top level (QEMU 6.0+). */
  add(a: Record<string, unknown>): Record<string, never> {
    const type = a['qom-type']
    const id = a.id
    checkValue('qom-type', type, { type: 'str' })
    checkValue('id', id, { type: 'str' })
    if (!ID.test(id as string)) throw new QmpError('GenericError', `Parameter 'id' expects an identifier`)
    if (this.objects.has(id as string)) throw new QmpError('GenericError', `attempt to add duplicate property '${id}' to object (type 'container')`)
    const { 'qom-type': _t, id: _i, ...props } = a
    this.objects.set(id as string, this.make(type as string, props))
    return {}
  }

  /** object-del. */
  del(a: Record<string, unknown>): Record<string, never> {
    const { id } = parseArgs<{ id: string }>(a, { id: { type: 'str' } })
    if (!this.objects.delete(id)) throw new QmpError('GenericError', `object '${id}' not found`)
    return {}
  }

  /** The credentials `id` names, checked to be for `endpoint` (QEMU's migration_tls_get_creds). */
  creds(id: string, endpoint: 'client' | 'server'): TlsCredsObject {
    const o = this.objects.get(id)
    if (!o || o.type !== 'tls-creds-x509') throw new QmpError('GenericError', `No TLS credentials with id '${id}'`)
    if (o.endpoint !== endpoint) throw new QmpError('GenericError', `Expected TLS credentials for a ${endpoint} endpoint`)
    return o
  }

  /** The identities the authz object `id` lets in. */
  authz(id: string): string[] {
    const o = this.objects.get(id)
    if (!o || (o.type !== 'authz-simple' && o.type !== 'authz-list')) throw new QmpError('GenericError', `No authorization object with id '${id}'`)
    return o.identities
  }

  private make(type: string, p: Record<string, unknown>): QomObject {
    switch (type) {
      case 'tls-creds-x509': {
        const { dir, endpoint = 'client', 'verify-peer': verify = true } = parseArgs<{ dir: string; endpoint?: 'client' | 'server'; 'verify-peer'?: boolean; 'sanity-check'?: boolean; loaded?: boolean }>(p, {
          dir: { type: 'str' }, endpoint: { type: 'str', optional: true, values: ['client', 'server'] }, 'verify-peer': { type: 'bool', optional: true },
          'sanity-check': { type: 'bool', optional: true }, loaded: { type: 'bool', optional: true },
        })
        // Mutual authentication is what makes an incoming guest trustworthy here; no anonymous peers.
        if (!verify) throw new QmpError('GenericError', "tls-creds-x509: verify-peer=off is not supported: migration peers always authenticate each other")
        if (dir === '') throw new QmpError('GenericError', "tls-creds-x509: 'dir' must name the credentials directory")
        return { type, dir, endpoint }
      }
      case 'authz-simple': {
        const { identity } = parseArgs<{ identity: string }>(p, { identity: { type: 'str' } })
        return { type, identities: [identity] }
      }
      case 'authz-list': {
        const { rules = [], policy = 'deny' } = parseArgs<{ rules?: unknown; policy?: string }>(p, { rules: { type: 'any', optional: true }, policy: { type: 'str', optional: true, values: ['allow', 'deny'] } })
        // What a TLS listener can enforce: a list of names let in, every other name refused.
        if (policy !== 'deny') throw new QmpError('GenericError', "authz-list: only policy 'deny' (a list of names let in) is supported")
        if (!Array.isArray(rules)) throw new QmpError('GenericError', "Invalid parameter type for 'rules', expected: array")
        const identities = rules.map((r, i) => {
          if (r === null || typeof r !== 'object' || Array.isArray(r)) throw new QmpError('GenericError', `Invalid parameter type for 'rules[${i}]', expected: object`)
          const { match, policy: rp, format = 'exact' } = parseArgs<{ match: string; policy: string; format?: string }>(r as Record<string, unknown>, {
            match: { type: 'str' }, policy: { type: 'str', values: ['allow', 'deny'] }, format: { type: 'str', optional: true, values: ['exact', 'glob'] },
          })
          if (rp !== 'allow' || format !== 'exact') throw new QmpError('GenericError', `authz-list: rules[${i}]: only exact 'allow' rules are supported`)
          return match
        })
        return { type, identities }
      }
      default:
        throw new QmpError('GenericError', `Invalid parameter 'qom-type': '${type}' is not a supported object type here (tls-creds-x509, authz-simple, authz-list)`)
    }
  }
}
