// The subcommands that run one side of a migration: migrate/save (source)
// and incoming/restore (destination).
import { migrate, incoming, OutgoingMigration, type MigrationStats } from '../migration/index.js'
import type { MicroVm, Verification } from '../microvm/index.js'
import type { Options } from './args.js'
import { createMicroVm, parameters, capabilities, sleep } from './vm-options.js'
import { progressLine, statsRows, table } from './format.js'
import { toJson } from './analyze.js'

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
    ['RAM sha256', v.ramDigest],
    ['device sha256', v.deviceDigest || '(no device)'],
    ['vCPU counter', v.counter],
    ['guest checksum', `0x${v.checksum.toString(16).padStart(8, '0')} (${v.checksumConsistent ? 'matches RAM' : 'DOES NOT match RAM'})`],
    ['timer ticks', v.timer.ticks],
  ]
}

/** Source side: run the VM, migrate it to `uri`, verify it with the VM stopped. */
export async function runSource(uri: string, o: Options, out: Out, signal?: AbortSignal): Promise<{ stats: MigrationStats; verification: Verification; vm: MicroVm }> {
  const vm = await createMicroVm('source', o)
  try {
    await sleep(o.runMs)
    const m = new OutgoingMigration(vm, { parameters: parameters(o), capabilities: capabilities(o), signal })
    if (!o.json) m.on('progress', (s) => out.progress(progressLine(s)))
    let stats: MigrationStats
    try {
      stats = await m.start(uri)
    } finally {
      out.done()
    }
    // The source is left in postmigrate: vCPU quiesced, device stopped, RAM as sent.
    const verification = await vm.verify()
    return { stats, verification, vm }
  } catch (e) {
    await vm.destroy().catch(() => undefined)
    throw e
  }
}

export async function cmdMigrate(uri: string, o: Options, out: Out, signal?: AbortSignal): Promise<number> {
  const { stats, verification, vm } = await runSource(uri, o, out, signal)
  await vm.destroy()
  if (o.json) out.line(toJson({ stats, verification }))
  else out.line(`migration ${stats.status}\n${table([...statsRows(stats), ...verificationRows(verification)])}`)
  return verification.checksumConsistent ? 0 : 1
}

export interface IncomingReport {
  loadTimeMs: number
  resumeTimeMs: number
  /** Recorded after loading, before the vCPU started (absent with --no-verify). */
  loaded?: Verification
  /** Counter when the VM started here. */
  counterAtStart: string
  /** Counter after running `runAfterMs` on this side. */
  counterAfter: string
  /** The guest's checksum still matches its RAM after running here. */
  checksumConsistentAfter: boolean
  vcpu: string
}

/** Destination side: receive, start, let the guest run, check it, stop. */
export async function runIncoming(uri: string, o: Options, onListening: (address: string) => void, signal?: AbortSignal): Promise<IncomingReport> {
  const vm = await createMicroVm('dest', o, !o.noVerify)
  try {
    const res = await incoming(vm, uri, { capabilities: capabilities(o), onListening, signal })
    const counterAtStart = vm.vcpuCounter().toString()
    const loaded = await vm.verificationBeforeStart()
    if (!loaded && !o.noVerify) throw new Error('the VM started without the verification step')
    await sleep(o.runAfterMs)
    await vm.vm.vmStop('paused')
    const after = await vm.verify()
    return {
      loadTimeMs: res.loadTimeMs,
      resumeTimeMs: res.resumeTimeMs,
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

export async function cmdIncoming(uri: string, o: Options, out: Out, signal?: AbortSignal): Promise<number> {
  const event = (e: Record<string, unknown>) => out.line(JSON.stringify(e))
  const report = await runIncoming(uri, o, (address) => {
    if (o.events) event({ event: 'listening', address })
    else if (!o.json) out.line(address.startsWith('file:') ? `reading ${address}` : `listening on ${address}`)
  }, signal)
  const ok = (report.loaded?.checksumConsistent ?? true) && report.checksumConsistentAfter &&
    (o.runAfterMs === 0 || BigInt(report.counterAfter) > BigInt(report.counterAtStart))
  if (o.events) event({ event: 'completed', report })
  else if (o.json) out.line(toJson(report))
  else {
    const hashing = report.loaded ? ` (includes ${report.loaded.hashMs.toFixed(0)} ms of verification hashing)` : ''
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
