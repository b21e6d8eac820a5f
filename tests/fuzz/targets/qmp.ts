// The QMP server as a manager reaches it: the input's bytes go down a real
// unix socket to a fresh QmpServer (vmm/qmp) for a fresh machine, after
// the greeting; the replies come back. Also the splitter alone: cut into
// pieces, the same bytes must give the same messages.
//
// No URI ever reaches the server: an input in which any string parses as a
// migration URI (exec:, file:, unix:, tcp: ...) is checked by the splitter
// only. A fuzzer must not run shell commands or write files at the paths
// it makes up, and the URI parser has a target of its own (cli).
import { mkdtempSync, rmSync } from 'node:fs'
import * as net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { QmpDecoder, checkRequest, type Decoded } from '../../../vmm/qmp/codec.js'
import { QmpServer } from '../../../vmm/qmp/server.js'
import { parseUri } from '../../../vmm/channel/uri.js'
import { Vm } from '../../../vmm/runstate/index.js'
import { SaveVMRegistry } from '../../../vmm/savevm/registry.js'
import { Finding, type Target } from '../engine.js'
import { assertTyped } from './typed.js'

const ERROR_CLASSES = new Set(['GenericError', 'CommandNotFound', 'DeviceNotActive', 'DeviceNotFound', 'KVMMissingCap'])
/** How long the server may take to answer everything an input asked. */
const REPLY_MS = 5000

/** Every string in a JSON value, keys included. */
function* strings(v: unknown, depth = 0): Generator<string> {
  if (depth > 2000) return
  if (typeof v === 'string') yield v
  else if (Array.isArray(v)) for (const x of v) yield* strings(x, depth + 1)
  else if (v !== null && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      yield k
      yield* strings(x, depth + 1)
    }
  }
}

function namesUri(messages: Decoded[]): boolean {
  for (const m of messages) {
    if (m.kind !== 'value') continue
    for (const s of strings(m.value)) {
      if (!s.includes(':')) continue
      try {
        parseUri(s)
        return true
      } catch {
        // not a URI: harmless
      }
    }
  }
  return false
}

/** The splitter fed `input` in pieces cut at `cuts`. */
function split(input: Buffer, cuts: number[], maxMessageBytes: number): Decoded[] {
  const d = new QmpDecoder({ maxMessageBytes })
  const out: Decoded[] = []
  let at = 0
  for (const c of [...cuts, input.length]) {
    out.push(...d.feed(input.subarray(at, c)))
    at = c
  }
  return out
}

type Client = { sock: net.Socket; lines: string[]; wait(done: () => boolean, ms: number): Promise<boolean> }

/** A QMP client that reads newline-delimited replies as they come. */
function client(path: string): Promise<Client> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(path)
    const lines: string[] = []
    let buf = ''
    let wake: (() => void) | undefined
    sock.on('data', (d: Buffer) => {
      buf += d.toString('utf8')
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        lines.push(buf.slice(0, nl))
        buf = buf.slice(nl + 1)
      }
      wake?.()
    })
    sock.on('close', () => wake?.())
    sock.on('error', () => undefined)
    sock.once('connect', () => resolve({
      sock,
      lines,
      async wait(done, ms) {
        const deadline = Date.now() + ms
        while (!done() && !sock.destroyed && Date.now() < deadline) {
          await new Promise<void>((r) => {
            const timer = setTimeout(r, Math.max(1, deadline - Date.now()))
            wake = () => {
              clearTimeout(timer)
              r()
            }
          })
        }
        return done()
      },
    }))
    sock.once('error', reject)
  })
}

/** What a value is once it has been through JSON (the id as a reply can carry it). */
const viaJson = (v: unknown): unknown => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)))

