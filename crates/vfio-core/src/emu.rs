//! The emulated migration device.
