//! The migration data fd a MIG_DEVICE_STATE SET hands out: reads in the
//! saving states, writes in RESUMING, PRECOPY_INFO, poll, and transfers to
//! and from other fds. Reads and writes go through the device backend, so an
//! emulated device answers them exactly as its kernel counterpart would.

use crate::backend::DeviceBackend;
use crate::kernel::error::{Result, VfioError};
use vmm_sys as sys;
use crate::transfer::{self, Endpoint, Options, PlainFd, Stats};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use vfio_uapi::abi::{vfio_precopy_info, Pod};
use vfio_uapi::DeviceState;

mod frames;
pub use frames::{FrameOptions, FrameStats, FrameWire, LoadEnd, LoadFrameOptions, LoadFrameStats, MAX_FRAME_BLOCK};

/// A migration data fd, owned; every call runs through its device's backend.
pub struct DataFd {
    // Every operation holds the read lock for its whole syscall, so close
    // (the write lock) never frees a number another thread is still using.
    fd: RwLock<Option<OwnedFd>>,
    backend: Arc<dyn DeviceBackend>,
    label: String,
    /// Set once splice on this fd was refused (a kernel data fd): later
    /// frame pumps read at once instead of asking again.
    splice_refused: AtomicBool,
}

/// `VFIO_MIG_GET_PRECOPY_INFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrecopyInfo {
    /// Initial bytes still to read (the part a destination needs before it can converge).
    pub initial_bytes: u64,
    /// Bytes dirtied since, as the device estimates them.
    pub dirty_bytes: u64,
}

struct DataEnd<'a> {
    fd: RawFd,
    backend: &'a dyn DeviceBackend,
    label: &'a str,
}

impl Endpoint for DataEnd<'_> {
    fn raw_fd(&self) -> RawFd {
        self.fd
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.backend.data_read(self.fd, buf)
    }
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.backend.data_write(self.fd, buf)
    }
    fn pollable(&self) -> bool {
        false
    }
    fn only_eof_ends(&self) -> bool {
        // PRECOPY_INFO answers EINVAL exactly outside PRE_COPY(_P2P).
        let mut buf = [0u8; std::mem::size_of::<vfio_precopy_info>()];
        vfio_precopy_info { argsz: buf.len() as u32, ..Default::default() }.write_to(&mut buf);
        matches!(self.backend.precopy_info(self.fd, &mut buf), Err(e) if e.raw_os_error() == Some(libc::EINVAL))
    }
    fn describe(&self) -> String {
        self.label.to_string()
    }
}

impl DataFd {
    /// `state` is the state whose entry produced the fd, for messages.
    pub fn new(fd: OwnedFd, backend: Arc<dyn DeviceBackend>, state: DeviceState) -> DataFd {
        let label = format!("{}: data fd {} ({state})", backend.name(), fd.as_raw_fd());
        DataFd { fd: RwLock::new(Some(fd)), backend, label, splice_refused: AtomicBool::new(false) }
    }

    /// A DataFd over any fd, reads and writes being plain syscalls. Exists so
    /// tests can drive the DataFd surface with a pipe; never used for devices.
    pub fn for_testing(fd: OwnedFd) -> DataFd {
        let backend: Arc<dyn DeviceBackend> = Arc::new(PlainBackend { name: format!("testing:fd{}", fd.as_raw_fd()) });
        let label = format!("{}: data fd {}", backend.name(), fd.as_raw_fd());
        DataFd { fd: RwLock::new(Some(fd)), backend, label, splice_refused: AtomicBool::new(false) }
    }

