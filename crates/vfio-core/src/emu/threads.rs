//! The threads that serve data fd sessions: each takes the device lock to
//! move a batch of bytes through its session, then sleeps in poll outside
//! it. Kept apart from the sessions themselves, which know nothing of the
//! device that holds them.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::device::{Shared, State};
use super::session::BATCH;
use vmm_sys as sys;

/// Starts the thread that produces saving session `id`'s stream into its pipe.
pub fn spawn_saver(shared: Arc<Shared>, id: u64) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("vfio-emu-save".into()).spawn(move || {
        sys::block_sigpipe();
        loop {
            let (w, wake, want_out) = {
                let mut g = shared.lock();
                let st: &mut State = &mut g;
                if st.shutdown {
                    return;
                }
                let Some(s) = st.saving.as_mut().filter(|s| s.id == id) else { return };
                let want_out = s.pump(&mut st.content);
                if s.finished() || s.broken {
                    // Dropping the last write end is the reader's EOF.
                    s.w = None;
                    return;
                }
                (s.w.clone().unwrap(), s.wake.clone(), want_out)
            };
            let ev = if want_out { libc::POLLOUT } else { 0 };
            let _ = sys::poll_many(&[(w.as_raw_fd(), ev), (wake.as_raw_fd(), libc::POLLIN)], -1);
            sys::eventfd_drain(&wake);
        }
    })
}

/// Starts the thread that parses what userspace writes into resuming session `id`.
pub fn spawn_loader(shared: Arc<Shared>, id: u64) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("vfio-emu-load".into()).spawn(move || loop {
        let (r, wake, gone) = {
            let mut g = shared.lock();
            if g.shutdown {
                return;
            }
            let Some(s) = g.resuming.as_mut().filter(|s| s.id == id) else { return };
            s.drain(BATCH);
            (s.r.clone(), s.wake.clone(), s.writer_gone)
        };
        let ev = if gone { 0 } else { libc::POLLIN };
        let _ = sys::poll_many(&[(r.as_raw_fd(), ev), (wake.as_raw_fd(), libc::POLLIN)], -1);
        sys::eventfd_drain(&wake);
    })
}
