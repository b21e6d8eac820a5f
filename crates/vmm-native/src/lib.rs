//! The napi surface of the native layer. One module per exported family;
//! each owns its classes and functions.

mod container; // Container (/dev/vfio/vfio)
mod datafd; // DataFd: the migration data fd
mod device; // Device: kernel or emulated backend, typed feature helpers
mod emulated; // EmulatedDevice: configuration and control of the emulated device
mod error; // errno-carrying JS errors
mod group; // Group (/dev/vfio/N)
mod kvm; // KVM VM, memory slots, vCPU
mod ram; // guest RAM pages between memory and the migration socket
mod transfer; // zero-copy fd-to-fd transfer

use napi_derive::napi;

/// Version of the native layer, for sanity checks from JavaScript.
#[napi]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