    /// The fd's name in messages: device, number and the state that opened it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The fd number while open.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.fd.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|f| f.as_raw_fd())
    }

    fn with_fd<T>(&self, call: &str, f: impl FnOnce(RawFd) -> Result<T>) -> Result<T> {
        let g = self.fd.read().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(fd) => f(fd.as_raw_fd()),
            None => Err(VfioError::new(libc::EBADF, call, format!("{}: {call}", self.label), Some("the data fd is closed"))),
        }
    }

    fn err(&self, e: &io::Error, call: &str) -> VfioError {
        let detail = match e.raw_os_error() {
            Some(libc::ENOMSG) => Some("no more data for now: the device is in PRE_COPY and has nothing new"),
            _ => None,
        };
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        VfioError::new(errno, call, format!("{}: {call}", self.label), detail)
    }

    /// Bytes read into `buf`; 0 is the end of the device state (STOP_COPY).
    /// In PRE_COPY a temporary end is the error ENOMSG.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        self.with_fd("read", |fd| self.backend.data_read(fd, buf).map_err(|e| self.err(&e, "read")))
    }

    /// Bytes of `buf` written (RESUMING).
    pub fn write(&self, buf: &[u8]) -> Result<usize> {
        self.with_fd("write", |fd| self.backend.data_write(fd, buf).map_err(|e| self.err(&e, "write")))
    }

    /// `VFIO_MIG_GET_PRECOPY_INFO`: EINVAL outside PRE_COPY(_P2P).
    pub fn precopy_info(&self) -> Result<PrecopyInfo> {
        self.with_fd("VFIO_MIG_GET_PRECOPY_INFO", |fd| {
            let mut buf = [0u8; std::mem::size_of::<vfio_precopy_info>()];
            vfio_precopy_info { argsz: buf.len() as u32, ..Default::default() }.write_to(&mut buf);
            self.backend.precopy_info(fd, &mut buf).map_err(|e| self.err(&e, "VFIO_MIG_GET_PRECOPY_INFO"))?;
            let info = vfio_precopy_info::read_from(&buf).expect("buffer is the struct's size");
            Ok(PrecopyInfo { initial_bytes: info.initial_bytes, dirty_bytes: info.dirty_bytes })
        })
    }

    /// poll(2) for `events` (POLLIN/POLLOUT bits); revents, 0 on timeout.
    pub fn poll(&self, events: i16, timeout: Option<Duration>) -> Result<i16> {
        self.with_fd("poll", |fd| sys::poll(fd, events, timeout).map_err(|e| self.err(&e, "poll")))
    }

    /// Closes the fd; later calls fail EBADF. Closing twice is not an error.
    pub fn close(&self) {
        self.fd.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Moves up to `max` bytes from the data fd to `to` (saving side).
    pub fn transfer_to(&self, to: RawFd, max: u64, opts: &Options) -> Result<Stats> {
        self.with_fd("transfer", |fd| {
            let ctx = format!("{}: transfer to fd {to}", self.label);
            let to = hold(to).map_err(|e| VfioError::from_io(&e, "transfer", &ctx))?;
            let from = DataEnd { fd, backend: &*self.backend, label: &self.label };
            transfer::transfer(&from, &PlainFd(to.as_raw_fd()), max, opts, &ctx)
        })
    }

    /// Moves up to `len` bytes from `from` into the data fd (resuming side).
    pub fn transfer_from(&self, from: RawFd, len: u64, opts: &Options) -> Result<Stats> {
        self.with_fd("transfer", |fd| {
            let ctx = format!("{}: transfer from fd {from}", self.label);
            let from = hold(from).map_err(|e| VfioError::from_io(&e, "transfer", &ctx))?;
            let to = DataEnd { fd, backend: &*self.backend, label: &self.label };
            transfer::transfer(&PlainFd(from.as_raw_fd()), &to, len, opts, &ctx)
        })
    }
}

/// A reference of our own to an fd someone else owns (the migration channel's socket), for
/// the length of one call: if the owner closes its number meanwhile (a
/// cancelled migration), the call keeps a valid open file instead of a
/// number the process may hand to the next open(). The owner wakes the call
/// with shutdown(2), which reaches every reference to the socket.
pub(crate) fn hold(fd: RawFd) -> io::Result<OwnedFd> {
    sys::dup(fd)
}

/// Backend of [`DataFd::for_testing`]: data calls are plain syscalls, device
/// calls fail ENOTTY as for a file that is not a device.
struct PlainBackend {
    name: String,
}

impl DeviceBackend for PlainBackend {
    unsafe fn device_feature(&self, _buf: &mut [u8]) -> io::Result<i32> {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
    fn get_info(&self, _buf: &mut [u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
    fn reset(&self) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
    fn precopy_info(&self, fd: i32, buf: &mut [u8]) -> io::Result<()> {
        // A pipe answers the real ioctl with ENOTTY, as a non-VFIO fd does.
        crate::kernel::device::precopy_info(fd, buf)
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

