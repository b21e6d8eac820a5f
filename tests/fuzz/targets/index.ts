// Every TypeScript fuzz target by name, loaded on demand (each pulls in its own part of vmm/).
import type { Target } from '../engine.js'

export const targets: Record<string, () => Promise<Target>> = {
  savevm: async () => (await import('./savevm.js')).target(),
  'ram-diff': async () => (await import('./ram-diff.js')).target(),
  analyze: async () => (await import('./analyze.js')).target(),
  cli: async () => (await import('./cli.js')).target(),
  qmp: async () => (await import('./qmp.js')).target(),
}
