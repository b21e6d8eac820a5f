// Shared test fixtures: a registry with a live device, a vmsd device and an
// old-style device, and a helper that saves to a Buffer.
import { memoryPair } from '../../vmm/channel/memory.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import { SaveVM } from '../../vmm/savevm/save.js'
import type { VMStateDescription } from '../../vmm/vmstate/types.js'

export const uartVmsd: VMStateDescription = {
  name: 'uart',
  versionId: 3,
  minimumVersionId: 2,
  fields: [
    { name: 'divider', type: 'uint16' },
    { name: 'rbr', type: 'uint8' },
    { name: 'ier', type: 'uint8', since: 3 },
    { name: 'flags', type: 'bool' },
    { name: 'ticks', type: 'int64' },
    { name: 'regs', type: 'uint32', count: 4 },
    { name: 'fifo_len', type: 'uint32' },
    { name: 'fifo', type: 'buffer', length: 'fifo_len', maxLength: 64 },
  ],
  subsections: [
    { name: 'uart/timeout', versionId: 1, needed: s => (s.timeout as number) > 0, fields: [{ name: 'timeout', type: 'int32' }] },
  ],
}

export function uartState() {
  return {
    divider: 12, rbr: 0x41, ier: 5, flags: true, ticks: -5n, regs: [1, 2, 3, 0xffffffff],
    fifo_len: 3, fifo: Buffer.from('abc'), timeout: 7,
  }
}

/** A RAM-like live device: sends `rounds` PART sections of `chunk` bytes. */
export class LiveDevice {
  sent = 0
  received: Buffer[] = []
  approved = false
  constructor(readonly rounds = 3, readonly chunk = 10000, readonly needAck = false) {}
  handlers() {
    return {
      saveSetup: (f: MigStream) => f.putBe32(0),
      saveLiveIterate: (f: MigStream) => {
        f.putBe32(this.chunk)
        f.putBufferAsync(Buffer.alloc(this.chunk, this.sent))
        this.sent++
        return this.sent >= this.rounds
      },
      statePendingEstimate: () => ({ precopyOnly: (this.rounds - this.sent) * this.chunk, postcopy: 0 }),
      saveComplete: (f: MigStream) => f.putBe32(0xc0ffee),
      loadState: async (f: MigStream, ctx: { versionId: number; approveSwitchover(): void }) => {
        if (!(await f.fill(4))) return
        const v = f.be32()
        if (v === 0xc0ffee || v === 0) return
        if (v > 1 << 20) throw new Error(`chunk ${v} too big`)
        const b = await f.getBuffer(v)
        this.received.push(b)
        if (this.needAck) ctx.approveSwitchover()
      },
      switchoverAckNeeded: () => this.needAck,
    }
  }
}

export interface Fixture {
  reg: SaveVMRegistry
  live: LiveDevice
  uart: ReturnType<typeof uartState>
  old: { value: number }
}

export function sourceRegistry(): Fixture {
  const reg = new SaveVMRegistry()
  const live = new LiveDevice()
  const uart = uartState()
  const old = { value: 0x1234 }
  reg.register({ idstr: 'ram', versionId: 4, handlers: live.handlers() })
  reg.register({ idstr: 'uart', vmsd: uartVmsd, state: uart, priority: 1 })
  reg.register({ idstr: 'oldtimer', versionId: 1, handlers: { saveState: f => f.putBe32(old.value), loadState: async f => { old.value = await f.getBe32() } } })
  return { reg, live, uart, old }
}

export function destRegistry(needAck = false): Fixture {
  const reg = new SaveVMRegistry()
  const live = new LiveDevice(3, 10000, needAck)
  const uart = { divider: 0, rbr: 0, ier: 0, flags: false, ticks: 0n, regs: [], fifo_len: 0, fifo: Buffer.alloc(0), timeout: 0 }
  const old = { value: 0 }
  reg.register({ idstr: 'ram', versionId: 4, handlers: live.handlers() })
  reg.register({ idstr: 'uart', vmsd: uartVmsd, state: uart as unknown as Record<string, unknown>, priority: 1 })
  reg.register({ idstr: 'oldtimer', versionId: 1, handlers: { loadState: async f => { old.value = await f.getBe32() } } })
  return { reg, live, uart: uart as never, old }
}

/** Save the fixture's whole state to a Buffer. */
export async function saveToBuffer(fx: Fixture, opts: { switchover?: boolean; vmdesc?: boolean } = {}): Promise<{ bytes: Buffer; save: SaveVM }> {
  const [a, b] = memoryPair(1 << 30)
  const f = new MigStream(a)
  const save = new SaveVM(f, fx.reg, { machine: 'pc-q35-9.0', targetPageBits: 12, vmdesc: opts.vmdesc })
  await save.prepare()
  await save.header()
  await save.setup()
  while (!(await save.iterate())) { /* rounds */ }
  if (opts.switchover) await save.switchoverStart()
  await save.complete()
  await save.nonIterable()
  await save.finish()
  await a.endWrites()
  const chunks: Buffer[] = []
  const buf = Buffer.alloc(65536)
  for (;;) {
    const n = await b.read(buf, 0, buf.length)
    if (n === 0) break
    chunks.push(Buffer.from(buf.subarray(0, n)))
  }
  return { bytes: Buffer.concat(chunks), save }
}

/** A reader stream over fixed bytes (the writer side is closed). */
export async function streamOf(bytes: Uint8Array): Promise<MigStream> {
  const [a, b] = memoryPair(1 << 30)
  await a.writev([bytes])
  await a.endWrites()
  return new MigStream(b)
}
