// Summaries of repeated measurements: every figure the bench reports is the
// median of its runs, with min and max beside it so the spread is visible.

export interface Summary {
  median: number
  min: number
  max: number
  n: number
  samples: number[]
}

export function summarize(samples: readonly number[]): Summary {
  if (!Array.isArray(samples) || samples.length === 0) throw new RangeError('summarize: no samples')
  for (const [i, v] of samples.entries()) {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new RangeError(`summarize: sample ${i} is not a finite number (${String(v)})`)
  }
  const s = [...samples].sort((a, b) => a - b)
  const mid = s.length >> 1
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
  return { median, min: s[0], max: s[s.length - 1], n: s.length, samples: [...samples] }
}

/** Ratio of two medians; NaN when the denominator is 0 so a report shows "n/a" instead of Infinity. */
export function ratio(num: Summary | number, den: Summary | number): number {
  const a = typeof num === 'number' ? num : num.median
  const b = typeof den === 'number' ? den : den.median
  return b === 0 ? NaN : a / b
}

export function round(v: number, digits = 2): number {
  if (!Number.isFinite(v)) return v
  const f = 10 ** digits
  return Math.round(v * f) / f
}

/** "median (min-max)" with a fixed number of significant decimals. */
export function fmtSummary(s: Summary | undefined, digits = 0, unit = ''): string {
  if (!s) return 'n/a'
  const f = (v: number) => v.toFixed(digits)
  const u = unit ? ` ${unit}` : ''
  return s.n > 1 ? `${f(s.median)}${u} (${f(s.min)}-${f(s.max)})` : `${f(s.median)}${u}`
}

export function fmtRatio(r: number | undefined): string {
  return r === undefined || !Number.isFinite(r) ? 'n/a' : r.toFixed(2)
}

export const MiB = 1 << 20
export const GiB = 1 << 30

/** MiB per second for `bytes` moved in `ms`. */
export function mibps(bytes: number, ms: number): number {
  if (!(ms > 0)) throw new RangeError(`mibps: duration must be > 0 ms, got ${ms}`)
  return bytes / MiB / (ms / 1000)
}

export function fmtBytes(n: number): string {
  if (n >= GiB && n % GiB === 0) return `${n / GiB} GiB`
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`
  if (n >= GiB) return `${(n / GiB).toFixed(2)} GiB`
  return `${(n / MiB).toFixed(1)} MiB`
}
