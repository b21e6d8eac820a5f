//! The napi surface of the native layer. One module per exported family;
//! each owns its classes and functions.

// napi-derive registers exports only outside `cfg(test)`, so in the unit-test
// build every function reachable only from JavaScript looks unused. The
// addon build (`cargo build`, `npm run build:native`) still reports real
// dead code.
#![cfg_attr(test, allow(dead_code))]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod channel; // NativeChannel, NativeListener: the migration sockets and pipes
mod container; // Container (/dev/vfio/vfio)
mod datafd; // DataFd: the migration data fd
mod digest; // blake3Digest: BLAKE3 of guest RAM on several threads
mod device; // Device: kernel or emulated backend, typed feature helpers
mod emulated; // EmulatedDevice: configuration and control of the emulated device
mod error; // errno-carrying JS errors
mod eventfd; // EventFd: interrupt eventfds and a bounded wait on them
mod group; // Group (/dev/vfio/N)
mod handover; // PassedVfio: the kernel VFIO fds a local migration passed
mod kvm; // KVM VM, memory slots, vCPU
mod ram; // guest RAM pages between memory and the migration socket
mod transfer; // zero-copy fd-to-fd transfer

use napi_derive::napi;

/// Version of the native layer, for sanity checks from JavaScript.
#[napi]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
