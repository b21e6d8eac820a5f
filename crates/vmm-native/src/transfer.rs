//! `fdTransfer`: the fd-to-fd engine (splice, or read/write when splice is
//! refused) for the stream layer, plus testing helpers that make pipes and
//! socket pairs, which Node cannot create by itself.

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

/// Moves up to `length` bytes from `fromFd` to `toFd` (stops early at end of
/// file); resolves the bytes moved. The fds stay owned by the caller and
/// must stay open until the Promise settles.
#[napi(ts_return_type = "Promise<number>")]
pub fn fd_transfer(from_fd: i32, to_fd: i32, length: f64, options: Option<TransferOptions>) -> AsyncTask<Blocking<i64>> {
    blocking(move || Ok(run(from_fd, to_fd, length, options)?.bytes as i64))
}

/// `fdTransfer` resolving the full statistics (which path ran, why it stopped).
#[napi(ts_return_type = "Promise<TransferStats>")]
pub fn fd_transfer_stats(from_fd: i32, to_fd: i32, length: f64, options: Option<TransferOptions>) -> AsyncTask<Blocking<TransferStats>> {
    blocking(move || Ok(TransferStats::from(run(from_fd, to_fd, length, options)?)))
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
