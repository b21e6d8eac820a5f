// Command-line options of `npm run bench`, validated up front so a typo
// fails in a second instead of after minutes of measuring.

export const PARTS = ['limits', 'ram', 'device', 'downtime', 'live', 'calls', 'qmp', 'local', 'tls'] as const
export type Part = (typeof PARTS)[number]

export interface Options {
  quick: boolean
  only: Set<Part>
  repeats: number
  qemu: boolean
  install: boolean
  /** Only redraw summary.md and the charts from an earlier run's bench.json. */
  render: boolean
}

export function parseArgs(argv: string[]): Options {
  const o: Options = { quick: false, only: new Set(PARTS), repeats: 0, qemu: true, install: true, render: false }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const val = () => {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i]
      if (v === undefined) throw new Error(`bench: ${a} needs a value`)
      return v
    }
    if (a === '--quick') o.quick = true
    else if (a === '--no-qemu') o.qemu = false
    else if (a === '--no-install') o.install = false
    else if (a === '--render') o.render = true
    else if (a.startsWith('--only')) {
      const parts = val().split(',').map(s => s.trim()).filter(Boolean)
      const bad = parts.filter(p => !(PARTS as readonly string[]).includes(p))
      if (bad.length || !parts.length) throw new Error(`bench: --only takes a list of ${PARTS.join(',')}; unknown: ${bad.join(',') || '(empty)'}`)
      o.only = new Set(parts as Part[])
    } else if (a.startsWith('--repeats')) {
      const n = Number(val())
      if (!Number.isInteger(n) || n < 1 || n > 50) throw new Error(`bench: --repeats must be an integer in 1..50, got ${JSON.stringify(n)}`)
      o.repeats = n
    } else if (a === '--help' || a === '-h') {
      throw new Error('usage: npm run bench -- [--quick] [--only ' + PARTS.join(',') + '] [--repeats N] [--no-qemu] [--no-install] [--render]')
    } else throw new Error(`bench: unknown argument ${JSON.stringify(a)} (try --help)`)
  }
  if (!o.repeats) o.repeats = o.quick ? 3 : 5
  return o
}
