// The fault lab's plumbing (issue #13): two network namespaces joined by a
// veth pair, addresses only inside them, tc tbf to shape the link and an
// nftables table in the source's namespace that black-holes, cuts or thins
// the link, either at once or when a given packet goes by.
//
// Why the trip set: a fault armed by the test after it saw an event lands
// some milliseconds late, which is long enough for a handover message to get
// through. The kernel matches the message itself (its bytes at the start of
// the TCP payload, `@ih`) and, in the same instant, adds the protocol to the
// set `tripped`; every later packet of the link then meets the fault. No
// race between the test and the processes under it.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { Proc } from '../e2e/helpers.js'

export const ADDR_SRC = '10.203.0.1'
export const ADDR_DST = '10.203.0.2'
const PREFIX = 'vmmfault'

/** Both ends of the link: the name of the namespace and of the veth inside it. */
export interface End {
  ns: string
  dev: string
  addr: string
}

/** Run a command to completion (bounded); throws with its stderr on failure. */
export async function sh(args: string[], input?: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(args[0]!, args.slice(1), { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs)
    p.stdout.on('data', (d) => (out += d))
    p.stderr.on('data', (d) => (err += d))
    p.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    p.on('close', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve(out)
      else reject(new Error(`${args.join(' ')}: ${signal ? `killed by ${signal} (over ${timeoutMs} ms)` : `exit ${code}`}: ${err.trim()}`))
    })
    // A command that fails before reading its input closes the pipe: its exit status says why, not EPIPE.
    p.stdin?.on('error', () => undefined)
    p.stdin?.end(input)
  })
}

const which = (cmd: string) => ['/usr/sbin', '/sbin', '/usr/bin', '/bin'].some((d) => existsSync(`${d}/${cmd}`))

let probed: string | undefined | null = null

/**
 * Why the lab cannot run here, or undefined. Asked of the machine, not
 * assumed: root, the tools, and a namespace with a veth pair actually made.
 */
