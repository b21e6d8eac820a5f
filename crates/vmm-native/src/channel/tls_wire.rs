//! A TLS channel as the native data paths use it on a worker thread: the
//! RAM encoder and decoder, the device-state frame pump and loader. Under
//! TLS there is no descriptor they may write plaintext to, so their bytes
//! go through the channel's own [`Session`] here, encrypted and decrypted
//! on the worker thread, never copied through JavaScript.
//!
//! The session's steps never wait; waits are poll(2) on the socket in
//! slices, and between slices the channel's [`Cancel`] is checked, so a
//! migration cancelled (the channel shut down or closed) ends a send or a
//! load with ECANCELED instead of leaving a worker thread waiting on a peer
//! that no longer reads. The Ends are held for the call, so the descriptor
//! stays the same open socket however JavaScript closes the channel.

use super::cancel::Cancel;
use super::chan::Chan;
use super::end::End;
use super::tls::{as_tls_error, Session};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys::Error as NativeError;
use vmm_sys as sys;

const WAIT_SLICE: Duration = Duration::from_millis(250);

/// Plaintext bytes the native data paths moved through TLS sessions since
/// the addon loaded, by path: RAM sent, RAM received, device state sent,
/// device state received. How a test (and a user wondering whether the
/// fast path ran) tells them from the buffered path through JavaScript.
static COUNTS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// The counters, in [`COUNTS`]' order.
pub fn counters() -> [u64; 4] {
    std::array::from_fn(|i| COUNTS[i].load(Ordering::Relaxed))
}

/// One native call's hold on a TLS channel.
pub struct TlsWire {
    session: Arc<Session>,
    rx: Option<Arc<End>>,
    tx: Option<Arc<End>>,
    cancel: Cancel,
    label: String,
    /// Where in COUNTS this call's bytes count (sent; received is next).
    slot: usize,
}

impl TlsWire {
    /// The channel's session and ends, for `call`; EINVAL when the channel
    /// has no TLS session (it has a descriptor to pass instead), EBADF once
    /// closed. Runs on the JavaScript thread: it only clones references.
    pub fn of(chan: &Chan, call: &str) -> Result<TlsWire, NativeError> {
        let session = chan.tls().ok_or_else(|| NativeError::invalid(call, format!("{call}: channel"), "has no TLS session: pass its fd instead"))?;
        let (rx, tx) = (chan.rx().ok(), chan.tx().ok());
        if rx.is_none() && tx.is_none() {
            return Err(NativeError::new(libc::EBADF, call, format!("{call}: TLS channel"), Some("the channel is closed")));
        }
        let slot = if call.starts_with("ram") { 0 } else { 2 };
        Ok(TlsWire { session, rx, tx, cancel: chan.cancel().clone(), label: call.to_string(), slot })
    }

    fn end(&self, write: bool, what: &str, after: u64) -> Result<&End, NativeError> {
        let e = if write { self.tx.as_deref() } else { self.rx.as_deref() };
        e.ok_or_else(|| NativeError::new(libc::EBADF, what, self.context(what, after), Some(if write { "the channel's write side is closed" } else { "the channel's read side is closed" })))
    }

    fn context(&self, what: &str, after: u64) -> String {
        format!("{}: {what} on the TLS channel after {after} bytes", self.label)
    }

    /// `e` as the addon's error: a TLS failure in its own words (a refused
    /// certificate, a truncation), anything else with the call that failed.
    pub fn fail(&self, e: &io::Error, what: &str, after: u64) -> NativeError {
        match as_tls_error(e) {
            Some(t) => NativeError::new(t.errno, "tls", self.context(what, after), Some(&t.message)),
            None => NativeError::from_io(e, what.to_string(), self.context(what, after)),
        }
    }

