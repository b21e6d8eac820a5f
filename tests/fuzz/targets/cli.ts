// The CLI's argument parser and the migration URI parser. The first byte
// picks one: odd, the rest is a URI; even, the rest is argv split at NUL.
// Either a result or a typed usage error; a URI that parses formats back to
// one that parses to the same address, and argv parses the same twice (no
// state kept between calls, no default mutated).
import { isDeepStrictEqual } from 'node:util'
import { parseArgs, UsageError } from '../../../vmm/cli/args.js'
import { parseUri, formatUri, UriError } from '../../../vmm/channel/uri.js'
import { Finding, type Target } from '../engine.js'
import { assertTyped } from './typed.js'

export async function target(): Promise<Target> {
  return {
    name: 'cli',
    invariant: 'a result or a typed UsageError/UriError; URIs round-trip through formatUri; argv parses the same twice',
    maxLen: 4096,
    timeoutMs: 2000,
    allocLimit: 1 << 20,
    // Every option and command the parser knows (vmm/cli/args.ts), and bits of addresses and sizes.
    dict: ['--after-failure', '--auto-converge', '--control', '--device-state', '--dirty-rate', '--discard', '--dma-rate', '--downtime-limit',
      '--events', '--handover-timeout', '--handshake-timeout', '--help', '--incoming-timeout', '--json', '--link-timeout', '--max-bandwidth',
      '--no-dma-logging', '--no-handover', '--no-verify', '--ram', '--resume', '--run', '--run-after', '--status', '--switchover-ack', '--vcpu',
      '--working-set', '--', '-h', 'tcp:', 'unix:', 'file:', 'exec:', 'fd:', 'incoming', 'migrate', 'save', 'restore', 'analyze', 'resolve', 'demo', 'help',
      '[::1]', '127.0.0.1', ':4444', '=', '\0', '256M', '1.5G', '64KiB', 'soft', 'kvm', 'auto']
      // Also as an argument of its own: NUL ends the one before.
      .flatMap(s => [Buffer.from(s), Buffer.from(`\0${s}`)]),
    async seeds() {
      const args = (...a: string[]) => Buffer.concat([Buffer.from([0]), Buffer.from(a.join('\0'))])
      const uri = (s: string) => Buffer.concat([Buffer.from([1]), Buffer.from(s)])
      return [
        args('migrate', 'tcp:127.0.0.1:4444', '--ram', '256M', '--max-bandwidth=1G', '--auto-converge'), args('incoming', 'unix:/tmp/s', '--json', '--link-timeout', '5000', '--vcpu', 'soft'), args('save', 'file:/tmp/x', '--working-set', '64K', '--downtime-limit', '300'),
        args('analyze', 'x.mig'), args('resolve', 'unix:/tmp/c', '--resume'), args('restore', 'file:/x', '--no-verify', '--events'), args('help', 'migrate'), args('demo', '--help'),
        uri('tcp:[::1]:4444'), uri('tcp::0'), uri('unix:/tmp/x'), uri('file:/a b'), uri('exec:cat > f'), uri('fd:3'),
      ]
    },
    async run(input) {
      const text = input.subarray(1).toString('utf8')
      if ((input[0] ?? 0) & 1) {
        let a
        try {
          a = parseUri(text)
        } catch (e) {
          assertTyped(e, [UriError], 'parseUri')
          return
        }
        let again
        try {
          again = parseUri(formatUri(a))
        } catch (e) {
          throw new Finding(`${JSON.stringify(text)} parses to ${JSON.stringify(a)}, whose formatUri ${JSON.stringify(formatUri(a))} does not parse: ${(e as Error).message}`)
        }
        if (!isDeepStrictEqual(a, again)) throw new Finding(`${JSON.stringify(text)}: ${JSON.stringify(a)} formats to ${JSON.stringify(formatUri(a))}, which parses to ${JSON.stringify(again)}`)
        return
      }
      const argv = text.split('\0')
      let p
      try {
        p = parseArgs(argv)
      } catch (e) {
        assertTyped(e, [UsageError, UriError], 'parseArgs', true)
        try {
          parseArgs(argv)
        } catch {
          return
        }
        throw new Finding(`parseArgs(${JSON.stringify(argv)}) failed once, then succeeded`)
      }
      const q = parseArgs(argv)
      if (!isDeepStrictEqual(p, q)) throw new Finding(`parseArgs(${JSON.stringify(argv)}) gave two different results`)
    },
  }
}
