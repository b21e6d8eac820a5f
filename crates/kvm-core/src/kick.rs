//! Getting a vCPU thread out of KVM_RUN promptly: the pauser sets
//! kvm_run.immediate_exit (covers the window before the ioctl) and sends a
//! signal whose handler does nothing (interrupts the ioctl with EINTR).
use crate::error::{sys, Result, VCPU};
use std::sync::OnceLock;
use vmm_sys::signal;

/// The handler's installation, done once per process; Err holds the errno.
static INSTALLED: OnceLock<std::result::Result<(), i32>> = OnceLock::new();

/// The signal that kicks a vCPU thread.
pub fn kick_signal() -> i32 {
    // SIGRTMIN+5: clear of glibc's reserved ones and of what Node/libuv use.
    libc::SIGRTMIN() + 5
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Process-wide, once. Without SA_RESTART so KVM_RUN returns EINTR. Fails
/// if the kernel refused the handler: without it a kick would kill the
/// process instead of interrupting KVM_RUN.
pub fn install_handler() -> Result<()> {
    let r = *INSTALLED.get_or_init(|| {
        // SAFETY: on_kick does nothing, so it is async-signal-safe, and the
        // kick signal is this crate's own (see kick_signal).
        unsafe { signal::set_handler_no_restart(kick_signal(), on_kick) }
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))
    });
    r.map_err(|errno| sys(&std::io::Error::from_raw_os_error(errno), VCPU, "sigaction", "of the kick signal"))
}

/// Called on the vCPU thread: threads spawned from a libuv worker inherit a
/// mask that blocks every signal.
pub fn unblock_on_this_thread() {
    signal::unblock_in_this_thread(kick_signal());
}

/// Interrupts `thread`'s KVM_RUN (it must have called [`unblock_on_this_thread`]
/// after [`install_handler`] succeeded, and not have been joined yet).
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller holds the machine's ctx lock, which exists only
    // while the vCPU thread is alive (destroy() clears it after the join).
    // The only failure is a thread that is gone, which the lock rules out.
    let _ = unsafe { signal::send_to_thread(thread, kick_signal()) };
}
