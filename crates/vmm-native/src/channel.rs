//! The migration channels: sockets (and the pipe an fd: URI may name)
//! owned by Rust, for vmm/channel/fd-channel.ts.
//!
//! Each descriptor is non-blocking and registered with napi-rs's tokio
//! runtime, so a read or accept that has to wait costs no thread: the
//! runtime's epoll wakes it. The JavaScript side first tries each read and
//! write on its own thread with one non-blocking call (as libuv does for
//! Node's sockets) and comes here to wait only when the kernel has nothing
//! for it (`NativeChannel.read`, `writev`). Nothing is read ahead: a read
//! takes at most what its caller asked for, so native transfers may use
//! the fd directly between two reads.
//!
//! One job per file: [`cancel`] (waking every wait of a channel), [`end`]
//! (one registered descriptor and its I/O), [`chan`] (a channel's ends and
//! their lifetime), [`connect`], [`listen`], [`options`] (keepalive, user
//! timeout, buffer sizes), [`tls`] and [`tls_creds`] (TLS 1.3 sessions and
//! QEMU-layout x509 credentials, [`js_tls`] for JavaScript), [`child`] (the socket pair of an exec: command),
//! and the JavaScript classes in [`js_channel`] and [`js_listener`].

pub mod cancel;
pub mod chan;
pub mod child;
pub mod connect;
pub mod end;
pub mod js_channel;
pub mod js_listener;
pub mod listen;
pub mod options;
pub mod tls;
pub mod tls_creds;
pub mod tls_wire;
pub mod js_tls;
