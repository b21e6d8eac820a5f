// The subcommands that run one side of a migration: migrate/save (source)
// and incoming/restore (destination).
import { readFile } from 'node:fs/promises'
import { migrate, IncomingMigration, OutgoingMigration, MigrationError, type MigrationStats, type MigrationStatus } from '../migration/index.js'
import type { RunState } from '../runstate/index.js'
import { serveControl, controlRequest, type ControlServer, type ControlRequest } from './control.js'
import { connect } from '../channel/connect.js'
import { loadTlsCreds } from '../channel/tls.js'
import { parseUri } from '../channel/uri.js'
import { isIP } from 'node:net'
import { fileHeader } from '../savevm/writer.js'
import type { Channel } from '../channel/types.js'
import type { MicroVm, Verification } from '../microvm/index.js'
import type { Options } from './args.js'
import { createMicroVm, parameters, capabilities, sleep } from './vm-options.js'
import { downtimeReport, progressLine, statsRows, table } from './format.js'
import { toJson } from './analyze.js'
import { reportAfterFailure } from './after-failure.js'

export interface Out {
  line(s: string): void
  /** Progress text: rewritten in place on a TTY. */
  progress(s: string): void
  done(): void
}

export function consoleOut(): Out {
  const tty = process.stderr.isTTY === true
  let live = false
  let lastPlain = 0
  return {
    line: (s) => process.stdout.write(`${s}\n`),
    progress: (s) => {
      if (tty) {
        process.stderr.write(`\r${s.slice(0, (process.stderr.columns || 120) - 1)}\x1b[K`)
        live = true
      } else if (performance.now() - lastPlain >= 1000) {
        // A log, not a screen: one line a second is enough to follow along.
        lastPlain = performance.now()
        process.stderr.write(`${s}\n`)
      }
    },
    done: () => {
      if (live) process.stderr.write('\n')
      live = false
    },
  }
}

export function verificationRows(v: Verification): [string, string][] {
  return [
    ['RAM blake3', v.ramDigest],
    ['device digest', v.deviceDigest || '(no device)'],
    ['vCPU counter', v.counter],
    ['guest checksum', `0x${v.checksum.toString(16).padStart(8, '0')} (${v.checksumConsistent ? 'matches RAM' : 'DOES NOT match RAM'})`],
    ['timer ticks', v.timer.ticks],
  ]
}

export interface SourceHooks {
  onStatus?(s: MigrationStatus): void
  onProgress?(s: MigrationStats): void
  /** Events beyond the status (handover-unknown with its control socket). */
  onEvent?(e: Record<string, unknown>): void
}

/**
 * While `m` is in handover-unknown, serve `vmm-migrate resolve` on a control
 * socket and say where: an event (--events) and a line on stderr, always.
 * Returns the function that stops serving.
 */
export function watchHandover(
  m: OutgoingMigration | IncomingMigration, role: 'source' | 'destination', runState: () => RunState, o: Options,
  event?: (e: Record<string, unknown>) => void,
): () => Promise<void> {
  let opening: Promise<ControlServer | undefined> | undefined
  const target = { role, status: () => m.status as string, runState, resolve: (a: 'resume' | 'discard') => m.resolve(a) }
  const onStatus = (s: string) => {
    if (s === 'handover-unknown' && !opening) {
      // A --control path that cannot be used must not leave the side unreachable.
      opening = serveControl(target, o.control).catch(() => serveControl(target)).then((srv) => {
        event?.({ event: 'handover-unknown', role, reason: m.reason, control: srv.path, runState: runState() })
        process.stderr.write(`vmm-migrate: the ${role} is in handover-unknown: ${m.reason}\n` +
          `vmm-migrate: the guest is paused here. Find out whether the other side runs it, then run\n` +
          `  vmm-migrate resolve ${srv.path} --resume   (on exactly one side)   or   --discard\n`)
        return srv
      }, (e: Error) => {
        process.stderr.write(`vmm-migrate: the ${role} is in handover-unknown and cannot serve resolve: ${e.message}\n`)
        return undefined
      })
    } else if (s !== 'handover-unknown' && opening) {
      const o2 = opening
      opening = undefined
      void o2.then((srv) => srv?.close())
    }
  }
  // Both migrations report their status as a string; one listener serves either.
  const em = m as unknown as { on(e: 'status', f: (s: string) => void): void; off(e: 'status', f: (s: string) => void): void }
  em.on('status', onStatus)
  return async () => {
    em.off('status', onStatus)
    const srv = await opening
    await srv?.close()
  }
}

