// The destination starts only a complete, sane guest: a stream that lacks a
// section it registered, a timer it cannot run, or RAM corrupted on the way
// is refused before it reports ready, so the source resumes. Each case is a
// row of issue #13, where the old destination started the guest anyway.
import t from 'tap'
import * as fs from 'node:fs'
import * as net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MicroVm, MICROVM_MACHINE, IntegrityError } from '../../vmm/microvm/index.js'
import { listen, connect } from '../../vmm/channel/connect.js'
import { MigStream } from '../../vmm/stream/stream.js'
import { writeHeader, writeConfiguration, writeEof } from '../../vmm/savevm/writer.js'
import { ReturnPathReader, RpMsg } from '../../vmm/channel/return-path.js'
import { MissingSectionError, InvalidFieldError } from '../../vmm/savevm/errors.js'
import { incoming, migrate, type MigrationError } from '../../vmm/migration/index.js'

const tmp = () => fs.mkdtempSync(join(tmpdir(), 'complete-'))

function vm(role: 'source' | 'dest', verify = role === 'dest'): Promise<MicroVm> {
  return MicroVm.create({ role, ramSize: 16 << 20, vcpu: 'soft', vfio: { stateSize: 256 << 10 }, verifyBeforeStart: verify })
}

/** Migrate `src` to `dst` over a unix socket, `via` an optional relay; both outcomes. */
async function run(src: MicroVm, dst: MicroVm, via?: (target: string) => Promise<string>) {
  const l = await listen(`unix:${join(tmp(), 's')}`)
  const inc = incoming(dst, l)
  inc.catch(() => undefined).finally(() => void l.close())
  const to = via ? await via(l.address.slice('unix:'.length)) : l.address.slice('unix:'.length)
  const [out, inRes] = await Promise.allSettled([migrate(src, `unix:${to}`, { parameters: { maxBandwidth: 0 } }), inc])
  return {
    stats: out.status === 'fulfilled' ? out.value : undefined,
    err: out.status === 'rejected' ? out.reason as MigrationError : undefined,
    incErr: inRes.status === 'rejected' ? inRes.reason as Error : undefined,
  }
}

t.test('a 23-byte stream (header, configuration, EOF): refused, every missing section named, no RESUME_OK', async t => {
  const dst = await vm('dest')
  t.teardown(() => dst.destroy())
  const l = await listen(`unix:${join(tmp(), 's')}`)
  const inc = incoming(dst, l)
  inc.catch(() => undefined).finally(() => void l.close())
  const f = new MigStream(await connect(l.address))
  writeHeader(f)
  await writeConfiguration(f, { machine: MICROVM_MACHINE })
  writeEof(f)
  await f.flush()
  t.equal(f.transferred, 23, 'the whole stream is 23 bytes')
  const rp = new ReturnPathReader(f)
  const got: number[] = []
  for (let m = await rp.next().catch(() => null); m; m = await rp.next().catch(() => null)) got.push(m.type)
  const err = await inc.then(() => null, e => e as Error)
  t.ok(err, 'the destination refused it')
  t.match(err!.message, /ERR_SAVEVM_MISSING_SECTION: the stream ended without 5 sections this side needs: 'ram' instance 0, 'microvm-timer' instance 0, 'cpu' instance 0, '0000:00:02.0\/vfio' instance 0, 'microvm-proof' instance 0/)
  t.notOk(got.includes(RpMsg.RESUME_OK), 'no RESUME_OK')
  t.ok(got.includes(RpMsg.SHUT), 'SHUT: the source may resume')
  t.not(dst.vm.state, 'running', 'no blank guest started')
  await f.close()
})

t.test('a real stream without the cpu section: refused before anything starts, and the source resumes', async t => {
  const src = await vm('source')
  const dst = await vm('dest')
  t.teardown(async () => { await src.destroy(); await dst.destroy() })
  src.registry.unregister(src.registry.find('cpu', 0)!)
  const { err, incErr } = await run(src, dst)
  t.type(incErr!.cause, MissingSectionError, 'the MigrationError carries the typed cause')
  t.match(incErr!.message, /without a section this side needs: 'cpu' instance 0/)
  t.ok(err, 'the migration failed')
  t.equal(src.vm.state, 'running', 'the source runs its guest again')
  t.not(dst.vm.state, 'running')
})

