//! `NativeListener`: the incoming side's listening socket as JavaScript
//! sees it; each `accept()` resolves a `NativeChannel`.

use super::end::{End, Kind};
use super::js_channel::{fail, in_runtime, settle, NativeChannel};
use super::listen::{Listener, DEFAULT_BACKLOG};
use crate::error::js_error;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use socket2::SockAddr;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use vfio_core::kernel::VfioError;

/// A listening TCP or UNIX socket.
#[napi]
pub struct NativeListener {
    inner: Mutex<Option<Arc<Listener>>>,
    port: Option<u16>,
}

fn backlog_arg(backlog: Option<u32>) -> i32 {
    backlog.map_or(DEFAULT_BACKLOG, |b| b.min(i32::MAX as u32) as i32)
}

fn wrap(l: Listener) -> NativeListener {
    NativeListener { port: l.port(), inner: Mutex::new(Some(Arc::new(l))) }
}

/// The last holder of a listener with a UNIX path may be the JavaScript
/// thread (a listener collected unclosed): its unlink goes to a blocking
/// thread instead.
impl Drop for NativeListener {
    fn drop(&mut self) {
        if let Some(l) = self.inner.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            if l.bound_path() {
                napi::bindgen_prelude::spawn_blocking(move || drop(l));
            }
        }
    }
}

#[napi]
impl NativeListener {
    /// Listens on `ip` (numeric; '0.0.0.0' or '::' for every address) and
    /// `port` (0: any free one, see `port`).
    /// TCP's bind names no file, so it never blocks: it runs here, at once.
    #[napi(factory)]
    pub fn tcp(env: Env, ip: String, port: u32, backlog: Option<u32>) -> Result<NativeListener> {
        match (ip.parse::<IpAddr>(), u16::try_from(port)) {
            (Ok(ip), Ok(port)) => {
                let addr: SockAddr = SocketAddr::new(ip, port).into();
                in_runtime(|| Listener::bind(&addr, backlog_arg(backlog))).map(wrap).map_err(|e| js_error(&env, &fail(&e, "bind")))
            }
            _ => Err(js_error(&env, &VfioError::invalid("bind", "bind", &format!("{ip}:{port} is not a numeric address and port")))),
        }
    }

    /// Listens on the UNIX socket `path` (which must not exist); the path
    /// is removed again by `close()`. The bind creates a file, so it runs
    /// on a blocking thread, never on the JavaScript one.
    #[napi(ts_return_type = "Promise<NativeListener>")]
    pub fn unix(env: Env, path: String, backlog: Option<u32>) -> Result<AsyncBlock<NativeListener>> {
        let backlog = backlog_arg(backlog);
        settle(&env, async move {
            let r = async {
                let addr = SockAddr::unix(&path).map_err(|e| fail(&e, "bind"))?;
                match tokio::task::spawn_blocking(move || Listener::bind(&addr, backlog)).await {
                    Ok(r) => r.map(wrap).map_err(|e| fail(&e, "bind")),
                    Err(e) => Err(fail(&std::io::Error::other(e), "bind")),
                }
            };
            (r.await, ())
        })
    }

    /// The TCP port bound, or null for a UNIX socket.
    #[napi(getter)]
    pub fn port(&self) -> Option<u32> {
        self.port.map(u32::from)
    }

    /// The next peer's channel. Rejects ECANCELED once the listener is
    /// closed (also an accept already waiting).
    #[napi(ts_return_type = "Promise<NativeChannel>")]
    pub fn accept(&self, env: Env) -> Result<AsyncBlock<NativeChannel>> {
        let l = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        settle(&env, async move {
            let r = async {
                let l = l.ok_or_else(|| fail(&vmm_sys::errno(libc::ECANCELED), "accept"))?;
                let (fd, _peer) = l.accept().await.map_err(|e| fail(&e, "accept"))?;
                let end = End::new(fd, Kind::Socket).map_err(|e| fail(&e, "epoll_ctl"))?;
                Ok(NativeChannel::from_socket(end))
            };
            (r.await, ())
        })
    }

    /// Stops listening: pending accepts reject ECANCELED at once; a UNIX
    /// socket's path is removed (on a blocking thread) before the promise
    /// settles; the socket closes once no accept holds it. Idempotent.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self, env: Env) -> Result<AsyncBlock<()>> {
        let l = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(l) = &l {
            l.cancel();
        }
        settle(&env, async move {
            if let Some(l) = l {
                if l.bound_path() {
                    let _ = tokio::task::spawn_blocking(move || l.unbind()).await;
                }
            }
            (Ok(()), ())
        })
    }
}
