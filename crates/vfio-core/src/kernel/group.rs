//! `/dev/vfio/<N>`: an IOMMU group, the unit the kernel attaches to a
//! container and the place device fds come from.

use super::container::Container;
use super::device::KernelDevice;
use super::error::{Result, VfioError};
use vmm_sys as sys;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use vfio_uapi::abi::*;
use vfio_uapi::ioctl::*;

/// An open IOMMU group.
pub struct Group {
    fd: OwnedFd,
    path: String,
}

impl Group {
    /// Opens `/dev/vfio/<number>`, or `path` when given (tests, noiommu-N).
    pub fn open(number: u32, path: Option<&str>) -> Result<Group> {
        let path = path.map(str::to_string).unwrap_or_else(|| format!("/dev/vfio/{number}"));
        let fd = sys::open_rw(&path).map_err(|e| VfioError::from_io(&e, "open", format!("{path}: open")))?;
        Ok(Group { fd, path })
    }

    /// A group fd another process passed (a local migration): checked with
    /// VFIO_GROUP_GET_STATUS, which only a group answers, and refused (the
    /// fd closed) unless viable and attached to a container, as a group in
    /// use by a running guest is.
    pub fn from_fd(fd: OwnedFd, label: &str) -> Result<Group> {
        let g = Group { fd, path: label.to_string() };
        let flags = g.status().map_err(|e| VfioError::new(e.errno, "VFIO_GROUP_GET_STATUS", format!("{label}: VFIO_GROUP_GET_STATUS"), Some("the passed fd is not a VFIO group")))?;
        let want = VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET;
        if flags & want != want {
            let why = format!("group status {flags:#x}: a passed group must be viable and in a container");
            return Err(VfioError::new(libc::EINVAL, "VFIO_GROUP_GET_STATUS", format!("{label}: VFIO_GROUP_GET_STATUS"), Some(&why)));
        }
        Ok(g)
    }

    /// The fd number (stays owned by `self`).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The path it was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `VFIO_GROUP_FLAGS_*`: VIABLE (all devices bound to vfio) and CONTAINER_SET.
    pub fn status(&self) -> Result<u32> {
        let mut s = vfio_group_status { argsz: std::mem::size_of::<vfio_group_status>() as u32, flags: 0 };
        // SAFETY: the kernel writes at most `argsz` bytes, the struct's size.
        unsafe { sys::ioctl_ref(self.raw_fd(), VFIO_GROUP_GET_STATUS, &mut s) }
            .map_err(|e| VfioError::from_io(&e, "VFIO_GROUP_GET_STATUS", format!("{}: VFIO_GROUP_GET_STATUS", self.path)))?;
        Ok(s.flags)
    }

    /// `VFIO_GROUP_SET_CONTAINER`: attaches the group to `container`.
    pub fn set_container(&self, container: &Container) -> Result<()> {
        let mut cfd: i32 = container.raw_fd();
        // SAFETY: the request reads one int, the container's fd, through the pointer.
        unsafe { sys::ioctl_ref(self.raw_fd(), VFIO_GROUP_SET_CONTAINER, &mut cfd) }.map(|_| ()).map_err(|e| {
            VfioError::from_io(&e, "VFIO_GROUP_SET_CONTAINER", format!("{}: VFIO_GROUP_SET_CONTAINER {}", self.path, container.path()))
        })
    }

    /// `VFIO_GROUP_UNSET_CONTAINER`.
    pub fn unset_container(&self) -> Result<()> {
        // SAFETY: VFIO_GROUP_UNSET_CONTAINER ignores its argument.
        unsafe { sys::ioctl_val(self.raw_fd(), VFIO_GROUP_UNSET_CONTAINER, 0) }
            .map(|_| ())
            .map_err(|e| VfioError::from_io(&e, "VFIO_GROUP_UNSET_CONTAINER", format!("{}: VFIO_GROUP_UNSET_CONTAINER", self.path)))
    }

    /// Opens a device of this group by its name ("0000:65:00.1", an mdev UUID).
    pub fn device(&self, name: &str) -> Result<KernelDevice> {
        let ctx = || format!("{}: VFIO_GROUP_GET_DEVICE_FD {name:?}", self.path);
        // The kernel copies at most PATH_MAX; an empty name matches nothing.
        if name.is_empty() || name.len() >= libc::PATH_MAX as usize {
            return Err(VfioError::invalid("VFIO_GROUP_GET_DEVICE_FD", ctx(), "device name must be 1..4095 bytes"));
        }
        let c = CString::new(name)
            .map_err(|_| VfioError::invalid("VFIO_GROUP_GET_DEVICE_FD", ctx(), "device name contains a NUL byte"))?;
        // SAFETY: the request reads a NUL-terminated string at the pointer,
        // which `c` is, alive until the call returns.
        let fd = unsafe { sys::ioctl_val(self.raw_fd(), VFIO_GROUP_GET_DEVICE_FD, c.as_ptr() as libc::c_ulong) }
            .map_err(|e| VfioError::from_io(&e, "VFIO_GROUP_GET_DEVICE_FD", ctx()))?;
        // SAFETY: the ioctl returned a fresh device fd that nothing else owns.
        Ok(KernelDevice::new(unsafe { OwnedFd::from_raw_fd(fd) }, name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::test_fds::memfd_open;

    #[test]
    fn a_passed_fd_that_is_no_group_is_refused_and_closed() {
        let fd = vmm_sys::mem::memfd(c"not-a-group", 0).unwrap();
        assert!(memfd_open("not-a-group"));
        let e = Group::from_fd(fd, "passed group 12").err().unwrap();
        assert_eq!(e.errno, libc::ENOTTY);
        assert!(e.to_string().contains("passed group 12: VFIO_GROUP_GET_STATUS"), "{e}");
        assert!(e.to_string().contains("not a VFIO group"), "{e}");
        assert!(!memfd_open("not-a-group"), "the passed fd was closed");
    }
}
