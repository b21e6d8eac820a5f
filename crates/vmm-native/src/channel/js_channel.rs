//! `NativeChannel`: a migration channel as JavaScript sees it. Sockets
//! (connected here or accepted by a `NativeListener`), an inherited
//! descriptor (fd:), or a socket pair with a child (exec:).
//!
//! `tryRead`/`tryWritev` make one non-blocking call on the calling thread
//! and never wait; `read`/`writev` wait on the runtime's epoll and settle
//! their Promise from there. Errors carry `code` ('ECONNRESET'), `errno`
//! and `syscall`, as the rest of the addon's.

use super::chan::Chan;
use super::connect;
use super::end::{End, Kind};
use super::options::{self, Keepalive, Options};
use super::child;
use super::js_tls::NativeTlsCreds;
use super::tls::{as_tls_error, Session};
use super::tls_wire::TlsWire;
use crate::error::{fd_arg, js_error, VResult};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use socket2::{SockAddr, SockRef};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use vfio_core::kernel::VfioError;
use vmm_sys as sys;

/// What the last call of a read or write said, as the addon's errors do.
pub(crate) fn fail(e: &io::Error, call: &str) -> VfioError {
    match as_tls_error(e) {
        Some(t) => VfioError::new(t.errno, "tls", call, Some(&t.message)),
        None => VfioError::from_io(e, call, call),
    }
}

/// A read's error: the fault's own words when passed descriptors ended the
/// channel (see End::fault), else what the call said.
fn read_fail(end: &End, e: &io::Error) -> VfioError {
    match end.fault() {
        Some(why) if e.raw_os_error() == Some(libc::EPROTO) => VfioError::new(libc::EPROTO, "recvmsg", "recvmsg", Some(&why)),
        _ => fail(e, "read"),
    }
}

fn invalid(call: &str, why: &str) -> VfioError {
    VfioError::invalid(call, call, why)
}

/// A Promise settled from the runtime: `fut` runs there; its result is
/// turned into a value or a rejection on the JavaScript thread, where
/// `keep` (the JavaScript buffers the future used) is also let go of, so
/// their references are deleted where they were made.
pub(crate) fn settle<T, K, F>(env: &Env, fut: F) -> Result<AsyncBlock<T>>
where
    T: ToNapiValue + Send + 'static,
    K: Send + 'static,
    F: Future<Output = (VResult<T>, K)> + Send + 'static,
{
    AsyncBlockBuilder::build_with_map(env, async move { Ok(fut.await) }, |env, (r, keep): (VResult<T>, K)| {
        drop(keep);
        r.map_err(|e| js_error(&env, &e))
    })
}

/// Runs `f` (which registers descriptors) inside the runtime's context.
pub(crate) fn in_runtime<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    within_runtime_if_available(f)
}

fn ms(v: f64, name: &str, call: &str) -> VResult<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(invalid(call, &format!("{name} must be a non-negative number of ms, got {v}")));
    }
    Ok(Duration::from_micros((v * 1000.0) as u64))
}

fn seconds(v: f64, name: &str) -> VResult<Duration> {
    // The kernel counts keepalive in whole seconds, from 1.
    if !(v.is_finite() && (1.0..=32767.0).contains(&v)) {
        return Err(invalid("setsockopt", &format!("keepalive {name} must be 1..32767 s, got {v}")));
    }
    Ok(Duration::from_secs(v.ceil() as u64))
}

/// TCP keepalive timings.
#[napi(object)]
pub struct KeepaliveOptions {
    /// Idle seconds before the first probe.
    pub idle_s: f64,
    /// Seconds between probes.
    pub interval_s: f64,
    /// Unanswered probes before the connection fails (ETIMEDOUT).
    pub count: u32,
}

