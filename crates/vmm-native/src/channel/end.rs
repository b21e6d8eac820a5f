//! One registered descriptor of a channel: a socket, or one end of a pipe,
//! with the reads and writes the channel makes on it. A socket is read with
//! recvmsg, so descriptors a peer passes (SCM_RIGHTS) are seen, kept for a
//! taker when the channel accepts them, and refused (closed, the channel
//! failed) otherwise; `send_fds` passes them the other way.
//!
//! The `try_*` calls never wait and may run on any thread (the JavaScript
//! thread tries them first). The async calls wait for readiness on the
//! runtime's epoll and then make the same call; a `Cancel` ends the wait
//! with ECANCELED. Doing the I/O outside tokio's own calls is sound: the
//! async side always tries the call before it waits, and forgets a
//! readiness only after the kernel answered EAGAIN, so a byte that arrives
//! is never missed whichever thread read the ones before it.

use super::cancel::Cancel;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use tokio::io::unix::AsyncFd;
use vmm_sys as sys;

/// Descriptors a socket's peer passed (SCM_RIGHTS). Every read of a socket
/// is a recvmsg with room for them, so none goes by unseen: those within
/// the budget wait here for `take`, any other ends the channel (a fault)
/// and is closed.
#[derive(Default)]
struct Passed {
    /// How many descriptors this channel may still receive in all.
    budget: usize,
    queue: Vec<OwnedFd>,
    /// Why the channel fails: descriptors came that nobody asked for.
    fault: Option<String>,
}

impl Drop for Passed {
    fn drop(&mut self) {
        // The channel's last holder may be JavaScript's close().
        close_elsewhere(std::mem::take(&mut self.queue));
    }
}

/// Closes descriptors off the calling thread (which may be JavaScript's):
/// the last close of a memfd frees its pages, which takes a while for a
/// guest's RAM.
fn close_elsewhere(fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    if std::thread::Builder::new().name("vmm-fd-close".into()).spawn(move || drop(fds)).is_err() {
        // No thread to be had: closing here is still better than leaking.
    }
}

/// What an End is, which decides how it is written and shut down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A stream socket: sendmsg with MSG_NOSIGNAL, shutdown(2) wakes it.
    Socket,
    /// A pipe or FIFO end: writev with SIGPIPE held off.
    Pipe,
}

/// Most iovecs one writev takes (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// A non-blocking descriptor registered with the runtime of the context it
/// was made in.
pub struct End {
    fd: AsyncFd<OwnedFd>,
    kind: Kind,
    passed: Mutex<Passed>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn cancelled() -> io::Error {
    sys::errno(libc::ECANCELED)
}

/// The iovecs of `bufs` from byte `skip` on, at most IOV_MAX of them, empty
/// buffers left out. They borrow `bufs`: use them before it goes.
fn iovecs(bufs: &[&[u8]], mut skip: usize) -> Vec<libc::iovec> {
    let mut iov = Vec::with_capacity(bufs.len().min(IOV_MAX));
    for b in bufs {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let part = &b[skip..];
        skip = 0;
        iov.push(libc::iovec { iov_base: part.as_ptr() as *mut libc::c_void, iov_len: part.len() });
        if iov.len() == IOV_MAX {
            break;
        }
    }
    iov
}

impl End {
    /// Makes `fd` non-blocking and registers it; must run inside a tokio
    /// runtime context.
    pub fn new(fd: OwnedFd, kind: Kind) -> io::Result<End> {
        sys::set_nonblocking(&fd)?;
        // SAFETY: the OwnedFd is the descriptor's one owner and moves into
        // the AsyncFd, so the number stays open and names the same open
        // file until the AsyncFd is dropped (which deregisters it first).
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(End { fd, kind, passed: Mutex::new(Passed::default()) })
    }

    fn passed(&self) -> MutexGuard<'_, Passed> {
        // A few integers and owned fds: valid whatever a panic interrupted.
        self.passed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets the peer pass up to `n` descriptors more, in all.
    pub fn accept_fds(&self, n: usize) {
        self.passed().budget = n;
    }

    /// Descriptors received and not taken yet.
    pub fn queued_fds(&self) -> usize {
        self.passed().queue.len()
    }

    /// The first `n` descriptors received, in order, now the caller's;
    /// None (and nothing taken) when fewer are there.
    pub fn take_fds(&self, n: usize) -> Option<Vec<OwnedFd>> {
        let mut p = self.passed();
        if p.queue.len() < n {
            return None;
        }
        Some(p.queue.drain(..n).collect())
    }

    /// Closes every descriptor received and not taken, and accepts no more.
    pub fn drop_fds(&self) {
        let mut p = self.passed();
        p.budget = 0;
        close_elsewhere(std::mem::take(&mut p.queue));
    }

