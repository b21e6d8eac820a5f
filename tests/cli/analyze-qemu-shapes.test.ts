// The analyzer on vmdesc shapes that QEMU 7.2 writes and our own writer never
// does (found by tests/interop/qemu-stream.test.ts against a real QEMU):
// "int32 le", "int32 equal", "uint8 equal", "int64 equal", "timer", QEMU 7.2's
// nullptr (named "uint64", one byte), VMSTATE_WITH_TMP's inline vmsd, a
// qtailq (its elements' vmsd inline too, but bytes of their own), and a
// subsection that follows a nested struct's own subsection. Integers are
// read as QEMU's readers in migration/vmstate-types.c read them: all
// big-endian ("int32 le" means checked less-or-equal), the sign the reader's.
import t from 'tap'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { analyzeFile } from '../../vmm/cli/analyze.js'

const be32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return b }
const counted = (s: string) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s, 'latin1')])
const sub = (name: string) => Buffer.concat([Buffer.from([0x05]), counted(name), be32(1)])

const vmdesc = {
  page_size: 4096,
  devices: [{
    name: 'dev', instance_id: 0, vmsd_name: 'dev', version: 3,
    fields: [
      { name: 'version_id', type: 'int32 le', size: 4 },
      { name: 'nirq', type: 'int32 equal', size: 4 },
      { name: 'num_floppies', type: 'uint8 equal', size: 1 },
      { name: 'sr_count', type: 'uint16 equal', size: 2 },
      { name: 'features', type: 'int64 equal', size: 8 },
      { name: 'ptr', type: 'uint64', size: 1 },
      { name: 'ptr2', type: 'nullptr', size: 1 },
      { name: 'queue', type: 'qtailq', vmsd_name: 'req', version: 1, fields: [{ name: 'tag', type: 'uint32', size: 4 }], size: 11 },
      { name: 'idle_timer', type: 'timer', size: 8 },
      { name: 'armed_timer', type: 'timer', size: 8 },
      { name: 'tmp', type: 'tmp', vmsd_name: 'fpreg_tmp', version: 0, fields: [{ name: 'tmp_mant', type: 'uint64', size: 8 }, { name: 'tmp_exp', type: 'uint16', size: 2 }], size: 10 },
    ],
    subsections: [
      {
        vmsd_name: 'dev/ymmh', version: 1,
        fields: [{ name: 'r', type: 'struct', size: 11, struct: { vmsd_name: 'reg', version: 1, fields: [{ name: 'v', type: 'uint16', size: 2 }], subsections: [{ vmsd_name: 'reg/hi', version: 1, fields: [{ name: 'hi', type: 'uint8', size: 1 }] }] } }],
      },
      { vmsd_name: 'dev/pkru', version: 1, fields: [{ name: 'pkru', type: 'uint32', size: 4 }] },
    ],
  }],
}

function stream(): Buffer {
  const payload = Buffer.concat([
    be32(2), be32(-2), Buffer.from([0xff]), Buffer.from([0xff, 0xfe]),
    Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), Buffer.from([0x30, 0x30]),
    // QTAILQ: 1, element; 1, element; 0.
    Buffer.from([1]), be32(7), Buffer.from([1]), be32(8), Buffer.from([0]),
    Buffer.alloc(8, 0xff), Buffer.from([0, 0, 0, 0, 0x3b, 0x9a, 0xca, 0x00]),
    Buffer.from([0x80, 0, 0, 0, 0, 0, 0, 1]), Buffer.from([0x3f, 0xff]),
    sub('dev/ymmh'), Buffer.from([0, 7]), sub('reg/hi'), Buffer.from([9]),
    sub('dev/pkru'), be32(0x55),
  ])
  const json = Buffer.from(JSON.stringify(vmdesc))
  return Buffer.concat([
    Buffer.from('QEVM'), be32(3),
    Buffer.from([0x07]), be32(4), Buffer.from('pc-x'),
    Buffer.from([0x04]), be32(1), counted('dev'), be32(0), be32(3), payload, Buffer.from([0x7e]), be32(1),
    Buffer.from([0x00]), Buffer.from([0x06]), be32(json.length), json,
  ])
}

t.test('QEMU field types and nested subsections decode', async t => {
  const file = join(await mkdtemp(join(tmpdir(), 'vmm-analyze-')), 'qemu-shapes.mig')
  const bytes = stream()
  await writeFile(file, bytes)
  const a = await analyzeFile(file)
  t.equal(a.sections.length, 1)
  t.same(a.sections[0]!.fields, {
    version_id: 2,
    nirq: -2,
    num_floppies: 255,
    sr_count: 0xfffe,
    features: '18446744073709551615',
    ptr: 'nullptr',
    ptr2: 'nullptr',
    queue: '0100000007010000000800',
    idle_timer: -1,
    armed_timer: 1_000_000_000,
    tmp: { tmp_mant: '9223372036854775809', tmp_exp: 0x3fff },
    'dev/ymmh (v1)': { r: { v: 7, 'reg/hi (v1)': { hi: 9 } } },
    'dev/pkru (v1)': { pkru: 0x55 },
  })
  t.equal(a.eofOffset, bytes.length - 5 - Buffer.byteLength(JSON.stringify(vmdesc)) - 1, 'eofOffset is the EOF byte')

  // A subsection named under its vmsd but missing from the vmdesc is still an error.
  const bad = Buffer.from(bytes)
  bad.write('dev/pkrX', bad.indexOf('dev/pkru'), 'latin1')
  const badFile = file.replace(/\.mig$/, '-bad.mig')
  await writeFile(badFile, bad)
  await t.rejects(analyzeFile(badFile), /subsection 'dev\/pkrX' is not in the vmdesc/)
})
