//! The socket pair of an exec: channel: the command gets one end as both
//! its stdin and its stdout (through `child_process.spawn`'s integer stdio,
//! public Node API), so the stream goes in and whatever the command writes
//! back (a destination's return path) comes out, and the channel's end is
//! read and written natively, never through Node streams.

use std::io;
use std::os::fd::OwnedFd;
use vmm_sys as sys;

/// Ours and the child's, both close-on-exec (spawn dup2s the child's into
/// 0 and 1, which clears the flag on those copies only).
pub fn child_socket() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::socketpair()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn bytes_cross_both_ways() {
        let (ours, theirs) = child_socket().unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(sys::write(ours.as_raw_fd(), b"in").unwrap(), 2);
        assert_eq!(sys::read(theirs.as_raw_fd(), &mut buf).unwrap(), 2);
        assert_eq!(sys::write(theirs.as_raw_fd(), b"out").unwrap(), 3);
        assert_eq!(sys::read(ours.as_raw_fd(), &mut buf).unwrap(), 3);
    }
}
