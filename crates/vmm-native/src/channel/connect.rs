//! The outgoing side: a non-blocking stream socket connected to a TCP or
//! UNIX address, registered with the runtime only once connected or
//! connecting. The wait for the peer is bounded by the caller (a timeout
//! around `connect`, or the channel's cancel when it is closed).

use super::cancel::Cancel;
use super::end::{End, Kind};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;
use vmm_sys as sys;

/// A UNIX socket whose listener's backlog is full answers EAGAIN instead of
/// waiting (it has no connect in progress to poll): the connect is tried
/// again after this long.
const UNIX_BACKLOG_RETRY: Duration = Duration::from_millis(10);

/// A new, unconnected socket for `addr`'s family (close-on-exec; made
/// non-blocking when registered as an End).
pub fn socket_for(addr: &SockAddr) -> io::Result<OwnedFd> {
    let domain = match addr.family() as libc::c_int {
        libc::AF_INET => Domain::IPV4,
        libc::AF_INET6 => Domain::IPV6,
        libc::AF_UNIX => Domain::UNIX,
        _ => return Err(sys::errno(libc::EAFNOSUPPORT)),
    };
    // socket2 sets SOCK_CLOEXEC itself.
    Ok(Socket::new(domain, Type::STREAM, None)?.into())
}

/// Connects `fd` (a socket from [`socket_for`]) to `addr` and registers
/// it once it has left the unconnected state: an unconnected stream socket
/// polls as hung up (EPOLLHUP), and tokio keeps a hang-up as a final
/// readiness it never clears, so a socket registered before its connect
/// would look readable and writable for good and every wait on it would
/// spin.
pub async fn connect(fd: OwnedFd, addr: &SockAddr, cancel: &Cancel) -> io::Result<End> {
    sys::set_nonblocking(&fd)?;
    let in_progress = loop {
        if cancel.fired() {
            return Err(sys::errno(libc::ECANCELED));
        }
        match SockRef::from(&fd).connect(addr) {
            Ok(()) => break false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => break true,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                tokio::select! {
                    biased;
                    _ = cancel.wait() => return Err(sys::errno(libc::ECANCELED)),
                    _ = tokio::time::sleep(UNIX_BACKLOG_RETRY) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    let end = End::new(fd, Kind::Socket)?;
    if !in_progress {
        return Ok(end);
    }
    // In progress: writable once it ended, one way or the other.
    let sock = SockRef::from(end.owned());
    loop {
        let guard = end.wait_writable(cancel).await?;
        if let Some(e) = sock.take_error()? {
            return Err(e);
        }
        match sock.peer_addr() {
            Ok(_) => return Ok(end),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => guard.not_ready(),
            Err(e) => return Err(e),
        }
    }
}

/// A connected End for `addr`: [`socket_for`] and [`connect`] in one.
#[cfg(test)]
pub async fn connect_new(addr: &SockAddr, cancel: &Cancel) -> io::Result<End> {
    connect(socket_for(addr)?, addr, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[tokio::test]
    async fn refused_and_missing_are_the_kernel_s_errors() {
        // A port that was just free: nothing listens there.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = probe.local_addr().unwrap();
        drop(probe);
        let e = connect_new(&addr.into(), &Cancel::new()).await.err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
        let missing = SockAddr::unix("/nonexistent-dir-of-vmm-tests/s").unwrap();
        let e = connect_new(&missing, &Cancel::new()).await.err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[tokio::test]
    async fn a_cancelled_connect_is_ecanceled() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cancel = Cancel::new();
        cancel.fire();
        let e = connect_new(&l.local_addr().unwrap().into(), &cancel).await.err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ECANCELED));
    }

    #[tokio::test]
    async fn tcp_connects() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let end = connect_new(&l.local_addr().unwrap().into(), &Cancel::new()).await.unwrap();
        let (mut peer, _) = l.accept().unwrap();
        assert_eq!(end.try_writev(&[b"hi"], 0).unwrap(), 2);
        let mut buf = [0u8; 2];
        std::io::Read::read_exact(&mut peer, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }
}