/** resolve CONTROL --resume|--discard|--status: ask a side in handover-unknown. */
export async function cmdResolve(path: string, o: Options, out: Out): Promise<number> {
  const req: ControlRequest = o.resolve === 'status' ? { op: 'status' } : { op: 'resolve', action: o.resolve as 'resume' | 'discard' }
  const r = await controlRequest(path, req)
  if (o.json) out.line(JSON.stringify(r))
  else if (r.ok) out.line(`${r.role}: ${r.status}, guest ${r.runState}`)
  else out.line(`${r.role}: refused: ${r.error} (still ${r.status}, guest ${r.runState})`)
  return r.ok ? 0 : 1
}

const jsonLine = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x))

/**
 * Peak resident set of this process, bytes: VmHWM of its own address space.
 * Not getrusage's maxrss: Linux carries that across fork and exec, so a child
 * of a large process (a test runner, a VMM) would report its parent's peak.
 */
export async function maxRssBytes(): Promise<number> {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(await readFile('/proc/self/status', 'utf8'))
    if (m) return Number(m[1]) * 1024
  } catch {
    // not Linux: the portable figure, with its caveat
  }
  return process.resourceUsage().maxRSS * 1024
}

/**
 * Run `vm` for --run ms, migrate it to `uri` (or over a channel already
 * open), verify it with the VM stopped. The VM is left to the caller, also
 * on failure.
 */
export async function migrateVm(vm: MicroVm, uri: string | Channel, o: Options, out: Out, signal?: AbortSignal, hooks: SourceHooks = {}): Promise<{ stats: MigrationStats; verification: Verification }> {
  await sleep(o.runMs, signal)
  // A channel comes from cmdMigrate, which sent the file header on it at once.
  const fileHeaderSent = typeof uri !== 'string'
  // An abort listener added to an already aborted signal never fires: a
  // SIGINT during --run would otherwise be ignored and the migration run.
  if (signal?.aborted) {
    // A destination already connected hears that the source cancelled, not a cut stream.
    if (typeof uri !== 'string') await new OutgoingMigration(vm, { parameters: parameters(o), capabilities: capabilities(o), fileHeaderSent }).abandon(uri)
    throw new MigrationError('migration cancelled before it started', 'ECANCELED')
  }
  const m = new OutgoingMigration(vm, { parameters: parameters(o), capabilities: capabilities(o), signal, fileHeaderSent, local: o.local })
  if (hooks.onStatus) m.on('status', hooks.onStatus)
  m.on('progress', (s) => {
    hooks.onProgress?.(s)
    if (!o.json && !o.events) out.progress(progressLine(s))
  })
  const unwatch = watchHandover(m, 'source', () => vm.vm.state, o, hooks.onEvent)
  let stats: MigrationStats
  try {
    stats = await m.start(uri)
  } finally {
    out.done()
    await unwatch()
  }
  // The source is left in postmigrate: vCPU quiesced, device stopped, RAM as
  // sent. After a local handover that RAM is the destination's running
  // guest: report what the proof section took before GO instead.
  const verification = o.local ? vm.switchoverVerification() : await vm.verify()
  if (!verification) throw new Error('the local migration completed without a proof section')
  return { stats, verification }
}

/** Source side: create the VM, run it, migrate it to `uri`, verify it with the VM stopped. */
export async function runSource(uri: string, o: Options, out: Out, signal?: AbortSignal): Promise<{ stats: MigrationStats; verification: Verification; vm: MicroVm }> {
  const vm = await createMicroVm('source', o)
  try {
    return { ...(await migrateVm(vm, uri, o, out, signal)), vm }
  } catch (e) {
    await vm.destroy().catch(() => undefined)
    throw e
  }
}

export async function cmdMigrate(uri: string, o: Options, out: Out, signal?: AbortSignal): Promise<number> {
  const event = (e: Record<string, unknown>) => out.line(jsonLine(e))
  // Reach the destination first: a wrong address or a destination that is
  // not there shows in milliseconds, not after building a large guest. The
  // same channel then carries the migration, since a destination takes the
  // first connection it accepts as its source (a probe would be one).
  const tls = o.tlsCreds
    ? { creds: await loadTlsCreds(o.tlsCreds, 'client'), handshakeTimeoutMs: o.handshakeTimeoutMs, ...(o.tlsHostname ? { hostname: o.tlsHostname } : {}) }
    : undefined
  const channel = await connect(uri, { signal, tls })
  try {
    // The stream's first bytes at once: a destination that drops peers
    // sending no stream (its handshake-timeout, 5 s) keeps this one while a
    // large guest is built and runs --run ms.
    await channel.writev([fileHeader()])
    return await migrateOver(channel, o, out, event, signal)
  } finally {
    // Already closed when the migration ran; not when it never started.
    await channel.close().catch(() => undefined)
  }
}

