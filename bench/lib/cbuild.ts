// Compiles the bench's C helpers with the machine's cc, once per source
// content, into a cache folder under the OS temp dir.
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { C_DIR } from './paths.js'

export class CBuildError extends Error {
  override name = 'CBuildError'
}

const built = new Map<string, Promise<string>>()

/** Path of the executable built from bench/c/<name>.c; rejects with CBuildError (no cc, compile error). */
export function cProgram(name: string): Promise<string> {
  if (!/^[a-z0-9_-]+$/.test(name)) return Promise.reject(new CBuildError(`bad C program name ${JSON.stringify(name)}`))
  let p = built.get(name)
  if (!p) {
    p = build(name)
    built.set(name, p)
  }
  return p
}

async function build(name: string): Promise<string> {
  const src = path.join(C_DIR, `${name}.c`)
  let text: Buffer
  try {
    text = await fs.promises.readFile(src)
  } catch (e) {
    throw new CBuildError(`missing C source ${src}: ${(e as Error).message}`)
  }
  const hash = createHash('sha256').update(text).digest('hex').slice(0, 16)
  const dir = path.join(os.tmpdir(), 'vmm-bench-cc')
  await fs.promises.mkdir(dir, { recursive: true })
  const exe = path.join(dir, `${name}-${hash}`)
  if (fs.existsSync(exe)) return exe
  const cc = process.env.CC || 'cc'
  const tmp = `${exe}.${process.pid}.tmp`
  await new Promise<void>((resolve, reject) => {
    execFile(cc, ['-O2', '-pthread', '-o', tmp, src], { timeout: 60000 }, (e, _out, err) => {
      if (!e) { resolve(); return }
      const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? `no C compiler (${cc}) on PATH` : `${cc} failed on ${name}.c: ${String(err).trim().slice(0, 400)}`
      reject(new CBuildError(why))
    })
  })
  await fs.promises.rename(tmp, exe)
  return exe
}
