// The kernel lane's migration script (tests/kernel/lib/mig-node.mjs) on this
// host, with emulated devices shaped like mtty in place of the mdevs. The lane
// itself only runs in a guest with a real VFIO driver, late in CI; this runs
// in every `npm test`, so a rename in the options it passes (a parameter
// renamed without the script: the lane's three migration tests once waited
// out 120 s each on exactly that) fails here, in seconds, first.
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { join, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { childEnv, missingBuild, tempDir } from './helpers.js'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const SCRIPT = join(root, 'tests/kernel/lib/mig-node.mjs')
// mtty's shape: P2P and PRE_COPY, a 24-byte header offered in pre-copy, 96 bytes in all.
const MTTY_LIKE = { flags: 7, stateSize: 96, initialBytes: 24, regionSize: 4096 }

type Line = Record<string, unknown> & { event: string }

function side(args: Record<string, unknown>): { child: ChildProcess; next(event: string): Promise<Line> } {
  const child = spawn(process.execPath, [SCRIPT, JSON.stringify(args)], { stdio: ['pipe', 'pipe', 'pipe'], env: childEnv() })
  const lines: Line[] = []
  let stderr = ''
  let exited = false
  const wake: (() => void)[] = []
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString()
  })
  createInterface({ input: child.stdout! }).on('line', (l) => {
    lines.push(JSON.parse(l) as Line)
    for (const w of wake.splice(0)) w()
  })
  child.on('exit', () => {
    exited = true
    for (const w of wake.splice(0)) w()
  })
  return {
    child,
    async next(event) {
      const deadline = Date.now() + 60_000
      for (;;) {
        const l = lines.find((x) => x.event === event || x.event === 'crash')
        if (l?.event === 'crash') throw new Error(`${String(args.role)} crashed: ${JSON.stringify(l)}`)
        if (l) return l
        if (exited) throw new Error(`${String(args.role)} exited before '${event}': ${stderr}`)
        if (Date.now() > deadline) throw new Error(`${String(args.role)}: no '${event}' within 60 s: ${stderr}`)
        await new Promise<void>((r) => {
          const timer = setTimeout(r, 200)
          wake.push(() => {
            clearTimeout(timer)
            r()
          })
        })
      }
    },
  }
}

t.test('mig-node.mjs migrates an mtty-shaped emulated device: source and destination report success', { skip: missingBuild() }, async (t) => {
  const uri = `unix:${join(tempDir(t), 'ok.sock')}`
  const dst = side({ role: 'dest', uri, emulated: { ...MTTY_LIKE, seed: 2 } })
  t.teardown(() => void dst.child.kill('SIGKILL'))
  await dst.next('listening')
  const src = side({ role: 'source', uri, emulated: { ...MTTY_LIKE, seed: 1 } })
  t.teardown(() => void src.child.kill('SIGKILL'))
  const [s, d] = await Promise.all([src.next('result'), dst.next('result')])
  t.equal(s.ok, true, `source: ${JSON.stringify(s.error)}`)
  t.equal(d.ok, true, `destination: ${JSON.stringify(d.error)}`)
  t.equal(s.vmState, 'postmigrate')
  t.equal(d.vmState, 'running')
  // Seeds differ, so equal images are the proof the state moved.
  t.ok((s.image as { bytes: number }).bytes > 0)
  t.same(d.image, s.image, 'the destination saves the image the source had')
  dst.child.stdin!.end('quit\n')
  t.equal((await dst.next('bye')).deviceState, 'RUNNING')
})
