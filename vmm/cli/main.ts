#!/usr/bin/env node
// vmm-migrate: the command line. User mistakes and failed migrations end as
// one line on stderr and a non-zero exit code, never a stack trace.
import { realpathSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import { parseArgs, UsageError, HELP, commandHelp, type Parsed } from './args.js'
import { cmdIncoming, cmdMigrate, cmdResolve, consoleOut, type Out } from './commands.js'
import { cmdDemo } from './demo.js'
import { writeAnalysis, AnalyzeError } from './analyze.js'

export async function run(argv: readonly string[], out: Out, signal?: AbortSignal): Promise<number> {
  const p: Parsed = parseArgs(argv)
  const o = p.options
  switch (p.command) {
    case 'help':
      out.line(p.topic ? commandHelp(p.topic) : HELP)
      return 0
    case 'demo':
      return cmdDemo(p, out, signal)
    case 'incoming':
      return cmdIncoming(p.target!, o, out, signal)
    case 'restore':
      return cmdIncoming(p.target!, o, out, signal)
    case 'migrate':
    case 'save':
      return cmdMigrate(p.target!, o, out, signal)
    case 'analyze':
      await writeAnalysis(p.target!.replace(/^file:/, ''), (l) => out.line(l))
      return 0
    case 'resolve':
      return cmdResolve(p.target!, o, out)
    case 'run':
      // Loaded only for run: the one-shot commands' peak RSS is held to a bound (tests/e2e).
      return (await import('./run.js')).cmdRun(o, out, signal)
  }
}

/** One line for the user; a stack trace only for what is a bug (VMM_DEBUG=1 shows it always). */
export function errorLine(e: unknown): string {
  const err = e as Error & { code?: string }
  if (e instanceof UsageError) return `vmm-migrate: ${err.message} (see --help)`
  if (e instanceof AnalyzeError) return `vmm-migrate analyze: ${err.message}`
  const code = err?.code && !String(err.message).includes(err.code) ? ` [${err.code}]` : ''
  return `vmm-migrate: ${err?.message ?? String(e)}${code}`
}

async function main(): Promise<void> {
  const ac = new AbortController()
  const events = process.argv.includes('--events')
  const onSignal = () => {
    if (ac.signal.aborted) process.exit(130)
    ac.abort()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    process.exitCode = await run(process.argv.slice(2), consoleOut(), ac.signal)
  } catch (e) {
    if (events) process.stdout.write(`${JSON.stringify({ event: 'error', message: (e as Error)?.message ?? String(e) })}\n`)
    process.stderr.write(`${errorLine(e)}\n`)
    if (process.env.VMM_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`)
    process.exitCode = e instanceof UsageError ? 2 : 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

/** Run only as a program (also through npm's bin symlink), not when a test imports run(). */
function invokedDirectly(): boolean {
  try {
    return !!process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href
  } catch {
    return false
  }
}

if (invokedDirectly()) await main()
