// The bench's pure parts: statistics, the SVG writer, QMP message parsing,
// child-output parsing and option parsing. No timing is asserted anywhere.
import t from 'tap'
import { summarize, ratio, mibps, fmtSummary, fmtBytes } from '../../bench/lib/stats.js'
import { barChart, lineChart, escapeXml, niceMax } from '../../bench/lib/svg.js'
import { QmpParser, QmpProtocolError, classify, encodeCommand, MAX_LINE } from '../../bench/lib/qmp.js'
import { parseJsonLines } from '../../bench/lib/proc.js'
import { parseArgs } from '../../bench/lib/args.js'

t.test('summarize: median, min, max of odd and even counts; input untouched', async t => {
  const odd = [5, 1, 3]
  t.match(summarize(odd), { median: 3, min: 1, max: 5, n: 3 })
  t.same(odd, [5, 1, 3], 'not sorted in place')
  t.match(summarize([4, 1, 2, 3]), { median: 2.5, min: 1, max: 4, n: 4 })
  t.match(summarize([7]), { median: 7, min: 7, max: 7 })
  t.throws(() => summarize([]), /no samples/)
  t.throws(() => summarize([1, NaN]), /sample 1 is not a finite number/)
  t.throws(() => summarize([1, Infinity]), /sample 1/)
})

t.test('ratio, mibps and formatting', async t => {
  t.equal(ratio(summarize([2, 4, 6]), summarize([2])), 2)
  t.ok(Number.isNaN(ratio(1, 0)), 'a zero denominator gives NaN, not Infinity')
  t.equal(mibps(1 << 20, 1000), 1)
  t.equal(mibps(256 << 20, 500), 512)
  t.throws(() => mibps(1, 0), /duration/)
  t.equal(fmtSummary(summarize([1, 2, 3])), '2 (1-3)')
  t.equal(fmtSummary(summarize([1.25]), 1, 'ms'), '1.3 ms')
  t.equal(fmtSummary(undefined), 'n/a')
  t.equal(fmtBytes(256 << 20), '256 MiB')
  t.equal(fmtBytes(4 * 2 ** 30), '4 GiB')
})

t.test('svg: bar chart has one rect per bar, whiskers, escaped labels', async t => {
  const svg = barChart({
    title: 'A & B <test>', yLabel: 'MiB/s',
    groups: [
      { label: '256 MiB', bars: [{ label: 'ours', value: 100, min: 90, max: 110 }, { label: 'QEMU', value: 200 }] },
      { label: '1 GiB', bars: [{ label: 'ours', value: 150 }, { label: 'QEMU', value: 50, min: 40, max: 60 }] },
    ],
    refLines: [{ label: 'target', value: 120 }],
  })
  t.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/)
  t.ok(svg.trimEnd().endsWith('</svg>'))
  t.equal((svg.match(/<rect x=/g) ?? []).length, 4 + 2, 'four bars and two legend swatches')
  t.match(svg, /A &amp; B &lt;test&gt;/)
  t.notMatch(svg, /<test>/)
  t.match(svg, /stroke-dasharray/, 'reference line drawn')
  t.throws(() => barChart({ title: 'x', yLabel: 'y', groups: [] }), /no groups/)
  t.throws(() => barChart({ title: 'x', yLabel: 'y', groups: [{ label: 'g', bars: [{ label: 'b', value: NaN }] }] }), /not a finite number/)
  t.throws(() => barChart({ title: 'x', yLabel: 'y', groups: [{ label: 'g', bars: [{ label: 'b', value: -1 }] }] }), /negative/)
})

