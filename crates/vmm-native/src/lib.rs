#![deny(clippy::all)]
use napi_derive::napi;

/// Version of the native layer, for sanity checks from JavaScript.
#[napi]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
