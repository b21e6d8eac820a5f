//! A TLS session over a channel's socket: every byte read or written
//! through a channel that has one is decrypted or encrypted here (rustls,
//! in userspace: this kernel has no kTLS).
//!
//! The session sits behind one mutex that no await holds, so a read on the
//! return path and a write of the stream may run at the same time. The
//! descriptor stays non-blocking; each step does what it can without
//! waiting and says which readiness it needs, and the async calls wait for
//! it on the End (clearing a readiness only after the kernel said EAGAIN,
//! then trying again, so no wake-up is lost).
//!
//! Errors carry a message a user can act on: which side refused which
//! certificate, a peer that does not speak TLS, a stream cut without
//! close_notify (a truncation an attacker could make look like an end).

use super::cancel::Cancel;
use super::end::End;
use super::tls_creds::{subject_dn, Creds};
use rustls::client::{ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, NamedGroup, ServerConnection};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vmm_sys as sys;

/// Plaintext taken into the session per step before its records are sent:
/// a few records' worth, so a big write does not sit whole in memory twice.
const PLAIN_CHUNK: usize = 256 << 10;

/// A TLS failure: errno for the JavaScript error's `code`, and the message.
#[derive(Debug)]
pub struct TlsError {
    pub errno: i32,
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsError {}

/// An io::Error carrying a [`TlsError`] (see js_channel::fail).
pub fn tls_error(errno: i32, message: impl Into<String>) -> io::Error {
    io::Error::other(TlsError { errno, message: message.into() })
}

/// The TlsError inside `e`, if it is one.
pub fn as_tls_error(e: &io::Error) -> Option<&TlsError> {
    e.get_ref().and_then(|i| i.downcast_ref::<TlsError>())
}

fn from_rustls(e: &rustls::Error, handshaking: bool) -> io::Error {
    use rustls::Error as E;
    let (errno, hint) = match e {
        E::InvalidCertificate(_) | E::NoCertificatesPresented => (libc::EACCES, ""),
        E::AlertReceived(_) => (libc::EACCES, " (the peer refused the TLS session: see its log for why)"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } if handshaking => {
            (libc::EPROTO, " (is the peer speaking TLS? both sides need TLS credentials)")
        }
        _ => (libc::EPROTO, ""),
    };
    let what = if handshaking { "TLS handshake failed" } else { "TLS" };
    tls_error(errno, format!("{what}: {e}{hint}"))
}

/// rustls's reads and writes on the raw socket, never waiting.
struct Sock(RawFd);

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(self.0, buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = bufs.iter().map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
        // SAFETY: each iovec describes one of `bufs`, borrowed for this call.
        unsafe { sys::send_iov(self.0, &mut iov) }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// What a step needs before it can go on.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    Done,
    Readable,
    Writable,
}

/// What was negotiated, for the JavaScript side to report.
pub struct Info {
    pub version: String,
    pub cipher: String,
    pub peer_subject: Option<String>,
}

/// The client's proof that the server accepted its certificate. In TLS 1.3
/// the client's handshake ends before the server has checked the client's
/// certificate, so a refusal (an expired certificate, a DN outside
/// tls-authz) would only show as an alert in the middle of the migration.
/// Our server sends one session ticket once it accepted the client; the
/// client waits for it (or the alert) within the handshake's bound. Tickets
/// are never used to resume: nothing is ever handed back.
#[derive(Debug, Default)]
struct Confirm(AtomicBool);

impl ClientSessionStore for Confirm {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, _: Tls13ClientSessionValue) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        None
    }
}

/// One TLS session of one channel.
pub struct Session {
    conn: Mutex<Connection>,
    /// Client only: set once the server showed it accepted us.
    confirm: Option<Arc<Confirm>>,
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// A session for `creds`' role: a client verifies the server's
    /// certificate against `server_name`.
    pub fn new(creds: &Creds, server_name: Option<&str>) -> io::Result<Session> {
        match creds {
            Creds::Server(cfg) => {
                let conn = ServerConnection::new(cfg.clone()).map_err(|e| from_rustls(&e, true))?;
                Ok(Session { conn: Mutex::new(conn.into()), confirm: None })
            }
            Creds::Client(cfg) => {
                let name = server_name.ok_or_else(|| tls_error(libc::EINVAL, "TLS: the destination's name to verify (tls-hostname) is missing"))?;
                let name = ServerName::try_from(name.to_string()).map_err(|_| tls_error(libc::EINVAL, format!("TLS: tls-hostname {name:?} is neither a DNS name nor an IP address")))?;
                let confirm = Arc::new(Confirm::default());
                let mut cfg = (**cfg).clone();
                cfg.resumption = Resumption::store(confirm.clone());
                let conn = ClientConnection::new(Arc::new(cfg), name).map_err(|e| from_rustls(&e, true))?;
                Ok(Session { conn: Mutex::new(conn.into()), confirm: Some(confirm) })
            }
        }
    }

    /// Sends what the session has queued; Writable when the socket is full.
    fn flush(c: &mut Connection, fd: RawFd) -> io::Result<Need> {
        while c.wants_write() {
            match c.write_tls(&mut Sock(fd)) {
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(Need::Writable),
                Err(e) => return Err(e),
            }
        }
        Ok(Need::Done)
    }

