//! The thin layer over the Linux VFIO uAPI (include/uapi/linux/vfio.h).
//!
//! Everything here is either a fact of the kernel ABI (numbers, `#[repr(C)]`
//! layouts) or the kernel's own migration state algorithm, restated so that
//! userspace can check a move before the kernel sees it. Nothing here owns a
//! file descriptor; the safe owners live in `vfio-core`.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![allow(non_camel_case_types)]

pub mod abi;
pub mod ioctl;
pub mod layout;
pub mod migration;

pub use migration::{next_step, path, DeviceState, MigrationFlags};
