//! Getting a vCPU thread out of KVM_RUN promptly: the pauser sets
//! kvm_run.immediate_exit (covers the window before the ioctl) and sends a
//! signal whose handler does nothing (interrupts the ioctl with EINTR).
use std::sync::Once;

static INSTALL: Once = Once::new();

pub fn kick_signal() -> i32 {
    // SIGRTMIN+5: clear of glibc's reserved ones and of what Node/libuv use.
    libc::SIGRTMIN() + 5
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Process-wide, once. Without SA_RESTART so KVM_RUN returns EINTR.
pub fn install_handler() {
    INSTALL.call_once(|| unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
    });
}

/// Called on the vCPU thread: threads spawned from a libuv worker inherit a
/// mask that blocks every signal.
pub fn unblock_on_this_thread() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

pub fn kick(thread: libc::pthread_t) {
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
