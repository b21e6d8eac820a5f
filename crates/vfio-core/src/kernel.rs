//! The kernel objects and the syscalls under them: Container
//! (`/dev/vfio/vfio`), Group (`/dev/vfio/N`), KernelDevice (a device fd),
//! the errno-carrying error type, and the fd-to-fd transfer engine.

pub mod container;
pub mod device;
pub mod error;
pub mod group;
pub mod sys;
pub mod transfer;

pub use container::Container;
pub use device::KernelDevice;
pub use error::{Result, VfioError};
pub use group::Group;
