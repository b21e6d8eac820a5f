//! Runtime-controllable failures, consumed by the paths they target.

use std::time::Instant;

use vfio_uapi::DeviceState;

#[derive(Default, Debug)]
pub struct Faults {
    /// The next arc into `.0` fails with errno `.1`; when `.2`, the first arc
    /// of the following SET (the caller's recovery) fails too and leaves the
    /// device in ERROR, as a device that cannot restore itself does.
    pub fail_move: Option<(DeviceState, i32, bool)>,
    pub fail_recovery: Option<i32>,
    /// Stream offsets whose byte is flipped in the next saving session.
    pub corrupt: Vec<u64>,
    /// The next `.0` data reads/writes move at most `.1` bytes.
    pub short_io: (u32, usize),
    /// The next n data reads/writes fail with EAGAIN.
    pub eagain: u32,
    /// The device resets itself at this time (from its own thread).
    pub reset_at: Option<Instant>,
}

impl Faults {
    /// An injected EAGAIN for this data call, if one is pending.
    pub fn take_eagain(&mut self) -> bool {
        if self.eagain > 0 {
            self.eagain -= 1;
            return true;
        }
        false
    }

    /// The length this data call may move, consuming a short-I/O fault
    /// only when the call is about to move bytes.
    pub fn take_short(&mut self, len: usize) -> usize {
        if self.short_io.0 > 0 && len > 0 {
            self.short_io.0 -= 1;
            return len.min(self.short_io.1.max(1));
        }
        len
    }
}
