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

/// Records the session holds before they are sent: one chunk's worth, so a
/// chunk is encrypted whole and goes out in one writev.
const SEND_BUFFER: usize = PLAIN_CHUNK + (64 << 10);

/// The ALPN protocol by which a server promises the client its verdict on
/// the client's certificate (see [`Confirm`]). Ours selects it; a server
/// that does not (QEMU's GnuTLS, which configures no ALPN) sends no verdict,
/// and the client then does not wait for one. The selection travels in the
/// server's EncryptedExtensions, covered by its Finished: nobody between
/// the two can take it away to make the client skip the wait.
pub const VERDICT_ALPN: &[u8] = b"x-vmm-migration-verdict";

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
    // Our own refusals (tls-authz) say it in their words, not rustls's Debug.
    if let E::InvalidCertificate(rustls::CertificateError::Other(o)) = e {
        return tls_error(errno, format!("{what}: {}", o.0));
    }
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
/// Our server sends one session ticket once it accepted the client, when
/// the client asked for it (ALPN [`VERDICT_ALPN`] and a ticket_request);
/// the client waits for it or the alert, within the handshake timeout. A
/// server that did not answer the ALPN (QEMU) sends no verdict, and is not
/// waited for: a refusal then shows as an alert on the stream. Tickets are
/// never used to resume: nothing is ever handed back.
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

/// The connection and the plaintext it gave that nobody took yet.
struct Conn {
    c: Connection,
    /// Decrypted bytes a native reader looked at without taking
    /// (`ahead[at..end]`): the RAM decoder parses records in place and
    /// leaves those it does not handle for RamLoader, as it does in a plain
    /// socket. Every read drains it before the connection, so no byte is
    /// lost or reordered. Allocated once, at its first use.
    ahead: Vec<u8>,
    at: usize,
    end: usize,
}

impl std::ops::Deref for Conn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.c
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.c
    }
}

impl Conn {
    fn ahead(&self) -> &[u8] {
        &self.ahead[self.at..self.end]
    }

    /// Takes `n` bytes of the look-ahead.
    fn take_ahead(&mut self, n: usize) {
        self.at = (self.at + n).min(self.end);
        if self.at == self.end {
            self.at = 0;
            self.end = 0;
        }
    }
}

/// One TLS session of one channel.
pub struct Session {
    conn: Mutex<Conn>,
    /// Client only: set once the server showed it accepted us.
    confirm: Option<Arc<Confirm>>,
}

fn lock(m: &Mutex<Conn>) -> MutexGuard<'_, Conn> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn conn(c: Connection) -> Mutex<Conn> {
    Mutex::new(Conn { c, ahead: Vec::new(), at: 0, end: 0 })
}