    /// Waits for `events` on `fd`, in slices: ECANCELED once the channel
    /// was shut down or closed, ETIMEDOUT past `idle` (None: no bound).
    fn wait(&self, fd: RawFd, events: i16, idle: Option<Duration>, what: &str, after: u64) -> Result<(), NativeError> {
        let start = Instant::now();
        loop {
            if self.cancel.fired() {
                return Err(NativeError::new(libc::ECANCELED, what, self.context(what, after), Some("the channel was shut down or closed")));
            }
            let slice = match idle {
                Some(t) => {
                    let left = t.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        let why = if events == libc::POLLOUT { "the peer took nothing within the idle timeout" } else { "nothing came within the idle timeout" };
                        return Err(NativeError::new(libc::ETIMEDOUT, "poll", self.context(what, after), Some(why)));
                    }
                    left.min(WAIT_SLICE)
                }
                None => WAIT_SLICE,
            };
            if sys::poll(fd, events, Some(slice)).map_err(|e| self.fail(&e, "poll", after))? != 0 {
                return Ok(());
            }
        }
    }

    /// Encrypts and sends all of `bufs`, waiting for room; `after` (bytes
    /// this call sent before) is for messages.
    pub fn write_all(&self, bufs: &[&[u8]], idle: Option<Duration>, after: u64) -> Result<(), NativeError> {
        let end = self.end(true, "write", after)?;
        let mut off = 0;
        loop {
            if self.session.write_some(end.raw(), bufs, &mut off).map_err(|e| self.fail(&e, "write", after + off as u64))? {
                COUNTS[self.slot].fetch_add(off as u64, Ordering::Relaxed);
                return Ok(());
            }
            self.wait(end.raw(), libc::POLLOUT, idle, "write", after + off as u64)?;
        }
    }

    /// Reads at least one byte (0 at a clean end), waiting; the look-ahead
    /// first, so nothing a peek left is skipped.
    pub fn read(&self, buf: &mut [u8], idle: Option<Duration>, after: u64) -> Result<usize, NativeError> {
        let end = self.end(false, "read", after)?;
        loop {
            match self.session.try_read(end.raw(), buf).map_err(|e| self.fail(&e, "read", after))? {
                Some(n) => {
                    COUNTS[self.slot + 1].fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                None => self.wait(end.raw(), libc::POLLIN, idle, "read", after)?,
            }
        }
    }

    /// Calls `f` with the plaintext there (reading more, without waiting,
    /// while less than `want` is held) and takes as many bytes as it
    /// returns; waits while there are none. Resolves how many `f` saw, 0
    /// (`f` not called) when nothing more will come.
    pub fn take(&self, want: usize, after: u64, f: &mut dyn FnMut(&[u8]) -> usize) -> Result<usize, NativeError> {
        let end = self.end(false, "read", after)?;
        loop {
            let seen = self
                .session
                .peek_with(end.raw(), want, |b, over| match b.len() {
                    0 => (0, over.then_some((0, 0))),
                    n => {
                        let used = f(b);
                        (used, Some((n, used)))
                    }
                })
                .map_err(|e| self.fail(&e, "read", after))?;
            match seen {
                Some((n, used)) => {
                    COUNTS[self.slot + 1].fetch_add(used as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                None => self.wait(end.raw(), libc::POLLIN, None, "read", after)?,
            }
        }
    }

    /// After `take` showed `have` bytes that held less than a record head:
    /// waits until more is held (true) or nothing more will come (false).
    pub fn wait_more(&self, have: usize, want: usize, after: u64) -> Result<bool, NativeError> {
        let end = self.end(false, "read", after)?;
        loop {
            let (n, over) = self.session.peek_with(end.raw(), want, |b, over| (0, (b.len(), over))).map_err(|e| self.fail(&e, "read", after))?;
            if n > have {
                return Ok(true);
            }
            if over {
                return Ok(false);
            }
            self.wait(end.raw(), libc::POLLIN, None, "read", after)?;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::channel::end::Kind;
    use crate::channel::tls::tests::make_creds;
    use crate::channel::tls_creds::{load, Role};

    /// A pipe whose write end a thread fills with `data` and closes: (read
    /// end, the thread).
    pub(crate) fn fed_pipe(data: Vec<u8>) -> (std::os::fd::OwnedFd, std::thread::JoinHandle<()>) {
        let (r, w) = sys::pipe().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut off = 0;
            while off < data.len() {
                off += sys::write(std::os::fd::AsRawFd::as_raw_fd(&w), &data[off..]).unwrap();
            }
        });
        (r, feeder)
    }

    /// Everything `fd` yields until its end.
    pub(crate) fn drain(fd: std::os::fd::OwnedFd) -> Vec<u8> {
        let mut v = Vec::new();
        let mut b = vec![0u8; 1 << 16];
        loop {
            match sys::read(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut b).unwrap() {
                0 => return v,
                n => v.extend_from_slice(&b[..n]),
            }
        }
    }

    /// A handshaken pair of TLS channels over a socket pair: (server, client).
    pub(crate) async fn tls_pair(name: &str) -> (Arc<Chan>, Arc<Chan>) {
        let dir = make_creds(name, "/O=vmm-migration/CN=source");
        let client = load(&dir, Role::Client, None).unwrap();
        let server = load(&dir, Role::Server, None).unwrap();
        let (a, b) = sys::socketpair().unwrap();
        let (a, b) = (Arc::new(Chan::single(End::new(a, Kind::Socket).unwrap())), Arc::new(Chan::single(End::new(b, Kind::Socket).unwrap())));
        let (s, c) = (Arc::new(Session::new(&server, None).unwrap()), Arc::new(Session::new(&client, Some("localhost")).unwrap()));
        let t = Duration::from_secs(5);
        let (ea, eb) = (a.rx().unwrap(), b.rx().unwrap());
        let (rs, rc) = tokio::join!(s.handshake(&ea, a.cancel(), t), c.handshake(&eb, b.cancel(), t));
        rs.unwrap();
        rc.unwrap();
        a.set_tls(s).unwrap();
        b.set_tls(c).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (a, b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_cross_peeks_leave_them_for_reads_and_cancel_ends_waits() {
        let (dst, src) = tls_pair("wire").await;
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let w = TlsWire::of(&src, "test").unwrap();
        let writer = std::thread::spawn(move || w.write_all(&[&sent[..5], &sent[5..]], None, 0));
        let r = TlsWire::of(&dst, "test").unwrap();
        let mut seen = 0;
        let n = r.take(1000, 0, &mut |b| {
            seen = b.len();
            3
        });
        assert!(n.unwrap() == seen && seen > 3 && seen <= 1000);
        // What the peek left is what a read of the channel gets next.
        let mut got = data[..3].to_vec();
        let mut b = vec![0u8; 1 << 16];
        while got.len() < data.len() {
            let n = r.read(&mut b, Some(Duration::from_secs(5)), 0).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&b[..n]);
        }
        writer.join().unwrap().unwrap();
        assert!(got == data, "bytes differ");
        // A peek past what came waits; a cancel ends it.
        let cancel = dst.cancel().clone();
        let waiter = std::thread::spawn(move || r.take(1000, 7, &mut |b| b.len()));
        std::thread::sleep(Duration::from_millis(100));
        cancel.fire();
        let e = waiter.join().unwrap().unwrap_err();
        assert_eq!(e.errno, libc::ECANCELED, "{}", e.message);
        assert!(e.message.contains("test: read on the TLS channel after 7 bytes"), "{}", e.message);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_to_a_peer_that_stopped_reading_ends_at_cancel_or_idle_timeout() {
        let (_dst, src) = tls_pair("wire-stall").await;
        let w = TlsWire::of(&src, "pumpFrames").unwrap();
        let big = vec![7u8; 64 << 20];
        let e = w.write_all(&[&big], Some(Duration::from_millis(300)), 0).unwrap_err();
        assert_eq!(e.errno, libc::ETIMEDOUT, "{}", e.message);
        let cancel = src.cancel().clone();
        let writer = std::thread::spawn(move || w.write_all(&[&big], None, 5));
        std::thread::sleep(Duration::from_millis(100));
        src.close();
        assert!(cancel.fired());
        let e = writer.join().unwrap().unwrap_err();
        assert_eq!(e.errno, libc::ECANCELED, "{}", e.message);
        assert!(e.message.contains("pumpFrames: write on the TLS channel"), "{}", e.message);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_without_close_notify_is_an_error_for_the_destination_and_a_plain_channel_is_refused() {
        let (dst, src) = tls_pair("wire-cut").await;
        TlsWire::of(&src, "test").unwrap().write_all(&[b"some bytes"], None, 0).unwrap();
        // shutdown(2) with no close_notify: what a cut looks like.
        src.shutdown();
        let r = TlsWire::of(&dst, "test").unwrap();
        assert_eq!(r.take(64, 0, &mut |b| b.len()).unwrap(), 10);
        let e = r.take(64, 10, &mut |b| b.len()).unwrap_err();
        assert_eq!(e.errno, libc::ECONNRESET, "{}", e.message);
        assert!(e.message.contains("truncated"), "{}", e.message);
        let (a, _b) = sys::socketpair().unwrap();
        let plain = Chan::single(End::new(a, Kind::Socket).unwrap());
        let e = TlsWire::of(&plain, "ramSendPages").err().unwrap();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.message.contains("has no TLS session"), "{}", e.message);
    }
}
