//! Socket options of a migration channel: TCP keepalive and
//! TCP_USER_TIMEOUT (how long the kernel keeps a silent or unacknowledged
//! connection before it fails it, ETIMEDOUT), TCP_NODELAY and the kernel's
//! buffer sizes, and how fast a lost segment is sent again (TCP_RTO_MIN_US,
//! TCP_DELACK_MAX_US). TCP options on a UNIX socket are left alone: there is
//! no network to time out.

use socket2::{Domain, SockRef, TcpKeepalive};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// Keepalive probing of an idle connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (TCP_KEEPIDLE).
    pub idle: Duration,
    /// Time between probes (TCP_KEEPINTVL).
    pub interval: Duration,
    /// Unanswered probes before the connection fails (TCP_KEEPCNT).
    pub count: u32,
}

/// What to set; None leaves an option as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// TCP_NODELAY.
    pub no_delay: Option<bool>,
    /// SO_KEEPALIVE with its timings, or off (Some(None)).
    pub keepalive: Option<Option<Keepalive>>,
    /// TCP_USER_TIMEOUT; zero restores the kernel's default.
    pub user_timeout: Option<Duration>,
    /// SO_SNDBUF in bytes (the kernel doubles it for its bookkeeping).
    pub send_buffer: Option<usize>,
    /// SO_RCVBUF in bytes.
    pub recv_buffer: Option<usize>,
    /// The floor of the retransmission timeout and the ceiling of the
    /// delayed ACK (see set_loss_recovery); best effort.
    pub loss_recovery: Option<Duration>,
}

/// include/uapi/linux/tcp.h, Linux 6.15 and later; not in the libc crate yet.
const TCP_RTO_MIN_US: libc::c_int = 45;
const TCP_DELACK_MAX_US: libc::c_int = 46;

/// The largest value either option takes: the kernel's own defaults (TCP_RTO_MIN, TCP_DELACK_MAX).
const LOSS_RECOVERY_MAX: Duration = Duration::from_millis(200);

fn set_us(fd: &OwnedFd, opt: libc::c_int, us: u32) -> io::Result<()> {
    let v = us as libc::c_int;
    // SAFETY: fd is an open socket for the call; the option value is a
    // c_int on the stack whose size is passed with it.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, opt, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn get_us(fd: &OwnedFd, opt: libc::c_int) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is an open socket; v and len are valid for the kernel to
    // write, len holding v's size.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, opt, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if r == 0 { Ok(v.max(0) as u32) } else { Err(io::Error::last_os_error()) }
}

/// What a socket's loss recovery is set to, microseconds as the kernel keeps them (in jiffies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossRecovery {
    /// TCP_RTO_MIN_US.
    pub rto_min_us: u32,
    /// TCP_DELACK_MAX_US.
    pub delack_max_us: u32,
}

/// Lowers the floor of the retransmission timeout and the ceiling of the
/// delayed ACK to about `to` on a TCP socket.
///
/// Why: both default to 200 ms, tuned for the Internet. On a link whose
/// round trip is well under a millisecond, a lost segment with nothing
/// after it (the last of the stream, a READY or GO of the handover) waits
/// that long to be sent again, which alone breaks the downtime limits a
/// migration works with (300 ms by default). The RTO stays at least the
/// smoothed RTT plus four deviations, so a long link is not made to
/// retransmit early. The kernel counts both in jiffies and refuses less
/// than two (EINVAL): the value doubles until it is taken, at most 200 ms.
/// Ok(None) when the kernel has no such options (before 6.15) or `fd` is
/// not TCP: the defaults stay.
pub fn set_loss_recovery(fd: &OwnedFd, to: Duration) -> io::Result<Option<LossRecovery>> {
    if !is_tcp(fd) {
        return Ok(None);
    }
    for opt in [TCP_RTO_MIN_US, TCP_DELACK_MAX_US] {
        let mut us = to.min(LOSS_RECOVERY_MAX).as_micros().max(1) as u32;
        loop {
            match set_us(fd, opt, us) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && us < LOSS_RECOVERY_MAX.as_micros() as u32 => {
                    us = (us * 2).min(LOSS_RECOVERY_MAX.as_micros() as u32);
                }
                Err(e) => return Err(e),
            }
        }
    }
    loss_recovery(fd)
}

/// The socket's TCP_RTO_MIN_US and TCP_DELACK_MAX_US, or None where the kernel has neither.
pub fn loss_recovery(fd: &OwnedFd) -> io::Result<Option<LossRecovery>> {
    if !is_tcp(fd) {
        return Ok(None);
    }
    match (get_us(fd, TCP_RTO_MIN_US), get_us(fd, TCP_DELACK_MAX_US)) {
        (Ok(rto_min_us), Ok(delack_max_us)) => Ok(Some(LossRecovery { rto_min_us, delack_max_us })),
        (Err(e), _) | (_, Err(e)) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(None),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// What the kernel has measured of a TCP connection (TCP_INFO): the parts a
/// switchover budget needs to know what one more message costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStats {
    /// Smoothed round trip, microseconds.
    pub rtt_us: u32,
    /// Its mean deviation, microseconds.
    pub rtt_var_us: u32,
    /// The retransmission timeout now, microseconds.
    pub rto_us: u32,
    /// Segments sent again over the connection's life: above 0, the link loses packets.
    pub total_retrans: u32,
}

/// TCP_INFO of `fd`, or Ok(None) when it is not a TCP socket.
pub fn link_stats(fd: &OwnedFd) -> io::Result<Option<LinkStats>> {
    if !is_tcp(fd) {
        return Ok(None);
    }
    // SAFETY: tcp_info is plain integers, for which all zeroes is a value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: fd is an open socket; info and len are valid for the kernel to
    // write, len holding info's size (the kernel writes at most that much).
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(LinkStats { rtt_us: info.tcpi_rtt, rtt_var_us: info.tcpi_rttvar, rto_us: info.tcpi_rto, total_retrans: info.tcpi_total_retrans }))
}

