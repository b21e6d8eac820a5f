// Hand-built RAM payloads: the malformed ones every load path must refuse
// the same way (malformed.test.ts through the stream, direct.test.ts over a
// socket through native code).
import type { Channel } from '../../vmm/channel/types.js'
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { loadvm } from '../../vmm/savevm/load.js'
import { writeHeader, writeSectionHeader, writeFooter, writeEof } from '../../vmm/savevm/writer.js'
import { QEMU_VM_SECTION_START } from '../../vmm/savevm/constants.js'
import { RamFlag } from '../../vmm/ram/index.js'
import { PAGE, side, drain } from './helpers.js'

export /** A RAM payload built word by word. */
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

export const local = () => side([{ name: 'pc.ram', memory: new Uint8Array(16 * PAGE) }, { name: 'vga', memory: new Uint8Array(2 * PAGE), base: 1 << 30 }])
export const goodList = (): [string, number][] => [['pc.ram', 16 * PAGE], ['vga', 2 * PAGE]]


/** [name, payload, error code, message, section version]. */
export const malformedCases: [string, Buffer, string, RegExp, number?][] = [
  ['unknown flag bit 0x800', new Payload().be64(0x800).bytes(), 'ERR_RAM_BAD_FLAGS', /0x800/],
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

export interface PayloadOptions {
  version?: number
  /** The stream ends right after the payload. */
  truncated?: boolean
  /** Where the bytes go (default: a memory pair); [writer, reader]. */
  pair?: () => Promise<[Channel, Channel]>
  /** The reading stream (default: a plain MigStream). */
  stream?: (c: Channel) => MigStream
  /** Bytes per write (default: all at once), a tick between writes. */
  chunk?: number
}

/** The whole stream around one START section of `payload`. */
export async function streamBytes(payload: Buffer, version = 4, truncated = false): Promise<Buffer> {
  const [a, b] = memoryPair(1 << 26)
  const f = new MigStream(a)
  writeHeader(f)
  writeSectionHeader(f, QEMU_VM_SECTION_START, 0, 'ram', 0, version)
  f.putBuffer(payload)
  if (!truncated) {
    writeFooter(f, 0)
    writeEof(f)
  }
  const bytes = drain(b)
  await f.flush()
  await a.endWrites()
  return bytes
}

/** Run one START section of `payload` through loadvm, writing while it reads. */
export async function loadPayload(payload: Buffer, version = 4, dst = local(), truncated = false, o: PayloadOptions = {}) {
  const bytes = await streamBytes(payload, version, truncated)
  const [a, b] = o.pair ? await o.pair() : memoryPair(1 << 26)
  const write = async () => {
    const step = o.chunk ?? bytes.length
    for (let i = 0; i < bytes.length; i += step) {
      await a.writev([bytes.subarray(i, i + step)])
      if (o.chunk) await new Promise(r => setTimeout(r, 1))
    }
    await a.endWrites()
  }
  try {
    await Promise.all([write(), loadvm(o.stream ? o.stream(b) : new MigStream(b), dst.reg, { expectConfiguration: false, vmdesc: false })])
  } finally {
    if (o.pair) {
      await a.close()
      await b.close()
    }
  }
  return dst
}
