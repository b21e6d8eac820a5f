// One migration between two real vmm-migrate processes over a given
// transport, returning both sides' reports (used by several e2e files).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { MAIN, Proc, lastEvent, type Ev, type IncomingReport, type SourceResult } from './helpers.js'

export type Transport = 'tcp' | 'unix' | 'exec' | 'file' | 'exec-restore'

export interface PairOptions {
  transport: Transport
  vcpu: 'soft' | 'kvm'
  ram: number
  dir: string
  /** Options for both sides. */
  common?: string[]
  /** Options for the source only. */
  source?: string[]
  timeoutMs?: number
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`

function parseLines(text: string): Ev[] {
  return text.split('\n').filter((l) => l.startsWith('{"')).map((l) => JSON.parse(l) as Ev)
}

export async function migratePair(o: PairOptions): Promise<{ src: SourceResult; dst: IncomingReport }> {
  const timeout = o.timeoutMs ?? 90_000
  const both = ['--ram', String(o.ram), '--vcpu', o.vcpu, ...(o.common ?? [])]
  const srcArgs = ['--events', '--run', '300', ...both, ...(o.source ?? [])]
  const dstArgs = ['--events', '--run-after', '300', ...both]
  let dst: Proc | undefined
  let src: Proc
  let dstEvents: () => Ev[]
  if (o.transport === 'tcp' || o.transport === 'unix') {
    const uri = o.transport === 'tcp' ? 'tcp:127.0.0.1:0' : `unix:${join(o.dir, 'mig.sock')}`
    dst = new Proc(['incoming', uri, ...dstArgs], `destination (${o.transport})`)
    const address = String((await dst.next('listening', 30_000)).address)
    src = new Proc(['migrate', address, ...srcArgs], `source (${o.transport})`)
    dstEvents = () => dst!.events
  } else if (o.transport === 'exec') {
    // QEMU's model: the source runs the destination with the stream on its stdin.
    const out = join(o.dir, 'dest.out')
    const cmd = [process.execPath, MAIN, 'incoming', 'fd:0', ...dstArgs].map(quote).join(' ')
    src = new Proc(['migrate', `exec:${cmd} > ${quote(out)} 2> ${quote(join(o.dir, 'dest.err'))}`, ...srcArgs], 'source (exec)')
    dstEvents = () => parseLines(readFileSync(out, 'utf8'))
  } else {
    const file = join(o.dir, 'vm.sav')
    const save = new Proc(['save', `file:${file}`, ...srcArgs], 'save')
    const saved = await save.exit(timeout)
    if (saved.code !== 0) throw new Error(`save failed (${JSON.stringify(saved)}): ${save.stderr}`)
    // The destination reads the file itself, or through a command's stdout (incoming exec:).
    const uri = o.transport === 'file' ? `file:${file}` : `exec:cat ${quote(file)}`
    dst = new Proc([o.transport === 'file' ? 'restore' : 'incoming', uri, ...dstArgs], o.transport)
    src = save
    dstEvents = () => dst!.events
  }
  const s = await src.exit(timeout)
  const d = dst ? await dst.exit(timeout) : undefined
  const done = lastEvent(src, 'completed')
  if (s.code !== 0 || !done) throw new Error(`source exit ${JSON.stringify(s)}, no completed event\nstdout: ${src.stdout.slice(-3000)}\nstderr: ${src.stderr.slice(-3000)}`)
  const report = [...dstEvents()].reverse().find((e) => e.event === 'completed')
  if ((d && d.code !== 0) || !report) {
    throw new Error(`destination exit ${JSON.stringify(d)}, no completed event\nstdout: ${dst?.stdout.slice(-3000)}\nstderr: ${dst?.stderr.slice(-3000)}`)
  }
  return { src: done as unknown as SourceResult, dst: report.report as IncomingReport }
}