impl Session {
    /// A session for `creds`' role: a client verifies the server's
    /// certificate against `server_name`.
    pub fn new(creds: &Creds, server_name: Option<&str>) -> io::Result<Session> {
        match creds {
            Creds::Server(cfg) => {
                let mut c: Connection = ServerConnection::new(cfg.clone()).map_err(|e| from_rustls(&e, true))?.into();
                c.set_buffer_limit(Some(SEND_BUFFER));
                Ok(Session { conn: conn(c), confirm: None })
            }
            Creds::Client(cfg) => {
                let name = server_name.ok_or_else(|| tls_error(libc::EINVAL, "TLS: the destination's name to verify (tls-hostname) is missing"))?;
                let name = ServerName::try_from(name.to_string()).map_err(|_| tls_error(libc::EINVAL, format!("TLS: tls-hostname {name:?} is neither a DNS name nor an IP address")))?;
                let confirm = Arc::new(Confirm::default());
                let mut cfg = (**cfg).clone();
                cfg.resumption = Resumption::store(confirm.clone());
                let mut c: Connection = ClientConnection::new(Arc::new(cfg), name).map_err(|e| from_rustls(&e, true))?.into();
                c.set_buffer_limit(Some(SEND_BUFFER));
                Ok(Session { conn: conn(c), confirm: Some(confirm) })
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
            if !c.is_handshaking() && !self.verdict_due(&c) {
                return Ok(Need::Done);
            }
            // Past our Finished, only the server's verdict on our certificate is awaited.
            let awaiting_verdict = !c.is_handshaking();
            let pulled = Session::pull(&mut c, fd, true).map_err(|e| match as_tls_error(&e) {
                Some(t) if awaiting_verdict => {
                    let why = t.message.trim_start_matches("TLS handshake failed: ").trim_end_matches(" (the peer refused the TLS session: see its log for why)");
                    tls_error(libc::EACCES, format!("TLS handshake failed: the destination refused our certificate: {why} (see its log for why)"))
                }
                _ => e,
            })?;
            match pulled {
                None => return Ok(Need::Readable),
                Some(0) if c.is_handshaking() => return Err(tls_error(libc::ECONNRESET, "TLS handshake failed: the peer closed the connection (does it expect TLS? a peer without TLS credentials, or one that refused ours, closes)")),
                Some(0) => return Err(tls_error(libc::EACCES, "TLS handshake failed: the destination closed the connection instead of accepting our certificate (see its log for why)")),
                Some(_) => {}
            }
        }
    }

    /// A client whose server promised a verdict on its certificate and has
    /// not given it yet. A server that made no promise gives none (QEMU):
    /// waiting for it would only cost time, and a refusal by such a server
    /// shows as an alert on the stream.
    fn verdict_due(&self, c: &Connection) -> bool {
        self.confirm.as_ref().is_some_and(|v| !v.0.load(Ordering::SeqCst)) && c.alpn_protocol() == Some(VERDICT_ALPN)
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
            Err(_) => {
                let c = lock(&self.conn);
                if !c.is_handshaking() && self.verdict_due(&c) {
                    return Err(tls_error(libc::ETIMEDOUT, format!("TLS handshake did not finish within {} ms: the destination did not say whether it accepted our certificate (see its log)", timeout.as_millis())));
                }
                Err(tls_error(libc::ETIMEDOUT, format!("TLS handshake did not finish within {} ms (the peer said too little: is it a TLS peer?)", timeout.as_millis())))
            }
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
    /// None when the socket has nothing more now. Fills `buf` with all that
    /// can be had without waiting: a record is 16 KiB, and a round trip
    /// through JavaScript per record would cost more than the decryption.
    pub fn try_read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        let mut c = lock(&self.conn);
        if !c.ahead().is_empty() {
            let n = c.ahead().len().min(buf.len());
            buf[..n].copy_from_slice(&c.ahead()[..n]);
            c.take_ahead(n);
            return Ok(Some(n));
        }
        Session::read_plain(&mut c.c, fd, buf, self.confirm.is_some())
    }

    /// try_read from the connection itself; `client` says which side reads
    /// (a cut is an end for the source, an error for the destination).
    fn read_plain(c: &mut Connection, fd: RawFd, buf: &mut [u8], client: bool) -> io::Result<Option<usize>> {
        let mut got = 0;
        loop {
            match c.reader().read(&mut buf[got..]) {
                Ok(0) => return Ok(Some(got)),
                Ok(n) => {
                    got += n;
                    if got == buf.len() {
                        return Ok(Some(got));
                    }
                    continue;
                }
                Err(e) if would_block(&e) => {}
                // The bytes before a cut or a failure are the caller's; the
                // error stays and comes with the next read.
                Err(_) if got > 0 => return Ok(Some(got)),
                // The source reads only the return path, framed messages that
                // a cut can only shorten, and QEMU 7.2 destinations close
                // without close_notify: an end there. The destination reads
                // the stream, which an attacker must not be able to shorten
                // unnoticed: an error.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && client => return Ok(Some(0)),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(tls_error(libc::ECONNRESET, "TLS: the peer closed the connection without close_notify (the stream is truncated)"));
                }
                Err(e) => return Err(e),
            }
            let pulled = match Session::pull(c, fd, false) {
                Err(_) if got > 0 => return Ok(Some(got)),
                r => r?,
            };
            if pulled.is_none() {
                return Ok(if got > 0 { Some(got) } else { None });
            }
            // A key update's answer, if any: sent now when there is room,
            // else by the next write.
            let _ = Session::flush(c, fd);
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

    /// Tops the look-ahead up to `want` bytes with what the socket has now,
    /// without waiting, and calls `f` with it (empty when there is none)
    /// and whether nothing more will come; takes the bytes `f` says it used
    /// (see [`Conn::ahead`]). A failure while bytes are held is kept for the
    /// read that finds them gone: those bytes come first.
    pub fn peek_with<R>(&self, fd: RawFd, want: usize, f: impl FnOnce(&[u8], bool) -> (usize, R)) -> io::Result<R> {
        let mut c = lock(&self.conn);
        let mut over = false;
        if c.end - c.at < want {
            if c.ahead.len() < want {
                c.ahead.resize(want, 0);
            }
            if c.at > 0 {
                let (at, end) = (c.at, c.end);
                c.ahead.copy_within(at..end, 0);
                c.end -= at;
                c.at = 0;
            }
            let held = c.end;
            let Conn { c: conn, ahead, end, .. } = &mut *c;
            match Session::read_plain(conn, fd, &mut ahead[held..want], self.confirm.is_some()) {
                Ok(Some(0)) => over = true,
                Ok(Some(n)) => *end += n,
                Ok(None) => {}
                Err(e) if held == 0 => return Err(e),
                Err(_) => over = true,
            }
        }
        let (used, r) = f(c.ahead(), over);
        c.take_ahead(used);
        Ok(r)
    }

    /// Encrypts and sends `bufs` from `*off` on until done (true) or the
    /// socket is full (false), without waiting.
    pub fn write_some(&self, fd: RawFd, bufs: &[&[u8]], off: &mut usize) -> io::Result<bool> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        Ok(self.write_step(fd, bufs, off, total)? == Need::Done)
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
            // One vectored write of up to a chunk: rustls fills whole records
            // across the buffers, where a write per buffer made a record of
            // each (an 8-byte page header, then its page: twice the records,
            // each with its own overhead on both sides).
            let mut budget = PLAIN_CHUNK;
            let mut pos = 0;
            let mut slices = Vec::with_capacity(bufs.len().min(2048));
            for b in bufs {
                if budget == 0 {
                    break;
                }
                let (start, stop) = (pos, pos + b.len());
                pos = stop;
                if *off >= stop {
                    continue;
                }
                let from = off.saturating_sub(start);
                let take = (b.len() - from).min(budget);
                slices.push(io::IoSlice::new(&b[from..from + take]));
                budget -= take;
            }
            *off += c.writer().write_vectored(&slices)?;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::channel::end::Kind;
    use crate::channel::tls_creds::{load, Role};
    use rustls::pki_types::pem::PemObject;
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const CONFIG: &str = "[ req ]\ndistinguished_name = dn\nprompt = no\n[ dn ]\nCN = unused\n[ v3_ca ]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n[ server ]\nbasicConstraints = critical, CA:FALSE\nextendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n[ client ]\nbasicConstraints = critical, CA:FALSE\nextendedKeyUsage = clientAuth\n";

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the TLS tests need the openssl command");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A CA, and a server and a client certificate it signed, in QEMU's layout.
    pub(crate) fn make_creds(name: &str, client_subject: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.cnf"), CONFIG).unwrap();
        for k in ["ca", "server", "client"] {
            openssl(&dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &format!("{k}-key.pem")]);
        }
        openssl(&dir, &["req", "-config", "x.cnf", "-x509", "-new", "-key", "ca-key.pem", "-out", "ca-cert.pem", "-days", "30", "-subj", "/CN=test CA", "-extensions", "v3_ca"]);
        for (k, subject) in [("server", "/O=vmm-migration/CN=destination"), ("client", client_subject)] {
            openssl(&dir, &["req", "-config", "x.cnf", "-new", "-key", &format!("{k}-key.pem"), "-out", &format!("{k}.csr"), "-subj", subject]);
            openssl(&dir, &["x509", "-req", "-in", &format!("{k}.csr"), "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-days", "30", "-extfile", "x.cnf", "-extensions", k, "-out", &format!("{k}-cert.pem")]);
        }
        dir
    }

    fn creds_err(dir: &Path, role: Role, authz: Option<Vec<String>>) -> String {
        load(dir, role, authz).err().unwrap().message
    }

    #[test]
    fn the_loader_reads_each_role_and_names_the_file_at_fault() {
        let dir = make_creds("loader", "/O=vmm-migration/CN=source");
        assert!(matches!(load(&dir, Role::Server, None).unwrap(), Creds::Server(_)));
        assert!(matches!(load(&dir, Role::Client, None).unwrap(), Creds::Client(_)));
        let client = std::fs::read(dir.join("client-cert.pem")).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&client).unwrap();
        assert_eq!(subject_dn(&der).unwrap(), "CN=source,O=vmm-migration");
        let e = creds_err(&dir, Role::Client, Some(vec!["CN=x".into()]));
        assert!(e.contains("destination"), "{e}");
        // A key that is not the certificate's.
        std::fs::copy(dir.join("server-key.pem"), dir.join("client-key.pem")).unwrap();
        let e = creds_err(&dir, Role::Client, None);
        assert!(e.contains("client-key.pem") && e.contains("does not go with client-cert.pem"), "{e}");
        std::fs::remove_file(dir.join("client-key.pem")).unwrap();
        let e = load(&dir, Role::Client, None).err().unwrap();
        assert_eq!(e.errno, libc::ENOENT);
        assert!(e.message.contains("client-key.pem"), "{}", e.message);
        // A CRL file that is there must be usable: it is never skipped.
        std::fs::write(dir.join("ca-crl.pem"), b"garbage").unwrap();
        let e = creds_err(&dir, Role::Server, None);
        assert!(e.contains("ca-crl.pem"), "{e}");
        std::fs::remove_file(dir.join("ca-crl.pem")).unwrap();
        std::fs::write(dir.join("server-cert.pem"), b"").unwrap();
        let e = creds_err(&dir, Role::Server, None);
        assert!(e.contains("server-cert.pem") && e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    async fn pair(server: &Creds, client: &Creds, name: &str) -> (io::Result<()>, io::Result<()>, (Session, End), (Session, End)) {
        let (a, b) = sys::socketpair().unwrap();
        let (a, b) = (End::new(a, Kind::Socket).unwrap(), End::new(b, Kind::Socket).unwrap());
        let (s, c) = (Session::new(server, None).unwrap(), Session::new(client, Some(name)).unwrap());
        let cancel = Cancel::new();
        let t = Duration::from_secs(5);
        let (rs, rc) = tokio::join!(s.handshake(&a, &cancel, t), c.handshake(&b, &cancel, t));
        (rs, rc, (s, a), (c, b))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_carry_bytes_both_ways_and_tls_authz_refuses_with_reasons() {
        let dir = make_creds("session", "/O=vmm-migration/CN=source");
        let client = load(&dir, Role::Client, None).unwrap();
        let server = load(&dir, Role::Server, Some(vec!["cn=source, O=vmm-migration".into()])).unwrap();
        let (rs, rc, (s, a), (c, b)) = pair(&server, &client, "localhost").await;
        rs.unwrap();
        rc.unwrap();
        assert_eq!(s.info().peer_subject.as_deref(), Some("CN=source,O=vmm-migration"));
        assert_eq!(c.info().version, "TLSv1_3");
        let cancel = Cancel::new();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            c.write_all(&b, &[&sent[..10], &sent[10..]], 0, &Cancel::new()).await.unwrap();
            c.close_notify(&b, &Cancel::new()).await.unwrap();
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s.read(&a, &mut buf, &cancel).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert!(got == data, "bytes differ");

        let strict = load(&dir, Role::Server, Some(vec!["CN=other".into()])).unwrap();
        let (rs, rc, ..) = pair(&strict, &client, "localhost").await;
        let (es, ec) = (rs.unwrap_err(), rc.unwrap_err());
        assert!(as_tls_error(&es).unwrap().message.contains("\"CN=source,O=vmm-migration\" is not in tls-authz"), "{es}");
        assert!(as_tls_error(&ec).unwrap().message.contains("the destination refused our certificate"), "{ec}");

        let (_, rc, ..) = pair(&server, &client, "elsewhere.example").await;
        let ec = rc.unwrap_err();
        assert!(ec.to_string().contains("not valid for name"), "{ec}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A server configured as QEMU's (no ALPN, no session ticket), or
    /// one that promises a verdict and never sends it.
    fn like_qemu(server: &Creds, tickets: usize, alpn: bool) -> Creds {
        let Creds::Server(cfg) = server else { panic!("a server's credentials") };
        let mut cfg = (**cfg).clone();
        cfg.send_tls13_tickets = tickets;
        cfg.max_tls13_tickets = tickets;
        if !alpn {
            cfg.alpn_protocols.clear();
        }
        Creds::Server(Arc::new(cfg))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_waits_for_a_verdict_only_from_a_server_that_promised_one() {
        let dir = make_creds("verdict", "/O=vmm-migration/CN=source");
        let client = load(&dir, Role::Client, None).unwrap();
        let server = load(&dir, Role::Server, None).unwrap();
        // Ours promises and answers: the client holds its verdict when done.
        let (rs, rc, _, (c, _b)) = pair(&server, &client, "localhost").await;
        rs.unwrap();
        rc.unwrap();
        assert_eq!(lock(&c.conn).alpn_protocol(), Some(VERDICT_ALPN));
        assert!(c.confirm.as_ref().unwrap().0.load(Ordering::SeqCst), "the verdict came");
        // No promise (QEMU): the handshake ends without waiting for a verdict.
        let (rs, rc, (_s, a), (c, _b)) = pair(&like_qemu(&server, 0, false), &client, "localhost").await;
        rs.unwrap();
        rc.unwrap();
        assert!(!c.verdict_due(&lock(&c.conn)), "no ALPN answer: no verdict to wait for");
        assert!(!c.confirm.as_ref().unwrap().0.load(Ordering::SeqCst), "no ticket was sent");
        drop(a);
        // A client that does not ask (QEMU's) is sent nothing after the
        // handshake: it never reads, and a close with unread bytes would be a reset.
        let client_no_ask = {
            let Creds::Client(cfg) = &client else { panic!() };
            let mut cfg = (**cfg).clone();
            cfg.alpn_protocols.clear();
            cfg.send_ticket_request = None;
            Creds::Client(Arc::new(cfg))
        };
        let (rs, rc, (_s2, a2), (c, b2)) = pair(&server, &client_no_ask, "localhost").await;
        rs.unwrap();
        rc.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 64];
        assert!(c.try_read(b2.raw(), &mut buf).unwrap().is_none(), "the server sent no data");
        assert!(!c.confirm.as_ref().unwrap().0.load(Ordering::SeqCst), "and no ticket after the handshake");
        drop(a2);
        // A promise not kept: the client waits to the handshake's bound, and says why.
        let (_, rc, ..) = pair(&like_qemu(&server, 0, true), &client, "localhost").await;
        let e = rc.unwrap_err();
        assert_eq!(as_tls_error(&e).unwrap().errno, libc::ETIMEDOUT);
        assert!(e.to_string().contains("did not say whether it accepted our certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_plaintext_peer_and_a_silent_one_fail_the_handshake() {
        let dir = make_creds("plain", "/CN=source");
        let server = load(&dir, Role::Server, None).unwrap();
        let (a, b) = sys::socketpair().unwrap();
        let a = End::new(a, Kind::Socket).unwrap();
        sys::write(b.as_raw_fd(), b"QEVM\0\0\0\x03 and more plaintext").unwrap();
        let s = Session::new(&server, None).unwrap();
        let e = s.handshake(&a, &Cancel::new(), Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("is the peer speaking TLS"), "{e}");
        let (a, _b) = sys::socketpair().unwrap();
        let a = End::new(a, Kind::Socket).unwrap();
        let s = Session::new(&server, None).unwrap();
        let e = s.handshake(&a, &Cancel::new(), Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(as_tls_error(&e).unwrap().errno, libc::ETIMEDOUT);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