/// Socket options; each one omitted is left as it is. TCP options on a
/// UNIX socket or a pipe are ignored (`setOptions` then resolves false).
#[napi(object)]
pub struct ChannelOptions {
    /// TCP_NODELAY.
    pub no_delay: Option<bool>,
    /// SO_KEEPALIVE: timings, or false for off.
    #[napi(ts_type = "false | KeepaliveOptions")]
    pub keepalive: Option<Either<bool, KeepaliveOptions>>,
    /// TCP_USER_TIMEOUT in ms: how long sent data may stay unacknowledged
    /// before the kernel fails the connection (ETIMEDOUT); 0 restores the
    /// kernel's default.
    pub user_timeout_ms: Option<f64>,
    /// SO_SNDBUF in bytes.
    pub send_buffer: Option<u32>,
    /// SO_RCVBUF in bytes.
    pub recv_buffer: Option<u32>,
    /// Lower TCP_RTO_MIN_US and TCP_DELACK_MAX_US to about this many ms
    /// (200 restores the kernel's defaults), where the kernel has them
    /// (6.15+); see `lossRecovery()` for what it took.
    pub loss_recovery_ms: Option<f64>,
}

/// A TCP socket's TCP_RTO_MIN_US and TCP_DELACK_MAX_US as the kernel keeps them.
#[napi(object)]
pub struct LossRecoveryInfo {
    pub rto_min_us: u32,
    pub delack_max_us: u32,
}

fn options_of(o: &ChannelOptions) -> VResult<Options> {
    let keepalive = match &o.keepalive {
        None => None,
        Some(Either::A(false)) => Some(None),
        Some(Either::A(true)) => return Err(invalid("setsockopt", "keepalive takes its timings ({ idleS, intervalS, count }) or false")),
        Some(Either::B(k)) => {
            if k.count == 0 || k.count > 127 {
                return Err(invalid("setsockopt", &format!("keepalive count must be 1..127, got {}", k.count)));
            }
            Some(Some(Keepalive { idle: seconds(k.idle_s, "idleS")?, interval: seconds(k.interval_s, "intervalS")?, count: k.count }))
        }
    };
    Ok(Options {
        no_delay: o.no_delay,
        keepalive,
        user_timeout: o.user_timeout_ms.map(|t| ms(t, "userTimeoutMs", "setsockopt")).transpose()?,
        send_buffer: o.send_buffer.map(|n| n as usize),
        recv_buffer: o.recv_buffer.map(|n| n as usize),
        loss_recovery: o.loss_recovery_ms.map(|t| ms(t, "lossRecoveryMs", "setsockopt")).transpose()?,
    })
}

/// What the kernel measured of a TCP connection (TCP_INFO).
#[napi(object)]
pub struct LinkStatsInfo {
    /// Smoothed round trip, microseconds.
    pub rtt_us: u32,
    /// Its mean deviation, microseconds.
    pub rtt_var_us: u32,
    /// The retransmission timeout now, microseconds.
    pub rto_us: u32,
    /// Segments sent again so far: above 0, the link loses packets.
    pub total_retrans: u32,
}

/// What a TLS handshake settled.
#[napi(object)]
pub struct TlsInfo {
    /// 'TLSv1_3'.
    pub version: String,
    /// 'TLS13_AES_256_GCM_SHA384' and the like.
    pub cipher: String,
    /// The peer certificate's subject (RFC 4514, as tls-authz lists it).
    pub peer_subject: Option<String>,
}

/// A migration channel over descriptors this object owns.
#[napi]
pub struct NativeChannel {
    inner: Arc<Chan>,
    /// Where `connect()` goes, for a channel made by `tcp()` or `unix()`.
    target: Option<SockAddr>,
}

/// Where a native data path (ramSendPages, pumpFrames, ...) moves its
/// bytes: a descriptor it may use directly, or a channel whose TLS session
/// every byte must go through.
pub(crate) enum Target {
    Fd(i32),
    Tls(TlsWire),
}

