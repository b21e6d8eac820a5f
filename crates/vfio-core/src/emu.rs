//! The emulated migration device: a userspace stand-in for a VFIO variant
//! driver that answers the [`DeviceBackend`](crate::backend::DeviceBackend)
//! requests with the kernel's semantics (validation order, errnos, the state
//! walk, data fds that are real file descriptors), plus knobs a test needs:
//! dirtying, a DMA engine, fault injection and a digest of its state.
//! See docs/emulated-device.md.

mod config;
mod content;
mod dataio;
mod device;
mod dma;
mod faults;
mod feature;
mod machine;
mod session;
pub mod hash;
pub mod stream;
mod threads;

pub use config::EmuConfig;
pub use content::{DEFAULT_REGION_SIZE, MAX_REGIONS};
pub use device::{EmuDevice, EmuStats};
pub use dma::LOG_MAX_RANGES;