async function migrateOver(channel: Channel, o: Options, out: Out, event: (e: Record<string, unknown>) => void, signal?: AbortSignal): Promise<number> {
  const vm = await createMicroVm('source', o)
  // The guest runs and SIGINT now cancels: what a supervisor waits for.
  if (o.events) event({ event: 'running', vcpu: vm.vcpu.kind, ramSize: o.ram })
  let phase: MigrationStatus = 'none'
  let maxThrottle = 0
  let throttle = 0
  const hooks: SourceHooks = {
    onStatus: (s) => {
      if (s !== 'failed' && s !== 'cancelling' && s !== 'cancelled') phase = s
      if (o.events) event({ event: 'status', status: s })
    },
    onProgress: (s) => {
      maxThrottle = Math.max(maxThrottle, s.cpuThrottlePercentage)
      if (o.events && s.cpuThrottlePercentage !== throttle) event({ event: 'throttle', percent: s.cpuThrottlePercentage, iterations: s.iterations })
      throttle = s.cpuThrottlePercentage
    },
    onEvent: o.events ? event : undefined,
  }
  try {
    let result: { stats: MigrationStats; verification: Verification }
    try {
      result = await migrateVm(vm, channel, o, out, signal, hooks)
    } catch (e) {
      if (o.afterFailureMs === undefined) throw e
      // The guest must have survived: show it, then fail as usual.
      const report = await reportAfterFailure(vm, e, phase, o.afterFailureMs)
      if (o.events) event({ event: 'failed', report, maxRssBytes: await maxRssBytes() })
      else if (o.json) out.line(toJson({ failed: report, maxRssBytes: await maxRssBytes() }))
      else out.line(`migration ${report.status} in phase ${report.phase}: ${report.error}\nsource guest ${report.guestOk ? 'kept running intact' : 'DID NOT survive'} (run state ${report.runState}, counter ${report.counterAtFailure} -> ${report.counterAfter ?? '-'})`)
      return 1
    }
    const { stats, verification } = result
    const rss = await maxRssBytes()
    const downtime = downtimeReport(stats, o.downtimeLimitMs)
    if (o.events) event({ event: 'completed', stats, downtime, verification, maxThrottle, maxRssBytes: rss })
    else if (o.json) out.line(toJson({ stats, downtime, verification, maxThrottle, maxRssBytes: rss }))
    else out.line(`migration ${stats.status}\n${table([...statsRows(stats, o.downtimeLimitMs), ...verificationRows(verification)])}`)
    return verification.checksumConsistent ? 0 : 1
  } finally {
    await vm.destroy().catch(() => undefined)
  }
}

export interface IncomingReport {
  loadTimeMs: number
  resumeTimeMs: number
  /** The part of resumeTimeMs (and so of the downtime) spent on the verification below, ms. */
  verificationMs: number
  /** Recorded after loading, before the vCPU started (absent with --no-verify). */
  loaded?: Verification
  /** Counter when the VM started here. */
  counterAtStart: string
  /** Counter after running `runAfterMs` on this side. */
  counterAfter: string
  /** The guest's checksum still matches its RAM after running here. */
  checksumConsistentAfter: boolean
  vcpu: string
  /** Peak resident set of the destination process, bytes. */
  maxRssBytes?: number
}

/**
 * Destination side: receive, start, let the guest run, check it, stop.
 * `event` gets 'ready' (READY sent, waiting for GO), 'peer-dropped' and
 * 'handover-unknown'.
 */
