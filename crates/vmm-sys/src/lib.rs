//! Every raw system call the native layer makes, wrapped once: `-1`/errno
//! becomes an [`io::Error`], EINTR is retried where a retry is the caller's
//! only sane answer, and a fresh descriptor comes back as an [`OwnedFd`] at
//! once. VFIO objects, the emulated device, the transfer engines and the RAM
//! socket path all call through here, so no other module needs `unsafe` to
//! talk to the kernel.
//!
//! The ioctl wrappers stay `unsafe fn`: the request number decides what the
//! kernel reads and writes through the argument, which no signature here can
//! check.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod mem;
pub mod signal;
pub use error::Error;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// An `io::Error` carrying `errno`, as the kernel would have returned it.
pub fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// A C return code: negative is the thread's errno.
pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A byte count or -1 with errno.
pub fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
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

/// Takes ownership of a descriptor a call just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: every caller passes a descriptor the kernel has just created
    // for this process (open, pipe2, dup, eventfd...), which nothing else
    // knows about yet.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `open(path, O_RDWR | O_CLOEXEC)`.
pub fn open_rw(path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| errno(libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let fd = retry(|| cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }))?;
    Ok(owned(fd))
}

/// An ioctl whose argument is a plain integer, passed by value.
///
/// # Safety
/// `req` must be a request that takes an integer argument, or one whose
/// pointer argument `arg` is the address of memory valid for everything the
/// request reads and writes, for the duration of the call.
pub unsafe fn ioctl_val(fd: RawFd, req: u64, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: the caller vouches for what `req` does with `arg`.
    retry(|| cvt(unsafe { libc::ioctl(fd, req as libc::c_ulong, arg) }))
}

/// An ioctl whose argument points at `buf` (the kernel reads and may write it).
///
/// # Safety
/// `req` must read and write no more than `buf.len()` bytes at the pointer,
/// and follow no pointer stored in `buf` to memory that is not valid for the
/// call (a VFIO struct's `argsz` is the kernel's bound, so it must not
/// exceed `buf.len()`).
pub unsafe fn ioctl_buf(fd: RawFd, req: u64, buf: &mut [u8]) -> io::Result<i32> {
    // SAFETY: `buf` is exclusively borrowed for the call; the caller vouches
    // that `req` stays inside it.
    retry(|| cvt(unsafe { libc::ioctl(fd, req as libc::c_ulong, buf.as_mut_ptr()) }))
}

/// An ioctl whose argument points at a `#[repr(C)]` value.
///
/// # Safety
/// `req` must take a pointer to exactly a `T` (read and written in place),
/// and any pointer inside `*arg` must be valid for what the request does
/// with it.
pub unsafe fn ioctl_ref<T>(fd: RawFd, req: u64, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is exclusively borrowed for the call; the caller vouches
    // that `req` reads and writes a T there.
    retry(|| cvt(unsafe { libc::ioctl(fd, req as libc::c_ulong, arg as *mut T) }))
}

/// `read(2)`, EINTR retried.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into the exclusively
    // borrowed buffer.
    retry(|| cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }))
}

/// `write(2)`, EINTR retried.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most buf.len() bytes of the borrowed buffer.
    retry(|| cvt_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) }))
}

/// [`write`] that turns a vanished reader into EPIPE even when the host
/// process has not ignored SIGPIPE: the signal is blocked around the call
/// and a SIGPIPE it raised is consumed before the old mask returns.
pub fn write_nosigpipe(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    without_sigpipe(|| write(fd, buf))
}

/// `writev(2)` of `iov`, EINTR retried.
///
/// # Safety
/// Every iovec must describe memory valid for reads of `iov_len` bytes for
/// the duration of the call.
pub unsafe fn writev(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    let cnt = iov.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `iov` is a live array of `cnt` iovecs, each readable (caller).
    retry(|| cvt_size(unsafe { libc::writev(fd, iov.as_ptr(), cnt) }))
}

