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

    /// A device fd another process passed (a local migration): checked with
    /// VFIO_DEVICE_GET_INFO, which only a VFIO device answers, and refused
    /// (the fd closed) otherwise. The device is not reset or touched: it
    /// goes on running as the source left it.
    pub fn from_fd(fd: OwnedFd, name: &str) -> super::Result<KernelDevice> {
        let d = KernelDevice { fd, name: name.to_string() };
        let size = std::mem::size_of::<vfio_uapi::abi::vfio_device_info>();
        let mut info = vec![0u8; size];
        info[..4].copy_from_slice(&(size as u32).to_le_bytes());
        d.get_info(&mut info).map_err(|e| {
            super::VfioError::new(e.raw_os_error().unwrap_or(libc::EIO), "VFIO_DEVICE_GET_INFO", format!("{name}: VFIO_DEVICE_GET_INFO"), Some("the passed fd is not a VFIO device"))
        })?;
        Ok(d)
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

/// The `struct vfio_irq_set` of SET_IRQS with eventfds: argsz, flags,
/// index, start, count, then the fds as s32. EINVAL for none or too many.
fn irq_set_arg(index: u32, start: u32, fds: &[i32]) -> io::Result<Vec<u8>> {
    // The kernel bounds count by the index's vector count; 2048 is MSI-X's.
    if fds.is_empty() || fds.len() > 2048 {
        return Err(sys::errno(libc::EINVAL));
    }
    let mut b = Vec::with_capacity(20 + 4 * fds.len());
    let argsz = (20 + 4 * fds.len()) as u32;
    for v in [argsz, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index, start, fds.len() as u32] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    for fd in fds {
        b.extend_from_slice(&fd.to_ne_bytes());
    }
    Ok(b)
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

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[i32]) -> io::Result<()> {
        let mut buf = irq_set_arg(index, start, fds)?;
        // SAFETY: the kernel reads `argsz` bytes, the header and `count`
        // s32 eventfds, which `buf` is exactly; nothing in it is a pointer.
        unsafe { sys::ioctl_buf(self.fd.as_raw_fd(), VFIO_DEVICE_SET_IRQS, &mut buf) }.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::test_fds::memfd_open;

    #[test]
    fn the_irq_set_argument_is_the_header_and_the_eventfds() {
        let b = irq_set_arg(0, 0, &[7, -1]).unwrap();
        let w: Vec<u32> = b.chunks(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(w, vec![28, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 2, 7, u32::MAX]);
        assert_eq!(irq_set_arg(0, 0, &[]).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_passed_fd_that_is_no_device_is_refused_and_closed() {
        let fd = vmm_sys::mem::memfd(c"not-a-device", 0).unwrap();
        assert!(memfd_open("not-a-device"));
        let e = KernelDevice::from_fd(fd, "0000:65:00.1").err().unwrap();
        assert_eq!(e.errno, libc::ENOTTY);
        assert!(e.to_string().contains("0000:65:00.1: VFIO_DEVICE_GET_INFO"), "{e}");
        assert!(e.to_string().contains("not a VFIO device"), "{e}");
        assert!(!memfd_open("not-a-device"), "the passed fd was closed");
    }
}