    /// Why reads fail, once descriptors came unasked or too many.
    pub fn fault(&self) -> Option<String> {
        self.passed().fault.clone()
    }

    fn faulted() -> io::Error {
        sys::errno(libc::EPROTO)
    }

    /// One read: recvmsg for a socket (descriptors kept or refused, see
    /// [`Passed`]), read(2) for a pipe.
    fn read_once(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.kind == Kind::Pipe {
            return sys::read(self.raw(), buf);
        }
        if self.passed().fault.is_some() {
            return Err(End::faulted());
        }
        let r = sys::recv_fds(self.raw(), buf)?;
        if r.fds.is_empty() && !r.truncated {
            return Ok(r.bytes);
        }
        let mut p = self.passed();
        let n = r.fds.len();
        if !r.truncated && n <= p.budget {
            p.budget -= n;
            p.queue.extend(r.fds);
            return Ok(r.bytes);
        }
        let why = if r.truncated {
            format!("the peer passed more than {} file descriptors in one message; closed them", sys::MAX_PASSED_FDS)
        } else if p.budget == 0 && p.queue.is_empty() {
            format!("the peer passed {n} file descriptor(s) unasked; closed them")
        } else {
            format!("the peer passed {n} file descriptor(s), {} more were expected; closed them", p.budget)
        };
        p.fault = Some(why);
        p.budget = 0;
        let mut all = r.fds;
        all.append(&mut p.queue);
        close_elsewhere(all);
        // The bytes that came with them are the stream's: delivered, and the
        // fault ends the next read. Failing this one instead lost a stream
        // header that arrived in the same read, and the listener then took the
        // peer for one that never spoke (a race on how much one read got).
        if r.bytes > 0 {
            return Ok(r.bytes);
        }
        Err(End::faulted())
    }

    /// The descriptor's number, valid while this End lives.
    pub fn raw(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// The descriptor itself (for socket options and addresses).
    pub fn owned(&self) -> &OwnedFd {
        self.fd.get_ref()
    }

    /// Socket or pipe.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// One read(2): the bytes read (0 at end of stream), None when nothing
    /// is there yet.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.read_once(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if would_block(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn writev_once(&self, bufs: &[&[u8]], skip: usize) -> io::Result<usize> {
        let mut iov = iovecs(bufs, skip);
        if iov.is_empty() {
            return Ok(0);
        }
        match self.kind {
            // SAFETY: every iovec describes part of a slice in `bufs`, which
            // stays borrowed until this call returns.
            Kind::Socket => unsafe { sys::send_iov(self.raw(), &mut iov) },
            // SAFETY: as above.
            Kind::Pipe => unsafe { sys::writev_nosigpipe(self.raw(), &iov) },
        }
    }

    /// One writev of `bufs` from byte `skip` on: the bytes the kernel took,
    /// 0 when it has no room now (or nothing was left to write).
    pub fn try_writev(&self, bufs: &[&[u8]], skip: usize) -> io::Result<usize> {
        match self.writev_once(bufs, skip) {
            Err(e) if would_block(&e) => Ok(0),
            r => r,
        }
    }

