// TLS: what encryption costs, ours against ours in plaintext and against
// QEMU 7.2 over TLS, in the same run and on the same loopback link.
// RAM: a paused guest's RAM of random content (as the ram part), ours over
// TLS and in plaintext, QEMU over TLS (tls-creds-x509, verify-peer on at both
// ends) and in plaintext, rotating the order. Device state: the emulated VFIO
// device's STOP_COPY state between two processes, ours over TLS and in
// plaintext (QEMU has no such device). Both ends are separate processes with
// mutual x509 authentication, certificates made for the run (docs/tls.md).
// Rates are bytes of guest state over the source's total time, so the
// handshake counts in them; downtime is reported beside, where the issue
// wants the handshake never to show.
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { makeTlsCreds } from '../../vmm/cli/certs.js'
import { makeRandomFile, removeRamFile } from '../lib/ramfile.js'
import { qemuMigrate } from '../lib/qemu.js'
import { runPair } from '../lib/pair.js'
import { mibps, ratio, summarize, type Summary } from '../lib/stats.js'
import type { BenchContext } from '../lib/context.js'

type Who = 'ours-tls' | 'ours-plain' | 'qemu-tls' | 'qemu-plain'

export interface TlsSide {
  MiBps: Summary
  totalTimeMs: Summary
  downtimeMs: Summary
}

export interface TlsRow {
  kind: 'ram' | 'device'
  size: number
  runs: number
  oursTls?: TlsSide
  oursPlain?: TlsSide
  qemuTls?: TlsSide
  qemuPlain?: TlsSide
  /** Ours over TLS / ours in plaintext, rate medians (target >= 0.7). */
  tlsOverPlain?: number
  /** Ours over TLS / QEMU over TLS, rate medians (target >= 3). */
  oursTlsOverQemuTls?: number
  /** QEMU's own cost of TLS: QEMU over TLS / QEMU in plaintext. */
  qemuTlsOverPlain?: number
  errors: string[]
}

interface Run { ms: number; downtime: number }

function side(size: number, runs: Run[]): TlsSide | undefined {
  if (!runs.length) return undefined
  return {
    MiBps: summarize(runs.map(r => mibps(size, r.ms))),
    totalTimeMs: summarize(runs.map(r => r.ms)),
    downtimeMs: summarize(runs.map(r => r.downtime)),
  }
}

async function ours(kind: 'ram' | 'device', size: number, file: string | undefined, tls: string | undefined, verify: boolean): Promise<Run> {
  // STOP_COPY moves the whole device state stopped: a limit it fits in, and a
  // bandwidth to judge it by (pre-copy has nothing to measure), so both runs
  // switch over at once and the rate is the path's.
  const job = kind === 'ram' ? { kind, size, file, verify } : { kind, size, flags: 1, verify, downtimeLimitMs: 60_000, availSwitchoverBandwidth: 2 ** 30 }
  const r = await runPair(tls ? { ...job, tls } : job, 30 * 60 * 1000)
  const how = tls ? 'over TLS' : 'in plaintext'
  if (r.src.error || !r.dst) throw new Error(`our ${kind} migration ${how} failed: ${r.src.error ?? 'no destination result'}`)
  if (verify && r.src.digest !== r.dst.digest) throw new Error(`our ${kind} migration ${how}: the destination's state differs from the source's`)
  return { ms: r.src.stats.totalTime, downtime: r.src.stats.downtime ?? NaN }
}

function row(kind: 'ram' | 'device', size: number, runs: number, got: Record<Who, Run[]>, errors: string[]): TlsRow {
  const r: TlsRow = {
    kind, size, runs, errors,
    oursTls: side(size, got['ours-tls']), oursPlain: side(size, got['ours-plain']),
    qemuTls: side(size, got['qemu-tls']), qemuPlain: side(size, got['qemu-plain']),
  }
  if (r.oursTls && r.oursPlain) r.tlsOverPlain = ratio(r.oursTls.MiBps, r.oursPlain.MiBps)
  if (r.oursTls && r.qemuTls) r.oursTlsOverQemuTls = ratio(r.oursTls.MiBps, r.qemuTls.MiBps)
  if (r.qemuTls && r.qemuPlain) r.qemuTlsOverPlain = ratio(r.qemuTls.MiBps, r.qemuPlain.MiBps)
  return r
}

async function measure(ctx: BenchContext, kind: 'ram' | 'device', size: number, reps: number, who: Who[], run: (w: Who, i: number) => Promise<Run>): Promise<TlsRow> {
  const got: Record<Who, Run[]> = { 'ours-tls': [], 'ours-plain': [], 'qemu-tls': [], 'qemu-plain': [] }
  const errors: string[] = []
  for (let i = 0; i < reps; i++) {
    // Rotate the order so no one always runs first or in the same burst of outside load.
    const order = [...who.slice(i % who.length), ...who.slice(0, i % who.length)]
    for (const w of order) {
      try {
        got[w].push(await run(w, i))
      } catch (e) {
        errors.push(`${w}: ${(e as Error).message}`)
        ctx.log(`    ${w} failed: ${(e as Error).message}`)
      }
    }
  }
  const r = row(kind, size, reps, got, errors)
  ctx.log(`    TLS/plaintext ${r.tlsOverPlain?.toFixed(2) ?? 'n/a'}${kind === 'ram' ? `, ours TLS/QEMU TLS ${r.oursTlsOverQemuTls?.toFixed(2) ?? 'n/a'}, QEMU TLS/plaintext ${r.qemuTlsOverPlain?.toFixed(2) ?? 'n/a'}` : ''}`)
  return r
}

/** The TLS part: one RAM row and one device-state row of `size` bytes each. */
export async function runTls(ctx: BenchContext, ramSize: number, deviceSize: number, reps: number, qemuOk: boolean): Promise<TlsRow[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-bench-tls-'))
  const rows: TlsRow[] = []
  try {
    const creds = path.join(dir, 'creds')
    await makeTlsCreds(creds, {})
    const who: Who[] = qemuOk ? ['ours-tls', 'ours-plain', 'qemu-tls', 'qemu-plain'] : ['ours-tls', 'ours-plain']
    if (!qemuOk) ctx.skip('tls/qemu', 'QEMU is not usable here (see ram/qemu)')
    ctx.log(`  RAM ${ramSize / 2 ** 20} MiB: ${who.join(', ')}, rotating order, x${reps}`)
    const file = await makeRandomFile(ramSize)
    try {
      rows.push(await measure(ctx, 'ram', ramSize, reps, who, (w, i) => {
        if (w === 'ours-tls') return ours('ram', ramSize, file, creds, i === 0)
        if (w === 'ours-plain') return ours('ram', ramSize, file, undefined, i === 0)
        const q = qemuMigrate(ramSize, file, 30 * 60 * 1000, w === 'qemu-tls' ? { tlsDir: creds } : {})
        return q.then(m => ({ ms: m.totalTimeMs, downtime: m.downtimeMs }))
      }))
    } finally {
      removeRamFile(file)
    }
    ctx.log(`  device state ${deviceSize / 2 ** 20} MiB (STOP_COPY): ours-tls, ours-plain, rotating order, x${reps}`)
    rows.push(await measure(ctx, 'device', deviceSize, reps, ['ours-tls', 'ours-plain'], (w, i) => ours('device', deviceSize, undefined, w === 'ours-tls' ? creds : undefined, i === 0)))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return rows
}
