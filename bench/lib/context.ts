// What every section gets: mode, repeat count, logging, and where to note a
// part that could not run (with the reason, printed and kept in the results).

export interface Skip {
  part: string
  reason: string
}

export class BenchContext {
  readonly skipped: Skip[] = []
  constructor(readonly quick: boolean, readonly repeats: number, private readonly out: (s: string) => void = s => process.stdout.write(s + '\n')) {}

  log(msg: string): void {
    this.out(msg)
  }

  skip(part: string, reason: string): void {
    this.skipped.push({ part, reason })
    this.out(`  skipped ${part}: ${reason}`)
  }
}

/** Runs `fn` `n` times and returns what each run resolved. Sequential: the runs must not compete for the 2 cores. */
export async function repeat<T>(n: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const res: T[] = []
  for (let i = 0; i < n; i++) res.push(await fn(i))
  return res
}