export function labUnavailable(): string | undefined {
  if (probed !== null) return probed
  probed = (() => {
    if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`
    if (process.getuid?.() !== 0) return `network namespaces need root (uid ${process.getuid?.()})`
    for (const tool of ['ip', 'tc', 'nft']) {
      if (!which(tool)) return `'${tool}' is not installed (apt-get install iproute2 nftables)`
    }
    const ns = `${PREFIX}-probe-${process.pid}`
    const r = spawnSync('sh', ['-c', `ip netns add ${ns} && ip link add p0 netns ${ns} type veth peer name p1 netns ${ns} && ip netns exec ${ns} nft list ruleset >/dev/null`], { encoding: 'utf8', timeout: 10_000 })
    spawnSync('ip', ['netns', 'del', ns], { timeout: 10_000 })
    if (r.status !== 0) return `cannot make a network namespace with a veth pair and nftables: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`
    return undefined
  })()
  return probed
}

/**
 * The lab's verdict where it cannot run: under CI=true a failure naming the
 * reason (CI has root and the tools, so a missing one is a broken CI), else a
 * skip that says why.
 */
export function labGate(t: { fail(m: string): void; comment(...m: unknown[]): void }): string | false {
  const why = labUnavailable()
  if (!why) return false
  if (process.env.CI === 'true') t.fail(`the fault lab cannot run: ${why} (required under CI=true)`)
  else t.comment(`SKIPPED: the fault lab cannot run: ${why}`)
  return why
}

/** Namespaces left by a lab whose process died (its pid is in the name). */
function reapStale(): void {
  let names: string[] = []
  try {
    names = readdirSync('/run/netns')
  } catch {
    return
  }
  for (const n of names) {
    const m = new RegExp(`^${PREFIX}-(\\d+)-`).exec(n)
    if (m && !existsSync(`/proc/${m[1]}`)) spawnSync('ip', ['netns', 'del', n], { timeout: 10_000 })
  }
}

const labs = new Set<Lab>()
let serial = 0
// A test runner that dies still takes its namespaces with it where it can.
process.once('exit', () => {
  for (const l of labs) l.destroySync()
})

export type Verdict = 'blackhole' | 'cut'

/** A packet that trips the fault. */
export type Trigger =
  /** The fault holds from now. */
  | { kind: 'now' }
  /** After this many bytes from the source to the destination (headers included). */
  | { kind: 'forward-bytes'; bytes: number }
  /**
   * A message at the start of a TCP payload: `hex` its first bytes. `dir`:
   * 'forward' source -> destination, 'return' the other way. `before`: the
   * packet carrying it meets the fault too; else it is delivered and the
   * fault holds from the next packet. `offsets`: where in the payload the
   * message may start (bytes), for a small message the sender may have put
   * behind another one in the same segment.
   */
  | { kind: 'message'; dir: 'forward' | 'return'; hex: string; before: boolean; offsets?: number[] }

export class Lab {
  readonly src: End
  readonly dst: End
  private procs: Proc[] = []
  private destroyed = false

  private constructor(readonly name: string) {
    this.src = { ns: `${name}-s`, dev: 'vsrc', addr: ADDR_SRC }
    this.dst = { ns: `${name}-d`, dev: 'vdst', addr: ADDR_DST }
  }

  /** Two fresh namespaces joined by a veth pair, 10.203.0.1/30 (source) and .2 (destination). */
  static async create(): Promise<Lab> {
    reapStale()
    const lab = new Lab(`${PREFIX}-${process.pid}-${++serial}`)
    labs.add(lab)
    const { src, dst } = lab
    try {
      await sh(['ip', 'netns', 'add', src.ns])
      await sh(['ip', 'netns', 'add', dst.ns])
      // Made inside the namespaces: no name of ours ever exists in the host's.
      await sh(['ip', 'link', 'add', src.dev, 'netns', src.ns, 'type', 'veth', 'peer', 'name', dst.dev, 'netns', dst.ns])
      for (const e of [src, dst]) {
        await sh(['ip', '-n', e.ns, 'addr', 'add', `${e.addr}/30`, 'dev', e.dev])
        await sh(['ip', '-n', e.ns, 'link', 'set', e.dev, 'up'])
        await sh(['ip', '-n', e.ns, 'link', 'set', 'lo', 'up'])
      }
    } catch (e) {
      await lab.destroy()
      throw e
    }
    return lab
  }

  /** A vmm-migrate process inside `end`'s namespace; killed when the lab goes. */
  spawn(end: End, args: string[], name: string): Proc {
    const p = new Proc(args, name, ['ip', 'netns', 'exec', end.ns])
    this.procs.push(p)
    return p
  }

  /** Any command inside `end`'s namespace, as a tracked Proc-less child: run to completion. */
  exec(end: End, args: string[], timeoutMs?: number): Promise<string> {
    return sh(['ip', 'netns', 'exec', end.ns, ...args], undefined, timeoutMs)
  }

  /** tc tbf on both ends: each direction at most `rate` (tc syntax: 1gbit, 100mbit). */
  async shape(rate: string, burst = '512kb'): Promise<void> {
    for (const e of [this.src, this.dst]) {
      await sh(['tc', '-n', e.ns, 'qdisc', 'replace', 'dev', e.dev, 'root', 'tbf', 'rate', rate, 'burst', burst, 'latency', '100ms'])
    }
  }

  /** Drop `percent`% of the packets in each direction, at random (nft numgen). */
  async loss(percent: number): Promise<void> {
    // One wire packet per skb: else the hooks see 64 KiB GSO batches, and
    // 1% of batches is neither 1% of packets nor how a lossy link behaves.
    for (const e of [this.src, this.dst]) await sh(['ip', '-n', e.ns, 'link', 'set', 'dev', e.dev, 'gso_max_segs', '1'])
    // Each direction loses its packets where they arrive, as on a wire: a
    // drop in the sender's own output hook fails its transmit call, and TCP
    // then waits for its probe timer, 200 ms at least whatever the
    // socket's RTO (tcp_probe0_base), where a lost packet on a real link
    // is found by SACK/RACK within a few round trips.
    for (const e of [this.src, this.dst]) {
      await this.nft(e, `table inet lablo {
  chain in { type filter hook input priority 10; policy accept; iifname "${e.dev}" numgen random mod 100 < ${percent} counter drop; }
}`)
    }
  }

  /**
   * Arm a fault on the link's TCP port `port` (the destination's): `verdict`
   * from the packet `trigger` names on, both directions. 'cut' rejects with
   * a TCP reset (each side's next packet gets one), 'blackhole' drops.
   */
  async fault(verdict: Verdict, trigger: Trigger, port: number): Promise<void> {
    const hit = verdict === 'cut' ? 'reject with tcp reset' : 'drop'
    const flow = { forward: `ip daddr ${ADDR_DST} tcp dport ${port}`, return: `ip saddr ${ADDR_DST} tcp sport ${port}` }
    const trip = 'add @tripped { meta l4proto }'
    const rules = { forward: [] as string[], return: [] as string[] }
    if (trigger.kind === 'now') {
      rules.forward.push(`${flow.forward} ${hit}`)
      rules.return.push(`${flow.return} ${hit}`)
    } else if (trigger.kind === 'forward-bytes') {
      rules.forward.push(`${flow.forward} quota over ${trigger.bytes} bytes counter ${trip} ${hit}`)
    } else {
      const bits = trigger.hex.length * 4
      for (const off of trigger.offsets ?? [0]) {
        rules[trigger.dir].push(`${flow[trigger.dir]} @ih,${off * 8},${bits} 0x${trigger.hex} counter ${trip} ${trigger.before ? hit : 'accept'}`)
      }
    }
    // The resets a cut sends pass the same hooks (to the local side through
    // output, to the peer through output too): they must not be cut themselves.
    const resets = verdict === 'cut' ? 'tcp flags rst accept' : ''
    await this.nft(this.src, `table inet lab {
  set tripped { type inet_proto; flags dynamic; }
  chain out { type filter hook output priority 0; policy accept;
    ${resets}
    ${flow.forward} meta l4proto @tripped ${hit}
    ${rules.forward.join('\n    ')}
  }
  chain in { type filter hook input priority 0; policy accept;
    ${resets}
    ${flow.return} meta l4proto @tripped ${hit}
    ${rules.return.join('\n    ')}
  }
}`)
  }

  /** Packets the loss rules dropped so far, both directions. */
  async lost(): Promise<number> {
    let n = 0
    for (const e of [this.src, this.dst]) {
      const out = await this.exec(e, ['nft', 'list', 'table', 'inet', 'lablo'])
      n += [...out.matchAll(/counter packets (\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0)
    }
    return n
  }

  /** Whether an armed trigger went off (the set has its element). */
  async tripped(): Promise<boolean> {
    const out = await this.exec(this.src, ['nft', 'list', 'set', 'inet', 'lab', 'tripped'])
    return /elements\s*=\s*\{\s*tcp/.test(out)
  }

  /** Lift every fault (the lab's tables); shaping stays. */
  async heal(): Promise<void> {
    for (const e of [this.src, this.dst]) {
      for (const table of ['lab', 'lablo']) await this.exec(e, ['nft', 'delete', 'table', 'inet', table]).catch(() => undefined)
    }
  }

  private nft(where: End, ruleset: string): Promise<string> {
    return sh(['ip', 'netns', 'exec', where.ns, 'nft', '-f', '-'], ruleset)
  }

  /** Kill what runs inside, then remove both namespaces (the veth pair goes with them). */
  async destroy(): Promise<void> {
    if (this.destroyed) return
    for (const p of this.procs) p.kill()
    await Promise.all(this.procs.map((p) => p.exit(10_000).catch(() => undefined)))
    this.destroySync()
  }

  destroySync(): void {
    if (this.destroyed) return
    this.destroyed = true
    labs.delete(this)
    for (const p of this.procs) p.kill()
    for (const e of [this.src, this.dst]) spawnSync('ip', ['netns', 'del', e.ns], { timeout: 10_000 })
  }
}