/// The one place a data path's `fd | NativeChannel` argument is taken:
/// a number is checked as an fd, a channel must carry TLS (a plaintext
/// channel hands out its fd, which goes as a number); anything else is
/// EINVAL naming the argument.
pub(crate) fn target_arg(v: Unknown<'_>, name: &str, call: &str) -> VResult<Target> {
    let bad = |what: &str| invalid(call, &format!("{name} must be an fd number or a TLS NativeChannel, got {what}"));
    let raw = v.value();
    match v.get_type() {
        Ok(ValueType::Number) => {
            // SAFETY: a number value of the env it came with, for this call.
            let fd = unsafe { f64::from_napi_value(raw.env, raw.value) }.map_err(|_| bad("a number that could not be read"))?;
            if fd.fract() != 0.0 || !(i32::MIN as f64..=i32::MAX as f64).contains(&fd) {
                return Err(bad(&format!("{fd}")));
            }
            fd_arg(fd as i32, name, call).map(Target::Fd)
        }
        Ok(ValueType::Object) => {
            // SAFETY: an object value of the env it came with; the unwrap
            // checks the class (its type tag) before it is used.
            let ch = unsafe { ClassInstance::<NativeChannel>::from_napi_value(raw.env, raw.value) }.map_err(|_| bad("an object that is no NativeChannel"))?;
            TlsWire::of(&ch.inner, call).map(Target::Tls)
        }
        Ok(t) => Err(bad(&format!("{t}"))),
        Err(_) => Err(bad("a value of unknown type")),
    }
}

impl NativeChannel {
    /// A channel over an accepted or connected socket.
    pub(crate) fn from_socket(end: End) -> NativeChannel {
        NativeChannel { inner: Arc::new(Chan::single(end)), target: None }
    }

    fn unconnected(env: &Env, addr: SockAddr) -> Result<NativeChannel> {
        match connect::socket_for(&addr) {
            Ok(fd) => Ok(NativeChannel { inner: Arc::new(Chan::unconnected(fd)), target: Some(addr) }),
            Err(e) => Err(js_error(env, &fail(&e, "socket"))),
        }
    }
}

fn range(len: usize, offset: u32, length: u32, call: &str) -> VResult<std::ops::Range<usize>> {
    let (o, n) = (offset as usize, length as usize);
    if o.checked_add(n).is_none_or(|end| end > len) {
        return Err(invalid(call, &format!("{n} bytes at offset {o} do not fit a buffer of {len}")));
    }
    Ok(o..o + n)
}

fn skip_arg(skip: f64, call: &str) -> VResult<usize> {
    if !(skip.is_finite() && skip >= 0.0 && skip.fract() == 0.0) {
        return Err(invalid(call, &format!("skip must be a non-negative integer, got {skip}")));
    }
    Ok(skip as usize)
}

#[napi]
impl NativeChannel {
    /// An unconnected TCP socket for `ip` (a numeric IPv4 or IPv6 address:
    /// names are resolved by the caller) and `port`; `connect()` connects it.
    #[napi(factory)]
    pub fn tcp(env: Env, ip: String, port: u32) -> Result<NativeChannel> {
        let addr = match (ip.parse::<IpAddr>(), u16::try_from(port)) {
            (Ok(ip), Ok(port)) => SocketAddr::new(ip, port),
            _ => return Err(js_error(&env, &invalid("connect", &format!("{ip}:{port} is not a numeric address and port")))),
        };
        NativeChannel::unconnected(&env, addr.into())
    }

    /// An unconnected UNIX stream socket for `path`; `connect()` connects it.
    #[napi(factory)]
    pub fn unix(env: Env, path: String) -> Result<NativeChannel> {
        match SockAddr::unix(&path) {
            Ok(addr) => NativeChannel::unconnected(&env, addr),
            Err(e) => Err(js_error(&env, &fail(&e, "connect"))),
        }
    }

