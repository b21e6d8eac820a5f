// Opens the emulated device through the napi layer, configured like mtty
// (its migration flags, a small state, PRE_COPY offering a part of it first).
//
// Uses `new EmulatedDevice(options)` and `.device()` as in native/index.d.ts;
// when the addon in native/ predates EmulatedDevice, the differential test
// skips with the reason instead of failing. Only a missing export skips.

/** Resolves { device, close() } or { missing: 'why' }. */
export async function openEmulated(native, { flags, name }) {
  const Emu = native.EmulatedDevice;
  if (typeof Emu !== 'function') {
    return { missing: 'native.EmulatedDevice is not exported by native/index.cjs yet' };
  }
  const options = {
    name,
    flags,
    // mtty-2: a 24-byte header offered in PRE_COPY, 72 bytes of ports after.
    stateSize: 96n,
    initialBytes: 24n,
    regionSize: 4096,
    seed: 1n,
    dirtyRate: 0n,
    dmaLogging: true,
    migDataSize: true,
  };
  // Present but refusing these options is a failure, not a reason to skip.
  const emu = new Emu(options);
  const device = emu.device();
  return {
    device,
    emulated: emu,
    async close() {
      await device.reset();
    },
  };
}