t.test('a timer with periodUs=0 (the VM could never pause): refused with the field named', async t => {
  const src = await vm('source')
  const dst = await vm('dest')
  t.teardown(async () => { await src.destroy(); await dst.destroy() })
  const file = join(tmp(), 'vm.mig')
  await migrate(src, `file:${file}`)
  // The timer section's fields: ticks (be64), config (be32), periodUs (be32).
  const bytes = fs.readFileSync(file)
  const head = Buffer.concat([Buffer.from([13]), Buffer.from('microvm-timer'), Buffer.from([0, 0, 0, 0, 0, 0, 0, 1])])
  const at = bytes.indexOf(head)
  t.ok(at > 0 && bytes.indexOf(head, at + 1) < 0, 'one timer section')
  const period = at + head.length + 12
  t.equal(bytes.readUInt32BE(period), 1000, 'periodUs as the source had it')
  bytes.writeUInt32BE(0, period)
  fs.writeFileSync(file, bytes)
  const err = await incoming(dst, `file:${file}`).then(() => null, e => (e as Error).cause as InvalidFieldError)
  t.type(err, InvalidFieldError)
  t.equal(err!.field, 'microvm-timer.periodUs')
  t.match(err!.message, /ERR_VMSTATE_INVALID: microvm-timer.periodUs: 0 is below the minimum 1 \(section microvm-timer\/0/)
  t.not(dst.vm.state, 'running')
})

/** A cold page (sent once, never dirtied: past the 8 MiB working set, below the DMA window). */
const COLD_PAGE_ADDR = 12 << 20

/** The record heads of pc.ram's page at COLD_PAGE_ADDR and how far its data starts from each. */
function coldPageHeads(): [Buffer, number][] {
  const word = (flags: number) => {
    const w = Buffer.alloc(8)
    w.writeBigUInt64BE(BigInt(COLD_PAGE_ADDR + flags))
    return w
  }
  // PAGE|CONTINUE (no name follows), or PAGE with the counted block name.
  return [[word(0x28), 8], [Buffer.concat([word(0x08), Buffer.from('\x06pc.ram', 'latin1')]), 15]]
}

/**
 * A unix-socket relay that flips one byte of a cold page of pc.ram on its
 * way, forwarding everything else as it comes (the two sides talk before
 * RAM flows, so nothing may be held back).
 */
async function corrupting(target: string): Promise<string> {
  const path = join(tmp(), 'relay')
  const heads = coldPageHeads()
  const server = net.createServer(c => {
    const d = net.connect(target)
    let offset = 0
    let tail = Buffer.alloc(0)
    let flipAt = -1
    c.on('data', (chunk: Buffer) => {
      chunk = Buffer.from(chunk)
      if (flipAt < 0) {
        // A head may straddle two chunks: look at the end of the last one too.
        const win = Buffer.concat([tail, chunk])
        for (const [h, data] of heads) {
          const i = win.indexOf(h)
          if (i >= 0) flipAt = offset - tail.length + i + data + 100
        }
        tail = win.subarray(Math.max(0, win.length - 16))
      }
      if (flipAt >= offset && flipAt < offset + chunk.length) chunk[flipAt - offset] ^= 0x40
      offset += chunk.length
      d.write(chunk)
    })
    d.on('data', (b: Buffer) => c.write(b))
    c.on('end', () => d.end())
    d.on('end', () => c.end())
    c.on('error', () => d.destroy())
    d.on('error', () => c.destroy())
  })
  await new Promise<void>(r => server.listen(path, r))
  t.teardown(() => void server.close())
  return path
}

t.test('page data corrupted in flight: the destination finds it before it reports ready, and the source resumes', async t => {
  const src = await vm('source')
  const dst = await vm('dest')
  t.teardown(async () => { await src.destroy(); await dst.destroy() })
  let started = false
  dst.vm.on('resume', () => { started = true })
  const { err, incErr } = await run(src, dst, corrupting)
  t.type(incErr!.cause, IntegrityError, incErr?.message)
  t.match(incErr!.message, /the RAM loaded here is not what the source had at the switchover/)
  t.ok(err, 'the migration failed')
  t.match(err!.message, /ERR_MICROVM_INTEGRITY/, "the source has the destination's reason")
  t.equal(src.vm.state, 'running', 'the source runs its guest again')
  t.notOk(started, 'the destination never started the guest')
})

t.test('an intact stream passes the proof, checked before the start', async t => {
  const src = await vm('source')
  const dst = await vm('dest')
  t.teardown(async () => { await src.destroy(); await dst.destroy() })
  const { stats, incErr } = await run(src, dst)
  t.notOk(incErr, incErr?.message)
  t.equal(stats?.status, 'completed')
  const v = await dst.verificationBeforeStart()
  t.ok(v, 'the verification ran before the start')
  t.ok((dst.verificationMs() ?? -1) >= 0)
})
