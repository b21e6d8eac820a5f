// Owned by the emulated-device work (issue 2).