/// `splice(2)` of up to `n` bytes with SPLICE_F_MOVE | SPLICE_F_NONBLOCK
/// (a full or empty pipe answers EAGAIN, so waits go through poll with its
/// timeout), EINTR retried.
pub fn splice(from: RawFd, to: RawFd, n: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: null offsets make the kernel use and advance the files' own
    // positions; no user memory is involved.
    retry(|| cvt_size(unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), n, flags) }))
}

/// Fails EBADF when `fd` is not an open descriptor, before anything is done
/// with a number that JavaScript handed us.
pub fn check_open(fd: RawFd) -> io::Result<()> {
    if fd < 0 {
        return Err(errno(libc::EBADF));
    }
    // SAFETY: F_GETFD takes no argument; a closed fd is an error return.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map(|_| ())
}

/// What kind of file an fd is, which decides whether splice can work on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A pipe or FIFO.
    Pipe,
    /// A socket.
    Socket,
    /// Anything else (a VFIO data fd, a regular file, an eventfd...).
    Other,
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: libc::stat is plain integers, for which all-zero is a value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel fills the exclusively borrowed local.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// The kind of file behind `fd`.
pub fn fd_kind(fd: RawFd) -> io::Result<FdKind> {
    let st = fstat(fd)?;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => FdKind::Pipe,
        libc::S_IFSOCK => FdKind::Socket,
        _ => FdKind::Other,
    })
}

/// Identity (device, inode) of the open file behind `fd`: a pipe's two
/// ends share it, and it is never reused while either end is open, unlike
/// fd numbers.
pub fn inode(fd: RawFd) -> io::Result<(u64, u64)> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: the kernel writes two ints into the local array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// Asks for a pipe of `bytes` (F_SETPIPE_SZ); the size granted, which an
/// unprivileged process above pipe-max-size does not get (EPERM).
pub fn set_pipe_size(fd: &OwnedFd, bytes: usize) -> io::Result<usize> {
    let want = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: F_SETPIPE_SZ takes an int; a non-pipe is an error return.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, want) }).map(|n| n as usize)
}

/// The pipe's capacity (F_GETPIPE_SZ).
pub fn pipe_size(fd: &OwnedFd) -> io::Result<usize> {
    // SAFETY: F_GETPIPE_SZ takes no argument; a non-pipe is an error return.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) }).map(|n| n as usize)
}

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: the kernel writes two ints into the local array.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// `dup(fd)` with close-on-exec, for taking ownership of a copy of a
/// descriptor JavaScript still owns.
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an int; a bad fd is an error return.
    let r = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    Ok(owned(r))
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument.
    let fl = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL takes an int.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) })?;
    Ok(())
}

/// A non-blocking, close-on-exec eventfd starting at 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    Ok(owned(fd))
}

/// Adds 1 to an eventfd, waking its poller. Never fails in a way that
/// matters: EAGAIN comes only from a saturated counter, which still wakes.
pub fn eventfd_signal(fd: &OwnedFd) {
    let _ = write(fd.as_raw_fd(), &1u64.to_ne_bytes());
}

/// Resets an eventfd to 0 (EAGAIN when it already was, which is fine).
pub fn eventfd_drain(fd: &OwnedFd) {
    let mut v = [0u8; 8];
    let _ = read(fd.as_raw_fd(), &mut v);
}

