// checkProof: what the destination does with the source's digests.
import t from 'tap'
import { checkProof, IntegrityError, ProofSectionError } from '../../vmm/microvm/proof.js'

const here = { ramDigest: 'aa', deviceDigest: 'dd' }

t.test('equal digests pass; a differing one names what differs', async (t) => {
  t.doesNotThrow(() => checkProof({ ...here }, here))
  t.throws(() => checkProof({ ...here, ramDigest: 'bb' }, here), IntegrityError)
  t.throws(() => checkProof({ ...here, deviceDigest: 'ee' }, here), { what: 'device state' })
})

t.test('a source without a RAM digest (--no-ram-proof): refused with what to do, not called an altered stream', async (t) => {
  const e = t.throws(() => checkProof({ ramDigest: '', deviceDigest: 'dd' }, here)) as Error
  t.type(e, ProofSectionError)
  t.match(e.message, /the source sent no RAM digest \(it ran with --no-ram-proof\)/)
  t.match(e.message, /--no-verify/)
  t.notMatch(e.message, /altered/)
})
