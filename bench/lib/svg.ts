// A small SVG chart writer (grouped bars with min-max whiskers, and line
// charts), so the bench draws its figures without a plotting dependency.

export interface Bar {
  label: string
  value: number
  min?: number
  max?: number
}

export interface BarGroup {
  label: string
  bars: Bar[]
}

export interface BarChart {
  title: string
  yLabel: string
  groups: BarGroup[]
  /** Horizontal reference lines, e.g. a target. */
  refLines?: { label: string; value: number }[]
}

export interface Series {
  label: string
  points: { x: number; y: number }[]
}

export interface LineChart {
  title: string
  xLabel: string
  yLabel: string
  series: Series[]
  /** Log2 x axis (sizes that double). */
  xLog2?: boolean
  refLines?: { label: string; value: number }[]
}

const W = 720
const H = 400
const M = { l: 70, r: 200, t: 40, b: 60 }
const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f']

export function escapeXml(s: string): string {
  return String(s).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!)
}

function num(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toFixed(2)
}

function checkFinite(v: number, what: string): void {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new RangeError(`svg: ${what} is not a finite number (${String(v)})`)
}

/** Round `max` up to 1, 2 or 5 times a power of ten, for readable ticks. */
export function niceMax(max: number): number {
  if (!(max > 0)) return 1
  const p = 10 ** Math.floor(Math.log10(max))
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p
  return 10 * p
}

