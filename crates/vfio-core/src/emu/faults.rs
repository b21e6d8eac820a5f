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
    /// The next `.0` VFIO_DEVICE_RESETs fail with errno `.1` and change
    /// nothing, as a function reset the PCI core could not perform does.
    pub fail_reset: Countdown,
    /// The next `.0` VFIO_MIG_GET_PRECOPY_INFO calls fail with errno `.1`
    /// (the driver could not query its firmware).
    pub fail_precopy_info: Countdown,
    /// The next `.0` DMA_LOGGING_REPORT calls fail with errno `.1` after the
    /// kernel's own checks passed (the tracker could not be read).
    pub fail_dma_report: Countdown,
}

/// A fault armed for a number of calls: `(calls left, errno)`.
#[derive(Default, Debug, Clone, Copy)]
pub struct Countdown(pub u32, pub i32);

impl Countdown {
    /// The errno this call fails with, if the fault is still armed.
    pub fn take(&mut self) -> Option<i32> {
        if self.0 == 0 {
            return None;
        }
        self.0 -= 1;
        Some(self.1)
    }
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