/// Bytes queued in a pipe (either end answers for the whole pipe).
pub fn fionread(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, into the local.
    cvt(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) })?;
    Ok(n as usize)
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
        // SAFETY: one pollfd, a local the kernel writes revents into.
        match cvt(unsafe { libc::poll(&mut p, 1, ms) }) {
            Ok(0) => return Ok(0),
            Ok(_) => return Ok(p.revents),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Waits for any of `fds` (fd, events); `timeout_ms < 0` waits forever.
/// Returns each fd's revents. EINTR counts as a spurious wakeup (all zero).
pub fn poll_many(fds: &[(RawFd, i16)], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds.iter().map(|&(fd, events)| libc::pollfd { fd, events, revents: 0 }).collect();
    // SAFETY: `p` is a live array of p.len() pollfds for the kernel to fill.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(p.iter().map(|x| x.revents).collect())
}

/// The kernel's copy_from_user for a pointer userspace put in a payload:
/// process_vm_readv on ourselves faults cleanly (EFAULT) on unmapped memory
/// instead of crashing the process.
pub fn copy_from_user(addr: u64, out: &mut [u8]) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    if addr == 0 {
        return Err(errno(libc::EFAULT));
    }
    let local = libc::iovec { iov_base: out.as_mut_ptr().cast(), iov_len: out.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: out.len() };
    // SAFETY: the local iovec is the exclusively borrowed `out`; the remote
    // one is only ever read by the kernel, which checks it like any user
    // pointer and answers EFAULT where nothing is mapped.
    let r = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if r < 0 || r as usize != out.len() {
        return Err(errno(libc::EFAULT));
    }
    Ok(())
}

/// The kernel's copy_to_user, see [`copy_from_user`].
pub fn copy_to_user(addr: u64, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if addr == 0 {
        return Err(errno(libc::EFAULT));
    }
    let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: the kernel only reads the local iovec (`data`); the remote
    // address is checked by the kernel like any user pointer (EFAULT where
    // unmapped). Writing there is what the payload's owner asked for, as
    // the real driver's copy_to_user would.
    let r = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    if r < 0 || r as usize != data.len() {
        return Err(errno(libc::EFAULT));
    }
    Ok(())
}

/// Blocks SIGPIPE in the calling thread: a thread writing into a pipe whose
/// reader went away must get EPIPE, never kill the host process.
pub fn block_sigpipe() {
    // SAFETY: the set is a local initialised by sigemptyset before use; the
    // mask change affects only this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// The socket type (SO_TYPE) of `fd`: SOCK_STREAM, SOCK_DGRAM...
pub fn socket_type(fd: RawFd) -> io::Result<libc::c_int> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the local int and
    // updates the local `len`.
    cvt(unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&mut ty as *mut libc::c_int).cast(), &mut len) })?;
    Ok(ty)
}

/// `shutdown(fd, SHUT_RDWR)`.
pub fn shutdown(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes only integers; a bad one is an error return.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }).map(|_| ())
}

/// `sendmsg(2)` of `iov` with MSG_DONTWAIT | MSG_NOSIGNAL (never blocks,
/// never raises SIGPIPE), EINTR retried. At most UIO_MAXIOV iovecs go.
///
/// # Safety
/// Every iovec must describe memory valid for reads of `iov_len` bytes for
/// the duration of the call.
pub unsafe fn send_iov(fd: RawFd, iov: &mut [libc::iovec]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: msg points only at `iov`, whose entries the caller vouches for.
    retry(|| cvt_size(unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }))
}

/// `recv(2)` into `buf` with `flags | MSG_DONTWAIT`, EINTR retried. With
/// MSG_TRUNC the count may exceed `buf.len()` (bytes dropped in the kernel).
pub fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into the exclusively
    // borrowed buffer (MSG_TRUNC only changes the count returned).
    retry(|| cvt_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags | libc::MSG_DONTWAIT) }))
}

/// `writev(2)` of `iov` that turns a vanished reader into EPIPE even when
/// the host process has not ignored SIGPIPE (see [`write_nosigpipe`]): for
/// pipes, which have no MSG_NOSIGNAL. At most UIO_MAXIOV iovecs go.
///
/// # Safety
/// Every iovec must describe memory valid for reads of `iov_len` bytes for
/// the duration of the call.
pub unsafe fn writev_nosigpipe(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    let iov = &iov[..iov.len().min(libc::UIO_MAXIOV as usize)];
    // SAFETY: the caller vouches for the iovecs (this function's contract).
    without_sigpipe(|| unsafe { writev(fd, iov) })
}

