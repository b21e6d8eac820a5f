use std::fmt;

/// An error that carries the errno of the failing call (0 when the failure is a
/// validation of our own) and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub errno: i32,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error { errno: libc::EINVAL, message: message.into() }
    }

    pub fn sys(errno: i32, what: &str) -> Self {
        let desc = std::io::Error::from_raw_os_error(errno);
        Error { errno, message: format!("{what}: {desc}") }
    }

    pub fn last_os(what: &str) -> Self {
        Self::sys(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO), what)
    }

    pub fn kvm(e: kvm_ioctls::Error, what: &str) -> Self {
        Self::sys(e.errno(), what)
    }

    pub fn state(errno: i32, message: impl Into<String>) -> Self {
        Error { errno, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl std::error::Error for Error {}
