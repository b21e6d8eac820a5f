//! A device fd from `VFIO_GROUP_GET_DEVICE_FD`: the kernel backend, where
//! every request is the matching ioctl or syscall.

use super::sys;
use crate::backend::DeviceBackend;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use vfio_uapi::ioctl::*;

pub struct KernelDevice {
    fd: OwnedFd,
    name: String,
}

impl KernelDevice {
    pub fn new(fd: OwnedFd, name: String) -> Self {
        KernelDevice { fd, name }
    }
}

impl DeviceBackend for KernelDevice {
    fn device_feature(&self, buf: &mut [u8]) -> io::Result<i32> {
        sys::ioctl_buf(self.fd.as_raw_fd(), VFIO_DEVICE_FEATURE, buf)
    }

    fn get_info(&self, buf: &mut [u8]) -> io::Result<()> {
        sys::ioctl_buf(self.fd.as_raw_fd(), VFIO_DEVICE_GET_INFO, buf).map(|_| ())
    }

    fn reset(&self) -> io::Result<()> {
        sys::ioctl_val(self.fd.as_raw_fd(), VFIO_DEVICE_RESET, 0).map(|_| ())
    }

    fn precopy_info(&self, fd: i32, buf: &mut [u8]) -> io::Result<()> {
        sys::ioctl_buf(fd, VFIO_MIG_GET_PRECOPY_INFO, buf).map(|_| ())
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
