// The microVM's proof: the source's digests of guest RAM and device state at
// the switchover, as a section of their own ("microvm-proof"), saved after
// RAM's last pages with the VM stopped. The destination compares its own
// digests of what it loaded before it reports ready, so a stream corrupted
// in flight fails the migration and the source resumes, instead of a
// destination that has started the guest finding out afterwards.
import type { MigStream } from '../stream/stream.js'
import type { SaveVMHandlers } from '../savevm/registry.js'
import { VmmError } from '../core/errors.js'

export const PROOF_IDSTR = 'microvm-proof'

/** Hex digests: BLAKE3 of all guest RAM; the device's state digest ('' without a device). */
export interface Proof {
  ramDigest: string
  deviceDigest: string
}

/** A digest is 64 hex characters; anything longer is a corrupt section. */
const MAX_DIGEST = 64

/** The loaded guest is not what the source had: its digests differ. */
export class IntegrityError extends VmmError {
  readonly code = 'ERR_MICROVM_INTEGRITY'
  readonly errno = 74 // EBADMSG
  constructor(readonly what: 'RAM' | 'device state', readonly here: string, readonly source: string) {
    super(`ERR_MICROVM_INTEGRITY: the ${what} loaded here is not what the source had at the switchover (BLAKE3 ${here || '(none)'} here, ${source || '(none)'} at the source): the stream was altered on the way`)
    this.name = 'IntegrityError'
  }
}

/** A proof section that does not parse. */
export class ProofSectionError extends VmmError {
  readonly code = 'ERR_MICROVM_PROOF'
  readonly errno = 22 // EINVAL
  constructor(message: string) {
    super(`ERR_MICROVM_PROOF: ${message}`)
    this.name = 'ProofSectionError'
  }
}

async function getDigest(f: MigStream, what: string): Promise<string> {
  const len = await f.getBe32()
  if (f.error) throw f.error
  if (len > MAX_DIGEST) throw new ProofSectionError(`${what} digest of ${len} bytes (at most ${MAX_DIGEST})`)
  const s = (await f.getBuffer(len)).toString('latin1')
  if (f.error) throw f.error
  if (!/^[0-9a-f]*$/.test(s)) throw new ProofSectionError(`${what} digest is not lowercase hex`)
  return s
}

/**
 * Source: `take` the digests when the section is saved (the VM is stopped
 * and RAM's last pages are out). Destination: `loaded` gets what arrived.
 */
export function proofSectionHandlers(take: (f: MigStream) => Promise<Proof>, loaded: (p: Proof | undefined) => void): SaveVMHandlers {
  return {
    async saveState(f: MigStream) {
      const p = await take(f)
      for (const d of [p.ramDigest, p.deviceDigest]) {
        f.putBe32(d.length)
        f.putBuffer(Buffer.from(d, 'latin1'))
      }
    },
    loadSetup() {
      loaded(undefined)
    },
    async loadState(f: MigStream) {
      const ramDigest = await getDigest(f, 'RAM')
      const deviceDigest = await getDigest(f, 'device')
      loaded({ ramDigest, deviceDigest })
    },
  }
}

/**
 * Throws an IntegrityError naming the first digest that differs, or a
 * ProofSectionError when the source sent no RAM digest (it ran with
 * `ramProof: false`, `--no-ram-proof`): RAM cannot be checked then, and a
 * destination asked to verify does not start what it could not check.
 */
export function checkProof(expected: Proof, here: Proof): void {
  if (expected.ramDigest === '' && here.ramDigest !== '') {
    throw new ProofSectionError('the source sent no RAM digest (it ran with --no-ram-proof), so the RAM loaded here cannot be verified; ' +
      'start this destination with --no-verify (verifyBeforeStart: false), or the source without --no-ram-proof')
  }
  if (here.ramDigest !== expected.ramDigest) throw new IntegrityError('RAM', here.ramDigest, expected.ramDigest)
  if (here.deviceDigest !== expected.deviceDigest) throw new IntegrityError('device state', here.deviceDigest, expected.deviceDigest)
}
