//! The migration socket as the RAM encoder and decoder use it, on a worker
//! thread: a private dup of Node's fd, so a close on the JavaScript side can
//! never turn the number into someone else's file while guest RAM flows
//! through it.
//!
//! Every call is non-blocking (MSG_DONTWAIT, whatever the fd's own flags):
//! EAGAIN waits in poll(2), in slices, and
//! between slices the original fd is checked to still be the same socket. A
//! channel closed or shut down on the JavaScript side (the migration was
//! cancelled) then ends the call with ECANCELED instead of waiting forever
//! on a peer that no longer reads.

use crate::error::VResult;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;
use vfio_core::kernel::{sys, VfioError};

const WAIT_SLICE: Duration = Duration::from_millis(250);

fn identity(fd: RawFd) -> io::Result<(u64, u64)> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

pub struct Sock {
    fd: OwnedFd,
    orig: RawFd,
    id: (u64, u64),
    label: String,
}

impl Sock {
    /// Dups `orig` (a stream socket; anything else is refused with ENOTSOCK).
    /// Runs on the JavaScript thread: fcntl and fstat do not block.
    pub fn dup(orig: RawFd, label: &str) -> VResult<Sock> {
        let fail = |e: &io::Error, call: &str| VfioError::from_io(e, call.to_string(), format!("{label}: fd {orig}"));
        let id = identity(orig).map_err(|e| fail(&e, "fstat"))?;
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let r = unsafe { libc::getsockopt(orig, libc::SOL_SOCKET, libc::SO_TYPE, (&mut ty as *mut libc::c_int).cast(), &mut len) };
        if r < 0 || ty != libc::SOCK_STREAM {
            return Err(VfioError::new(libc::ENOTSOCK, "getsockopt(SO_TYPE)", format!("{label}: fd {orig}"), Some("not a stream socket")));
        }
        let fd = sys::dup(orig).map_err(|e| fail(&e, "dup"))?;
        Ok(Sock { fd, orig, id, label: label.to_string() })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn fail(&self, e: &io::Error, call: &str, after: u64) -> VfioError {
        VfioError::from_io(e, call.to_string(), format!("{}: {call} on fd {} after {after} bytes", self.label, self.orig))
    }

    /// Waits for `events`; ECANCELED once the JavaScript side closed its fd.
    fn wait(&self, events: i16, after: u64) -> VResult<i16> {
        loop {
            let r = sys::poll(self.raw(), events, Some(WAIT_SLICE)).map_err(|e| self.fail(&e, "poll", after))?;
            if r != 0 {
                return Ok(r);
            }
            if identity(self.orig).ok() != Some(self.id) {
                return Err(VfioError::new(libc::ECANCELED, "poll", format!("{}: fd {} after {after} bytes", self.label, self.orig), Some("the channel was closed")));
            }
        }
    }

    /// Writes every byte the iovecs describe (they are consumed as they go),
    /// as writev would, without SIGPIPE.
    pub fn writev_all(&self, mut iov: &mut [libc::iovec], after: u64) -> VResult<()> {
        let mut sent = after;
        while !iov.is_empty() {
            // SAFETY: an all-zero msghdr is valid; it only points at the iovecs.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len().min(libc::UIO_MAXIOV as usize) as _;
            let n = unsafe { libc::sendmsg(self.raw(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => {
                        self.wait(libc::POLLOUT, sent)?;
                        continue;
                    }
                    _ => return Err(self.fail(&e, "sendmsg", sent)),
                }
            }
            let mut n = n as usize;
            sent += n as u64;
            while n > 0 {
                let first = &mut iov[0];
                if n >= first.iov_len {
                    n -= first.iov_len;
                    iov = &mut iov[1..];
                } else {
                    first.iov_base = unsafe { (first.iov_base as *mut u8).add(n) }.cast();
                    first.iov_len -= n;
                    n = 0;
                }
            }
            while iov.first().is_some_and(|v| v.iov_len == 0) {
                iov = &mut iov[1..];
            }
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        loop {
            let n = unsafe { libc::recv(self.raw(), buf.as_mut_ptr().cast(), buf.len(), flags | libc::MSG_DONTWAIT) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// Copies what the socket holds into `buf` without taking it; 0 at end
    /// of stream. Waits when nothing is there.
    pub fn peek(&self, buf: &mut [u8], after: u64) -> VResult<usize> {
        loop {
            match self.recv(buf, libc::MSG_PEEK) {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    self.wait(libc::POLLIN, after)?;
                }
                Err(e) => return Err(self.fail(&e, "recv(MSG_PEEK)", after)),
            }
        }
    }

    /// Takes `n` bytes that a peek showed are there. MSG_TRUNC drops them
    /// in the kernel where the protocol allows it (TCP); elsewhere they are
    /// copied into `scratch` once more.
    pub fn discard(&self, mut n: usize, scratch: &mut [u8], after: u64) -> VResult<()> {
        let mut taken = after;
        while n > 0 {
            let step = n.min(scratch.len());
            match self.recv(&mut scratch[..step], libc::MSG_TRUNC) {
                Ok(0) => return Err(VfioError::new(libc::EPIPE, "recv", format!("{}: fd {} after {taken} bytes", self.label, self.orig), Some("bytes seen by a peek are gone"))),
                Ok(m) => {
                    let m = m.min(step);
                    n -= m;
                    taken += m as u64;
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    self.wait(libc::POLLIN, taken)?;
                }
                Err(e) => return Err(self.fail(&e, "recv(MSG_TRUNC)", taken)),
            }
        }
        Ok(())
    }

    /// Whether the peer has shut down its side (no more bytes will come).
    pub fn peer_done(&self) -> bool {
        sys::poll(self.raw(), libc::POLLIN | libc::POLLRDHUP, Some(Duration::ZERO))
            .map(|r| r & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0)
            .unwrap_or(true)
    }
}
