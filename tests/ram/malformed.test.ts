import t from 'tap'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { loadvm } from '../../vmm/savevm/load.js'
import { writeHeader, writeSectionHeader, writeFooter, writeEof } from '../../vmm/savevm/writer.js'
import { QEMU_VM_SECTION_START } from '../../vmm/savevm/constants.js'
import { LoadError } from '../../vmm/savevm/errors.js'
import { RamFlag } from '../../vmm/ram/index.js'
import { PAGE, side } from './helpers.js'

/** A RAM payload built word by word. */
class Payload {
  parts: Buffer[] = []
  be64(v: number | bigint): this {
    const b = Buffer.alloc(8)
    b.writeBigUInt64BE(BigInt(v))
    this.parts.push(b)
    return this
  }
  str(s: string): this {
    const b = Buffer.from(s)
    this.parts.push(Buffer.from([b.length]), b)
    return this
  }
  u8(v: number): this {
    this.parts.push(Buffer.from([v]))
    return this
  }
  raw(b: Uint8Array): this {
    this.parts.push(Buffer.from(b))
    return this
  }
  memSize(blocks: [string, number][], total = blocks.reduce((s, b) => s + b[1], 0)): this {
    this.be64(total + RamFlag.MEM_SIZE)
    for (const [n, l] of blocks) this.str(n).be64(l)
    return this
  }
  bytes(): Buffer {
    return Buffer.concat(this.parts)
  }
}

const local = () => side([{ name: 'pc.ram', memory: new Uint8Array(16 * PAGE) }, { name: 'vga', memory: new Uint8Array(2 * PAGE), base: 1 << 30 }])
const goodList = (): [string, number][] => [['pc.ram', 16 * PAGE], ['vga', 2 * PAGE]]

/** Run one START section of `payload` (version `version`) through loadvm; `truncated`: the stream ends right after it. */
async function loadPayload(payload: Buffer, version = 4, dst = local(), truncated = false) {
  const [a, b] = memoryPair(1 << 26)
  const f = new MigStream(a)
  writeHeader(f)
  writeSectionHeader(f, QEMU_VM_SECTION_START, 0, 'ram', 0, version)
  f.putBuffer(payload)
  if (!truncated) {
    writeFooter(f, 0)
    writeEof(f)
  }
  await f.flush()
  await a.endWrites()
  await loadvm(new MigStream(b), dst.reg, { expectConfiguration: false, vmdesc: false })
  return dst
}

const cases: [string, Buffer, string, RegExp, number?][] = [
  ['unknown flag bit 0x400', new Payload().be64(0x400).bytes(), 'ERR_RAM_BAD_FLAGS', /0x400/],
  ['XBZRLE page', new Payload().memSize(goodList()).be64(RamFlag.XBZRLE).str('pc.ram').bytes(), 'ERR_RAM_BAD_FLAGS', /XBZRLE.*xbzrle capability/],
  ['multifd flush', new Payload().be64(RamFlag.MULTIFD_FLUSH).bytes(), 'ERR_RAM_BAD_FLAGS', /MULTIFD_FLUSH/],
  ['RDMA hook', new Payload().be64(RamFlag.HOOK).bytes(), 'ERR_RAM_BAD_FLAGS', /HOOK.*RDMA/],
  ['ZERO|PAGE together', new Payload().be64(RamFlag.ZERO | RamFlag.PAGE).str('pc.ram').bytes(), 'ERR_RAM_BAD_FLAGS', /ZERO\|PAGE/],
  ['no flag at all', new Payload().be64(PAGE).bytes(), 'ERR_RAM_BAD_FLAGS', /combination of flags none/],
  ['EOS|CONTINUE', new Payload().be64(RamFlag.EOS | RamFlag.CONTINUE).bytes(), 'ERR_RAM_BAD_FLAGS', /EOS cannot continue/],
  ['unknown block in the list', new Payload().memSize([['pc.ram', 16 * PAGE], ['ghost', 2 * PAGE]]).bytes(), 'ERR_RAM_UNKNOWN_BLOCK', /"ghost"/],
  ['unknown block on a page', new Payload().be64(RamFlag.ZERO).str('pc.rom').u8(0).bytes(), 'ERR_RAM_UNKNOWN_BLOCK', /"pc.rom".*'pc.ram', 'vga'/],
  ['block size mismatch', new Payload().memSize([['pc.ram', 32 * PAGE], ['vga', 2 * PAGE]]).bytes(), 'ERR_RAM_BLOCK_SIZE', /'pc.ram' is 131072 bytes on the source, 65536 here/],
  ['block listed twice', new Payload().memSize([['vga', 2 * PAGE], ['vga', 2 * PAGE]], 18 * PAGE).bytes(), 'ERR_RAM_BLOCK_SIZE', /'vga' is listed twice/],
  ['local block left out', new Payload().memSize([['pc.ram', 16 * PAGE]]).bytes(), 'ERR_RAM_MEM_SIZE', /not sent: 'vga'/],
  ['MEM_SIZE total too small', new Payload().memSize(goodList(), 17 * PAGE).bytes(), 'ERR_RAM_MEM_SIZE', /'vga'.*exceeds/],
  ['page offset past the block', new Payload().be64(16 * PAGE + RamFlag.PAGE).str('pc.ram').raw(new Uint8Array(PAGE)).bytes(), 'ERR_RAM_OFFSET', /0x10000 is outside block 'pc.ram'/],
  ['offset beyond 2^53', new Payload().be64((1n << 60n) + BigInt(RamFlag.ZERO)).str('pc.ram').u8(0).bytes(), 'ERR_RAM_OFFSET', /out of any range/],
  ['CONTINUE first', new Payload().be64(RamFlag.ZERO | RamFlag.CONTINUE).u8(0).bytes(), 'ERR_RAM_NO_BLOCK', /CONTINUE before any block/],
  ['zero page with fill 0x55', new Payload().be64(RamFlag.ZERO).str('vga').u8(0x55).bytes(), 'ERR_RAM_ZERO_PAGE', /fill byte 85/],
  ['truncated page data', new Payload().be64(RamFlag.PAGE).str('pc.ram').raw(new Uint8Array(100)).bytes(), 'ERR_SAVEVM_TRUNCATED', /page data|stream ends/],
  ['truncated header', new Payload().memSize(goodList()).raw(new Uint8Array(3)).bytes(), 'ERR_SAVEVM_TRUNCATED', /RAM record header/],
  ['truncated block list', new Payload().be64(18 * PAGE + RamFlag.MEM_SIZE).str('pc.ram').bytes(), 'ERR_SAVEVM_TRUNCATED', /length of block 'pc.ram'/],
  ['version 3', new Payload().be64(RamFlag.EOS).bytes(), 'ERR_RAM_VERSION', /version 3/, 3],
]

