//! `fdTransfer`: the fd-to-fd engine (splice, or read/write when splice is
//! refused) for the stream layer, plus testing helpers that make pipes and
//! socket pairs, which Node cannot create by itself.

use crate::channel::js_channel::{target_arg, Target};
use crate::error::{blocking, fd_arg, len_arg, ms_arg, Blocking, VResult};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use std::os::fd::{AsRawFd, IntoRawFd};
use vmm_sys::Error as NativeError;
use vfio_core::transfer::{self, Options, PlainFd, Stats};
use vmm_sys as sys;

#[napi(object)]
#[derive(Clone)]
pub struct TransferOptions {
    /// Longest wait for a non-blocking fd (EAGAIN) to become ready, in ms;
    /// exceeded: ETIMEDOUT. Omitted: wait forever.
    pub idle_timeout_ms: Option<f64>,
    /// Largest single read/write/splice in bytes (default 1 MiB, max 64 MiB).
    pub chunk_size: Option<u32>,
    /// false forces read/write (default true).
    pub allow_splice: Option<bool>,
}

#[napi(object)]
pub struct TransferStats {
    pub bytes: i64,
    /// 'splice' (one end a pipe), 'pipe-splice' (through a private pipe) or
    /// 'read-write' (splice refused or disabled).
    pub path: String,
    /// 'limit' (all bytes asked for), 'eof', or 'enomsg' (PRE_COPY data fd
    /// with nothing more for now).
    pub end: String,
    /// The errno name that made splice give way to read/write, if any.
    pub fallback: Option<String>,
}

impl From<Stats> for TransferStats {
    fn from(s: Stats) -> Self {
        TransferStats {
            bytes: s.bytes as i64,
            path: s.path.name().to_string(),
            end: s.end.name().to_string(),
            fallback: s.fallback_errno.map(|e| vfio_core::kernel::error::errno_name(e).to_string()),
        }
    }
}

const MAX_CHUNK: u32 = 64 << 20;

pub(crate) fn options(o: Option<&TransferOptions>) -> VResult<Options> {
    let mut opts = Options::default();
    if let Some(o) = o {
        opts.idle_timeout = ms_arg(o.idle_timeout_ms, "idleTimeoutMs", "transfer")?;
        if let Some(c) = o.chunk_size {
            if c == 0 || c > MAX_CHUNK {
                return Err(NativeError::invalid("transfer", "transfer: option chunkSize", &format!("must be 1..{MAX_CHUNK}, got {c}")));
            }
            opts.chunk = c as usize;
        }
        if let Some(a) = o.allow_splice {
            opts.allow_splice = a;
        }
    }
    Ok(opts)
}

fn run(from: i32, to: i32, length: f64, o: Option<TransferOptions>) -> VResult<Stats> {
    let from = fd_arg(from, "fromFd", "transfer")?;
    let to = fd_arg(to, "toFd", "transfer")?;
    let len = len_arg(length, "length", "transfer")?;
    let opts = options(o.as_ref())?;
    let label = format!("fdTransfer fd {from} -> fd {to}");
    // Our own references for the call (see vfio_core::datafd's hold): a
    // number closed by its owner meanwhile is never reused under us.
    let held = |fd: i32| sys::dup(fd).map_err(|e| NativeError::from_io(&e, "transfer", format!("{label}: fd {fd}")));
    let (f, t) = (held(from)?, held(to)?);
    transfer::transfer(&PlainFd(f.as_raw_fd()), &PlainFd(t.as_raw_fd()), len, &opts, &label)
}

