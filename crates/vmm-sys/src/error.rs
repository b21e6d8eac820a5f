//! The one error of the native layer: VFIO, guest RAM over the migration
//! socket and KVM all fail with it, so JavaScript gets one shape for every
//! native failure (vmm-native turns it into an `Error` with `code`, `errno`
//! and `syscall` in one place). It carries an errno (as the kernel would
//! return it), the call that failed, and a message naming the object and
//! what was asked of it, so a failure in a migration log says which device,
//! socket or vCPU without a debugger.

use std::fmt;
use std::io;

/// A failed native call: errno, call and a message naming the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Positive errno value.
    pub errno: i32,
    /// The system call or ioctl that failed ("open", "splice",
    /// "VFIO_DEVICE_FEATURE(MIG_DEVICE_STATE)", "KVM_RUN"); for a request
    /// refused before any, the operation refused ("ramSendPages",
    /// "VcpuState::from_bytes").
    pub syscall: String,
    /// Full message, "<object>: <what>: <CODE> (<detail>)".
    pub message: String,
}

impl Error {
    /// `context` names the object and the request ("/dev/vfio/vfio: open");
    /// `detail` explains the errno (None: the C library's text).
    pub fn new(errno: i32, syscall: impl Into<String>, context: impl fmt::Display, detail: Option<&str>) -> Self {
        let detail = detail.map(str::to_string).unwrap_or_else(|| strerror(errno));
        Error {
            errno,
            syscall: syscall.into(),
            message: format!("{context}: {} ({detail})", errno_name(errno)),
        }
    }

    /// Wraps an `io::Error` from a syscall; errors without an OS errno
    /// (cannot happen for raw syscalls) map to EIO.
    pub fn from_io(e: &io::Error, syscall: impl Into<String>, context: impl fmt::Display) -> Self {
        match e.raw_os_error() {
            Some(errno) => Error::new(errno, syscall, context, None),
            None => Error::new(libc::EIO, syscall, context, Some(&e.to_string())),
        }
    }

    /// A request refused before any syscall (bad arguments, illegal state move).
    pub fn invalid(syscall: impl Into<String>, context: impl fmt::Display, why: &str) -> Self {
        Error::new(libc::EINVAL, syscall, context, Some(why))
    }

    /// The errno name, "EINVAL".
    pub fn code(&self) -> &'static str {
        errno_name(self.errno)
    }

    /// An `io::Error` with the same errno.
    pub fn to_io(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The result of every fallible native call.
pub type Result<T> = std::result::Result<T, Error>;

/// The C library's description of an errno ("No such file or directory").
pub fn strerror(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    // std appends " (os error N)"; the code is already in the message.
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Linux errno names by number (asm-generic/errno-base.h and errno.h; x86-64
/// uses the generic numbering). Unknown numbers are "EUNKNOWN".
pub fn errno_name(errno: i32) -> &'static str {
    const NAMES: &[&str] = &["", "EPERM", "ENOENT", "ESRCH", "EINTR", "EIO", "ENXIO", "E2BIG", "ENOEXEC", "EBADF", "ECHILD", "EAGAIN", "ENOMEM", "EACCES", "EFAULT", "ENOTBLK", "EBUSY", "EEXIST", "EXDEV", "ENODEV", "ENOTDIR", "EISDIR", "EINVAL", "ENFILE", "EMFILE", "ENOTTY", "ETXTBSY", "EFBIG", "ENOSPC", "ESPIPE", "EROFS", "EMLINK", "EPIPE", "EDOM", "ERANGE", "EDEADLK", "ENAMETOOLONG", "ENOLCK", "ENOSYS", "ENOTEMPTY", "ELOOP", "", "ENOMSG", "EIDRM", "ECHRNG", "EL2NSYNC", "EL3HLT", "EL3RST", "ELNRNG", "EUNATCH", "ENOCSI", "EL2HLT", "EBADE", "EBADR", "EXFULL", "ENOANO", "EBADRQC", "EBADSLT", "", "EBFONT", "ENOSTR", "ENODATA", "ETIME", "ENOSR", "ENONET", "ENOPKG", "EREMOTE", "ENOLINK", "EADV", "ESRMNT", "ECOMM", "EPROTO", "EMULTIHOP", "EDOTDOT", "EBADMSG", "EOVERFLOW", "ENOTUNIQ", "EBADFD", "EREMCHG", "ELIBACC", "ELIBBAD", "ELIBSCN", "ELIBMAX", "ELIBEXEC", "EILSEQ", "ERESTART", "ESTRPIPE", "EUSERS", "ENOTSOCK", "EDESTADDRREQ", "EMSGSIZE", "EPROTOTYPE", "ENOPROTOOPT", "EPROTONOSUPPORT", "ESOCKTNOSUPPORT", "EOPNOTSUPP", "EPFNOSUPPORT", "EAFNOSUPPORT", "EADDRINUSE", "EADDRNOTAVAIL", "ENETDOWN", "ENETUNREACH", "ENETRESET", "ECONNABORTED", "ECONNRESET", "ENOBUFS", "EISCONN", "ENOTCONN", "ESHUTDOWN", "ETOOMANYREFS", "ETIMEDOUT", "ECONNREFUSED", "EHOSTDOWN", "EHOSTUNREACH", "EALREADY", "EINPROGRESS", "ESTALE", "EUCLEAN", "ENOTNAM", "ENAVAIL", "EISNAM", "EREMOTEIO", "EDQUOT", "ENOMEDIUM", "EMEDIUMTYPE", "ECANCELED", "ENOKEY", "EKEYEXPIRED", "EKEYREVOKED", "EKEYREJECTED", "EOWNERDEAD", "ENOTRECOVERABLE", "ERFKILL", "EHWPOISON", ];
    usize::try_from(errno)
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .filter(|s| !s.is_empty())
        .unwrap_or("EUNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_libc() {
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(libc::ENOMSG), "ENOMSG");
        assert_eq!(errno_name(libc::ENOTTY), "ENOTTY");
        assert_eq!(errno_name(libc::EHWPOISON), "EHWPOISON");
        assert_eq!(errno_name(41), "EUNKNOWN");
        assert_eq!(errno_name(-1), "EUNKNOWN");
    }

    #[test]
    fn message_has_context_code_and_detail() {
        let e = Error::from_io(&io::Error::from_raw_os_error(libc::ENOENT), "open", "/dev/vfio/vfio: open");
        assert_eq!(e.message, "/dev/vfio/vfio: open: ENOENT (No such file or directory)");
        assert_eq!(e.code(), "ENOENT");
    }
}