/// Whether `fd` is a TCP socket (IPv4 or IPv6).
pub fn is_tcp(fd: &OwnedFd) -> bool {
    matches!(SockRef::from(fd).domain(), Ok(d) if d == Domain::IPV4 || d == Domain::IPV6)
}

/// Applies `o` to the socket `fd`. True when the TCP options applied (a TCP
/// socket), false when only the buffer sizes could (a UNIX socket).
pub fn apply(fd: &OwnedFd, o: &Options) -> io::Result<bool> {
    let s = SockRef::from(fd);
    if let Some(n) = o.send_buffer {
        s.set_send_buffer_size(n)?;
    }
    if let Some(n) = o.recv_buffer {
        s.set_recv_buffer_size(n)?;
    }
    if !is_tcp(fd) {
        return Ok(false);
    }
    if let Some(on) = o.no_delay {
        s.set_tcp_nodelay(on)?;
    }
    match o.keepalive {
        None => {}
        Some(None) => s.set_keepalive(false)?,
        Some(Some(k)) => {
            let ka = TcpKeepalive::new().with_time(k.idle).with_interval(k.interval).with_retries(k.count);
            s.set_tcp_keepalive(&ka)?;
            s.set_keepalive(true)?;
        }
    }
    if let Some(t) = o.user_timeout {
        s.set_tcp_user_timeout(if t.is_zero() { None } else { Some(t) })?;
    }
    if let Some(t) = o.loss_recovery {
        set_loss_recovery(fd, t)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn keepalive_and_user_timeout_read_back() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd: OwnedFd = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap().into();
        let k = Keepalive { idle: Duration::from_secs(5), interval: Duration::from_secs(2), count: 3 };
        let o = Options {
            no_delay: Some(true),
            keepalive: Some(Some(k)),
            user_timeout: Some(Duration::from_millis(7000)),
            send_buffer: Some(1 << 20),
            recv_buffer: None,
            loss_recovery: None,
        };
        assert!(apply(&fd, &o).unwrap());
        let s = SockRef::from(&fd);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(5));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(2));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_millis(7000)));
        assert!(s.send_buffer_size().unwrap() >= 1 << 20);
        let off = Options { keepalive: Some(None), user_timeout: Some(Duration::ZERO), ..Options::default() };
        assert!(apply(&fd, &off).unwrap());
        assert!(!s.keepalive().unwrap());
        assert_eq!(s.tcp_user_timeout().unwrap(), None);
    }

    #[test]
    fn link_stats_of_a_tcp_connection_and_none_for_a_unix_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        use std::io::{Read, Write};
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        a.read_exact(&mut buf).unwrap();
        let fd: OwnedFd = c.into();
        let s = link_stats(&fd).unwrap().expect("TCP");
        // An RTO is never below the kernel's floor (200 ms by default here).
        assert!(s.rto_us >= 200_000, "{s:?}");
        assert_eq!(s.total_retrans, 0, "loopback loses nothing: {s:?}");
        let (u, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(link_stats(&u.into()).unwrap(), None);
    }

    #[test]
    fn loss_recovery_is_lowered_where_the_kernel_has_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd: OwnedFd = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap().into();
        let before = loss_recovery(&fd).unwrap();
        // 1 us is below two jiffies at any HZ: the doubling must find what the kernel takes.
        let after = set_loss_recovery(&fd, Duration::from_micros(1)).unwrap();
        match (before, after) {
            (Some(b), Some(a)) => {
                assert_eq!(b, LossRecovery { rto_min_us: 200_000, delack_max_us: 200_000 }, "the kernel's defaults");
                assert!(a.rto_min_us >= 1 && a.rto_min_us <= 20_000, "{a:?}");
                assert!(a.delack_max_us >= 1 && a.delack_max_us <= 20_000, "{a:?}");
                let o = Options { loss_recovery: Some(Duration::from_millis(200)), ..Options::default() };
                assert!(apply(&fd, &o).unwrap());
                assert_eq!(loss_recovery(&fd).unwrap(), Some(b));
            }
            (None, None) => eprintln!("this kernel has no TCP_RTO_MIN_US (before 6.15): defaults kept"),
            other => panic!("read and set disagree: {other:?}"),
        }
        let (a, _b) = vmm_sys::socketpair().unwrap();
        assert_eq!(set_loss_recovery(&a, Duration::from_millis(5)).unwrap(), None);
    }

    #[test]
    fn a_unix_socket_takes_buffer_sizes_only() {
        let (a, _b) = vmm_sys::socketpair().unwrap();
        let o = Options { user_timeout: Some(Duration::from_secs(1)), recv_buffer: Some(1 << 18), ..Options::default() };
        assert!(!apply(&a, &o).unwrap());
        assert!(!is_tcp(&a));
    }
}
