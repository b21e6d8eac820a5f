//! kvm-core fails with the native layer's one error, [`vmm_sys::Error`]: an
//! errno, the call (the KVM ioctl or syscall that failed, or the kvm-core
//! operation refused before any) and a message naming the object, so the
//! addon hands a KVM failure to JavaScript exactly as it does a VFIO one.
//! The functions here build it for the objects kvm-core owns.
use std::fmt;

pub use vmm_sys::error::{Error, Result};

/// The KVM system device: system ioctls and the VM's creation.
pub const KVM: &str = "/dev/kvm";
/// The VM (its fd, memory slot and dirty log).
pub const VM: &str = "microVM";
/// The VM's one vCPU (its fd, thread and state).
pub const VCPU: &str = "microVM vCPU 0";
/// Guest RAM: the memfd and its mapping.
pub const RAM: &str = "microVM guest RAM";

/// The KVM ioctl `ioctl` on `object` failed.
pub fn kvm(e: kvm_ioctls::Error, object: &str, ioctl: &str) -> Error {
    Error::new(e.errno(), ioctl, format_args!("{object}: {ioctl}"), None)
}

/// The system call `syscall` on `object` failed; `what` says what it was for.
pub fn sys(e: &std::io::Error, object: &str, syscall: &str, what: impl fmt::Display) -> Error {
    Error::from_io(e, syscall, format_args!("{object}: {syscall} {what}"))
}

/// `op` was refused with EINVAL before any syscall; `why` says what was wrong.
pub fn invalid(object: &str, op: &str, why: impl fmt::Display) -> Error {
    refused(libc::EINVAL, object, op, why)
}

/// `op` was refused with `errno` (EBUSY, ENODEV, ...); `why` says why.
pub fn refused(errno: i32, object: &str, op: &str, why: impl fmt::Display) -> Error {
    Error::new(errno, op, format_args!("{object}: {op}"), Some(&why.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_object_the_call_and_the_errno() {
        let e = refused(libc::EBUSY, VCPU, "Machine::start", "vCPU is already running");
        assert_eq!((e.errno, e.code(), e.syscall.as_str()), (libc::EBUSY, "EBUSY", "Machine::start"));
        assert_eq!(e.message, "microVM vCPU 0: Machine::start: EBUSY (vCPU is already running)");
        let e = sys(&std::io::Error::from_raw_os_error(libc::ENOMEM), RAM, "mmap", "of 4096 bytes");
        assert_eq!(e.message, "microVM guest RAM: mmap of 4096 bytes: ENOMEM (Cannot allocate memory)");
        assert_eq!(e.syscall, "mmap");
    }
}
