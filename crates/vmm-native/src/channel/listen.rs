//! The incoming side: a listening TCP or UNIX socket whose accept waits on
//! the runtime's epoll and ends with ECANCELED once the listener is closed.

use super::cancel::Cancel;
use super::end::{End, Kind};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;
use vmm_sys as sys;

/// Node's default backlog.
pub const DEFAULT_BACKLOG: i32 = 511;

/// A bound, listening socket.
pub struct Listener {
    end: End,
    cancel: Cancel,
    /// A UNIX socket's path and the identity of the file bind made there,
    /// removed on close only while it is still that file; taken by the
    /// first unbind.
    path: Mutex<Option<(PathBuf, (u64, u64))>>,
}

fn identity(path: &PathBuf) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl Listener {
    /// Binds and listens on `addr` (a TCP port is reusable at once after a
    /// previous listener, as Node makes it). Must run inside a tokio runtime
    /// context. A UNIX path is a file system operation that can block (a
    /// slow or hung file system): call it off the JavaScript thread.
    pub fn bind(addr: &SockAddr, backlog: i32) -> io::Result<Listener> {
        let domain = match addr.family() as libc::c_int {
            libc::AF_INET => Domain::IPV4,
            libc::AF_INET6 => Domain::IPV6,
            libc::AF_UNIX => Domain::UNIX,
            _ => return Err(sys::errno(libc::EAFNOSUPPORT)),
        };
        let s = Socket::new(domain, Type::STREAM, None)?;
        if domain != Domain::UNIX {
            s.set_reuse_address(true)?;
        }
        s.bind(addr)?;
        let path = match addr.as_pathname() {
            Some(p) => {
                let p = p.to_path_buf();
                let id = identity(&p)?;
                Some((p, id))
            }
            None => None,
        };
        let unbind = || {
            if let Some((p, _)) = &path {
                let _ = std::fs::remove_file(p);
            }
        };
        // listen(2) before the registration: a stream socket that neither
        // listens nor is connected polls as hung up, which tokio keeps as a
        // final readiness, and every accept wait would then return at once
        // and spin (see connect::connect).
        let end = s.listen(backlog).and_then(|()| End::new(s.into(), Kind::Socket)).inspect_err(|_| unbind())?;
        // From here a failure drops `listener`, which removes the path.
        let listener = Listener { end, cancel: Cancel::new(), path: Mutex::new(path) };
        Ok(listener)
    }

    /// The port bound (TCP), for a listener asked for port 0.
    pub fn port(&self) -> Option<u16> {
        SockRef::from(self.end.owned()).local_addr().ok()?.as_socket().map(|a| a.port())
    }

    /// The next peer: a non-blocking, close-on-exec socket and its address.
    pub async fn accept(&self) -> io::Result<(OwnedFd, SockAddr)> {
        let sock = SockRef::from(self.end.owned());
        loop {
            if self.cancel.fired() {
                return Err(sys::errno(libc::ECANCELED));
            }
            match sock.accept() {
                Ok((s, peer)) => return Ok((s.into(), peer)),
                // The peer gave up between its SYN and our accept: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ECONNABORTED) => {
                    self.end.wait_readable(&self.cancel).await?.not_ready();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends pending and later accepts (ECANCELED) now, without touching the
    /// file system: the caller then runs `unbind` where blocking is
    /// allowed, so that a connect finds nobody there. The socket itself
    /// closes when the last holder lets go.
    pub fn cancel(&self) {
        self.cancel.fire();
    }

    /// Whether a UNIX path is still to be removed.
    pub fn bound_path(&self) -> bool {
        self.path.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Removes a UNIX socket's path (once; a stat and an unlink, which can
    /// block).
    pub fn unbind(&self) {
        let taken = self.path.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((p, id)) = taken {
            // Another listener may have taken the path since: leave its file.
            if identity(&p).ok() == Some(id) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.unbind();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::connect::connect_new;
    use std::net::SocketAddr;
    use std::sync::Arc;

    #[tokio::test]
    async fn tcp_accepts_and_close_cancels_a_pending_accept() {
        let l = Arc::new(Listener::bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into(), DEFAULT_BACKLOG).unwrap());
        let port = l.port().unwrap();
        assert_ne!(port, 0);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (addr, cancel): (SockAddr, Cancel) = (addr.into(), Cancel::new());
        let (client, accepted) = tokio::join!(connect_new(&addr, &cancel), l.accept());
        let (fd, peer) = accepted.unwrap();
        let client = client.unwrap();
        let mine = SockRef::from(client.owned()).local_addr().unwrap();
        assert_eq!(peer.as_socket(), mine.as_socket(), "the peer address is the client's");
        drop(fd);
        let pending = {
            let l = l.clone();
            tokio::spawn(async move { l.accept().await })
        };
        tokio::task::yield_now().await;
        l.cancel();
        assert_eq!(pending.await.unwrap().err().and_then(|e| e.raw_os_error()), Some(libc::ECANCELED));
        let e = Listener::bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into(), 1);
        assert!(e.is_ok(), "port 0 always binds");
    }

    #[tokio::test]
    async fn unix_path_is_removed_on_drop_unless_replaced() {
        let dir = std::env::temp_dir().join(format!("vmm-chan-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        let _ = std::fs::remove_file(&p);
        let l = Listener::bind(&SockAddr::unix(&p).unwrap(), DEFAULT_BACKLOG).unwrap();
        assert!(p.exists());
        let e = Listener::bind(&SockAddr::unix(&p).unwrap(), DEFAULT_BACKLOG).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
        l.cancel();
        assert!(p.exists(), "cancel leaves the file system alone");
        l.unbind();
        assert!(!p.exists(), "removed by unbind");
        drop(l);
        let l = Listener::bind(&SockAddr::unix(&p).unwrap(), DEFAULT_BACKLOG).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"someone else's").unwrap();
        drop(l);
        assert!(p.exists(), "a file that replaced the socket stays");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
