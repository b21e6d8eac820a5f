// Conformance through napi: every flag set x every (current, target) pair,
// driven with raw VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE on the emulated
// device, compared with the kernel's walk restated here from the uAPI.
import t from 'tap'
import { native } from '../../vmm/native/addon.js'

const NAMES = ['ERROR', 'STOP', 'RUNNING', 'STOP_COPY', 'RESUMING', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P'] as const
const [ERR, S, R, SC, RS, RP, PC, PCP] = [0, 1, 2, 3, 4, 5, 6, 7]
// NEXT[cur][target]: drivers/vfio/vfio_main.c's table, "from cur toward target go next".
const NEXT = [
  [ERR, ERR, ERR, ERR, ERR, ERR, ERR, ERR],
  [ERR, S, RP, SC, RS, RP, RP, RP],
  [ERR, RP, R, RP, RP, RP, PC, RP],
  [ERR, S, S, SC, S, S, ERR, ERR],
  [ERR, S, S, S, RS, S, S, S],
  [ERR, S, R, S, S, RP, R, PCP],
  [ERR, R, R, PCP, R, R, PC, PCP],
  [ERR, RP, RP, SC, RP, RP, PC, PCP],
]

function supported(flags: number, s: number): boolean {
  if (s === ERR) return false
  const need = s === RP ? 3 : s === PC ? 5 : s === PCP ? 7 : 1
  return (flags & need) === need
}

function walk(flags: number, cur: number, target: number): number[] | null {
  const path: number[] = []
  for (let at = cur; at !== target;) {
    if (!supported(flags, at) || !supported(flags, target)) return null
    let next = NEXT[at][target]
    while (next !== ERR && !supported(flags, next)) next = NEXT[next][target]
    if (next === ERR) return null
    path.push(next)
    at = next
  }
  return path
}

const saving = (s: number) => s === SC || s === PC || s === PCP
const opens = (prev: number, next: number) => (saving(next) && !saving(prev)) || next === RS

type Device = ReturnType<InstanceType<typeof native.EmulatedDevice>['device']>

async function rawSet(d: Device, state: number) {
  const p = Buffer.alloc(8)
  p.writeUInt32LE(state, 0)
  p.writeInt32LE(0x5a5a, 4)
  try {
    const r = await d.feature(2, 1 << 17, p)
    return { ok: true as const, fd: r.dataFd ?? null, answeredFd: p.readInt32LE(4) }
  } catch (e) {
    return { ok: false as const, code: (e as { code: string }).code }
  }
}

async function image(flags: number, size: number): Promise<Buffer> {
  const twin = new native.EmulatedDevice({ flags, stateSize: size })
  const d = twin.device()
  await d.setState('STOP')
  const fd = (await d.setState('STOP_COPY'))!
  const parts: Buffer[] = []
  for (;;) {
    const b = Buffer.alloc(1 << 16)
    const n = await fd.read(b)
    if (n === 0) break
    parts.push(b.subarray(0, n))
  }
  await fd.close()
  return Buffer.concat(parts)
}

for (const flags of [1, 3, 5, 7]) {
  t.test(`flags ${flags}: every (current, target) pair`, async t => {
    const size = 3 * 4096 + 5
    const img = await image(flags, size)
    const emu = new native.EmulatedDevice({ flags, stateSize: size })
    const d = emu.device()
    for (let cur = 0; cur < 8; cur++) {
      if (cur !== ERR && !supported(flags, cur)) continue
      for (let target = 0; target < 8; target++) {
        await d.reset()
        let held = null
        if (cur === ERR) {
          emu.failNextMove('STOP', 'EIO', true)
          await rawSet(d, S)
          await rawSet(d, S)
        } else if (cur === RS) {
          await d.setState('STOP')
          held = await d.setState('RESUMING')
          await held!.write(img)
        } else if (cur !== R) {
          held = await d.setState(NAMES[cur])
        }
        t.equal(emu.state, NAMES[cur], `reached ${NAMES[cur]}`)
        const want = walk(flags, cur, target)
        const got = await rawSet(d, target)
        const ctx = `${NAMES[cur]} -> ${NAMES[target]}`
        if (want === null) {
          t.same(got, { ok: false, code: 'EINVAL' }, ctx)
          t.equal(emu.state, NAMES[cur], `${ctx}: unchanged`)
        } else {
          t.equal(got.ok, true, ctx)
          t.equal(emu.state, NAMES[target], ctx)
          const n = want.length
          const expectFd = n > 0 && opens(n === 1 ? cur : want[n - 2], want[n - 1])
          if (got.ok) {
            t.equal(got.fd !== null, expectFd, `${ctx}: data fd`)
            t.equal(got.answeredFd >= 0, expectFd, `${ctx}: data_fd in the payload`)
            if (got.fd) await got.fd.close()
          }
        }
        if (held) await held.close()
      }
    }
  })
}
