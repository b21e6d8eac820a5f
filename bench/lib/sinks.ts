// Byte sinks in child processes, so draining does not compete with the
// measured writer for this process's event loop.
import { spawn, type ChildProcess } from 'node:child_process'
import * as net from 'node:net'
import type { Writable } from 'node:stream'

export interface Sink {
  kind: 'pipe' | 'tcp'
  /** Raw Node writable for the baseline. */
  raw: Writable
  /** URI for connect() (tcp) or the exec command (pipe). */
  close(): Promise<void>
}

const DRAIN_SERVER = `
const net = require('net');
const s = net.createServer(c => { c.on('data', () => {}); c.on('error', () => {}) });
s.listen(0, '127.0.0.1', () => { process.stdout.write(String(s.address().port) + '\\n') });
process.stdin.on('end', () => process.exit(0)); process.stdin.resume();
`

/** A loopback TCP drain server in a child process; resolves its port. */
export async function startTcpDrain(): Promise<{ port: number; child: ChildProcess }> {
  const child = spawn(process.execPath, ['-e', DRAIN_SERVER], { stdio: ['pipe', 'pipe', 'inherit'] })
  const port = await new Promise<number>((res, rej) => {
    let buf = ''
    child.stdout!.on('data', d => {
      buf += String(d)
      if (buf.includes('\n')) res(Number(buf.trim()))
    })
    child.once('exit', c => rej(new Error(`drain server exited ${c}`)))
  })
  return { port, child }
}

export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return
  const done = new Promise(r => child.once('exit', r))
  child.stdin?.end()
  const t = setTimeout(() => child.kill('SIGKILL'), 3000)
  await done
  clearTimeout(t)
}

export function rawTcp(port: number): Promise<net.Socket> {
  return new Promise((res, rej) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => { s.setNoDelay(true); res(s) })
    s.once('error', rej)
  })
}

export function rawPipe(): { child: ChildProcess; raw: Writable } {
  const child = spawn('/bin/sh', ['-c', 'cat > /dev/null'], { stdio: ['pipe', 'ignore', 'inherit'] })
  return { child, raw: child.stdin! }
}

/** One writev of all buffers through a Node writable; resolves when written. */
export function writevRaw(w: Writable, bufs: Uint8Array[]): Promise<void> {
  return new Promise((res, rej) => {
    w.cork()
    for (let i = 0; i < bufs.length - 1; i++) w.write(bufs[i])
    w.write(bufs[bufs.length - 1], e => (e ? rej(e) : res()))
    w.uncork()
  })
}
