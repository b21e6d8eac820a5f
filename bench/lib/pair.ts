// Runs one migration between two worker processes (bench/workers/side.ts):
// the destination first, then the source pointed at the address it printed.
import * as path from 'node:path'
import { JsonChild } from './proc.js'
import { WORKERS_DIR } from './paths.js'
import type { Job } from '../workers/side.js'
import type { MigrationStats } from '../../vmm/migration/index.js'

export interface SourceResult {
  stats: MigrationStats
  error?: string
  /** Bytes still to send after each pre-copy round. */
  pending: number[]
  digest?: string
  maxRss: number
}

export interface DestResult {
  loadTimeMs: number
  resumeTimeMs: number
  digest?: string
  maxRss: number
}

export interface PairResult {
  src: SourceResult
  dst?: DestResult
}

export async function runPair(job: Omit<Job, 'role' | 'uri'>, timeoutMs: number): Promise<PairResult> {
  const script = path.join(WORKERS_DIR, 'side.js')
  const dst = new JsonChild(script, [JSON.stringify({ ...job, role: 'dst' })])
  let src: JsonChild | undefined
  try {
    const l = await dst.next(60000)
    if (typeof l.listening !== 'string') throw new Error(`destination: expected {listening}, got ${JSON.stringify(l)}`)
    src = new JsonChild(script, [JSON.stringify({ ...job, role: 'src', uri: l.listening })])
    const s = await src.next(timeoutMs)
    const srcRes = s.result as SourceResult
    if (!srcRes) throw new Error(`source: expected {result}, got ${JSON.stringify(s)}`)
    if (srcRes.error) return { src: srcRes }
    const d = await dst.next(30000)
    return { src: srcRes, dst: d.result as DestResult }
  } finally {
    await src?.stop()
    await dst.stop()
  }
}
