//! Raw syscall wrappers that turn -1/errno into `io::Error` and retry EINTR,
//! so the owners above them read as plain Rust.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(crate) fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r,
        }
    }
}

/// `open(path, O_RDWR | O_CLOEXEC)`.
pub fn open_rw(path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fd = retry(|| cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }))?;
    // SAFETY: open returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An ioctl whose argument is a plain integer.
pub fn ioctl_val(fd: RawFd, req: u64, arg: libc::c_ulong) -> io::Result<i32> {
    retry(|| cvt(unsafe { libc::ioctl(fd, req as libc::c_ulong, arg) }))
}

/// An ioctl whose argument points at `buf` (the kernel reads and may write it).
pub fn ioctl_buf(fd: RawFd, req: u64, buf: &mut [u8]) -> io::Result<i32> {
    retry(|| cvt(unsafe { libc::ioctl(fd, req as libc::c_ulong, buf.as_mut_ptr()) }))
}

/// An ioctl whose argument points at a `#[repr(C)]` value.
pub fn ioctl_ref<T>(fd: RawFd, req: u64, arg: &mut T) -> io::Result<i32> {
    retry(|| cvt(unsafe { libc::ioctl(fd, req as libc::c_ulong, arg as *mut T) }))
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }))
}

pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    retry(|| cvt_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) }))
}

/// Fails EBADF when `fd` is not an open descriptor, before anything is done
/// with a number that JavaScript handed us.
pub fn check_open(fd: RawFd) -> io::Result<()> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map(|_| ())
}

/// What kind of file an fd is, which decides whether splice can work on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    Pipe,
    Socket,
    Other,
}

pub fn fd_kind(fd: RawFd) -> io::Result<FdKind> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => FdKind::Pipe,
        libc::S_IFSOCK => FdKind::Socket,
        _ => FdKind::Other,
    })
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: socketpair returned two fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `dup(fd)` with close-on-exec, for taking ownership of a copy of a
/// descriptor JavaScript still owns.
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    let r = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: fcntl returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Waits until `fd` reports any of `events` (or an error/hangup), up to
/// `timeout` (None: forever). Returns the revents, 0 on timeout. EINTR
/// restarts with the time that is left.
pub fn poll(fd: RawFd, events: i16, timeout: Option<Duration>) -> io::Result<i16> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a 0.5 ms wait does not become a busy 0 ms poll.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        let mut p = libc::pollfd { fd, events, revents: 0 };
        match cvt(unsafe { libc::poll(&mut p, 1, ms) }) {
            Ok(0) => return Ok(0),
            Ok(_) => return Ok(p.revents),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
