// Loads the napi addon built by `npm run build:native` (native/index.cjs picks
// the binary for this platform). Everything native goes through this module so
// there is one place that knows where the addon lives.
import { createRequire } from 'node:module'
import type * as Native from '../../native/index.js'

const require = createRequire(import.meta.url)

function load(): typeof Native {
  // dist/vmm/native/addon.js and vmm/native/addon.ts are both two folders below the root.
  for (const p of ['../../native/index.cjs', '../../../native/index.cjs']) {
    try {
      return require(p) as typeof Native
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw e
    }
  }
  throw new Error('vmm-migration: native addon not found; run `npm run build:native`')
}

export const native: typeof Native = load()
