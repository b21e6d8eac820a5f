// The Markdown summary of a run: one table per part, every figure as
// "median (min-max)", every ratio beside its target.
import { fmtRatio, fmtSummary, fmtBytes, type Summary } from './stats.js'
import type { BenchResults } from './results.js'

function table(head: string[], rows: string[][]): string {
  return [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`, ...rows.map(r => `| ${r.join(' | ')} |`)].join('\n')
}

const ns = (s: Summary | undefined) => fmtSummary(s, 1)
const tgt = (r: number | undefined, target: number) => (r === undefined || !Number.isFinite(r) ? 'n/a' : `${fmtRatio(r)} ${r >= target ? '(meets ' : '(below '}${target})`)

function localSection(r: BenchResults): string[] {
  if (!r.local?.rows.length) return []
  const ms = (s: { median: number } | undefined, d = 1) => (s ? s.median.toFixed(d) : '-')
  return ['## Local migration vs copying (unix socket, KVM microVM, no device)', '',
    table(['RAM', 'mode', 'completed', 'downtime ms', 'total ms', 'peak RSS src MiB', 'peak RSS dst MiB', 'PSS src MiB', 'PSS dst MiB', 'PSS src+dst MiB'], r.local.rows.map(x => [
      `${Math.floor(x.ramSize / 2 ** 20)} MiB`, x.mode, `${x.completed}/${x.runs}`, ms(x.downtimeMs), ms(x.totalTimeMs, 0), ms(x.rssSourceMiB, 0), ms(x.rssDestMiB, 0),
      ms(x.pssSourceMiB, 0), ms(x.pssDestMiB, 0), ms(x.pssSumMiB, 0),
    ])), '',
    'Peak RSS is each process\'s VmHWM; PSS is read from /proc/PID/smaps_rollup of both when the source completes, so pages both map (the memfd, local) count once in the sum.', '',
    table(['RAM', 'downtime local/copy', 'total time local/copy'], r.local.ratios.map(x => [`${Math.floor(x.ramSize / 2 ** 20)} MiB`, x.downtime.toFixed(3), x.totalTime.toFixed(3)])), '',
    ...r.local.rows.flatMap(x => x.errors.map(e => `- ${x.mode} ${Math.floor(x.ramSize / 2 ** 20)} MiB: ${e}`)), '']
}

function tlsSection(r: BenchResults): string[] {
  if (!r.tls?.length) return []
  const rate = (s: { MiBps: Summary } | undefined) => fmtSummary(s?.MiBps)
  const dt = (s: { downtimeMs: Summary } | undefined) => fmtSummary(s?.downtimeMs, 1)
  return ['## TLS 1.3 (mutual x509) against plaintext, ours and QEMU, loopback', '',
    table(['state', 'size', 'ours TLS MiB/s', 'ours plaintext MiB/s', 'QEMU TLS MiB/s', 'QEMU plaintext MiB/s', 'ours TLS/plaintext', 'ours TLS/QEMU TLS', 'QEMU TLS/plaintext', 'downtime ms ours TLS / plaintext'],
      r.tls.map(x => [x.kind, fmtBytes(x.size), rate(x.oursTls), rate(x.oursPlain), rate(x.qemuTls), rate(x.qemuPlain),
        tgt(x.tlsOverPlain, 0.7), x.kind === 'ram' ? tgt(x.oursTlsOverQemuTls, 3) : 'n/a', fmtRatio(x.qemuTlsOverPlain), `${dt(x.oursTls)} / ${dt(x.oursPlain)}`])), '',
    ...r.tls.flatMap(x => x.errors.map(e => `- ${x.kind}: ${e}`)), '']
}

function qmpSection(r: BenchResults): string[] {
  if (!r.qmp?.length) return []
  return ['## One QMP client, ours and QEMU (deferred destination, migrate, query-migrate)', '',
    table(['VMM', 'RAM', 'completed', 'total ms', 'downtime ms', 'wire/RAM'], r.qmp.map(x => [
      x.vmm, fmtBytes(x.ramSize), `${x.completed}/${x.runs}`, fmtSummary(x.totalTimeMs), fmtSummary(x.downtimeMs), fmtSummary(x.transferredPerRam, 3),
    ])), '', ...r.qmp.flatMap(x => x.errors.map(e => `- ${x.vmm}: ${e}`)), '']
}

export function summaryMarkdown(r: BenchResults): string {
  const m = r.machine
  const out: string[] = []
  out.push(`# Benchmark summary${r.quick ? ' (quick run)' : ''}`, '')
  out.push(`${r.date}, ${r.durationS.toFixed(0)} s. Machine: ${m.cpu}, ${m.cores} cores, ${m.memGiB} GiB, Linux ${m.kernel}, Node ${m.node}, QEMU ${m.qemu ?? 'n/a'}, KVM: ${m.kvm}; load average ${(m.loadavg ?? []).map(v => v.toFixed(1)).join(' at start, ')} at end (the 2 cores may be shared: load skews every figure, ratios are paired within the run).`)
  out.push(`Each figure: median of ${r.repeats} runs (fewer for 1 GiB and up), min-max in brackets.`, '')

  out.push('## Limits of this machine', '')
  out.push(table(['what', 'MiB/s'], [
    ['memcpy (256 MiB)', fmtSummary(r.limits.memcpyMiBps)],
    ...r.ram.map(x => [`raw loopback TCP, C, ${fmtBytes(x.size)}`, fmtSummary(x.linkMiBps)]),
    ...r.device.throughput.map(x => [`raw splice pipe->socket->pipe, C, ${fmtBytes(x.size)}`, fmtSummary(x.spliceMiBps)]),
  ]), '')

  if (r.ram.length) {
    out.push('## RAM migration throughput (paused guest, random content, loopback TCP)', '')
    out.push(table(['RAM', 'ours MiB/s', 'QEMU MiB/s', 'ours/QEMU (target 1.0)', 'ours/link (target 0.8)', 'QEMU/link', 'downtime ours / QEMU ms', 'wire/RAM ours / QEMU'], r.ram.map(x => [
      fmtBytes(x.size), fmtSummary(x.ours?.MiBps), fmtSummary(x.qemu?.MiBps), tgt(x.oursOverQemu, 1), tgt(x.oursOverLink, 0.8), fmtRatio(x.qemuOverLink),
      `${fmtSummary(x.ours?.downtimeMs)} / ${fmtSummary(x.qemu?.downtimeMs)}`,
      `${x.ours ? x.ours.transferredPerRam.toFixed(3) : 'n/a'} / ${x.qemu ? x.qemu.transferredPerRam.toFixed(3) : 'n/a'}`,
    ])), '')
    out.push('### Peak RSS (MiB) against guest RAM', '')
    out.push(table(['RAM', 'ours source', 'ours destination', 'QEMU source', 'QEMU destination'], r.ram.map(x => [
      fmtBytes(x.size), fmtSummary(x.ours?.rssSourceMiB), fmtSummary(x.ours?.rssDestMiB), fmtSummary(x.qemu?.rssSourceMiB), fmtSummary(x.qemu?.rssDestMiB),
    ])), '')
    const errs = r.ram.flatMap(x => x.errors.map(e => `${fmtBytes(x.size)}: ${e}`))
    if (errs.length) out.push(...errs.map(e => `- ${e}`), '')
  }

  if (r.device.throughput.length) {
    out.push('## VFIO device state (emulated device, save/load over a UNIX socket)', '')
    out.push(table(['state', 'ours MiB/s', 'ours by read/write MiB/s', 'raw splice MiB/s', 'device alone MiB/s', 'ours/splice (target 0.8)', 'read/write/splice', 'ours/device alone', 'peak RSS MiB (both sides)', 'RSS over a 4 KiB state (target <= 64 MiB)'], r.device.throughput.map(x => [
      fmtBytes(x.size), fmtSummary(x.oursMiBps), fmtSummary(x.oursCopyMiBps), fmtSummary(x.spliceMiBps), fmtSummary(x.deviceOnlyMiBps), tgt(x.oursOverSplice, 0.8),
      x.oursCopyMiBps ? fmtRatio(x.oursCopyOverSplice) : 'n/a', fmtRatio(x.oursOverDeviceOnly), fmtSummary(x.rssMiB),
      x.rssOverBaselineMiB === undefined ? 'n/a' : `${x.rssOverBaselineMiB.toFixed(0)} MiB (${x.rssOverBaselineMiB <= 64 ? 'meets' : 'above'} 64)`,
    ])), '')
    out.push('"ours" splices the data fds where the kernel allows it (the emulated device\'s pipes do); "by read/write" never does, as with a kernel VFIO data fd, which has no splice.', '')
  }
  if (r.device.downtime.length) {
    out.push('### Downtime (VM stop to destination VM start) vs device-state size', '')
    out.push(table(['mode', 'state', 'limit ms', 'downtime ms', 'within limit', 'stop-copy bytes', 'total ms'], r.device.downtime.map(p => [
      p.mode, fmtBytes(p.size), String(p.downtimeLimitMs), fmtSummary(p.downtimeMs, 1), p.withinLimit === undefined ? 'n/a' : p.withinLimit ? 'yes' : 'NO',
      p.stopCopyBytes === undefined ? 'n/a' : fmtBytes(p.stopCopyBytes), fmtSummary(p.totalTimeMs) + (p.errors.length ? ` (${p.errors.length} failed: ${p.errors[0].slice(0, 80)})` : ''),
    ])), '')
  }

  if (r.live.length) {
    out.push(`## Live migration of a dirtying microVM (downtime limit ${r.live[0].downtimeLimitMs} ms)`, '')
    out.push(table(['RAM', 'working set', 'auto-converge', 'completed', 'iterations', 'total ms', 'downtime ms', 'sent/RAM', 'dirty pages/s', 'final throttle %', 'RSS src/dst MiB'], r.live.map(l => [
      fmtBytes(l.ramSize), fmtBytes(l.workingSet), l.autoConverge ? 'on' : 'off', `${l.completed}/${l.runs}`, fmtSummary(l.iterations), fmtSummary(l.totalTimeMs),
      fmtSummary(l.downtimeMs, 1), fmtSummary(l.transferredPerRam, 2), fmtSummary(l.dirtyPagesRate), fmtSummary(l.finalThrottle),
      `${fmtSummary(l.rssSourceMiB)} / ${fmtSummary(l.rssDestMiB)}`,
    ])), '')
    const errs = r.live.flatMap(l => l.errors.map(e => `ws ${fmtBytes(l.workingSet)}${l.autoConverge ? ' +auto-converge' : ''}: ${e}`))
    if (errs.length) out.push(...[...new Set(errs)].map(e => `- ${e}`), '')
  }

  if (r.calls) {
    const c = r.calls
    out.push('## Call overhead (ns per call)', '')
    out.push(table(['call', 'ns'], [
      ['napi: native.nativeVersion()', ns(c.napi_nativeVersion_ns)],
      ['ffi-rs: libc getpid()', ns(c.ffirs_getpid_ns)],
      ['ffi-rs: libc abs()', ns(c.ffirs_abs_ns)],
      ['C loop: getpid() (syscall)', ns(c.c_getpid_ns)],
      ['C loop: abs() via pointer', ns(c.c_abs_ns)],
    ]), '')
  }

  out.push(...qmpSection(r))
  out.push(...localSection(r))
  out.push(...tlsSection(r))

  if (r.skipped.length || r.errors.length) {
    out.push('## Not measured', '')
    for (const s of r.skipped) out.push(`- ${s.part}: ${s.reason}`)
    for (const e of r.errors) out.push(`- ${e}`)
    out.push('')
  }
  out.push('Charts: ram-throughput.svg, device-throughput.svg, device-downtime.svg, device-downtime-precopy.svg, live-pending.svg (beside this file).', '')
  return out.join('\n')
}