export async function runIncoming(uri: string, o: Options, onListening: (address: string) => void, signal?: AbortSignal, onStarting?: () => void, event?: (e: Record<string, unknown>) => void): Promise<IncomingReport> {
  const vm = await createMicroVm('dest', o, !o.noVerify)
  if (onStarting) {
    // First of all prepare callbacks: the stream is loaded to its end, nothing
    // runs yet and the source has not been told (the window a test kills in).
    vm.vm.addChangeStateHandler({ name: 'cli-starting', priority: -2000, prepare: (running) => { if (running) onStarting() }, cb: () => undefined })
  }
  const m = new IncomingMigration(vm, { parameters: parameters(o), capabilities: capabilities(o), onListening, signal, local: o.local })
  m.on('status', (s) => { if (s === 'ready') event?.({ event: 'ready' }) })
  m.on('peer-dropped', (e) => {
    event?.({ event: 'peer-dropped', ...e })
    process.stderr.write(`vmm-migrate: dropped a peer (${e.peer}): ${e.reason}; still listening\n`)
  })
  const unwatch = watchHandover(m, 'destination', () => vm.vm.state, o, event)
  try {
    const res = await m.start(uri).finally(unwatch)
    const counterAtStart = vm.vcpuCounter().toString()
    const loaded = await vm.verificationBeforeStart()
    if (!loaded && !o.noVerify) throw new Error('the VM started without the verification step')
    await sleep(o.runAfterMs)
    await vm.vm.vmStop('paused')
    const after = await vm.verify()
    return {
      loadTimeMs: res.loadTimeMs,
      resumeTimeMs: res.resumeTimeMs,
      verificationMs: res.verificationMs,
      loaded,
      counterAtStart: loaded?.counter ?? counterAtStart,
      counterAfter: after.counter,
      checksumConsistentAfter: after.checksumConsistent,
      vcpu: vm.vcpu.kind,
    }
  } finally {
    await vm.destroy().catch(() => undefined)
  }
}

/**
 * Why listening on `uri` without TLS exposes the guest, or undefined: a tcp:
 * address other than loopback lets anyone who reaches the port read the
 * guest's memory off the wire or send a guest of their own.
 */
export function plaintextWarning(uri: string, o: Options): string | undefined {
  if (o.tlsCreds) return undefined
  let host: string
  try {
    const a = parseUri(uri)
    if (a.kind !== 'tcp') return undefined
    host = a.host
  } catch {
    return undefined
  }
  const loopback = host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'))
  if (loopback) return undefined
  return `vmm-migrate: WARNING: listening on ${host} without TLS: anyone who reaches this port can read the guest's memory ` +
    'or send a guest of their own. Use --tls-creds-x509 DIR (docs/tls.md) across hosts.\n'
}

export async function cmdIncoming(uri: string, o: Options, out: Out, signal?: AbortSignal): Promise<number> {
  const event = (e: Record<string, unknown>) => out.line(JSON.stringify(e))
  const warning = plaintextWarning(uri, o)
  if (warning) process.stderr.write(warning)
  const report = await runIncoming(uri, o, (address) => {
    if (o.events) event({ event: 'listening', address })
    else if (!o.json) out.line(address.startsWith('file:') ? `reading ${address}` : `listening on ${address}`)
  }, signal, o.events ? () => {
    event({ event: 'starting' })
    // Fault injection for tests (docs/faults.md): freeze right here, GO
    // received and nothing started, so a kill lands in that window however
    // slowly the test is scheduled. stdout to a pipe is written synchronously.
    if (process.env.VMM_MIGRATE_FAULT === 'stop-at-starting') process.kill(process.pid, 'SIGSTOP')
  } : undefined, o.events ? event : undefined)
  report.maxRssBytes = await maxRssBytes()
  const ok = (report.loaded?.checksumConsistent ?? true) && report.checksumConsistentAfter &&
    (o.runAfterMs === 0 || BigInt(report.counterAfter) > BigInt(report.counterAtStart))
  if (o.events) event({ event: 'completed', report })
  else if (o.json) out.line(toJson(report))
  else {
    const hashing = report.loaded ? ` (includes ${report.verificationMs.toFixed(0)} ms of verification)` : ''
    out.line(`incoming migration completed: loaded in ${report.loadTimeMs.toFixed(1)} ms, VM running ${report.resumeTimeMs.toFixed(1)} ms later${hashing}`)
    out.line(table([
      ...(report.loaded ? verificationRows(report.loaded) : [['vCPU counter', report.counterAtStart] as [string, string]]),
      ['counter after run', `${report.counterAfter} (after ${o.runAfterMs} ms here)`],
      ['checksum after run', report.checksumConsistentAfter ? 'matches RAM' : 'DOES NOT match RAM'],
    ]))
  }
  return ok ? 0 : 1
}

export { migrate }