function frame(title: string, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(title)}</text>`,
    ...body,
    '</svg>',
    '',
  ].join('\n')
}

function yAxis(yMax: number, label: string, out: string[]): (v: number) => number {
  const ph = H - M.t - M.b
  const y = (v: number) => M.t + ph - (v / yMax) * ph
  for (let i = 0; i <= 5; i++) {
    const v = (yMax * i) / 5
    out.push(`<line x1="${M.l}" x2="${W - M.r}" y1="${num(y(v))}" y2="${num(y(v))}" stroke="#ddd"/>`)
    out.push(`<text x="${M.l - 6}" y="${num(y(v) + 4)}" text-anchor="end">${escapeXml(num(Number(v.toPrecision(3))))}</text>`)
  }
  out.push(`<line x1="${M.l}" x2="${M.l}" y1="${M.t}" y2="${H - M.b}" stroke="black"/>`)
  out.push(`<line x1="${M.l}" x2="${W - M.r}" y1="${H - M.b}" y2="${H - M.b}" stroke="black"/>`)
  out.push(`<text transform="translate(16 ${M.t + (H - M.t - M.b) / 2}) rotate(-90)" text-anchor="middle">${escapeXml(label)}</text>`)
  return y
}

function legend(labels: string[], out: string[], dashed = false): void {
  labels.forEach((l, i) => {
    const yy = M.t + 10 + i * 18
    const c = PALETTE[i % PALETTE.length]
    out.push(dashed
      ? `<line x1="${W - M.r + 12}" x2="${W - M.r + 26}" y1="${yy}" y2="${yy}" stroke="${c}" stroke-width="2"/>`
      : `<rect x="${W - M.r + 12}" y="${yy - 6}" width="14" height="12" fill="${c}"/>`)
    out.push(`<text x="${W - M.r + 32}" y="${yy + 4}">${escapeXml(l)}</text>`)
  })
}

function refs(lines: { label: string; value: number }[] | undefined, y: (v: number) => number, yMax: number, out: string[]): void {
  for (const r of lines ?? []) {
    checkFinite(r.value, `reference line ${r.label}`)
    if (r.value > yMax) continue
    out.push(`<line x1="${M.l}" x2="${W - M.r}" y1="${num(y(r.value))}" y2="${num(y(r.value))}" stroke="#444" stroke-dasharray="6 4"/>`)
    out.push(`<text x="${W - M.r - 4}" y="${num(y(r.value) - 4)}" text-anchor="end" fill="#444">${escapeXml(r.label)}</text>`)
  }
}

export function barChart(c: BarChart): string {
  if (!c.groups.length) throw new RangeError(`svg: bar chart "${c.title}" has no groups`)
  const labels: string[] = []
  let top = 0
  for (const g of c.groups) {
    for (const b of g.bars) {
      checkFinite(b.value, `bar ${g.label}/${b.label}`)
      if (b.value < 0) throw new RangeError(`svg: bar ${g.label}/${b.label} is negative`)
      if (!labels.includes(b.label)) labels.push(b.label)
      top = Math.max(top, b.value, b.max ?? 0)
    }
  }
  for (const r of c.refLines ?? []) top = Math.max(top, r.value)
  const yMax = niceMax(top * 1.05)
  const out: string[] = []
  const y = yAxis(yMax, c.yLabel, out)
  const pw = W - M.l - M.r
  const gw = pw / c.groups.length
  const bw = Math.min(48, (gw * 0.8) / Math.max(1, labels.length))
  c.groups.forEach((g, gi) => {
    const x0 = M.l + gi * gw + (gw - bw * labels.length) / 2
    for (const b of g.bars) {
      const li = labels.indexOf(b.label)
      const x = x0 + li * bw
      out.push(`<rect x="${num(x + 1)}" y="${num(y(b.value))}" width="${num(bw - 2)}" height="${num(y(0) - y(b.value))}" fill="${PALETTE[li % PALETTE.length]}"><title>${escapeXml(`${g.label} ${b.label}: ${num(b.value)}`)}</title></rect>`)
      if (b.min !== undefined && b.max !== undefined && b.max > b.min) {
        const cx = num(x + bw / 2)
        out.push(`<line x1="${cx}" x2="${cx}" y1="${num(y(b.min))}" y2="${num(y(b.max))}" stroke="black"/>`)
      }
    }
    out.push(`<text x="${num(M.l + gi * gw + gw / 2)}" y="${H - M.b + 18}" text-anchor="middle">${escapeXml(g.label)}</text>`)
  })
  refs(c.refLines, y, yMax, out)
  legend(labels, out)
  return frame(c.title, out)
}

export function lineChart(c: LineChart): string {
  const pts = c.series.flatMap(s => s.points)
  if (!pts.length) throw new RangeError(`svg: line chart "${c.title}" has no points`)
  for (const s of c.series) {
    for (const p of s.points) {
      checkFinite(p.x, `x of ${s.label}`)
      checkFinite(p.y, `y of ${s.label}`)
      if (c.xLog2 && p.x <= 0) throw new RangeError(`svg: log2 x axis needs x > 0 (series ${s.label})`)
    }
  }
  const fx = (v: number) => (c.xLog2 ? Math.log2(v) : v)
  let xLo = Math.min(...pts.map(p => fx(p.x)))
  let xHi = Math.max(...pts.map(p => fx(p.x)))
  if (xHi === xLo) { xLo -= 1; xHi += 1 }
  let top = Math.max(0, ...pts.map(p => p.y))
  for (const r of c.refLines ?? []) top = Math.max(top, r.value)
  const yMax = niceMax(top * 1.05)
  const out: string[] = []
  const y = yAxis(yMax, c.yLabel, out)
  const pw = W - M.l - M.r
  const x = (v: number) => M.l + ((fx(v) - xLo) / (xHi - xLo)) * pw
  const ticks = [...new Set(pts.map(p => p.x))].sort((a, b) => a - b)
  const shown = ticks.length > 12 ? ticks.filter((_, i) => i % Math.ceil(ticks.length / 12) === 0) : ticks
  for (const t of shown) out.push(`<text x="${num(x(t))}" y="${H - M.b + 16}" text-anchor="middle">${escapeXml(num(t))}</text>`)
  out.push(`<text x="${M.l + pw / 2}" y="${H - 14}" text-anchor="middle">${escapeXml(c.xLabel)}</text>`)
  c.series.forEach((s, i) => {
    const col = PALETTE[i % PALETTE.length]
    const sorted = [...s.points].sort((a, b) => a.x - b.x)
    if (sorted.length > 1) out.push(`<polyline fill="none" stroke="${col}" stroke-width="2" points="${sorted.map(p => `${num(x(p.x))},${num(y(p.y))}`).join(' ')}"/>`)
    for (const p of sorted) out.push(`<circle cx="${num(x(p.x))}" cy="${num(y(p.y))}" r="3" fill="${col}"><title>${escapeXml(`${s.label}: ${num(p.x)}, ${num(p.y)}`)}</title></circle>`)
  })
  refs(c.refLines, y, yMax, out)
  legend(c.series.map(s => s.label), out, true)
  return frame(c.title, out)
}
