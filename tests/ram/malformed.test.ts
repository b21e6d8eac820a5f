import t from 'tap'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { LoadError } from '../../vmm/savevm/errors.js'
import { RamFlag } from '../../vmm/ram/index.js'
import { PAGE, side } from './helpers.js'
import { Payload, local, goodList, loadPayload, malformedCases as cases } from './cases.js'


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
  // Three of the 18 pages: every record applies, and the end refuses the rest never sent.
  await t.rejects(loadPayload(new Payload()
    .memSize(goodList())
    .be64(2 * PAGE + RamFlag.PAGE).str('pc.ram').raw(page)
    .be64(3 * PAGE + RamFlag.ZERO + RamFlag.CONTINUE).u8(0)
    .be64(PAGE + RamFlag.PAGE).str('vga').raw(page)
    .be64(RamFlag.EOS).bytes(), 4, dst), {
    code: 'ERR_RAM_MISSING_PAGES',
    message: /pages never sent: 'pc.ram': 14 of 16 pages \(the first at offset 0x0\); 'vga': 1 of 2 pages \(the first at offset 0x0\)/,
  })
  const m = dst.ram.blocks[0].memory
  t.equal(Buffer.compare(m.subarray(2 * PAGE, 3 * PAGE), page), 0)
  t.ok(m.subarray(3 * PAGE, 4 * PAGE).every(v => v === 0), 'zero page cleared what was there')
  t.equal(Buffer.compare(dst.ram.blocks[1].memory.subarray(PAGE), page), 0)
  t.same(dst.ram.stats().load, { normalPages: 2, zeroPages: 1, sections: 1, passedBlocks: 0 })

  // The loader keeps the last block between sections, as QEMU's does.
  const h = dst.ram.entry.handlers
  const [a, b] = memoryPair()
  await a.writev([new Payload().be64(RamFlag.PAGE + RamFlag.CONTINUE).raw(page).be64(RamFlag.EOS).bytes()])
  await h.loadState!(new MigStream(b), { sectionId: 0, versionId: 4, approveSwitchover() {} })
  t.equal(Buffer.compare(dst.ram.blocks[1].memory.subarray(0, PAGE), page), 0, 'CONTINUE went to vga, the last block named')
})

t.test('every page sent once, in any order, zero pages as ZERO: the stream is complete', async t => {
  const dst = local()
  const p = new Payload().memSize(goodList())
  for (let i = 15; i >= 0; i--) {
    if (i % 2) p.be64(i * PAGE + RamFlag.ZERO).str('pc.ram').u8(0)
    else p.be64(i * PAGE + RamFlag.PAGE).str('pc.ram').raw(Buffer.alloc(PAGE, i))
  }
  p.be64(RamFlag.ZERO).str('vga').u8(0).be64(PAGE + RamFlag.ZERO + RamFlag.CONTINUE).u8(0)
  await loadPayload(p.be64(RamFlag.EOS).bytes(), 4, dst)
  t.same(dst.ram.stats().load, { normalPages: 8, zeroPages: 10, sections: 1, passedBlocks: 0 })
  // One page short of that: refused, and named.
  const q = new Payload().memSize(goodList())
  for (let i = 0; i < 16; i++) q.be64(i * PAGE + RamFlag.ZERO).str('pc.ram').u8(0)
  q.be64(PAGE + RamFlag.ZERO).str('vga').u8(0)
  await t.rejects(loadPayload(q.be64(RamFlag.EOS).bytes(), 4, local()), { code: 'ERR_RAM_MISSING_PAGES', message: /^ERR_RAM_MISSING_PAGES: pages never sent: 'vga': 1 of 2 pages \(the first at offset 0x0\)/ })
  // The last page of a block whose bitmap is whole bytes: the byte compare sees it.
  const r = new Payload().memSize(goodList())
  for (let i = 0; i < 15; i++) r.be64(i * PAGE + RamFlag.ZERO).str('pc.ram').u8(0)
  r.be64(RamFlag.ZERO).str('vga').u8(0).be64(PAGE + RamFlag.ZERO + RamFlag.CONTINUE).u8(0)
  await t.rejects(loadPayload(r.be64(RamFlag.EOS).bytes(), 4, local()), { code: 'ERR_RAM_MISSING_PAGES', message: /^ERR_RAM_MISSING_PAGES: pages never sent: 'pc.ram': 1 of 16 pages \(the first at offset 0xf000\) / })
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
