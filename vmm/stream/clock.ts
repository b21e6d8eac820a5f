// Time source for rate limiting, injectable so tests can use a fake clock.
export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number
  sleep(ms: number): Promise<void>
}

export const realClock: Clock = {
  now: () => performance.now(),
  sleep: ms => new Promise(r => setTimeout(r, Math.max(0, ms))),
}

/** A clock that only moves when told to; sleep() advances it. */
export class FakeClock implements Clock {
  private t = 0
  readonly sleeps: number[] = []
  now(): number {
    return this.t
  }
  advance(ms: number): void {
    this.t += ms
  }
  async sleep(ms: number): Promise<void> {
    this.sleeps.push(ms)
    this.t += Math.max(0, ms)
  }
}
