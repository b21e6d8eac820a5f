//! Moves bytes between two fds without passing through JavaScript.
//!
//! splice(2) needs a pipe at one end. When neither end is a pipe the bytes go
//! through a private pipe (two splices per chunk). When splice is refused
//! with EINVAL (VFIO data fds implement only read/write, so the kernel has no
//! splice_read/splice_write for them) the engine falls back to read/write
//! with one buffer, reused across calls on the same worker thread. Non-blocking
//! fds (Node's sockets) answer EAGAIN: the engine then waits in poll(2), on
//! the worker thread, never on the JavaScript thread.

use crate::kernel::error::{Result, VfioError};
use vmm_sys::{self as sys, FdKind};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// One end of a transfer. Plain fds use read/write; a migration data fd
/// routes them through its device backend (which may answer ENOMSG).
pub trait Endpoint {
    /// The fd polled and spliced.
    fn raw_fd(&self) -> RawFd;
    /// One read: plain `read(2)` unless the end knows better.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(self.raw_fd(), buf)
    }
    /// One write: plain `write(2)` unless the end knows better.
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        sys::write(self.raw_fd(), buf)
    }
    /// Whether poll(2) on the fd predicts `read`/`write`. False for a data fd
    /// whose backend answers from its own state (an emulated device answers
    /// ENOMSG at once where poll on its pipe would wait).
    fn pollable(&self) -> bool {
        true
    }
    /// Asked only of a source that is not pollable: whether, empty, it
    /// means "not yet" and nothing else (a data fd outside PRE_COPY ends its
    /// data with EOF, never ENOMSG), so waiting for it is right where asking
    /// its own read would take a partial chunk by copy.
    fn only_eof_ends(&self) -> bool {
        false
    }
    /// How messages name this end.
    fn describe(&self) -> String {
        format!("fd {}", self.raw_fd())
    }
}

/// An fd someone else owns (Node's socket, a pipe end).
pub struct PlainFd(pub RawFd);

impl Endpoint for PlainFd {
    fn raw_fd(&self) -> RawFd {
        self.0
    }
}

/// How the bytes moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// splice(2) straight from one fd to the other (one of them is a pipe).
    Splice,
    /// Two splices through a private pipe (neither end is a pipe).
    PipeSplice,
    /// read(2)/write(2) through one native buffer.
    ReadWrite,
}

impl Path {
    /// The name JavaScript sees ('splice', 'pipe-splice', 'read-write').
    pub fn name(self) -> &'static str {
        match self {
            Path::Splice => "splice",
            Path::PipeSplice => "pipe-splice",
            Path::ReadWrite => "read-write",
        }
    }
}

/// Why the transfer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `len` bytes moved.
    Limit,
    /// The source reported end of file (read or splice returned 0).
    Eof,
    /// The source is a PRE_COPY data fd with nothing more for now (ENOMSG).
    NoData,
}

impl End {
    /// The name JavaScript sees ('limit', 'eof', 'enomsg').
    pub fn name(self) -> &'static str {
        match self {
            End::Limit => "limit",
            End::Eof => "eof",
            End::NoData => "enomsg",
        }
    }
}

/// What [`transfer`] did.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Bytes moved.
    pub bytes: u64,
    /// How they moved.
    pub path: Path,
    /// Why it stopped.
    pub end: End,
    /// The errno that made splice give way to read/write, if it did.
    pub fallback_errno: Option<i32>,
}

/// How [`transfer`] may move the bytes.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Longest wait for a non-blocking fd to become ready; None waits forever.
    pub idle_timeout: Option<Duration>,
    /// Largest single read/write/splice.
    pub chunk: usize,
    /// false forces read/write (tests, and callers that know splice is useless).
    pub allow_splice: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { idle_timeout: None, chunk: 1 << 20, allow_splice: true }
    }
}

thread_local! {
    // Reused by every read/write transfer on this worker thread.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Run<'a> {
    from: &'a dyn Endpoint,
    to: &'a dyn Endpoint,
    opts: &'a Options,
    moved: u64,
    label: String,
}

