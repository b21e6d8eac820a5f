// The addon's exports when it is built, else null. For the few paths that
// have a JavaScript fallback (the stream's fd-to-fd transfer, waking native
// calls on a channel), so that loading them never fails without the addon.
let loaded: Record<string, unknown> | null = null
try {
  loaded = ((await import('./addon.js')) as { native: Record<string, unknown> }).native
} catch {
  loaded = null
}

/** The addon function `name`, bound to the addon, or null when absent. */
export function optionalNative<F extends (...args: never[]) => unknown>(name: string): F | null {
  const f = loaded?.[name]
  return typeof f === 'function' ? (f.bind(loaded) as F) : null
}
