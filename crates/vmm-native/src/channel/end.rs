//! One registered descriptor of a channel: a socket, or one end of a pipe,
//! with the reads and writes the channel makes on it.
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
use tokio::io::unix::AsyncFd;
use vmm_sys as sys;

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
        Ok(End { fd, kind })
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
        match sys::read(self.raw(), buf) {
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
            match guard.try_io(|fd| sys::read(fd.as_raw_fd(), buf)) {
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

    #[tokio::test]
    async fn a_pipe_without_reader_is_epipe_not_a_signal() {
        let (r, w) = sys::pipe().unwrap();
        let w = End::new(w, Kind::Pipe).unwrap();
        drop(r);
        let e = w.try_writev(&[b"x"], 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }
}