    /// Reads once, waiting first while nothing is there.
    pub async fn read(&self, buf: &mut [u8], cancel: &Cancel) -> io::Result<usize> {
        loop {
            let mut guard = tokio::select! {
                biased;
                _ = cancel.wait() => return Err(cancelled()),
                g = self.fd.readable() => g?,
            };
            match guard.try_io(|_| self.read_once(buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `bufs` from byte `skip` on, waiting while the kernel
    /// has no room.
    pub async fn write_all(&self, bufs: &[&[u8]], mut skip: usize, cancel: &Cancel) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        while skip < total {
            let mut guard = tokio::select! {
                biased;
                _ = cancel.wait() => return Err(cancelled()),
                g = self.fd.writable() => g?,
            };
            match guard.try_io(|_| self.writev_once(bufs, skip)) {
                // A writev of something that takes nothing never returns.
                Ok(Ok(0)) => return Err(sys::errno(libc::EIO)),
                Ok(Ok(n)) => skip += n,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Writes `data` with `fds` attached to its first byte (SCM_RIGHTS),
    /// waiting while the kernel has no room. The numbers stay the caller's
    /// and must stay open until this returns.
    pub async fn send_fds(&self, data: &[u8], fds: &[RawFd], cancel: &Cancel) -> io::Result<()> {
        if self.kind != Kind::Socket {
            return Err(sys::errno(libc::ENOTSOCK));
        }
        let sent = loop {
            let mut guard = tokio::select! {
                biased;
                _ = cancel.wait() => return Err(cancelled()),
                g = self.fd.writable() => g?,
            };
            let mut iov = iovecs(&[data], 0);
            // SAFETY: the iovec describes `data`, borrowed for this call;
            // the caller keeps `fds` open until it returns.
            match guard.try_io(|_| unsafe { sys::send_iov_fds(self.raw(), &mut iov, fds) }) {
                Ok(r) => break r?,
                Err(_would_block) => continue,
            }
        };
        // The descriptors went with the first byte; the rest is plain data.
        self.write_all(&[data], sent, cancel).await
    }

    /// Waits until the descriptor is writable (a connect in progress ended).
    pub async fn wait_writable(&self, cancel: &Cancel) -> io::Result<WritableGuard<'_>> {
        tokio::select! {
            biased;
            _ = cancel.wait() => Err(cancelled()),
            g = self.fd.writable() => Ok(WritableGuard(g?)),
        }
    }

    /// Waits until the descriptor is readable (a listener has a peer).
    pub async fn wait_readable(&self, cancel: &Cancel) -> io::Result<ReadableGuard<'_>> {
        tokio::select! {
            biased;
            _ = cancel.wait() => Err(cancelled()),
            g = self.fd.readable() => Ok(ReadableGuard(g?)),
        }
    }
}

/// A writability the caller found false (`not_ready` forgets it, so the
/// next wait waits for the kernel's next word).
pub struct WritableGuard<'a>(tokio::io::unix::AsyncFdReadyGuard<'a, OwnedFd>);

impl WritableGuard<'_> {
    /// The readiness was stale: wait for the next one.
    pub fn not_ready(mut self) {
        self.0.clear_ready();
    }
}

/// As [`WritableGuard`], for readability.
pub struct ReadableGuard<'a>(tokio::io::unix::AsyncFdReadyGuard<'a, OwnedFd>);

impl ReadableGuard<'_> {
    /// The readiness was stale: wait for the next one.
    pub fn not_ready(mut self) {
        self.0.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pair() -> (End, End) {
        let (a, b) = sys::socketpair().unwrap();
        (End::new(a, Kind::Socket).unwrap(), End::new(b, Kind::Socket).unwrap())
    }

    #[test]
    fn iovecs_skip_whole_and_partial_buffers() {
        let (a, b, c) = ([1u8; 3], [2u8; 0], [3u8; 5]);
        let bufs: [&[u8]; 3] = [&a, &b, &c];
        let iov = iovecs(&bufs, 4);
        assert_eq!(iov.len(), 1);
        assert_eq!(iov[0].iov_len, 4);
        assert!(iovecs(&bufs, 8).is_empty());
        assert_eq!(iovecs(&bufs, 0).len(), 2, "the empty buffer is left out");
    }

    #[tokio::test]
    async fn try_calls_never_wait_and_async_ones_do() {
        let (a, b) = pair();
        let mut buf = [0u8; 16];
        assert_eq!(a.try_read(&mut buf).unwrap(), None, "nothing there yet");
        assert_eq!(b.try_writev(&[b"hello ", b"world"], 2).unwrap(), 9);
        assert_eq!(a.try_read(&mut buf).unwrap(), Some(9));
        assert_eq!(&buf[..9], b"llo world");
        let cancel = Cancel::new();
        let b = Arc::new(b);
        let writer = {
            let (b, cancel) = (b.clone(), cancel.clone());
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                b.write_all(&[b"late"], 0, &cancel).await
            })
        };
        assert_eq!(a.read(&mut buf, &cancel).await.unwrap(), 4);
        writer.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_all_waits_for_room_and_everything_arrives_in_order() {
        let (a, b) = pair();
        let data: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        let cancel = Cancel::new();
        let writer = {
            let cancel = cancel.clone();
            let data = data.clone();
            tokio::spawn(async move {
                let halves: [&[u8]; 2] = [&data[..3 << 20], &data[3 << 20..]];
                b.write_all(&halves, 1000, &cancel).await
            })
        };
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while got.len() < data.len() - 1000 {
            let n = a.read(&mut buf, &cancel).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap().unwrap();
        assert!(got == data[1000..], "bytes differ");
    }

    #[tokio::test]
    async fn cancel_ends_pending_waits_and_shutdown_wakes_the_peer() {
        let (a, b) = pair();
        let cancel = Cancel::new();
        let a = Arc::new(a);
        let reader = {
            let (a, cancel) = (a.clone(), cancel.clone());
            tokio::spawn(async move { a.read(&mut [0u8; 8], &cancel).await })
        };
        tokio::task::yield_now().await;
        cancel.fire();
        assert_eq!(reader.await.unwrap().unwrap_err().raw_os_error(), Some(libc::ECANCELED));
        sys::shutdown(b.raw()).unwrap();
        assert_eq!(a.read(&mut [0u8; 8], &Cancel::new()).await.unwrap(), 0, "end of stream after the peer's shutdown");
    }

    fn memfd() -> OwnedFd {
        vmm_sys::mem::memfd(c"t", 4096).unwrap()
    }

    /// Whether any descriptor of this process is the memfd called `name`
    /// (other tests open and close descriptors in parallel: a count would race).
    fn memfd_open(name: &str) -> bool {
        std::fs::read_dir("/proc/self/fd").unwrap().flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains(name)))
    }

