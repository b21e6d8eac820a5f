// Whether the KVM cases of tests/local can run, and what to do when they
// cannot: skip with the reason printed, except under CI=true, where a
// missing /dev/kvm is a failure (as the fault lab's and the QMP client's
// tests treat what they need), so a CI runner without KVM cannot pass
// these by skipping them silently.
import { kvmAvailable } from '../../vmm/machine/index.js'

export interface Gate {
  comment(...m: unknown[]): void
  fail(m: string): void
}

/** The reason KVM cases are skipped here, or undefined when they run. */
export async function kvmSkip(t: Gate): Promise<string | undefined> {
  const a = await kvmAvailable()
  if (a.available) return undefined
  const why = `KVM not usable here: ${a.reason ?? 'unknown reason'}`
  if (process.env.CI === 'true') t.fail(`local migration's KVM cases cannot run: ${why} (required under CI=true)`)
  else t.comment(`KVM cases skipped: ${why}`)
  return why
}

/** Descriptors open in this process now. */
export async function openFds(): Promise<number> {
  const { readdir } = await import('node:fs/promises')
  return (await readdir('/proc/self/fd')).length
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * The descriptor count once it held still for 200 ms (at most 3 s): what
 * an earlier test let go of is closed off this thread, a little later.
 */
export async function steadyFds(): Promise<number> {
  const deadline = Date.now() + 3000
  let n = await openFds()
  for (;;) {
    await sleep(200)
    const m = await openFds()
    if (m === n || Date.now() > deadline) return m
    n = m
  }
}

/**
 * The descriptor count once it is back to `base`, or the last count after
 * `ms`: closes of passed descriptors happen off the JavaScript thread, and
 * a channel lets go of its socket when its last call returns.
 */
export async function fdsSettle(base: number, ms = 3000): Promise<number> {
  const deadline = Date.now() + ms
  let n = await openFds()
  while (n !== base && Date.now() < deadline) {
    await sleep(20)
    n = await openFds()
  }
  return n
}