    /// A channel over a dup of `fd`: a stream socket (both ways) or a pipe
    /// or FIFO end (the way it was opened). `fd` stays the caller's. The
    /// dup shares the open file with `fd`, which becomes non-blocking too,
    /// as Node makes the sockets it adopts.
    #[napi(factory)]
    pub fn adopt(env: Env, fd: i32) -> Result<NativeChannel> {
        let r = fd_arg(fd, "fd", "adopt").and_then(|fd| {
            let kind = match sys::fd_kind(fd).map_err(|e| fail(&e, "fstat"))? {
                sys::FdKind::Socket if sys::socket_type(fd).ok() == Some(libc::SOCK_STREAM) => {
                    // An unconnected or listening socket polls as hung up, a
                    // readiness tokio never clears: every wait would spin.
                    // SAFETY: `fd` is open for the duration of this call (the
                    // caller's), and the borrow ends with it.
                    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    if let Err(e) = SockRef::from(&borrowed).peer_addr() {
                        return Err(VfioError::new(e.raw_os_error().unwrap_or(libc::ENOTCONN), "adopt", "adopt", Some("not a connected stream socket")));
                    }
                    Kind::Socket
                }
                sys::FdKind::Socket => return Err(VfioError::new(libc::ENOTSUP, "adopt", "adopt", Some("not a stream socket"))),
                sys::FdKind::Pipe => Kind::Pipe,
                sys::FdKind::Other => return Err(VfioError::new(libc::ENOTSUP, "adopt", "adopt", Some("neither a socket nor a pipe"))),
            };
            let owned = sys::dup(fd).map_err(|e| fail(&e, "dup"))?;
            in_runtime(|| End::new(owned, kind)).map_err(|e| fail(&e, "epoll_ctl"))
        });
        match r {
            Ok(end) => Ok(NativeChannel { inner: Arc::new(Chan::single(end)), target: None }),
            Err(e) => Err(js_error(&env, &e)),
        }
    }

    /// A channel over a new socket pair with a child process: the child
    /// gets `childFd` as its stdin and its stdout (spawn it with that number
    /// in its stdio, then call `releaseChildFd()`); what we write it reads,
    /// what it writes we read.
    #[napi(factory)]
    pub fn for_child(env: Env) -> Result<NativeChannel> {
        let r = child::child_socket().and_then(|(ours, theirs)| {
            let end = in_runtime(|| End::new(ours, Kind::Socket))?;
            Ok(Chan::for_child(end, theirs))
        });
        match r {
            Ok(c) => Ok(NativeChannel { inner: Arc::new(c), target: None }),
            Err(e) => Err(js_error(&env, &fail(&e, "socketpair"))),
        }
    }