/// Runs `call` with SIGPIPE blocked for this thread, and takes back a
/// SIGPIPE it raised (an EPIPE) before unblocking: a write to a closed peer
/// is then an error, never a signal that ends the process.
fn without_sigpipe(call: impl FnOnce() -> io::Result<usize>) -> io::Result<usize> {
    // SAFETY: the sigset_t values are locals, zeroed and then initialised by
    // sigemptyset before use; the mask calls change only this thread's
    // mask and restore it before returning; sigtimedwait with a zero timeout
    // only dequeues a pending SIGPIPE of this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = call();
        if matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EPIPE)) {
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            libc::sigtimedwait(&set, std::ptr::null_mut(), &zero);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// Most descriptors one message may carry here: a migration passes a few
/// RAM blocks, and a bound keeps the control buffer fixed and a hostile peer
/// from filling our descriptor table.
pub const MAX_PASSED_FDS: usize = 16;

/// Room for a control message of `n` descriptors, as CMSG_SPACE counts it.
fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// `sendmsg(2)` of `iov` carrying `fds` (SCM_RIGHTS) with MSG_DONTWAIT |
/// MSG_NOSIGNAL, EINTR retried. The kernel attaches the descriptors to the
/// first byte sent, so at least one byte must go (`iov` not empty).
///
/// # Safety
/// As [`send_iov`]; every number in `fds` must be open for the call.
pub unsafe fn send_iov_fds(fd: RawFd, iov: &mut [libc::iovec], fds: &[RawFd]) -> io::Result<usize> {
    if fds.is_empty() || fds.len() > MAX_PASSED_FDS || iov.iter().all(|v| v.iov_len == 0) {
        return Err(errno(libc::EINVAL));
    }
    // u64 words keep the buffer aligned for cmsghdr.
    let mut control = vec![0u64; cmsg_space(MAX_PASSED_FDS).div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid (no name, no control data yet).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len().min(libc::UIO_MAXIOV as usize) as _;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(fds.len()) as _;
    // SAFETY: the control buffer holds CMSG_SPACE(fds.len()) bytes (it was
    // sized for the maximum), so the first header and its data fit in it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
    }
    // SAFETY: msg points at `iov` (the caller vouches for it) and `control`, alive here.
    retry(|| cvt_size(unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }))
}

/// What one [`recv_fds`] got.
pub struct Received {
    /// Bytes read (0 at end of stream).
    pub bytes: usize,
    /// The descriptors that came with them, ours now (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The peer sent more descriptors than [`MAX_PASSED_FDS`] in one
    /// message: the kernel closed those past the bound (MSG_CTRUNC).
    pub truncated: bool,
}

/// `recvmsg(2)` into `buf` with room for [`MAX_PASSED_FDS`] descriptors,
/// MSG_DONTWAIT | MSG_CMSG_CLOEXEC, EINTR retried. A plain read(2) would
/// have the kernel drop passed descriptors unseen; this way the caller
/// knows whether any came, and owns (so closes) every one.
pub fn recv_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // On the stack: every read of a socket comes through here. u64 words
    // keep it aligned for cmsghdr; 16 of them hold CMSG_SPACE of 16 fds (80).
    let mut control = [0u64; 16];
    debug_assert!(cmsg_space(MAX_PASSED_FDS) <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_PASSED_FDS) as _;
    // SAFETY: the kernel writes at most buf.len() bytes into the exclusively
    // borrowed `buf` and at most msg_controllen bytes into `control`.
    let bytes = retry(|| cvt_size(unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) }))?;
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays inside msg_controllen bytes of `control`,
    // which the kernel filled; each SCM_RIGHTS payload is whole descriptors,
    // fresh in this process and owned by nobody else yet.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..data / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received { bytes, fds, truncated: msg.msg_flags & libc::MSG_CTRUNC != 0 })
}

/// The size of the file behind `fd` (fstat's st_size).
pub fn file_size(fd: RawFd) -> io::Result<u64> {
    Ok(fstat(fd)?.st_size as u64)
}
