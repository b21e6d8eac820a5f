// `vmm-migrate analyze FILE` on a file of any content: its analysis (which
// must serialise) or a typed error, in memory bounded by its 1 MiB read
// window, never by what the file claims.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { analyzeFile, toJson, AnalyzeError } from '../../../vmm/cli/analyze.js'
import { LoadError } from '../../../vmm/savevm/errors.js'
import { Finding, type Target } from '../engine.js'
import { assertTyped } from './typed.js'

export async function target(): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'fuzz-analyze-'))
  const file = join(dir, 'stream')
  return {
    name: 'analyze',
    invariant: 'an analysis that serialises to JSON, or a typed error; no Buffer over 2 MiB (its read window and one copy) whatever lengths the file declares',
    maxLen: 48 << 10,
    timeoutMs: 10_000,
    allocLimit: 2 << 20,
    dict: ['ram', 'pc.ram', 'microvm-1', 'pc-i440fx-7.2', '0000:00:02.0/vfio', 'vmstate', 'configuration', 'Description', '"fields"', '"subsections"', '"name"']
      .map(s => Buffer.from(s)).concat([[0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3], [0xff, 0xff, 0xff, 0xff, 0xef, 0x10, 0, 4], [0, 0, 0, 0, 0, 0, 0, 0x10]].map(a => Buffer.from(a))),
    async seeds() {
      return []
    },
    async run(input) {
      writeFileSync(file, input)
      let a
      try {
        a = await analyzeFile(file)
      } catch (e) {
        assertTyped(e, [AnalyzeError, LoadError], 'analyzeFile', true)
        return
      }
      try {
        toJson(a)
      } catch (e) {
        throw new Finding(`the analysis does not serialise: ${(e as Error).message}`, { cause: e })
      }
    },
    async close() {
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