    /// Connects a channel made by `tcp()` or `unix()`. Rejects ETIMEDOUT
    /// after `timeoutMs` (omitted: the kernel's own bound), ECANCELED when
    /// the channel is closed meanwhile.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn connect(&self, env: Env, timeout_ms: Option<f64>) -> Result<AsyncBlock<()>> {
        let (inner, target) = (self.inner.clone(), self.target.clone());
        let timeout = timeout_ms.map(|t| ms(t, "timeoutMs", "connect")).transpose();
        settle(&env, async move {
            let r = async {
                let addr = target.ok_or_else(|| invalid("connect", "only a channel made by tcp() or unix() connects"))?;
                let fd = inner.take_unconnected().map_err(|e| fail(&e, "connect"))?;
                let attempt = connect::connect(fd, &addr, inner.cancel());
                let end = match timeout? {
                    None => attempt.await,
                    Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| Err(sys::errno(libc::ETIMEDOUT))),
                }
                .map_err(|e| fail(&e, "connect"))?;
                inner.connected(end).map_err(|e| fail(&e, "connect"))
            };
            (r.await, ())
        })
    }

    /// Runs a TLS 1.3 handshake on this connected socket with `creds`
    /// ('client' creds verify the server's certificate against
    /// `serverName`; 'server' creds verify the client's against the CA and
    /// tls-authz), bounded by `timeoutMs`. From then on every read and
    /// write goes through the session, and `fd`/`writeFd` are null so that
    /// no native transfer writes past it. Nothing else may read or write
    /// the channel until this settles.
    #[napi(ts_return_type = "Promise<TlsInfo>")]
    pub fn start_tls(&self, env: Env, creds: &NativeTlsCreds, server_name: Option<String>, timeout_ms: f64) -> Result<AsyncBlock<TlsInfo>> {
        let inner = self.inner.clone();
        let creds = creds.creds.clone();
        let timeout = ms(timeout_ms, "timeoutMs", "tls");
        settle(&env, async move {
            let r = async {
                let timeout = timeout?;
                let end = inner.rx().map_err(|e| fail(&e, "tls"))?;
                if end.kind() != Kind::Socket {
                    return Err(invalid("tls", "TLS runs over a socket only"));
                }
                let session = Arc::new(Session::new(&creds, server_name.as_deref()).map_err(|e| fail(&e, "tls"))?);
                session.handshake(&end, inner.cancel(), timeout).await.map_err(|e| fail(&e, "tls"))?;
                let info = session.info();
                inner.set_tls(session).map_err(|e| fail(&e, "tls"))?;
                Ok(TlsInfo { version: info.version, cipher: info.cipher, peer_subject: info.peer_subject })
            };
            (r.await, ())
        })
    }

    /// Whether a TLS session carries this channel's bytes.
    #[napi(getter)]
    pub fn is_tls(&self) -> bool {
        self.inner.tls().is_some()
    }

    /// Sends TLS close_notify (after everything written), so the peer tells
    /// an end from a cut; resolves at once without TLS. `endWrites()` after it.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close_notify(&self, env: Env) -> Result<AsyncBlock<()>> {
        let inner = self.inner.clone();
        settle(&env, async move {
            let r = async {
                let Some(s) = inner.tls() else { return Ok(()) };
                let end = inner.tx().map_err(|e| fail(&e, "tls"))?;
                s.close_notify(&end, inner.cancel()).await.map_err(|e| fail(&e, "tls"))
            };
            (r.await, ())
        })
    }

    /// The descriptor reads go to, or null once closed. For native
    /// transfers between two reads; it stays this object's.
    #[napi(getter)]
    pub fn fd(&self) -> Option<i32> {
        self.inner.read_fd()
    }

    /// The descriptor writes go to (the same as `fd`), or null once closed,
    /// or once `endWrites()` let go of a pipe.
    #[napi(getter)]
    pub fn write_fd(&self) -> Option<i32> {
        self.inner.write_fd()
    }

    /// Whether this is a socket (duplex, shutdown(2) applies) rather than a pipe.
    #[napi(getter)]
    pub fn is_socket(&self) -> bool {
        self.inner.rx().or_else(|_| self.inner.tx()).is_ok_and(|e| e.kind() == Kind::Socket)
    }

    /// The peer's address ('127.0.0.1:4444', '[::1]:4444'), or null (a UNIX
    /// socket's peer is usually unnamed; a pipe has none).
    #[napi(getter)]
    pub fn peer(&self) -> Option<String> {
        let end = self.inner.rx().ok()?;
        if end.kind() != Kind::Socket {
            return None;
        }
        let a = SockRef::from(end.owned()).peer_addr().ok()?;
        a.as_socket().map(|s| s.to_string()).or_else(|| a.as_pathname().map(|p| p.display().to_string()))
    }

    /// The child's end (see `forChild`), or null once released.
    #[napi(getter)]
    pub fn child_fd(&self) -> Option<i32> {
        self.inner.child_fds().first().copied()
    }

    /// Closes our copy of the child's end: after the spawn, so that the
    /// child's exit is our end of stream.
    #[napi]
    pub fn release_child_fd(&self) {
        self.inner.release_child_fds()
    }

    /// One non-blocking read into `buffer[offset, offset + length)`: the
    /// bytes read (0 at end of stream), or -1 when none are there yet.
    #[napi]
    pub fn try_read(&self, env: Env, mut buffer: Uint8ArraySlice, offset: u32, length: u32) -> Result<i32> {
        // SAFETY: the view is valid for this call, which runs on the
        // JavaScript thread and so cannot overlap JavaScript touching the
        // buffer; the caller has no read of ours pending into it (one read
        // at a time, Channel.read's contract).
        let buffer = unsafe { buffer.as_mut() };
        let r = range(buffer.len(), offset, length, "read").and_then(|span| {
            let end = self.inner.rx().map_err(|e| fail(&e, "read"))?;
            // A JavaScript count is at most 2^31 - 1 here, so i32 is exact.
            let span = span.start..span.start + span.len().min(i32::MAX as usize);
            let got = match self.inner.tls() {
                Some(s) => s.try_read(end.raw(), &mut buffer[span]),
                None => end.try_read(&mut buffer[span]),
            };
            match got {
                Ok(Some(n)) => Ok(n as i32),
                Ok(None) => Ok(-1),
                Err(e) => Err(read_fail(&end, &e)),
            }
        });
        r.map_err(|e| js_error(&env, &e))
    }

    /// Waits until bytes are there and reads them into
    /// `buffer[offset, offset + length)`; resolves the count, 0 at end of
    /// stream. The buffer must not be touched until the Promise settles.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn read(&self, env: Env, mut buffer: Uint8Array, offset: u32, length: u32) -> Result<AsyncBlock<u32>> {
        let inner = self.inner.clone();
        let span = range(buffer.len(), offset, length, "read");
        settle(&env, async move {
            let r = async {
                let span = span?;
                let end = inner.rx().map_err(|e| fail(&e, "read"))?;
                // SAFETY: the caller leaves the buffer alone until the
                // Promise settles (the contract above, and Channel.read's),
                // and the reference in `buffer` keeps its memory alive.
                let bytes = unsafe { buffer.as_mut() };
                let span = span.start..span.start + span.len().min(u32::MAX as usize);
                let got = match inner.tls() {
                    Some(s) => s.read(&end, &mut bytes[span], inner.cancel()).await,
                    None => end.read(&mut bytes[span], inner.cancel()).await,
                };
                got.map(|n| n as u32).map_err(|e| read_fail(&end, &e))
            };
            let r = r.await;
            (r, buffer)
        })
    }

    /// One non-blocking writev of `buffers` from byte `skip` on: the bytes
    /// the kernel took now (0 when it has no room).
    #[napi]
    pub fn try_writev(&self, env: Env, buffers: Vec<&[u8]>, skip: f64) -> Result<f64> {
        let r = skip_arg(skip, "writev").and_then(|skip| {
            let end = self.inner.tx().map_err(|e| fail(&e, "writev"))?;
            if self.inner.tls().is_some() {
                // A record half sent has to be finished by someone: the
                // async writev, which waits for room.
                return Ok(0.0);
            }
            end.try_writev(&buffers, skip).map(|n| n as f64).map_err(|e| fail(&e, "writev"))
        });
        r.map_err(|e| js_error(&env, &e))
    }

    /// Writes all of `buffers` from byte `skip` on, waiting as the kernel
    /// makes room; resolves once it took the last byte. The buffers must not
    /// change until then.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn writev(&self, env: Env, buffers: Vec<Uint8Array>, skip: f64) -> Result<AsyncBlock<()>> {
        let inner = self.inner.clone();
        let skip = skip_arg(skip, "writev");
        settle(&env, async move {
            let r = async {
                let skip = skip?;
                let end = inner.tx().map_err(|e| fail(&e, "writev"))?;
                let slices: Vec<&[u8]> = buffers.iter().map(|b| &b[..]).collect();
                let r = match inner.tls() {
                    Some(s) => s.write_all(&end, &slices, skip, inner.cancel()).await,
                    None => end.write_all(&slices, skip, inner.cancel()).await,
                };
                r.map_err(|e| fail(&e, "writev"))
            };
            let r = r.await;
            (r, buffers)
        })
    }

    /// Lets the peer pass up to `max` file descriptors (SCM_RIGHTS) in all,
    /// at most 16: they wait for `takeFds`. Without it (or past it) a read
    /// that brings any fails EPROTO, saying so, and they are closed.
    #[napi]
    pub fn accept_fds(&self, env: Env, max: u32) -> Result<()> {
        let r = (|| {
            if max as usize > sys::MAX_PASSED_FDS {
                return Err(invalid("recvmsg", &format!("at most {} descriptors may be passed, asked for {max}", sys::MAX_PASSED_FDS)));
            }
            let end = self.inner.rx().map_err(|e| fail(&e, "recvmsg"))?;
            if end.kind() != Kind::Socket {
                return Err(VfioError::new(libc::ENOTSOCK, "recvmsg", "recvmsg", Some("only a UNIX socket passes file descriptors")));
            }
            end.accept_fds(max as usize);
            Ok(())
        })();
        r.map_err(|e| js_error(&env, &e))
    }

    /// Descriptors the peer passed that nobody took yet.
    #[napi(getter)]
    pub fn queued_fds(&self) -> u32 {
        self.inner.rx().map_or(0, |e| e.queued_fds() as u32)
    }

    /// The first `count` descriptors passed, in the order they came; the
    /// caller owns (and must close) them. Fails, taking none, when fewer
    /// have arrived.
    #[napi]
    pub fn take_fds(&self, env: Env, count: u32) -> Result<Vec<i32>> {
        let r = self.inner.rx().map_err(|e| fail(&e, "recvmsg")).and_then(|end| {
            let queued = end.queued_fds();
            end.take_fds(count as usize)
                .map(|fds| fds.into_iter().map(std::os::fd::IntoRawFd::into_raw_fd).collect())
                .ok_or_else(|| VfioError::new(libc::EPROTO, "recvmsg", "recvmsg", Some(&format!("expected {count} passed file descriptor(s), {queued} arrived"))))
        });
        r.map_err(|e| js_error(&env, &e))
    }

    /// Closes (off this thread) the descriptors passed and not taken, and
    /// accepts no more.
    #[napi]
    pub fn drop_fds(&self) {
        if let Ok(end) = self.inner.rx() {
            end.drop_fds()
        }
    }

    /// Writes `data` (at least one byte) with `fds` attached (SCM_RIGHTS,
    /// 1..16 of them), after nothing: the caller writes nothing else until
    /// it settles. The descriptors stay the caller's and must stay open
    /// until then.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn send_fds(&self, env: Env, fds: Vec<i32>, data: Uint8Array) -> Result<AsyncBlock<()>> {
        let inner = self.inner.clone();
        let ok = if fds.is_empty() || fds.len() > sys::MAX_PASSED_FDS || fds.iter().any(|&f| f < 0) {
            Err(invalid("sendmsg", &format!("1..{} descriptor numbers are passed at once, got {:?}", sys::MAX_PASSED_FDS, fds)))
        } else if data.is_empty() {
            Err(invalid("sendmsg", "descriptors go with at least one byte"))
        } else {
            Ok(())
        };
        settle(&env, async move {
            let r = async {
                ok?;
                let end = inner.tx().map_err(|e| fail(&e, "sendmsg"))?;
                end.send_fds(&data, &fds, inner.cancel()).await.map_err(|e| fail(&e, "sendmsg"))
            };
            let r = r.await;
            (r, data)
        })
    }

    /// The peer sees end of stream (a socket's write side is shut down, a
    /// pipe's write end closed); reads go on.
    #[napi]
    pub fn end_writes(&self, env: Env) -> Result<()> {
        self.inner.end_writes().map_err(|e| js_error(&env, &fail(&e, "shutdown")))
    }

    /// Stops both directions now: pending reads and writes reject
    /// ECANCELED, a socket is shut down (which also wakes native transfers
    /// on dups of it). The descriptors stay open until `close()`.
    #[napi]
    pub fn shutdown(&self) {
        self.inner.shutdown()
    }

    /// Ends pending calls (ECANCELED) and closes the descriptors once the
    /// last call in flight let go of them. Idempotent.
    #[napi]
    pub fn close(&self) {
        self.inner.close()
    }

    /// Sets socket options (see ChannelOptions); true when the TCP ones
    /// applied, false on a UNIX socket or a pipe, where only buffer sizes
    /// mean anything.
    #[napi]
    pub fn set_options(&self, env: Env, options: ChannelOptions) -> Result<bool> {
        let r = options_of(&options).and_then(|o| {
            let end = self.inner.rx().or_else(|_| self.inner.tx()).map_err(|e| fail(&e, "setsockopt"))?;
            if end.kind() != Kind::Socket {
                return Ok(false);
            }
            options::apply(end.owned(), &o).map_err(|e| fail(&e, "setsockopt"))
        });
        r.map_err(|e| js_error(&env, &e))
    }

    /// `get` on the channel's socket (a getsockopt: it never waits); None on
    /// a pipe, or where `get` finds nothing (not TCP, an older kernel).
    fn sockopt<T>(&self, get: impl FnOnce(&std::os::fd::OwnedFd) -> std::io::Result<Option<T>>) -> VResult<Option<T>> {
        let end = self.inner.rx().or_else(|_| self.inner.tx()).map_err(|e| fail(&e, "getsockopt"))?;
        if end.kind() != Kind::Socket {
            return Ok(None);
        }
        get(end.owned()).map_err(|e| fail(&e, "getsockopt"))
    }

    /// The socket's loss recovery (see ChannelOptions.lossRecoveryMs);
    /// null on a UNIX socket, a pipe, or a kernel without the options.
    #[napi]
    pub fn loss_recovery(&self, env: Env) -> Result<Option<LossRecoveryInfo>> {
        self.sockopt(options::loss_recovery)
            .map(|o| o.map(|l| LossRecoveryInfo { rto_min_us: l.rto_min_us, delack_max_us: l.delack_max_us }))
            .map_err(|e| js_error(&env, &e))
    }

    /// TCP_INFO's round trip, its deviation, the RTO and the retransmissions
    /// so far; null on a UNIX socket or a pipe.
    #[napi]
    pub fn link_stats(&self, env: Env) -> Result<Option<LinkStatsInfo>> {
        self.sockopt(options::link_stats)
            .map(|o| o.map(|l| LinkStatsInfo { rtt_us: l.rtt_us, rtt_var_us: l.rtt_var_us, rto_us: l.rto_us, total_retrans: l.total_retrans }))
            .map_err(|e| js_error(&env, &e))
    }
}

/// Plaintext bytes moved through TLS sessions by the native data paths.
#[napi(object)]
pub struct TlsDataCounters {
    /// RAM records (ramSendPages, ramLoadPages).
    pub ram_sent: f64,
    pub ram_received: f64,
    /// Device-state frames (pumpFrames, loadFrames).
    pub device_sent: f64,
    pub device_received: f64,
}

/// Plaintext bytes the native data paths encrypted and decrypted through
/// TLS sessions since the addon loaded; the buffered path through
/// JavaScript is not counted.
#[napi]
pub fn tls_data_counters() -> TlsDataCounters {
    let [ram_sent, ram_received, device_sent, device_received] = super::tls_wire::counters().map(|v| v as f64);
    TlsDataCounters { ram_sent, ram_received, device_sent, device_received }
}
