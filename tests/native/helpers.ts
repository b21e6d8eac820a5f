// Shared by the native-layer tests: the error shape the addon promises.
export type NativeError = Error & { code: string; errno: number; syscall: string }

/** The error `p` rejects with; fails the test if it resolves. */
export async function rejection(p: Promise<unknown>): Promise<NativeError> {
  try {
    await p
  } catch (e) {
    return e as NativeError
  }
  throw new Error('expected a rejection')
}