thread_local! {
    // One buffer per worker thread for transfers through a TLS session.
    static TLS_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Waits for `events` on a plain fd of a TLS transfer, at most `idle`.
fn wait_fd(fd: i32, events: i16, idle: Option<std::time::Duration>, label: &str, done: u64) -> VResult<()> {
    match sys::poll(fd, events, idle) {
        Ok(0) => Err(NativeError::new(libc::ETIMEDOUT, "poll", format!("{label}: fd {fd} after {done} bytes"), Some("not ready within the idle timeout"))),
        Ok(_) => Ok(()),
        Err(e) => Err(NativeError::from_io(&e, "poll", format!("{label}: fd {fd} after {done} bytes"))),
    }
}

/// A transfer with a TLS channel at one end: the channel's bytes are
/// decrypted into (or encrypted from) a native buffer on this worker
/// thread, the fd read or written as the plain engine would (EAGAIN waits).
/// Stops early at the end of either source.
fn run_tls(from: Target, to: Target, len: u64, opts: &Options) -> VResult<Stats> {
    let stats = |bytes, end| Stats { bytes, path: transfer::Path::ReadWrite, end, fallback_errno: None };
    let chunk = opts.chunk;
    TLS_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < chunk {
            buf.resize(chunk, 0);
        }
        let mut done = 0u64;
        match (from, to) {
            (Target::Tls(w), Target::Fd(fd)) => {
                let label = format!("fdTransfer TLS channel -> fd {fd}");
                let t = sys::dup(fd).map_err(|e| NativeError::from_io(&e, "transfer", format!("{label}: fd {fd}")))?;
                while done < len {
                    let want = (len - done).min(chunk as u64) as usize;
                    let n = w.read(&mut buf[..want], opts.idle_timeout, done)?;
                    if n == 0 {
                        return Ok(stats(done, transfer::End::Eof));
                    }
                    let mut off = 0;
                    while off < n {
                        match sys::write(t.as_raw_fd(), &buf[off..n]) {
                            Ok(0) => return Err(NativeError::new(libc::EIO, "write", format!("{label} after {done} bytes"), Some("the fd took no bytes"))),
                            Ok(m) => off += m,
                            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => wait_fd(t.as_raw_fd(), libc::POLLOUT, opts.idle_timeout, &label, done)?,
                            Err(e) => return Err(NativeError::from_io(&e, "write", format!("{label} after {done} bytes"))),
                        }
                    }
                    done += n as u64;
                }
                Ok(stats(done, transfer::End::Limit))
            }
            (Target::Fd(fd), Target::Tls(w)) => {
                let label = format!("fdTransfer fd {fd} -> TLS channel");
                let f = sys::dup(fd).map_err(|e| NativeError::from_io(&e, "transfer", format!("{label}: fd {fd}")))?;
                while done < len {
                    let want = (len - done).min(chunk as u64) as usize;
                    let n = match sys::read(f.as_raw_fd(), &mut buf[..want]) {
                        Ok(0) => return Ok(stats(done, transfer::End::Eof)),
                        Ok(n) => n,
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                            wait_fd(f.as_raw_fd(), libc::POLLIN, opts.idle_timeout, &label, done)?;
                            continue;
                        }
                        Err(e) => return Err(NativeError::from_io(&e, "read", format!("{label} after {done} bytes"))),
                    };
                    w.write_all(&[&buf[..n]], opts.idle_timeout, done)?;
                    done += n as u64;
                }
                Ok(stats(done, transfer::End::Limit))
            }
            _ => Err(NativeError::invalid("transfer", "fdTransfer", "one end must be an fd: two TLS channels have no transfer between them")),
        }
    })
}

/// The arguments of a transfer whose ends may be TLS channels, checked on
/// the JavaScript thread; the work for the worker thread.
fn job(from: Unknown<'_>, to: Unknown<'_>, length: f64, o: Option<TransferOptions>) -> impl FnOnce() -> VResult<Stats> {
    let ends = target_arg(from, "fromFd", "fdTransfer").and_then(|f| Ok((f, target_arg(to, "toFd", "fdTransfer")?)));
    move || match ends? {
        (Target::Fd(f), Target::Fd(t)) => run(f, t, length, o),
        (f, t) => run_tls(f, t, len_arg(length, "length", "transfer")?, &options(o.as_ref())?),
    }
}

/// Moves up to `length` bytes from `fromFd` to `toFd` (stops early at end of
/// file); resolves the bytes moved. The fds stay owned by the caller and
/// must stay open until the Promise settles. Either end may be a TLS
/// channel (which hands out no fd): its bytes are then decrypted or
/// encrypted through its session, on the worker thread.
#[napi(ts_args_type = "fromFd: number | NativeChannel, toFd: number | NativeChannel, length: number, options?: TransferOptions | undefined | null", ts_return_type = "Promise<number>")]
pub fn fd_transfer(from_fd: Unknown<'_>, to_fd: Unknown<'_>, length: f64, options: Option<TransferOptions>) -> AsyncTask<Blocking<i64>> {
    let work = job(from_fd, to_fd, length, options);
    blocking(move || Ok(work()?.bytes as i64))
}

