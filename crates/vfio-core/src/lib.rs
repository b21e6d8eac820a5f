//! Safe owners of the VFIO kernel objects (container, group, device, the
//! migration data fd) and an emulated migration device that answers the
//! same raw requests with the kernel's semantics.
//!
//! The seam between the two is [`backend::DeviceBackend`]: a device is
//! something that answers `VFIO_DEVICE_FEATURE` with a raw
//! `struct vfio_device_feature` buffer, `VFIO_DEVICE_GET_INFO` and
//! `VFIO_DEVICE_RESET`. The typed helpers (migration flags, state changes,
//! DMA logging, ...) are written once on top of that seam, so the kernel
//! driver and the emulated device are driven by exactly the same code.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod emu; // the emulated migration device
pub mod kernel; // Container, Group, KernelDevice: the kernel objects
pub mod device; // Device: typed helpers over any backend
pub mod datafd; // DataFd: read/write/precopy info/poll/transfer
pub mod transfer; // the fd-to-fd engine under DataFd and fdTransfer

pub use vfio_uapi;
pub use vmm_sys;