t.test('svg: line chart draws each series, log2 axis refuses x <= 0', async t => {
  const svg = lineChart({
    title: 'downtime', xLabel: 'MiB', yLabel: 'ms', xLog2: true,
    series: [
      { label: 'stop-copy', points: [{ x: 16, y: 30 }, { x: 64, y: 120 }, { x: 1024, y: 1900 }] },
      { label: 'pre-copy', points: [{ x: 16, y: 5 }] },
    ],
  })
  t.equal((svg.match(/<polyline/g) ?? []).length, 1, 'a one-point series has no line')
  t.equal((svg.match(/<circle/g) ?? []).length, 4)
  t.throws(() => lineChart({ title: 't', xLabel: 'x', yLabel: 'y', xLog2: true, series: [{ label: 's', points: [{ x: 0, y: 1 }] }] }), /x > 0/)
  t.throws(() => lineChart({ title: 't', xLabel: 'x', yLabel: 'y', series: [] }), /no points/)
  t.equal(escapeXml(`"'`), '&quot;&apos;')
  t.equal(niceMax(730), 1000)
  t.equal(niceMax(120), 200)
  t.equal(niceMax(0), 1)
})

t.test('qmp: parser splits lines, keeps partial ones, classifies', async t => {
  const p = new QmpParser()
  const greeting = '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}\r\n'
  t.same(p.feed(greeting.slice(0, 20)), [], 'nothing until the newline')
  const [g] = p.feed(greeting.slice(20))
  t.equal(g.kind, 'greeting')
  t.same(g.kind === 'greeting' && g.capabilities, ['oob'])
  const msgs = p.feed('{"return": {}, "id": 1}\r\n{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n{"id": 2, "error": {"class": "GenericError", "desc": "no"}}\r\n')
  t.same(msgs.map(m => m.kind), ['return', 'event', 'error'])
  t.match(msgs[2], { kind: 'error', id: 2, errorClass: 'GenericError', desc: 'no' })
  t.match(msgs[1], { kind: 'event', event: 'STOP' })
  t.same(p.feed('\r\n\r\n'), [], 'blank lines ignored')
})

t.test('qmp: malformed input is a clear error, never unbounded', async t => {
  t.throws(() => new QmpParser().feed('{"return": \n'), QmpProtocolError)
  t.throws(() => new QmpParser().feed('[1,2]\n'), /expected a JSON object/)
  t.throws(() => classify({ foo: 1 }), /unknown message/)
  t.throws(() => classify({ error: 'x' }), /error reply without an object/)
  const p = new QmpParser()
  t.throws(() => p.feed('x'.repeat(MAX_LINE + 1)), /longer than/)
})

t.test('qmp: commands encode as one line with id and arguments', async t => {
  t.equal(encodeCommand('query-migrate', undefined, 3), '{"execute":"query-migrate","id":3}\n')
  t.same(JSON.parse(encodeCommand('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 }, 1)), { execute: 'migrate-set-parameters', arguments: { 'max-bandwidth': 2 ** 40 }, id: 1 })
  t.throws(() => encodeCommand('bad name'), /bad command name/)
})

t.test('child output: JSON lines among progress text', async t => {
  t.same(parseJsonLines('hello\n{"a":1}\n  {"b":2}  \n'), [{ a: 1 }, { b: 2 }])
  t.throws(() => parseJsonLines('{"a":\n'), /malformed JSON line/)
})

t.test('options: defaults, quick, only, repeats, bad input', async t => {
  const d = parseArgs([])
  t.equal(d.quick, false)
  t.equal(d.repeats, 5)
  t.equal(d.only.size, 9)
  const q = parseArgs(['--quick', '--only', 'ram,calls', '--repeats=2', '--no-qemu'])
  t.same([q.quick, [...q.only], q.repeats, q.qemu], [true, ['ram', 'calls'], 2, false])
  t.equal(parseArgs(['--quick']).repeats, 3)
  t.throws(() => parseArgs(['--only', 'rma']), /unknown: rma/)
  t.throws(() => parseArgs(['--repeats', '0']), /1\.\.50/)
  t.throws(() => parseArgs(['--repeats']), /needs a value/)
  t.throws(() => parseArgs(['--fast']), /unknown argument/)
})