/// `fdTransfer` resolving the full statistics (which path ran, why it stopped).
#[napi(ts_args_type = "fromFd: number | NativeChannel, toFd: number | NativeChannel, length: number, options?: TransferOptions | undefined | null", ts_return_type = "Promise<TransferStats>")]
pub fn fd_transfer_stats(from_fd: Unknown<'_>, to_fd: Unknown<'_>, length: f64, options: Option<TransferOptions>) -> AsyncTask<Blocking<TransferStats>> {
    let work = job(from_fd, to_fd, length, options);
    blocking(move || Ok(TransferStats::from(work()?)))
}

fn pair(env: &Env, r: std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>, call: &str) -> Result<Vec<i32>> {
    match r {
        // The caller owns both fds now (close them with fs.closeSync).
        Ok((a, b)) => Ok(vec![a.into_raw_fd(), b.into_raw_fd()]),
        Err(e) => Err(crate::error::js_error(env, &NativeError::from_io(&e, call, call))),
    }
}

/// TESTING ONLY: a blocking pipe, [readFd, writeFd]; the caller closes both.
#[napi]
pub fn testing_pipe(env: Env) -> Result<Vec<i32>> {
    pair(&env, sys::pipe(), "pipe2")
}

/// TESTING ONLY: a blocking AF_UNIX stream socket pair; the caller closes both.
#[napi]
pub fn testing_socket_pair(env: Env) -> Result<Vec<i32>> {
    pair(&env, sys::socketpair(), "socketpair")
}

/// shutdown(2) of both directions of a socket. It never blocks, so it runs
/// on the calling thread. It wakes every call blocked on the socket,
/// including native transfers that hold their own reference to it, which
/// closing the fd would not. False when `fd` is not a connected socket.
#[napi]
pub fn shutdown_socket(fd: i32) -> bool {
    fd >= 0 && sys::shutdown(fd).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::tls_wire::tests::{drain, fed_pipe, tls_pair};
    use crate::channel::tls_wire::TlsWire;

    fn tls(w: TlsWire) -> Target {
        Target::Tls(w)
    }

    /// fd -> TLS channel -> fd: the bytes arrive whole, a transfer stops at
    /// the length asked (nothing read past it) and at the end of its source.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_move_between_fds_and_a_tls_channel_both_ways() {
        let (dst, src) = tls_pair("transfer").await;
        let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 241) as u8).collect();
        let (r, feeder) = fed_pipe(data.clone());
        let out = TlsWire::of(&src, "fdTransfer").unwrap();
        let opts = options(None).unwrap();
        let sender = std::thread::spawn(move || {
            let st = run_tls(Target::Fd(r.as_raw_fd()), tls(out), u64::MAX, &options(None).unwrap()).unwrap();
            drop(r);
            st
        });
        let (pr, pw) = sys::pipe().unwrap();
        let reader = std::thread::spawn(move || drain(pr));
        let a = run_tls(tls(TlsWire::of(&dst, "fdTransfer").unwrap()), Target::Fd(pw.as_raw_fd()), 1_000_000, &opts).unwrap();
        assert_eq!((a.bytes, a.end), (1_000_000, transfer::End::Limit));
        let rest = TlsWire::of(&dst, "fdTransfer").unwrap();
        let second = std::thread::spawn(move || {
            let b = run_tls(tls(rest), Target::Fd(pw.as_raw_fd()), u64::MAX, &options(None).unwrap());
            drop(pw);
            b
        });
        feeder.join().unwrap();
        let s = sender.join().unwrap();
        assert_eq!((s.bytes, s.end), (2_500_000, transfer::End::Eof));
        src.close();
        let b = second.join().unwrap().unwrap();
        assert_eq!((b.bytes, b.end), (1_500_000, transfer::End::Eof), "the rest, then close_notify: a clean end");
        assert!(reader.join().unwrap() == data, "bytes differ");
        let e = run_tls(tls(TlsWire::of(&dst, "fdTransfer").unwrap()), tls(TlsWire::of(&dst, "fdTransfer").unwrap()), 1, &opts).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
    }
}