    #[tokio::test]
    async fn passed_fds_wait_for_their_taker_in_order() {
        let (a, b) = pair();
        let (m1, m2) = (memfd(), memfd());
        let (i1, i2) = (sys::inode(m1.as_raw_fd()).unwrap(), sys::inode(m2.as_raw_fd()).unwrap());
        a.accept_fds(2);
        b.send_fds(b"rec", &[m1.as_raw_fd(), m2.as_raw_fd()], &Cancel::new()).await.unwrap();
        b.try_writev(&[b"more"], 0).unwrap();
        let mut buf = [0u8; 16];
        let mut got = 0;
        while got < 7 {
            got += a.read(&mut buf[got..], &Cancel::new()).await.unwrap();
        }
        assert_eq!(&buf[..7], b"recmore");
        assert!(a.take_fds(3).is_none(), "only two came");
        let fds = a.take_fds(2).unwrap();
        assert_eq!(sys::inode(fds[0].as_raw_fd()).unwrap(), i1);
        assert_eq!(sys::inode(fds[1].as_raw_fd()).unwrap(), i2);
        assert_eq!(a.queued_fds(), 0);
    }

    #[tokio::test]
    async fn unasked_and_too_many_fds_fail_the_reads_and_are_closed() {
        let (a, b) = pair();
        let m = vmm_sys::mem::memfd(c"end-unasked", 4096).unwrap();
        b.send_fds(b"x", &[m.as_raw_fd()], &Cancel::new()).await.unwrap();
        let mut got = [0u8; 4];
        assert_eq!(a.read(&mut got, &Cancel::new()).await.unwrap(), 1, "the byte that came with them is delivered");
        assert_eq!(got[0], b'x');
        let e = a.read(&mut [0u8; 4], &Cancel::new()).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPROTO));
        assert!(a.fault().unwrap().contains("1 file descriptor(s) unasked"), "{:?}", a.fault());
        assert_eq!(a.try_read(&mut [0u8; 4]).unwrap_err().raw_os_error(), Some(libc::EPROTO), "the fault stays");

        let (c, d) = pair();
        c.accept_fds(1);
        d.send_fds(b"y", &[m.as_raw_fd(), m.as_raw_fd()], &Cancel::new()).await.unwrap();
        assert_eq!(c.read(&mut [0u8; 4], &Cancel::new()).await.unwrap(), 1);
        c.read(&mut [0u8; 4], &Cancel::new()).await.unwrap_err();
        assert!(c.fault().unwrap().contains("2 file descriptor(s), 1 more were expected"), "{:?}", c.fault());

        let (e1, f1) = pair();
        e1.accept_fds(sys::MAX_PASSED_FDS);
        let many: Vec<RawFd> = vec![m.as_raw_fd(); sys::MAX_PASSED_FDS + 1];
        let mut iov = iovecs(&[b"z"], 0);
        // SAFETY: the iovec is a static string's, the numbers open. Past the
        // bound send_iov_fds refuses, so the raw message goes by hand.
        assert_eq!(unsafe { sys::send_iov_fds(f1.raw(), &mut iov, &many) }.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        send_raw(f1.raw(), &many);
        assert_eq!(e1.read(&mut [0u8; 4], &Cancel::new()).await.unwrap(), 1);
        e1.read(&mut [0u8; 4], &Cancel::new()).await.unwrap_err();
        assert!(e1.fault().unwrap().contains("more than 16"), "{:?}", e1.fault());
        drop((a, b, c, d, e1, f1, m));
        // The closes run on their own threads.
        for _ in 0..100 {
            if !memfd_open("end-unasked") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!memfd_open("end-unasked"), "every passed descriptor was closed");
    }

    /// sendmsg of one byte with `fds`, however many.
    fn send_raw(fd: RawFd, fds: &[RawFd]) {
        let mut control = vec![0u64; 64];
        let mut byte = [b'z'];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        // SAFETY: msghdr, iovec and control buffer are locals alive for the
        // call; the control buffer (512 bytes) holds the header and fds.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
            assert_eq!(libc::sendmsg(fd, &msg, 0), 1);
        }
    }

    #[tokio::test]
    async fn a_pipe_without_reader_is_epipe_not_a_signal() {
        let (r, w) = sys::pipe().unwrap();
        let w = End::new(w, Kind::Pipe).unwrap();
        drop(r);
        let e = w.try_writev(&[b"x"], 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }
}
