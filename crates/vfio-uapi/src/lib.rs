//! The thin layer over the Linux VFIO uAPI (include/uapi/linux/vfio.h).
//!
//! Everything here is either a fact of the kernel ABI (numbers, `#[repr(C)]`
//! layouts) or the kernel's own migration state algorithm, restated so that
//! userspace can check a move before the kernel sees it. Nothing here owns a
//! file descriptor; the safe owners live in `vfio-core`.

#![allow(non_camel_case_types)]

pub mod abi; // #[repr(C)] structs
pub mod ioctl; // ioctl numbers and flag values
pub mod layout; // the table the header test walks
pub mod migration;

pub use migration::{next_step, path, DeviceState, MigrationFlags};