for (const [name, payload, code, msg, version] of cases) {
  t.test(`malformed: ${name}`, async t => {
    const err = await loadPayload(payload, version, local(), name.startsWith('truncated')).then(() => null, (e: unknown) => e)
    t.ok(err instanceof LoadError, `a typed LoadError (${(err as Error)?.message})`)
    t.equal((err as LoadError).code, code)
    t.match((err as Error).message, msg)
  })
}

t.test('a well-formed hand-built payload loads, CONTINUE carries over a section boundary', async t => {
  const page = Buffer.alloc(PAGE, 0xab)
  const dst = local()
  dst.ram.blocks[0].memory.fill(9, 3 * PAGE, 4 * PAGE)
  await loadPayload(new Payload()
    .memSize(goodList())
    .be64(2 * PAGE + RamFlag.PAGE).str('pc.ram').raw(page)
    .be64(3 * PAGE + RamFlag.ZERO + RamFlag.CONTINUE).u8(0)
    .be64(PAGE + RamFlag.PAGE).str('vga').raw(page)
    .be64(RamFlag.EOS).bytes(), 4, dst)
  const m = dst.ram.blocks[0].memory
  t.equal(Buffer.compare(m.subarray(2 * PAGE, 3 * PAGE), page), 0)
  t.ok(m.subarray(3 * PAGE, 4 * PAGE).every(v => v === 0), 'zero page cleared what was there')
  t.equal(Buffer.compare(dst.ram.blocks[1].memory.subarray(PAGE), page), 0)
  t.same(dst.ram.stats().load, { normalPages: 2, zeroPages: 1, sections: 1 })

  // The loader keeps the last block between sections, as QEMU's does.
  const h = dst.ram.entry.handlers
  const [a, b] = memoryPair()
  await a.writev([new Payload().be64(RamFlag.PAGE + RamFlag.CONTINUE).raw(page).be64(RamFlag.EOS).bytes()])
  await h.loadState!(new MigStream(b), { sectionId: 0, versionId: 4, approveSwitchover() {} })
  t.equal(Buffer.compare(dst.ram.blocks[1].memory.subarray(0, PAGE), page), 0, 'CONTINUE went to vga, the last block named')
})

t.test('bad configuration is refused at registration', async t => {
  const mem = new Uint8Array(PAGE)
  t.throws(() => side([]), /non-empty/)
  t.throws(() => side([{ name: '', memory: mem }]), /name/)
  t.throws(() => side([{ name: 'x'.repeat(256), memory: mem }]), /256 bytes/)
  t.throws(() => side([{ name: 'a', memory: mem }, { name: 'a', memory: mem, base: PAGE }]), /used twice/)
  t.throws(() => side([{ name: 'a', memory: new Uint8Array(100) }]), /multiple of the page size/)
  t.throws(() => side([{ name: 'a', memory: mem, base: 12 }]), /base 12/)
  t.throws(() => side([{ name: 'a', memory: new Uint8Array(2 * PAGE) }, { name: 'b', memory: mem, base: PAGE }]), /'a' and 'b' overlap/)
  t.throws(() => side([{ name: 'a', memory: mem }, { name: 'b', memory: mem, base: 2 ** 41 }]), /span/)
  t.throws(() => side([{ name: 'a', memory: 'nope' as never }]), /Uint8Array/)
  t.throws(() => side([{ name: 'a', memory: mem }], ['x' as never]), /dirtySources/)
})
