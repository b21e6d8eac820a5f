// Child of analyze-bounds.test.ts: prints analyze's output of FILE line by
// line into a counter and reports, as one JSON line, how much heap stayed
// reachable. A process of its own, without the test runner's coverage
// instrumentation (which made this 7x slower and 2 minutes under load) and
// without the runner's heap in the measurement. Needs --expose-gc.
import { writeAnalysis } from '../../vmm/cli/analyze.js'

const file = process.argv[2]!
const gc = (globalThis as { gc?: () => void }).gc
if (!gc) throw new Error('run with --expose-gc')
gc()
const base = process.memoryUsage().heapUsed
let peak = 0
const measure = (): void => {
  gc()
  peak = Math.max(peak, process.memoryUsage().heapUsed - base)
}
const sample = setInterval(measure, 250)
let lines = 0
let pings = 0
let first = ''
try {
  await writeAnalysis(file, (l) => {
    // Once the whole file has been decoded: the first line printed.
    if (lines === 0) measure()
    if (lines++ < 8) first += `${l}\n`
    if (l.includes('"cmd":"PING"')) pings++
  })
} finally {
  clearInterval(sample)
}
measure()
process.stdout.write(`${JSON.stringify({ pings, first, peak })}\n`)
