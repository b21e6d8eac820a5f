// Shared by the TLS tests: throwaway credentials (made once per variant, with
// the openssl command, in a temp dir), a TCP relay that records every byte it
// carries, and small VMs that migrate in milliseconds.
import * as net from 'node:net'
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makeTlsCreds, type CertOptions } from '../../vmm/cli/certs.js'
import { Vm } from '../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../vmm/savevm/registry.js'
import type { MigratableVm } from '../../vmm/migration/index.js'

/** Why the TLS tests cannot run here, or undefined. Under CI=true a missing openssl fails instead. */
export function noOpenssl(): string | undefined {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' })
    return undefined
  } catch {
    if (process.env.CI === 'true') throw new Error('the TLS tests need the openssl command (.ci/run installs it)')
    return 'no openssl command'
  }
}

const root = mkdtempSync(join(tmpdir(), 'vmm-tls-test-'))
process.on('exit', () => rmSync(root, { recursive: true, force: true }))
let n = 0

/** A fresh credentials directory holding both ends' files. */
export async function creds(o: CertOptions = {}): Promise<string> {
  const dir = join(root, `c${n++}`)
  await makeTlsCreds(dir, o)
  return dir
}

/** A directory with `base`'s files, `from`'s for the names listed. */
export function mix(base: string, from: string, names: string[]): string {
  const dir = join(root, `m${n++}`)
  execFileSync('cp', ['-r', base, dir])
  for (const f of names) copyFileSync(join(from, f), join(dir, f))
  return dir
}

export const days = (d: number) => new Date(Date.now() + d * 86400_000)

/** A source running and a destination waiting, with no sections: they migrate in milliseconds. */
export async function vms(machine = 'tls-test-machine'): Promise<{ src: MigratableVm; dst: MigratableVm }> {
  const src = { vm: new Vm('prelaunch'), registry: new SaveVMRegistry(), machine }
  await src.vm.vmStart()
  return { src, dst: { vm: new Vm('prelaunch'), registry: new SaveVMRegistry(), machine } }
}

/** A TCP relay to `port` that keeps what went each way. */
export interface Relay {
  port: number
  /** Bytes from the connecting side (the source), per connection. */
  up: Buffer[][]
  /** Bytes back (the destination's), per connection. */
  down: Buffer[][]
  /** Bytes carried up so far, all connections. */
  readonly upBytes: number
  /** Carries only `n` more bytes up, then cuts both sockets (a truncation). */
  cutAfter(n: number): void
  close(): Promise<void>
}

export function relay(port: number): Promise<Relay> {
  const up: Buffer[][] = []
  const down: Buffer[][] = []
  const socks = new Set<net.Socket>()
  let upBytes = 0
  let limit = Infinity
  const server = net.createServer((a) => {
    const u: Buffer[] = []
    const d: Buffer[] = []
    up.push(u)
    down.push(d)
    const b = net.connect(port, '127.0.0.1')
    for (const s of [a, b]) {
      socks.add(s)
      s.on('error', () => undefined)
      s.on('close', () => { a.destroy(); b.destroy() })
    }
    a.on('data', (x) => {
      const room = limit - upBytes
      const part = x.length > room ? x.subarray(0, room) : x
      upBytes += part.length
      u.push(part)
      if (part.length) b.write(part)
      if (part.length < x.length) b.end(() => { a.destroy(); b.destroy() })
    })
    b.on('data', (x) => { d.push(x); a.write(x) })
    a.on('end', () => b.end())
    b.on('end', () => a.end())
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    resolve({
      port: (server.address() as net.AddressInfo).port,
      up,
      down,
      get upBytes() { return upBytes },
      cutAfter: (n: number) => { limit = upBytes + n },
      close: () => new Promise<void>((r) => {
        for (const s of socks) s.destroy()
        server.close(() => r())
      }),
    })
  }))
}

/** The listening address's port ('tcp:127.0.0.1:4444' -> 4444). */
export const portOf = (address: string) => Number(address.slice(address.lastIndexOf(':') + 1))

export async function until(what: string, fn: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}
