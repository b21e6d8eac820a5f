// The issue's real-client test: QEMU's own Python client library (qemu.qmp,
// from PyPI) drives two `vmm-migrate run --qmp` processes through a
// cancelled and a completed live migration, changing max-bandwidth on the
// way (tests/qmp/qmp_migration.py), then drives two QEMUs with the same
// calls, so that the script is known to be what QEMU accepts.
//
// .ci/run installs python3-venv and qemu.qmp into .cache/qmp-venv
// (QMP_PYTHON names another interpreter). Under CI=true a missing piece
// fails this test, saying which; elsewhere it is skipped with the reason.
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { MAIN, childEnv, missingBuild } from '../e2e/helpers.js'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const SCRIPT = join(root, 'tests/qmp/qmp_migration.py')
const PYTHON = process.env.QMP_PYTHON || join(root, '.cache/qmp-venv/bin/python')
const QEMU = process.env.QEMU || 'qemu-system-x86_64'

function unavailable(): string | undefined {
  const build = missingBuild()
  if (build) return build
  if (!existsSync(PYTHON)) return `${PYTHON} is missing: python3 -m venv .cache/qmp-venv && .cache/qmp-venv/bin/pip install qemu.qmp (or set QMP_PYTHON)`
  const r = spawnSync(PYTHON, ['-c', 'import qemu.qmp'], { encoding: 'utf8', timeout: 20000 })
  if (r.status !== 0) return `${PYTHON} cannot import qemu.qmp (pip install qemu.qmp): ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`
  return undefined
}

function qemuMissing(): string | undefined {
  const r = spawnSync(QEMU, ['--version'], { encoding: 'utf8', timeout: 20000 })
  return r.status === 0 ? undefined : `${QEMU} is not installed (apt-get install qemu-system-x86)`
}

/** Run the scenario for `kind`; resolves its exit code, its JSON line and its stderr. Bounded by 75 s. */
function scenario(kind: 'ours' | 'qemu'): Promise<{ code: number | null; result?: Record<string, unknown>; stderr: string }> {
  return new Promise((res) => {
    const p = spawn(PYTHON, [SCRIPT, '--kind', kind, '--vmm', `${process.execPath} ${MAIN}`, '--qemu', QEMU],
      { cwd: root, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    p.stdout.on('data', (d) => (out += d))
    p.stderr.on('data', (d) => { if (err.length < 65536) err += d })
    const timer = setTimeout(() => p.kill('SIGKILL'), 75_000)
    p.on('close', (code) => {
      clearTimeout(timer)
      let result: Record<string, unknown> | undefined
      try {
        result = JSON.parse(out.trim().split('\n').pop() ?? '')
      } catch {
        // no result line: the stderr says why
      }
      res({ code, result, stderr: err })
    })
  })
}

const why = unavailable()
if (why) {
  if (process.env.CI === 'true') t.fail(`the qemu.qmp client test cannot run under CI: ${why}`)
  else t.skip(`qemu.qmp client test: ${why}`)
} else {
  for (const kind of ['ours', 'qemu'] as const) {
    t.test(`qemu.qmp drives ${kind === 'ours' ? 'two vmm-migrate run --qmp' : 'two QEMUs (the control)'}: cancel, bandwidth change, pause-before-switchover, complete`, async (t) => {
      if (kind === 'qemu') {
        const q = qemuMissing()
        if (q) {
          if (process.env.CI === 'true') t.fail(q)
          else t.skip(q)
          return
        }
      }
      const r = await scenario(kind)
      t.equal(r.code, 0, `the scenario passed${r.code === 0 ? '' : `: ${r.stderr.trim()}`}`)
      t.match(r.result, { kind, ok: true, source_events: ['setup', 'active', 'pre-switchover', 'device', 'completed'] })
      t.comment(JSON.stringify(r.result))
    })
  }
}
