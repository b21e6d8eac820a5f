//! The kernel objects: Container (`/dev/vfio/vfio`), Group (`/dev/vfio/N`),
//! KernelDevice (a device fd), and the errno-carrying error type (vmm-sys's).

pub mod container;
pub mod device;
pub mod group;
pub mod passed;

/// What the tests of the passed-fd constructors share.
#[cfg(test)]
mod test_fds {
    /// Whether any descriptor of this process is the memfd called `name`
    /// (other tests open and close descriptors in parallel: a count would race).
    pub(super) fn memfd_open(name: &str) -> bool {
        std::fs::read_dir("/proc/self/fd").unwrap().flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains(name)))
    }
}

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
pub use passed::Passed;