impl Run<'_> {
    fn fail(&self, e: &io::Error, syscall: &str, on: &dyn Endpoint) -> VfioError {
        VfioError::from_io(
            e,
            syscall,
            format!("{}: {syscall} on {} after {} bytes", self.label, on.describe(), self.moved),
        )
    }

    /// Waits for `events` on `ep` (only called after EAGAIN, or before a
    /// blocking step when a timeout is asked for).
    fn wait(&self, ep: &dyn Endpoint, events: i16) -> Result<()> {
        let r = sys::poll(ep.raw_fd(), events, self.opts.idle_timeout).map_err(|e| self.fail(&e, "poll", ep))?;
        if r == 0 {
            let ms = self.opts.idle_timeout.map(|d| d.as_millis()).unwrap_or(0);
            return Err(VfioError::new(
                libc::ETIMEDOUT,
                "poll",
                format!("{}: poll on {} after {} bytes", self.label, ep.describe(), self.moved),
                Some(&format!("not ready within {ms} ms")),
            ));
        }
        if r & libc::POLLNVAL != 0 {
            return Err(self.fail(&io::Error::from_raw_os_error(libc::EBADF), "poll", ep));
        }
        // POLLHUP/POLLERR: the next read or write reports what happened.
        Ok(())
    }

    fn left(&self, len: u64) -> usize {
        (len - self.moved).min(self.opts.chunk as u64) as usize
    }

    /// Writes all of `buf` to the destination.
    fn write_all(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            match self.to.write(buf) {
                Ok(0) => return Err(self.fail(&io::Error::from_raw_os_error(libc::EIO), "write", self.to)),
                Ok(n) => {
                    buf = &buf[n..];
                    self.moved += n as u64;
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.wait(self.to, libc::POLLOUT)?,
                Err(e) => return Err(self.fail(&e, "write", self.to)),
            }
        }
        Ok(())
    }

    /// Whether `ep` is ready for `events` right now.
    fn ready(&self, ep: &dyn Endpoint, events: i16) -> Result<bool> {
        let r = sys::poll(ep.raw_fd(), events, Some(Duration::ZERO)).map_err(|e| self.fail(&e, "poll", ep))?;
        Ok(r != 0)
    }

    /// One chunk through the source's own read (a data fd's backend, which
    /// answers ENOMSG at a PRE_COPY pause where splice would just wait).
    /// Some(end) when the source has ended.
    fn read_once(&mut self, len: u64) -> Result<Option<End>> {
        let mut buf = vec![0u8; self.left(len).min(64 << 10)];
        loop {
            match self.from.read(&mut buf) {
                Ok(0) => return Ok(Some(End::Eof)),
                Ok(n) => {
                    self.write_all(&buf[..n])?;
                    return Ok(if self.moved >= len { Some(End::Limit) } else { None });
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.wait(self.from, libc::POLLIN)?,
                Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => return Ok(Some(End::NoData)),
                Err(e) => return Err(self.fail(&e, "read", self.from)),
            }
        }
    }

    /// splice saw the source's end. A pollable source's end is its end; a
    /// data fd's closed pipe is no verdict (a reset closes it too), so its
    /// own read says whether the state ended or the session failed. None:
    /// that read still found data (moved), so go on.
    fn end_of(&mut self, len: u64) -> Result<Option<End>> {
        if self.from.pollable() {
            return Ok(Some(End::Eof));
        }
        self.read_once(len)
    }

    /// A splice found the source empty: whether to ask the source's own read
    /// (which may answer ENOMSG) rather than wait for it to become readable.
    fn ask_source(&self) -> bool {
        !self.from.pollable() && !self.from.only_eof_ends()
    }

    fn read_write(&mut self, len: u64) -> Result<End> {
        BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let want = self.opts.chunk.min(usize::try_from(len - self.moved).unwrap_or(usize::MAX)).max(1);
            if buf.len() < want {
                buf.resize(want, 0);
            }
            while self.moved < len {
                let n = self.left(len);
                if self.opts.idle_timeout.is_some() && self.from.pollable() {
                    self.wait(self.from, libc::POLLIN)?;
                }
                match self.from.read(&mut buf[..n]) {
                    Ok(0) => return Ok(End::Eof),
                    Ok(got) => self.write_all(&buf[..got])?,
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.wait(self.from, libc::POLLIN)?,
                    Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => return Ok(End::NoData),
                    Err(e) => return Err(self.fail(&e, "read", self.from)),
                }
            }
            Ok(End::Limit)
        })
    }

    fn splice(&self, from: RawFd, to: RawFd, n: usize) -> io::Result<usize> {
        // NONBLOCK keeps the pipe ends from blocking, so a full or empty pipe
        // answers EAGAIN and the wait goes through poll (with its timeout).
        sys::splice(from, to, n)
    }

    /// One end is a pipe. `Err(errno)` inside `Ok` means splice was refused
    /// before any byte moved: the caller falls back to read/write.
    fn direct(&mut self, len: u64) -> Result<std::result::Result<End, i32>> {
        let (f, t) = (self.from.raw_fd(), self.to.raw_fd());
        while self.moved < len {
            match self.splice(f, t, self.left(len)) {
                Ok(0) => match self.end_of(len)? {
                    Some(end) => return Ok(Ok(end)),
                    None => continue,
                },
                Ok(n) => self.moved += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    if self.ask_source() && self.ready(self.to, libc::POLLOUT)? {
                        // The destination has room, so the data fd is empty:
                        // only its backend knows whether that is ENOMSG.
                        if let Some(end) = self.read_once(len)? {
                            return Ok(Ok(end));
                        }
                        continue;
                    }
                    // Either end may be the one not ready; wait for both in turn.
                    self.wait(self.from, libc::POLLIN)?;
                    self.wait(self.to, libc::POLLOUT)?;
                }
                Err(e) if self.moved == 0 && refuses_splice(&e) => return Ok(Err(e.raw_os_error().unwrap_or(0))),
                Err(e) => return Err(self.fail(&e, "splice", self.from)),
            }
        }
        Ok(Ok(End::Limit))
    }

    /// Neither end is a pipe: splice through a private one. `Err(errno)`
    /// inside `Ok` means splice was refused and the rest must go by read/write.
    fn via_pipe(&mut self, len: u64) -> Result<std::result::Result<End, i32>> {
        let (r, w) = sys::pipe().map_err(|e| self.fail(&e, "pipe2", self.from))?;
        // A bigger pipe means fewer splices per MiB; the default 64 KiB works too.
        let cap = sys::set_pipe_size(&w, self.opts.chunk).unwrap_or(65536);
        let (f, t) = (self.from.raw_fd(), self.to.raw_fd());
        while self.moved < len {
            let n = self.left(len).min(cap);
            let got = match self.splice(f, w.as_raw_fd(), n) {
                Ok(0) => match self.end_of(len)? {
                    Some(end) => return Ok(Ok(end)),
                    None => continue,
                },
                Ok(got) => got,
                // The private pipe is empty here, so EAGAIN is the source's.
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    if self.ask_source() {
                        if let Some(end) = self.read_once(len)? {
                            return Ok(Ok(end));
                        }
                    } else {
                        self.wait(self.from, libc::POLLIN)?;
                    }
                    continue;
                }
                Err(e) if self.moved == 0 && refuses_splice(&e) => return Ok(Err(e.raw_os_error().unwrap_or(0))),
                Err(e) => return Err(self.fail(&e, "splice", self.from)),
            };
            let mut pending = got;
            while pending > 0 {
                match self.splice(r.as_raw_fd(), t, pending) {
                    Ok(0) => return Err(self.fail(&io::Error::from_raw_os_error(libc::EIO), "splice", self.to)),
                    Ok(n) => {
                        pending -= n;
                        self.moved += n as u64;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.wait(self.to, libc::POLLOUT)?,
                    Err(e) if refuses_splice(&e) => {
                        // The destination cannot take splice (a data fd being
                        // resumed): hand over what sits in the pipe by read/write.
                        self.drain(&r, pending)?;
                        return Ok(Err(e.raw_os_error().unwrap_or(0)));
                    }
                    Err(e) => return Err(self.fail(&e, "splice", self.to)),
                }
            }
        }
        Ok(Ok(End::Limit))
    }

    fn drain(&mut self, pipe: &std::os::fd::OwnedFd, mut pending: usize) -> Result<()> {
        let mut buf = vec![0u8; pending.min(self.opts.chunk)];
        while pending > 0 {
            let n = pending.min(buf.len());
            let got = sys::read(pipe.as_raw_fd(), &mut buf[..n]).map_err(|e| self.fail(&e, "read", &PlainFd(pipe.as_raw_fd())))?;
            if got == 0 {
                break;
            }
            self.write_all(&buf[..got])?;
            pending -= got;
        }
        Ok(())
    }
}

