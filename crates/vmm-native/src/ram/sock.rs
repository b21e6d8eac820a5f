//! The migration socket as the RAM encoder and decoder use it, on a worker
//! thread: a private dup of the channel's fd, so a close of the channel can
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
use vmm_sys::Error as NativeError;
use vmm_sys as sys;

const WAIT_SLICE: Duration = Duration::from_millis(250);

fn identity(fd: RawFd) -> io::Result<(u64, u64)> {
    sys::inode(fd)
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
        let fail = |e: &io::Error, call: &str| NativeError::from_io(e, call.to_string(), format!("{label}: fd {orig}"));
        let id = identity(orig).map_err(|e| fail(&e, "fstat"))?;
        if sys::socket_type(orig).ok() != Some(libc::SOCK_STREAM) {
            return Err(NativeError::new(libc::ENOTSOCK, "getsockopt(SO_TYPE)", format!("{label}: fd {orig}"), Some("not a stream socket")));
        }
        let fd = sys::dup(orig).map_err(|e| fail(&e, "dup"))?;
        Ok(Sock { fd, orig, id, label: label.to_string() })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn fail(&self, e: &io::Error, call: &str, after: u64) -> NativeError {
        NativeError::from_io(e, call.to_string(), format!("{}: {call} on fd {} after {after} bytes", self.label, self.orig))
    }

    /// Waits for `events`; ECANCELED once the JavaScript side closed its fd.
    fn wait(&self, events: i16, after: u64) -> VResult<i16> {
        loop {
            let r = sys::poll(self.raw(), events, Some(WAIT_SLICE)).map_err(|e| self.fail(&e, "poll", after))?;
            if r != 0 {
                return Ok(r);
            }
            if identity(self.orig).ok() != Some(self.id) {
                return Err(NativeError::new(libc::ECANCELED, "poll", format!("{}: fd {} after {after} bytes", self.label, self.orig), Some("the channel was closed")));
            }
        }
    }

    /// Writes every byte the iovecs describe (they are consumed as they go),
    /// as writev would, without SIGPIPE.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads of `iov_len` bytes
    /// until the call returns.
    pub unsafe fn writev_all(&self, mut iov: &mut [libc::iovec], after: u64) -> VResult<()> {
        let mut sent = after;
        while !iov.is_empty() {
            // SAFETY: the iovecs are readable until we return (our contract).
            let mut n = match unsafe { sys::send_iov(self.raw(), iov) } {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    self.wait(libc::POLLOUT, sent)?;
                    continue;
                }
                Err(e) => return Err(self.fail(&e, "sendmsg", sent)),
            };
            sent += n as u64;
            while n > 0 {
                let first = &mut iov[0];
                if n >= first.iov_len {
                    n -= first.iov_len;
                    iov = &mut iov[1..];
                } else {
                    // SAFETY: n < iov_len, so the result stays inside the
                    // memory this iovec describes.
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
        sys::recv(self.raw(), buf, flags)
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
                Ok(0) => return Err(NativeError::new(libc::EPIPE, "recv", format!("{}: fd {} after {taken} bytes", self.label, self.orig), Some("bytes seen by a peek are gone"))),
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
    fn peer_done(&self) -> bool {
        sys::poll(self.raw(), libc::POLLIN | libc::POLLRDHUP, Some(Duration::ZERO))
            .map(|r| r & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0)
            .unwrap_or(true)
    }
}

thread_local! {
    // One peek buffer per worker thread, reused by every load on it.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn with_buf<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < super::decode::PEEK_SIZE {
            buf.resize(super::decode::PEEK_SIZE, 0);
        }
        f(&mut buf)
    })
}

impl super::decode::Source for Sock {
    fn take(&self, after: u64, f: &mut dyn FnMut(&[u8]) -> usize) -> VResult<usize> {
        with_buf(|buf| {
            let n = self.peek(buf, after)?;
            if n == 0 {
                return Ok(0);
            }
            let used = f(&buf[..n]);
            if used > 0 {
                self.discard(used, buf, after)?;
            }
            Ok(n)
        })
    }

    fn wait_more(&self, have: usize, after: u64) -> VResult<bool> {
        // The socket is readable, so poll would not wait for more: wait a
        // little, unless nothing more can come.
        if self.peer_done() && with_buf(|buf| self.peek(buf, after))? == have {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_micros(50));
        Ok(true)
    }
}
