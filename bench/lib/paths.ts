// Where things are at run time: the bench runs from dist/bench/, but its C
// sources and results folder live under the repository's bench/.
import * as fs from 'node:fs'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'

function findRoot(): string {
  let d = path.dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(d, 'package.json')) && fs.existsSync(path.join(d, 'bench'))) return d
    d = path.dirname(d)
  }
  throw new Error('bench: cannot find the repository root (package.json beside bench/) above ' + fileURLToPath(import.meta.url))
}

export const ROOT = findRoot()
export const C_DIR = path.join(ROOT, 'bench', 'c')
export const RESULTS_DIR = path.join(ROOT, 'bench', 'results')
/** Compiled bench workers (node scripts run as separate processes). */
export const WORKERS_DIR = path.join(ROOT, 'dist', 'bench', 'workers')
