// One QMP client drives ours (`vmm-migrate run --qmp`) and QEMU through the
// same calls: a destination deferred, migrate-incoming, max-bandwidth far
// above the link, migrate, query-migrate polled until completed on both
// sides. Total time, downtime and bytes per byte of RAM are QMP's own
// figures (query-migrate), so the two are read the same way.
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { QmpClient } from '../lib/qmp.js'
import { launch, machineArgs } from '../lib/qemu.js'
import { stopProcess, track } from '../lib/proc.js'
import { summarize, type Summary } from '../lib/stats.js'
import type { BenchContext } from '../lib/context.js'

export interface QmpRow {
  vmm: 'ours' | 'qemu'
  ramSize: number
  runs: number
  completed: number
  totalTimeMs?: Summary
  downtimeMs?: Summary
  transferredPerRam?: Summary
  errors: string[]
}

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../vmm/cli/main.js')

interface Side {
  qmp: QmpClient
  stop(): Promise<void>
}

async function ours(dir: string, name: string, size: number, dest: boolean): Promise<Side> {
  const sock = path.join(dir, `${name}.qmp`)
  const args = [MAIN, 'run', '--qmp', sock, '--ram', `${size >> 20}M`, ...(dest ? ['--incoming', 'defer'] : [])]
  const child = track(spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] }))
  let err = ''
  child.stderr!.on('data', (d) => { if (err.length < 65536) err += d })
  const exited = new Promise<never>((_, rej) => child.once('exit', (c) => rej(new Error(`vmm-migrate run exited ${c}: ${err.trim().slice(0, 400)}`))))
  exited.catch(() => undefined)
  try {
    const qmp = await Promise.race([QmpClient.connect(sock, 30000), exited])
    return { qmp, stop: () => quit(qmp, child) }
  } catch (e) {
    await stopProcess(child)
    throw e
  }
}

async function quit(qmp: QmpClient, child: import('node:child_process').ChildProcess): Promise<void> {
  await qmp.execute('quit', undefined, 3000).catch(() => undefined)
  qmp.close()
  await stopProcess(child)
}

async function qemu(dir: string, name: string, size: number, dest: boolean, ramFile: string): Promise<Side> {
  const sock = path.join(dir, `${name}.qmp`)
  const backend = dest ? `memory-backend-ram,id=ram0,size=${size}` : `memory-backend-file,id=ram0,size=${size},mem-path=${ramFile},share=on`
  const q = await launch([...machineArgs(size, backend, sock), ...(dest ? ['-incoming', 'defer'] : [])], sock)
  return { qmp: q.qmp, stop: () => quit(q.qmp, q.child) }
}

/** The manager's side: identical for both VMMs. */
async function drive(src: QmpClient, dst: QmpClient, uri: string, timeoutMs: number): Promise<{ total: number; downtime: number; transferred: number; ramTotal: number }> {
  await src.execute('cont')
  await dst.execute('migrate-incoming', { uri })
  await src.execute('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 })
  await src.execute('migrate', { uri })
  const deadline = Date.now() + timeoutMs
  const until = async (q: QmpClient, what: string): Promise<Record<string, any>> => {
    for (;;) {
      const info = (await q.execute('query-migrate')) as Record<string, any>
      if (info.status === 'completed') return info
      if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`${what}: migration ${info.status}: ${info['error-desc'] ?? ''}`)
      if (Date.now() > deadline) throw new Error(`${what}: not completed within ${timeoutMs} ms (${info.status})`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  const info = await until(src, 'source')
  await until(dst, 'destination')
  return { total: info['total-time'], downtime: info.downtime, transferred: info.ram.transferred, ramTotal: info.ram.total }
}

export async function runQmp(ctx: BenchContext, size: number, reps: number, ramFile: string | undefined): Promise<QmpRow[]> {
  const rows: QmpRow[] = []
  for (const vmm of ['ours', 'qemu'] as const) {
    if (vmm === 'qemu' && !ramFile) {
      ctx.skip('qmp/qemu', 'QEMU is not available')
      continue
    }
    const row: QmpRow = { vmm, ramSize: size, runs: reps, completed: 0, errors: [] }
    const acc = { tt: [] as number[], dt: [] as number[], tr: [] as number[] }
    for (let i = 0; i < reps; i++) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmm-bench-qmp-'))
      const sides: Side[] = []
      try {
        const start = (name: string, dest: boolean) => (vmm === 'ours' ? ours(dir, name, size, dest) : qemu(dir, name, size, dest, ramFile!))
        sides.push(await start('dst', true))
        sides.push(await start('src', false))
        const r = await drive(sides[1]!.qmp, sides[0]!.qmp, `unix:${path.join(dir, 'mig.sock')}`, 120_000)
        acc.tt.push(r.total)
        acc.dt.push(r.downtime)
        acc.tr.push(r.transferred / size)
        row.completed++
      } catch (e) {
        row.errors.push((e as Error).message)
      } finally {
        for (const s of sides) await s.stop()
        fs.rmSync(dir, { recursive: true, force: true })
      }
    }
    const S = (a: number[]) => (a.length ? summarize(a) : undefined)
    Object.assign(row, { totalTimeMs: S(acc.tt), downtimeMs: S(acc.dt), transferredPerRam: S(acc.tr) })
    ctx.log(`  ${vmm}: ${row.completed}/${reps} completed, total ${row.totalTimeMs?.median ?? '-'} ms, downtime ${row.downtimeMs?.median ?? '-'} ms`)
    rows.push(row)
  }
  return rows
}
