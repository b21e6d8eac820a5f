//! The kernel objects: Container (`/dev/vfio/vfio`), Group (`/dev/vfio/N`),
//! KernelDevice (a device fd), and the errno-carrying error type (vmm-sys's).

pub mod container;
pub mod device;
pub mod group;

/// The native layer's one error type, which lives in vmm-sys so that RAM and
/// KVM report failures exactly as VFIO does.
pub mod error {
    pub use vmm_sys::error::*;

    /// [`vmm_sys::Error`] under the name VFIO code reports it by.
    pub type VfioError = vmm_sys::Error;
}

pub use container::Container;
pub use device::KernelDevice;
pub use error::{Result, VfioError};
pub use group::Group;