export async function target(): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'fuzz-qmp-'))
  let n = 0
  // Small, so the over-long message path is reached by inputs the mutator makes.
  const maxMessageBytes = 2048
  return {
    name: 'qmp',
    invariant: 'the splitter gives the same messages however the bytes are cut; the server sends its greeting, then one reply per message in the order sent (the id echoed, an error of a QMP class), and a command that fails does so with a typed error, never a crash or a hang',
    maxLen: 8192,
    timeoutMs: 10_000,
    allocLimit: 1 << 20,
    dict: ['{"execute":', '"arguments":', '"id":', 'qmp_capabilities', 'query-status', 'query-version', 'query-commands', 'stop', 'cont',
      'migrate', 'migrate-incoming', 'migrate_cancel', 'migrate-continue', 'migrate-set-capabilities', 'query-migrate-capabilities',
      'migrate-set-parameters', 'query-migrate-parameters', 'query-migrate', 'x-migrate-resolve', 'quit', '"capabilities":', '"capability":',
      '"state":', 'true', 'false', 'null', '"enable":', '"oob"', 'downtime-limit', 'max-bandwidth', 'auto-converge', 'switchover-ack',
      'pause-before-switchover', 'events', 'return-path', 'x-handover', '"uri":', '"defer"', '"state":"pre-switchover"', '"resume":',
      '{', '}', '[', ']', '"', '\\', ':', ',', '\\u0000', '1e309', '-0', '9007199254740993'].map((s) => Buffer.from(s)),
    async seeds() {
      const j = (...m: unknown[]) => Buffer.from(m.map((x) => JSON.stringify(x)).join(''))
      return [
        j({ execute: 'qmp_capabilities' }, { execute: 'query-status', id: 1 }),
        j({ execute: 'qmp_capabilities' }, { execute: 'migrate-set-capabilities', arguments: { capabilities: [{ capability: 'events', state: true }, { capability: 'pause-before-switchover', state: true }] }, id: 'a' }, { execute: 'query-migrate-capabilities', id: 'b' }),
        j({ execute: 'qmp_capabilities' }, { execute: 'migrate-set-parameters', arguments: { 'downtime-limit': 500, 'max-bandwidth': 1 << 30 }, id: [1] }, { execute: 'query-migrate-parameters' }),
        j({ execute: 'qmp_capabilities' }, { execute: 'stop' }, { execute: 'cont' }, { execute: 'query-migrate' }, { execute: 'migrate_cancel' }, { execute: 'x-migrate-resolve', arguments: { resume: true } }),
        j({ execute: 'qmp_capabilities', arguments: { enable: ['oob'] } }, { execute: 'migrate', arguments: { uri: 'nope' } }, { execute: 'migrate-incoming', arguments: { uri: 'defer' } }),
        Buffer.from('{"execute":"qmp_capabilities"} ] {"execute" "query-status"} [1,2] "x" 42 {"execute":"query-version","id":{"a":[null]}}'),
      ]
    },
    async run(input) {
      // The splitter: whole, byte by byte, and at two points the input picks.
      const whole = split(input, [], maxMessageBytes)
      const cuts = [input.length ? (input[0]! * 31) % input.length : 0, input.length ? (input[input.length - 1]! * 17) % input.length : 0].sort((a, b) => a - b)
      for (const [name, got] of [['at two points', split(input, cuts, maxMessageBytes)], ['a byte at a time', split(input, Array.from({ length: input.length }, (_, i) => i), maxMessageBytes)]] as const) {
        if (!isDeepStrictEqual(whole, got)) throw new Finding(`the splitter cut ${name} gave ${JSON.stringify(got).slice(0, 400)}, whole ${JSON.stringify(whole).slice(0, 400)}`)
      }
      if (namesUri(whole)) return

      const vm = new Vm('prelaunch')
      await vm.vmStart()
      const path = join(dir, `q${n++}`)
      const failures: { command: string; error: unknown }[] = []
      const server = await QmpServer.listen(path, {
        machine: { vm, registry: new SaveVMRegistry(), machine: 'fuzz-1' },
        maxMessageBytes,
        onCommandError: (command, error) => failures.push({ command, error }),
      })
      const c = await client(path)
      try {
        if (!(await c.wait(() => c.lines.length >= 1, REPLY_MS))) throw new Finding('no greeting')
        c.sock.write(input)
        const want = whole.length
        const parsed = (): Record<string, unknown>[] => c.lines.map((l, i) => {
          try {
            return JSON.parse(l) as Record<string, unknown>
          } catch {
            throw new Finding(`output line ${i} is not JSON: ${l.slice(0, 200)}`)
          }
        })
        // Events (STOP, RESUME, MIGRATION) may come between the replies.
        const replies = () => parsed().slice(1).filter((m) => !('event' in m))
        if (!(await c.wait(() => replies().length >= want, REPLY_MS))) {
          throw new Finding(`${replies().length} replies of ${want} within ${REPLY_MS} ms${c.sock.destroyed ? ' (the server closed the connection)' : ''}; last: ${c.lines.slice(-2).join(' ').slice(0, 400)}`)
        }
        if (!('QMP' in parsed()[0]!)) throw new Finding(`the first message is not the greeting: ${c.lines[0]!.slice(0, 200)}`)
        const all = replies()
        if (all.length !== want) throw new Finding(`${all.length} replies to ${want} messages`)
        whole.forEach((d, i) => {
          const r = all[i]!
          const isReturn = Object.hasOwn(r, 'return')
          const err = r.error as { class?: unknown; desc?: unknown } | undefined
          if (isReturn === (err !== undefined)) throw new Finding(`reply ${i} is neither a return nor an error: ${JSON.stringify(r).slice(0, 200)}`)
          if (err && (!ERROR_CLASSES.has(err.class as string) || typeof err.desc !== 'string')) throw new Finding(`reply ${i}: not a QMP error: ${JSON.stringify(r).slice(0, 200)}`)
          if (d.kind === 'error') {
            if (!err) throw new Finding(`message ${i} could not be parsed (${d.desc}) but was answered ${JSON.stringify(r).slice(0, 200)}`)
            return
          }
          const q = checkRequest(d.value)
          // The id of a request goes back as it came; no id, none back.
          if (!q.ok && !err) throw new Finding(`message ${i} is not a valid request (${q.desc}) but was answered ${JSON.stringify(r).slice(0, 200)}`)
          const hasId = q.ok ? q.request.hasId : q.hasId
          if (hasId !== Object.hasOwn(r, 'id') || (hasId && !isDeepStrictEqual(viaJson(q.ok ? q.request.id : q.id), r.id))) {
            throw new Finding(`reply ${i} has id ${JSON.stringify(r.id)}, its request ${JSON.stringify(d.value).slice(0, 200)}`)
          }
        })
        for (const f of failures) assertTyped(f.error, [Error], `command ${f.command}`, true)
      } finally {
        c.sock.destroy()
        await server.close()
        await vm.vmStop().catch(() => undefined)
      }
    },
    async close() {
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
