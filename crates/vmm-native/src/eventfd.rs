//! `EventFd`: an eventfd for a device's interrupt (VFIO_DEVICE_SET_IRQS), and
//! a bounded wait on it; also a wrapper for one another process passed.

use crate::error::{blocking, ms_arg, Blocking};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use vmm_sys as sys;
use vmm_sys::Error as NativeError;

/// A non-blocking eventfd owned by this object until `close()`.
#[napi]
pub struct EventFd {
    // The wait holds its own Arc of the OwnedFd, so a close() meanwhile
    // only drops this one and the number stays this file's until it returns.
    fd: Arc<Mutex<Option<Arc<OwnedFd>>>>,
    raw: i32,
}

fn closed() -> NativeError {
    NativeError::new(libc::EBADF, "read", "eventfd".to_string(), Some("closed"))
}

#[napi]
impl EventFd {
    /// A new eventfd at 0 (non-blocking, close-on-exec).
    #[napi(ts_return_type = "Promise<EventFd>")]
    pub fn create() -> AsyncTask<Blocking<EventFd>> {
        blocking(|| {
            let fd = sys::eventfd().map_err(|e| NativeError::from_io(&e, "eventfd", "eventfd".to_string()))?;
            let raw = fd.as_raw_fd();
            Ok(EventFd { fd: Arc::new(Mutex::new(Some(Arc::new(fd)))), raw })
        })
    }

    /// Takes ownership of `fd` (one received with a local migration's
    /// descriptors); refused with EBADF when it is negative.
    #[napi(factory)]
    pub fn adopt(fd: i32) -> Result<EventFd> {
        if fd < 0 {
            return Err(Error::new(Status::InvalidArg, format!("EventFd.adopt: fd {fd} is not a descriptor")));
        }
        // SAFETY: the caller hands over a descriptor it owns and no longer uses.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd: Arc::new(Mutex::new(Some(Arc::new(owned)))), raw: fd })
    }

    /// The descriptor (stays owned by this object).
    #[napi(getter)]
    pub fn fd(&self) -> i32 {
        self.raw
    }

    /// Waits at most `timeoutMs` for the counter to be non-zero, then reads
    /// (and so clears) it; resolves the count, 0 when none came in time.
    #[napi(ts_return_type = "Promise<bigint>")]
    pub fn wait(&self, timeout_ms: f64) -> AsyncTask<Blocking<BigInt>> {
        let fd = self.fd.clone();
        let t = ms_arg(Some(timeout_ms), "timeoutMs", "poll");
        blocking(move || {
            let t = t?;
            let held = fd.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(closed)?;
            let raw = held.as_raw_fd();
            let got = sys::poll(raw, libc::POLLIN, t).map_err(|e| NativeError::from_io(&e, "poll", "eventfd".to_string()))?;
            if got & libc::POLLIN == 0 {
                return Ok(BigInt::from(0u64));
            }
            let mut v = [0u8; 8];
            match sys::read(raw, &mut v) {
                Ok(8) => Ok(BigInt::from(u64::from_ne_bytes(v))),
                Ok(_) => Ok(BigInt::from(0u64)),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(BigInt::from(0u64)),
                Err(e) => Err(NativeError::from_io(&e, "read", "eventfd".to_string())),
            }
        })
    }

    /// Closes the eventfd (off this thread); false when it was closed already.
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn close(&self) -> AsyncTask<Blocking<bool>> {
        let fd = self.fd.clone();
        blocking(move || Ok(fd.lock().unwrap_or_else(|p| p.into_inner()).take().is_some()))
    }
}
