//! Errors as JavaScript sees them, and how VFIO, RAM, transfer and digest
//! work leaves the JavaScript thread (`kvm.rs` has task types of its own).
//!
//! Every native failure (VFIO, guest RAM, KVM, the channels) is a
//! [`vmm_sys::Error`], and [`js_error`] is the one place it becomes an
//! `Error` with `code` ('EINVAL'), `errno` (22), `syscall`
//! ('VFIO_DEVICE_FEATURE(MIG_DEVICE_STATE)', 'KVM_RUN') and a message naming
//! the object and the request, like Node's own fs/net errors.

use napi::bindgen_prelude::*;
use napi::{Env, Task};
use vmm_sys::Error as NativeError;

pub(crate) type VResult<T> = std::result::Result<T, NativeError>;

fn build(env: &Env, e: &NativeError) -> napi::Result<napi::Error> {
    let mut obj = env.create_error(napi::Error::new(Status::GenericFailure, e.message.clone()))?;
    obj.set("code", e.code())?;
    obj.set("errno", e.errno)?;
    obj.set("syscall", e.syscall.as_str())?;
    Ok(napi::Error::from((&obj).into_unknown(env)?))
}

/// The JS error for `e` (a plain Error with the message if building fails).
pub(crate) fn js_error(env: &Env, e: &NativeError) -> napi::Error {
    build(env, e).unwrap_or_else(|_| napi::Error::new(Status::GenericFailure, e.message.clone()))
}

/// Work for a libuv worker thread; its result or NativeError settles a Promise.
pub struct Blocking<T: Send + 'static> {
    work: Option<Box<dyn FnOnce() -> VResult<T> + Send>>,
}

impl<T: ToNapiValue + TypeName + Send + 'static> Task for Blocking<T> {
    type Output = VResult<T>;
    type JsValue = T;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let work = self.work.take().ok_or_else(|| napi::Error::from_reason("native task ran twice"))?;
        Ok(work())
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<T> {
        output.map_err(|e| js_error(&env, &e))
    }
}

/// Runs `f` on a worker thread; the returned task is a Promise in JS.
pub(crate) fn blocking<T, F>(f: F) -> AsyncTask<Blocking<T>>
where
    T: ToNapiValue + TypeName + Send + 'static,
    F: FnOnce() -> VResult<T> + Send + 'static,
{
    AsyncTask::new(Blocking { work: Some(Box::new(f)) })
}

/// A u64 from a JS bigint, refusing negative or wider values with EINVAL.
pub(crate) fn u64_arg(v: &BigInt, name: &str, call: &str) -> VResult<u64> {
    let (negative, value, lossless) = v.get_u64();
    if negative || !lossless {
        return Err(NativeError::invalid(call, format!("{call}: argument {name}"), "must be a bigint in 0..2^64"));
    }
    Ok(value)
}

/// A non-negative safe integer from a JS number.
pub(crate) fn len_arg(v: f64, name: &str, call: &str) -> VResult<u64> {
    if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0) {
        return Err(NativeError::invalid(call, format!("{call}: argument {name} = {v}"), "must be a non-negative safe integer"));
    }
    Ok(v as u64)
}

/// An optional timeout in ms from JS; omitted is None (wait forever).
pub(crate) fn ms_arg(v: Option<f64>, name: &str, call: &str) -> VResult<Option<std::time::Duration>> {
    v.map(|t| len_arg(t, name, call).map(std::time::Duration::from_millis)).transpose()
}

/// An fd number from JS: negative numbers are EBADF, as for the syscalls.
pub(crate) fn fd_arg(fd: i32, name: &str, call: &str) -> VResult<i32> {
    if fd < 0 {
        return Err(NativeError::new(libc::EBADF, call, format!("{call}: argument {name} = {fd}"), Some("not a file descriptor")));
    }
    Ok(fd)
}
