// Opens the emulated device through the napi layer, configured like mtty
// (its migration flags, a small state, PRE_COPY offering a part of it first).
//
// NOTE: written while the napi EmulatedDevice was still being built (its Rust
// side exists in crates/vfio-core/src/emu, crates/vmm-native/src/emulated.rs
// was a placeholder and docs/native-api.md did not exist yet). This adapter
// accepts the shapes that API is likely to take (a class with an async
// `create`/`open` or a constructor, exposing a `Device` directly or via
// `device`/`device()`/`open()`), and otherwise reports what it found, so the
// differential test skips with that reason instead of failing on a guess.
// Adjust here, in one place, once the API is fixed.

/** Resolves { device, close() } or { missing: 'why' }. */
export async function openEmulated(native, { flags, name }) {
  const Emu = native.EmulatedDevice;
  if (typeof Emu !== 'function') {
    return { missing: 'native.EmulatedDevice is not exported by native/index.cjs yet' };
  }
  const config = {
    name,
    flags,
    // mtty-2: a 24-byte header offered in PRE_COPY, 72 bytes of ports after.
    stateSize: 96n,
    initialBytes: 24n,
    regionSize: 4096,
    seed: 1n,
    dirtyRate: 0n,
    dmaLoggingMaxRanges: 256,
    migDataSize: true,
  };
  let emu;
  const attempts = [];
  for (const make of [
    () => Emu.create?.(config),
    () => Emu.open?.(config),
    () => new Emu(config),
  ]) {
    try {
      emu = await make();
      if (emu) break;
    } catch (e) {
      attempts.push(e?.message ?? String(e));
    }
  }
  if (!emu) return { missing: `could not create an EmulatedDevice: ${attempts.join(' | ') || 'no create/open/constructor'}` };

  let device = emu;
  if (typeof emu.setState !== 'function') {
    if (emu.device && typeof emu.device.setState === 'function') device = emu.device;
    else if (typeof emu.device === 'function') device = await emu.device();
    else if (typeof emu.open === 'function') device = await emu.open();
  }
  if (!device || typeof device.setState !== 'function' || typeof device.feature !== 'function') {
    return { missing: `EmulatedDevice gives no Device (methods: ${Object.getOwnPropertyNames(Object.getPrototypeOf(emu)).join(', ')})` };
  }
  return {
    device,
    async close() {
      if (typeof emu.close === 'function') await emu.close();
      else if (typeof emu.destroy === 'function') await emu.destroy();
    },
  };
}
