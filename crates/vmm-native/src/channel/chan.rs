//! A channel's descriptor and its lifetime: one socket both ways, or an
//! inherited pipe end one way, plus (exec:) the child's end of the socket
//! pair until the child is spawned.
//!
//! Calls in flight hold their End by `Arc`, so `close()` never closes a
//! descriptor under a running call: it fires the cancel (pending waits end
//! with ECANCELED), lets go of the ends, and the last holder closes each
//! descriptor. A number JavaScript still has is then closed or being
//! closed; the native transfers that dup'd it notice either way (their
//! identity check, or the shutdown(2) that `shutdown()` made first).

use super::cancel::Cancel;
use super::end::{End, Kind};
use super::tls::Session;
use socket2::SockRef;
use std::net::Shutdown;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use vmm_sys as sys;

/// The End of one channel: `rx` and `tx` are the same End until
/// `end_writes` lets go of the write side of a pipe, or `close` of both.
pub struct Chan {
    rx: Mutex<Option<Arc<End>>>,
    tx: Mutex<Option<Arc<End>>>,
    child: Mutex<Vec<OwnedFd>>,
    /// A socket not connected yet: registered (and so in rx/tx) only once
    /// connected (see connect::connect).
    unconnected: Mutex<Option<OwnedFd>>,
    cancel: Cancel,
    /// Set once, before the channel carries a byte of the migration: from
    /// then on every byte goes through it and the descriptor is hidden from
    /// native transfers (they would write plaintext past it).
    tls: OnceLock<Arc<Session>>,
}