/// The errnos by which the kernel says "no splice for this file".
pub(crate) fn refuses_splice(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP))
}

/// Moves up to `len` bytes from `from` to `to` (until end of file, ENOMSG
/// or `len`). `label` names the operation in error messages.
pub fn transfer(from: &dyn Endpoint, to: &dyn Endpoint, len: u64, opts: &Options, label: &str) -> Result<Stats> {
    let mut run = Run { from, to, opts, moved: 0, label: label.to_string() };
    if opts.chunk == 0 {
        return Err(VfioError::invalid("splice", label, "chunk size must be positive"));
    }
    if len == 0 {
        return Ok(Stats { bytes: 0, path: Path::ReadWrite, end: End::Limit, fallback_errno: None });
    }
    let kinds = |ep: &dyn Endpoint| sys::fd_kind(ep.raw_fd()).map_err(|e| run_fail(label, &e, "fstat", ep));
    let (kf, kt) = (kinds(from)?, kinds(to)?);
    let mut fallback_errno = None;
    if opts.allow_splice {
        let (path, r) = if kf == FdKind::Pipe || kt == FdKind::Pipe {
            (Path::Splice, run.direct(len)?)
        } else {
            (Path::PipeSplice, run.via_pipe(len)?)
        };
        match r {
            Ok(end) => return Ok(Stats { bytes: run.moved, path, end, fallback_errno }),
            Err(errno) => fallback_errno = Some(errno),
        }
    }
    let end = run.read_write(len)?;
    Ok(Stats { bytes: run.moved, path: Path::ReadWrite, end, fallback_errno })
}

