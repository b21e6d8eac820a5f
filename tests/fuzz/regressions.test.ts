// Every stored fuzz input through its target's invariant, in the tap suite:
// the minimised corpus (tests/fuzz/corpus/TARGET) and every finding kept as
// a regression case (tests/fuzz/regressions/TARGET). A change that breaks an
// invariant on an input the fuzzer once reached fails here, without a
// fuzzing run. The native decoders' inputs replay in `npm run fuzz:ci`
// (libFuzzer runs its corpus first); their findings are unit tests of their
// crates.
import t from 'tap'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { AllocGuard, execOne } from './engine.js'
import { targets } from './targets/index.js'

const here = fileURLToPath(new URL('.', import.meta.url))

function files(dir: string): string[] {
  try {
    return readdirSync(dir).filter(n => !n.startsWith('.') && !n.endsWith('.txt') && statSync(join(dir, n)).isFile()).map(n => join(dir, n))
  } catch {
    return []
  }
}

// A fresh microVM (a vCPU worker) for each savevm input: about 0.8 s each on
// an idle 2-core machine and twice that beside the rest of the suite, more
// than the suite's default 120 s for the whole corpus.
t.setTimeout(480_000)

const guard = new AllocGuard()
guard.install()
t.teardown(() => guard.uninstall())

for (const name of Object.keys(targets)) {
  t.test(name, async t => {
    const target = await targets[name]!()
    t.teardown(() => target.close?.())
    const corpus = files(join(here, 'corpus', name))
    const regressions = files(join(here, 'regressions', name))
    t.ok(corpus.length > 0, `a stored corpus for ${name}`)
    for (const f of [...regressions, ...corpus]) {
      const o = await execOne(target, readFileSync(f), guard)
      t.ok(o.ok, `${f.slice(here.length)}${o.ok ? '' : `: ${o.kind}\n${o.message}`}`)
    }
  })
}
