//! Signals for interrupting a thread blocked in a system call (a vCPU in
//! KVM_RUN): a handler that does nothing, installed without SA_RESTART, and
//! a signal sent to one thread.

use crate::cvt;
use std::io;

/// Installs `handler` for `sig` process-wide, without SA_RESTART, so a
/// blocking call the signal interrupts returns EINTR instead of resuming.
///
/// # Safety
/// `handler` must be async-signal-safe, and nothing else in the process may
/// rely on `sig`'s previous disposition.
pub unsafe fn set_handler_no_restart(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid "no flags, empty mask" value,
    // filled in before use; the caller vouches for the handler and the signal.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        cvt(libc::sigaction(sig, &sa, std::ptr::null_mut())).map(|_| ())
    }
}

/// Unblocks `sig` in the calling thread (a thread spawned from a libuv
/// worker inherits a mask that blocks every signal).
pub fn unblock_in_this_thread(sig: libc::c_int) {
    // SAFETY: the set is a local initialised by sigemptyset before use; the
    // mask change affects only this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The calling thread, for [`send_to_thread`].
pub fn this_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Sends `sig` to `thread`.
///
/// # Safety
/// `thread` must be a thread of this process that has not been joined or
/// detached-and-exited: a stale pthread_t is undefined behaviour.
pub unsafe fn send_to_thread(thread: libc::pthread_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: the caller vouches that `thread` is alive.
    match unsafe { libc::pthread_kill(thread, sig) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}
