//! The seam between a device and whoever answers its ioctls.

use std::io;
use std::os::fd::OwnedFd;

/// What a device answers. Implemented by the kernel device (an fd from
/// `VFIO_GROUP_GET_DEVICE_FD`, every call an ioctl) and by the emulated
/// device (every call checked against the kernel's rules in userspace).
///
/// Errors are `io::Error`s carrying the errno the kernel would return.
/// Calls may block (a real device can take seconds to change state); callers
/// never make them on the JavaScript thread.
pub trait DeviceBackend: Send + Sync {
    /// `VFIO_DEVICE_FEATURE`: `buf` is a whole `struct vfio_device_feature`
    /// (argsz, flags, payload) that the callee may read and write, exactly
    /// as the kernel's copy_from_user/copy_to_user would. Returns the
    /// ioctl's non-negative result. For MIG_DEVICE_STATE SET the new data fd
    /// (or -1) is written into the payload's `data_fd`, and ownership of that
    /// fd passes to the caller, as with the kernel.
    ///
    /// # Safety
    /// Some payloads carry user pointers (DMA_LOGGING_START's ranges,
    /// DMA_LOGGING_REPORT's bitmap) that the kernel follows: each must point
    /// at memory valid for what the feature reads or writes there, for the
    /// duration of the call. A buffer shorter than its `argsz` is refused
    /// (EFAULT) before the kernel sees it.
    unsafe fn device_feature(&self, buf: &mut [u8]) -> io::Result<i32>;

    /// `VFIO_DEVICE_GET_INFO` into a `struct vfio_device_info` buffer.
    fn get_info(&self, buf: &mut [u8]) -> io::Result<()>;

    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> io::Result<()>;

    /// `VFIO_MIG_GET_PRECOPY_INFO` on a data fd this device handed out
    /// (`fd` is its raw number, `buf` a `struct vfio_precopy_info`).
    fn precopy_info(&self, fd: i32, buf: &mut [u8]) -> io::Result<()>;

    /// `read()` on a data fd this device handed out. The kernel device reads
    /// the fd; the emulated device may answer ENOMSG at a temporary end of
    /// PRE_COPY data, as a driver does.
    fn data_read(&self, fd: i32, buf: &mut [u8]) -> io::Result<usize>;

    /// `write()` on a data fd this device handed out.
    fn data_write(&self, fd: i32, buf: &[u8]) -> io::Result<usize>;

    /// A name for messages ("0000:65:00.1", "emulated:nic0").
    fn name(&self) -> &str;

    /// Whether the device lives inside this process (the emulated one),
    /// so its state can only move by copying; a kernel device's fds could
    /// instead be passed to another process.
    fn in_process(&self) -> bool {
        false
    }

    /// The device fd, for a device the kernel drives: what a local
    /// migration passes to the next process. None for the emulated device.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// `VFIO_DEVICE_SET_IRQS` (DATA_EVENTFD | ACTION_TRIGGER): interrupt
    /// `index`'s vectors from `start` signal `fds` (-1 unsets one). The
    /// emulated device raises no interrupt: ENOTTY, as a device without
    /// that ioctl answers.
    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[i32]) -> io::Result<()> {
        let _ = (index, start, fds);
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
}

/// A data fd as handed out by [`DeviceBackend::device_feature`]. It is a real
/// file descriptor in both backends (the kernel's anon inode, or the
/// emulated device's pipe end served by its thread), so splice, poll and
/// close behave the same way.
pub type DataFdHandle = OwnedFd;