    /// Reads what the socket has into the session and processes it.
    /// Ok(false) at end of stream or when nothing was there (`eagain`).
    fn pull(c: &mut Connection, fd: RawFd, handshaking: bool) -> io::Result<Option<usize>> {
        match c.read_tls(&mut Sock(fd)) {
            Ok(n) => {
                if let Err(e) = c.process_new_packets() {
                    // The alert rustls queued tells the peer why; best effort.
                    let _ = Session::flush(c, fd);
                    return Err(from_rustls(&e, handshaking));
                }
                Ok(Some(n))
            }
            Err(e) if would_block(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn handshake_step(&self, fd: RawFd) -> io::Result<Need> {
        let mut c = lock(&self.conn);
        loop {
            if Session::flush(&mut c, fd)? == Need::Writable {
                return Ok(Need::Writable);
            }
            let confirmed = self.confirm.as_ref().is_none_or(|c| c.0.load(Ordering::SeqCst));
            if !c.is_handshaking() && confirmed {
                return Ok(Need::Done);
            }
            match Session::pull(&mut c, fd, true)? {
                None => return Ok(Need::Readable),
                Some(0) if c.is_handshaking() => return Err(tls_error(libc::ECONNRESET, "TLS handshake failed: the peer closed the connection (does it expect TLS? a peer without TLS credentials, or one that refused ours, closes)")),
                Some(0) => return Err(tls_error(libc::EACCES, "TLS handshake failed: the destination closed the connection instead of accepting our certificate (see its log for why)")),
                Some(_) => {}
            }
        }
    }

    /// Runs the handshake to its end, within `timeout`.
    pub async fn handshake(&self, end: &End, cancel: &Cancel, timeout: Duration) -> io::Result<()> {
        let run = async {
            loop {
                match self.handshake_step(end.raw())? {
                    Need::Done => return Ok(()),
                    Need::Readable => end.wait_readable(cancel).await?.not_ready(),
                    Need::Writable => end.wait_writable(cancel).await?.not_ready(),
                }
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(tls_error(libc::ETIMEDOUT, format!("TLS handshake did not finish within {} ms (the peer said too little: is it a TLS peer?)", timeout.as_millis()))),
        }
    }

    /// What the handshake settled.
    pub fn info(&self) -> Info {
        let c = lock(&self.conn);
        Info {
            version: c.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
            cipher: c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default(),
            peer_subject: c.peer_certificates().and_then(|p| p.first()).and_then(|d| subject_dn(d).ok()),
        }
    }

    /// One read without waiting: plaintext bytes (0 at a clean end), or
    /// None when the socket has nothing more now.
    pub fn try_read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        let mut c = lock(&self.conn);
        loop {
            match c.reader().read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if would_block(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(tls_error(libc::ECONNRESET, "TLS: the peer closed the connection without close_notify (the stream is truncated)"));
                }
                Err(e) => return Err(e),
            }
            if Session::pull(&mut c, fd, false)?.is_none() {
                return Ok(None);
            }
            // A key update's answer, if any: sent now when there is room,
            // else by the next write.
            let _ = Session::flush(&mut c, fd);
        }
    }

    /// Reads at least one byte (0 at a clean end), waiting as needed.
    pub async fn read(&self, end: &End, buf: &mut [u8], cancel: &Cancel) -> io::Result<usize> {
        loop {
            if let Some(n) = self.try_read(end.raw(), buf)? {
                return Ok(n);
            }
            end.wait_readable(cancel).await?.not_ready();
        }
    }

    /// Encrypts and sends `bufs` from `*off` on until done or the socket is full.
    fn write_step(&self, fd: RawFd, bufs: &[&[u8]], off: &mut usize, total: usize) -> io::Result<Need> {
        let mut c = lock(&self.conn);
        loop {
            if Session::flush(&mut c, fd)? == Need::Writable {
                return Ok(Need::Writable);
            }
            if *off >= total {
                return Ok(Need::Done);
            }
            let mut budget = PLAIN_CHUNK;
            let mut pos = 0;
            for b in bufs {
                if budget == 0 {
                    break;
                }
                let (start, stop) = (pos, pos + b.len());
                pos = stop;
                if *off >= stop {
                    continue;
                }
                let from = *off - start;
                let take = (b.len() - from).min(budget);
                let n = c.writer().write(&b[from..from + take])?;
                *off += n;
                budget -= n;
                if n < take {
                    // The session's buffer is full: send before taking more.
                    break;
                }
            }
        }
    }

    /// Writes all of `bufs` from byte `skip` on, waiting as the socket makes room.
    pub async fn write_all(&self, end: &End, bufs: &[&[u8]], skip: usize, cancel: &Cancel) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut off = skip;
        loop {
            match self.write_step(end.raw(), bufs, &mut off, total)? {
                Need::Done => return Ok(()),
                _ => end.wait_writable(cancel).await?.not_ready(),
            }
        }
    }

    /// Queues close_notify and sends it with what is queued, waiting for room.
    pub async fn close_notify(&self, end: &End, cancel: &Cancel) -> io::Result<()> {
        lock(&self.conn).send_close_notify();
        self.write_all(end, &[], 0, cancel).await
    }

    /// close_notify without waiting, for a channel closed without endWrites:
    /// a peer reading then sees an end, not a truncation.
    pub fn close_notify_now(&self, fd: RawFd) {
        let mut c = lock(&self.conn);
        c.send_close_notify();
        let _ = Session::flush(&mut c, fd);
    }
}
