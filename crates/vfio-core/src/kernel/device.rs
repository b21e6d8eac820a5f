//! A device fd from `VFIO_GROUP_GET_DEVICE_FD`: the kernel backend, where
//! every request is the matching ioctl or syscall.

use crate::backend::DeviceBackend;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use vfio_uapi::abi::vfio_precopy_info;
use vfio_uapi::ioctl::*;
use vmm_sys as sys;

/// A VFIO device the kernel drives, owned by its fd.
pub struct KernelDevice {
    fd: OwnedFd,
    name: String,
}

impl KernelDevice {
    /// Takes ownership of a device fd; `name` is how messages call it.
    pub fn new(fd: OwnedFd, name: String) -> Self {
        KernelDevice { fd, name }
    }
}

/// EFAULT unless `buf` holds at least `min` bytes and its leading `argsz`
/// (the kernel's bound on what it copies) does not claim more than `buf`.
fn check_argsz(buf: &[u8], min: usize) -> io::Result<()> {
    let argsz = buf.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match argsz {
        Some(a) if buf.len() >= min && a <= buf.len() => Ok(()),
        _ => Err(sys::errno(libc::EFAULT)),
    }
}

/// `VFIO_MIG_GET_PRECOPY_INFO` on `fd` into `buf` (a `struct vfio_precopy_info`).
pub(crate) fn precopy_info(fd: RawFd, buf: &mut [u8]) -> io::Result<()> {
    check_argsz(buf, std::mem::size_of::<vfio_precopy_info>())?;
    // SAFETY: the request copies at most one vfio_precopy_info, which `buf`
    // holds (checked), and carries no pointers.
    unsafe { sys::ioctl_buf(fd, VFIO_MIG_GET_PRECOPY_INFO, buf) }.map(|_| ())
}

impl DeviceBackend for KernelDevice {
    unsafe fn device_feature(&self, buf: &mut [u8]) -> io::Result<i32> {
        check_argsz(buf, std::mem::size_of::<vfio_uapi::abi::vfio_device_feature>())?;
        // SAFETY: the kernel copies at most `argsz` bytes in and out, which
        // `buf` holds (checked); pointers inside the payload are the
        // caller's obligation (this method's contract).
        unsafe { sys::ioctl_buf(self.fd.as_raw_fd(), VFIO_DEVICE_FEATURE, buf) }
    }

    fn get_info(&self, buf: &mut [u8]) -> io::Result<()> {
        check_argsz(buf, std::mem::size_of::<vfio_uapi::abi::vfio_device_info>())?;
        // SAFETY: the kernel copies the struct and any capabilities within
        // `argsz`, which `buf` holds (checked); the struct has no pointers.
        unsafe { sys::ioctl_buf(self.fd.as_raw_fd(), VFIO_DEVICE_GET_INFO, buf) }.map(|_| ())
    }

    fn reset(&self) -> io::Result<()> {
        // SAFETY: VFIO_DEVICE_RESET ignores its argument.
        unsafe { sys::ioctl_val(self.fd.as_raw_fd(), VFIO_DEVICE_RESET, 0) }.map(|_| ())
    }

    fn precopy_info(&self, fd: i32, buf: &mut [u8]) -> io::Result<()> {
        precopy_info(fd, buf)
    }

    fn data_read(&self, fd: i32, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(fd, buf)
    }

    fn data_write(&self, fd: i32, buf: &[u8]) -> io::Result<usize> {
        sys::write(fd, buf)
    }

    fn name(&self) -> &str {
        &self.name
    }
}