fn run_fail(label: &str, e: &io::Error, syscall: &str, ep: &dyn Endpoint) -> VfioError {
    VfioError::from_io(e, syscall, format!("{label}: {syscall} on {}", ep.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    #[test]
    fn a_file_without_splice_falls_back_to_read_write() {
        // eventfd has read/write but no splice: the kernel answers EINVAL,
        // as it does for a VFIO data fd.
        // SAFETY: eventfd takes only integers.
        let efd = unsafe { libc::eventfd(5, libc::EFD_CLOEXEC) };
        assert!(efd >= 0);
        // SAFETY: a fresh eventfd (checked above) that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let (r, w) = sys::pipe().unwrap();
        let s = transfer(&PlainFd(efd.as_raw_fd()), &PlainFd(w.as_raw_fd()), 8, &Options::default(), "t").unwrap();
        assert_eq!((s.bytes, s.path, s.end, s.fallback_errno), (8, Path::ReadWrite, End::Limit, Some(libc::EINVAL)));
        let mut b = [0u8; 8];
        assert_eq!(sys::read(r.as_raw_fd(), &mut b).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(b), 5);
    }

    #[test]
    fn a_destination_without_splice_gets_what_sat_in_the_private_pipe() {
        let (a, b) = sys::socketpair().unwrap();
        sys::write(a.as_raw_fd(), &7u64.to_ne_bytes()).unwrap();
        let efd = sys::eventfd().unwrap();
        let s = transfer(&PlainFd(b.as_raw_fd()), &PlainFd(efd.as_raw_fd()), 8, &Options::default(), "t").unwrap();
        assert_eq!((s.bytes, s.path, s.fallback_errno), (8, Path::ReadWrite, Some(libc::EINVAL)));
        let mut v = [0u8; 8];
        sys::read(efd.as_raw_fd(), &mut v).unwrap();
        assert_eq!(u64::from_ne_bytes(v), 7);
    }

    struct NoMsg;
    impl Endpoint for NoMsg {
        fn raw_fd(&self) -> RawFd {
            0
        }
        fn read(&self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOMSG))
        }
        fn pollable(&self) -> bool {
            false
        }
    }

    #[test]
    fn enomsg_ends_a_read_write_transfer_without_error() {
        let (_r, w) = sys::pipe().unwrap();
        let opts = Options { allow_splice: false, ..Options::default() };
        let s = transfer(&NoMsg, &PlainFd(w.as_raw_fd()), 100, &opts, "t").unwrap();
        assert_eq!((s.bytes, s.end), (0, End::NoData));
    }
}