fn closed() -> io::Error {
    sys::errno(libc::EBADF)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is a handful of Options; a panic elsewhere leaves them valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Chan {
    /// One End read and written: a socket, or an inherited pipe or FIFO
    /// end, which goes the one way it was opened.
    pub fn single(end: End) -> Chan {
        let end = Arc::new(end);
        Chan { rx: Mutex::new(Some(end.clone())), tx: Mutex::new(Some(end)), child: Mutex::new(Vec::new()), unconnected: Mutex::new(None), cancel: Cancel::new(), tls: OnceLock::new() }
    }

    /// A socket to connect: no End until `connected` gives one.
    pub fn unconnected(fd: OwnedFd) -> Chan {
        Chan { rx: Mutex::new(None), tx: Mutex::new(None), child: Mutex::new(Vec::new()), unconnected: Mutex::new(Some(fd)), cancel: Cancel::new(), tls: OnceLock::new() }
    }

    /// The socket to connect, once: EBADF when closed or already taken.
    pub fn take_unconnected(&self) -> io::Result<OwnedFd> {
        lock(&self.unconnected).take().ok_or_else(closed)
    }

    /// Installs the connected End; ECANCELED (and the End dropped) when the
    /// channel was closed or shut down meanwhile.
    pub fn connected(&self, end: End) -> io::Result<()> {
        let end = Arc::new(end);
        let (mut rx, mut tx) = (lock(&self.rx), lock(&self.tx));
        if self.cancel.fired() {
            return Err(sys::errno(libc::ECANCELED));
        }
        *rx = Some(end.clone());
        *tx = Some(end);
        Ok(())
    }

    /// A socket whose peer is `child`'s until the child is spawned.
    pub fn for_child(end: End, child: OwnedFd) -> Chan {
        let c = Chan::single(end);
        lock(&c.child).push(child);
        c
    }

    /// The End reads go to; EBADF once closed.
    pub fn rx(&self) -> io::Result<Arc<End>> {
        lock(&self.rx).clone().ok_or_else(closed)
    }

    /// The End writes go to; EBADF once closed or ended.
    pub fn tx(&self) -> io::Result<Arc<End>> {
        lock(&self.tx).clone().ok_or_else(closed)
    }

    /// The switch that ends this channel's waits.
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// Puts `s` between the channel and its socket; EBUSY if it has one.
    pub fn set_tls(&self, s: Arc<Session>) -> io::Result<()> {
        self.tls.set(s).map_err(|_| sys::errno(libc::EBUSY))
    }

    /// The TLS session, once set.
    pub fn tls(&self) -> Option<Arc<Session>> {
        self.tls.get().cloned()
    }

    /// The read descriptor's number, while open and not under TLS.
    pub fn read_fd(&self) -> Option<RawFd> {
        if self.tls.get().is_some() {
            return None;
        }
        lock(&self.rx).as_ref().map(|e| e.raw())
    }

    /// The write descriptor's number, while open and not under TLS.
    pub fn write_fd(&self) -> Option<RawFd> {
        if self.tls.get().is_some() {
            return None;
        }
        lock(&self.tx).as_ref().map(|e| e.raw())
    }

    /// The child's descriptor (its stdin and stdout), until released.
    pub fn child_fds(&self) -> Vec<RawFd> {
        lock(&self.child).iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Closes the child's descriptor here, once the child has its own.
    pub fn release_child_fds(&self) {
        lock(&self.child).clear();
    }

    /// The peer sees end of stream: shutdown(SHUT_WR) of a socket (reads
    /// go on), or a pipe end let go (closed once no call holds it).
    pub fn end_writes(&self) -> io::Result<()> {
        let mut tx = lock(&self.tx);
        let Some(end) = tx.as_ref() else { return Ok(()) };
        match end.kind() {
            Kind::Socket => match SockRef::from(end.owned()).shutdown(Shutdown::Write) {
                // A peer already gone has nothing to be told.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
                r => r,
            },
            Kind::Pipe => {
                // A pipe end goes one way: reads through it are over too.
                *tx = None;
                *lock(&self.rx) = None;
                Ok(())
            }
        }
    }

    /// Stops both directions now: pending waits end (ECANCELED), and a
    /// socket is shut down, which also wakes native calls on dups of it.
    pub fn shutdown(&self) {
        self.cancel.fire();
        for end in [lock(&self.rx).clone(), lock(&self.tx).clone()].into_iter().flatten() {
            if end.kind() == Kind::Socket {
                // ENOTCONN (never connected, or already shut down) is fine.
                let _ = sys::shutdown(end.raw());
            }
        }
    }

    /// Ends every wait and lets go of every descriptor. Idempotent.
    pub fn close(&self) {
        if let (Some(s), Some(end)) = (self.tls.get(), lock(&self.tx).as_ref()) {
            if !self.cancel.fired() {
                s.close_notify_now(end.raw());
            }
        }
        self.cancel.fire();
        *lock(&self.rx) = None;
        *lock(&self.tx) = None;
        lock(&self.child).clear();
        *lock(&self.unconnected) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_ends_a_pending_read_and_the_numbers_go() {
        let (a, b) = sys::socketpair().unwrap();
        let ch = Arc::new(Chan::single(End::new(a, Kind::Socket).unwrap()));
        assert_eq!(ch.read_fd(), ch.write_fd());
        let rx = ch.rx().unwrap();
        let cancel = ch.cancel().clone();
        let pending = tokio::spawn(async move { rx.read(&mut [0u8; 4], &cancel).await });
        tokio::task::yield_now().await;
        ch.close();
        assert_eq!(pending.await.unwrap().unwrap_err().raw_os_error(), Some(libc::ECANCELED));
        assert_eq!(ch.read_fd(), None);
        assert_eq!(ch.rx().err().and_then(|e| e.raw_os_error()), Some(libc::EBADF));
        // The last holder is gone: the peer sees the socket closed.
        assert_eq!(sys::read(b.as_raw_fd(), &mut [0u8; 4]).unwrap(), 0);
    }

    #[tokio::test]
    async fn end_writes_of_a_pipe_is_end_of_stream_for_the_reader() {
        let (r, w) = sys::pipe().unwrap();
        let ch = Chan::single(End::new(w, Kind::Pipe).unwrap());
        assert_eq!(ch.tx().unwrap().try_writev(&[b"abc"], 0).unwrap(), 3);
        ch.end_writes().unwrap();
        assert_eq!(ch.write_fd(), None);
        assert_eq!(ch.read_fd(), None);
        let mut buf = [0u8; 8];
        assert_eq!(sys::read(r.as_raw_fd(), &mut buf).unwrap(), 3);
        assert_eq!(sys::read(r.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    #[tokio::test]
    async fn end_writes_of_a_socket_keeps_reads() {
        let (a, b) = sys::socketpair().unwrap();
        let ch = Chan::single(End::new(a, Kind::Socket).unwrap());
        ch.end_writes().unwrap();
        assert_eq!(sys::read(b.as_raw_fd(), &mut [0u8; 4]).unwrap(), 0, "the peer sees the end");
        assert_eq!(sys::write(b.as_raw_fd(), b"back").unwrap(), 4);
        assert_eq!(ch.rx().unwrap().read(&mut [0u8; 8], ch.cancel()).await.unwrap(), 4);
        ch.shutdown();
        assert!(ch.cancel().fired());
    }
}
