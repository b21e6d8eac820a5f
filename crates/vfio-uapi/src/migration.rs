//! The VFIO migration v2 device state machine, as drivers/vfio/vfio_main.c
//! walks it (`vfio_mig_get_next_state`).
//!
//! The kernel moves a device one arc at a time: `next = TABLE[cur][target]`,
//! and while `next` is a state the device lacks it looks again from `next`.
//! ERROR as the answer means the move is refused with EINVAL. Kernels before
//! the fix "Terminate the skip loop on the ERROR sentinel" spin forever on
//! STOP_COPY -> PRE_COPY for a PRE_COPY device because the loop never stops
//! at ERROR; [`next_step`] stops there, which is why userspace checks first.

use std::fmt;

/// `enum vfio_device_mig_state`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceState {
    /// The device failed; only a reset leaves this state.
    Error = 0,
    /// Stopped, no data fd: neither running nor moving state.
    Stop = 1,
    /// Running normally.
    Running = 2,
    /// Stopped, its full state readable from the data fd.
    StopCopy = 3,
    /// Stopped, taking a saved state written to the data fd.
    Resuming = 4,
    /// Running but starting no peer-to-peer DMA.
    RunningP2p = 5,
    /// Running, an initial part of its state readable from the data fd.
    PreCopy = 6,
    /// PRE_COPY without peer-to-peer DMA.
    PreCopyP2p = 7,
}

impl DeviceState {
    /// Every state, indexed by its uAPI value.
    pub const ALL: [DeviceState; 8] = [
        DeviceState::Error,
        DeviceState::Stop,
        DeviceState::Running,
        DeviceState::StopCopy,
        DeviceState::Resuming,
        DeviceState::RunningP2p,
        DeviceState::PreCopy,
        DeviceState::PreCopyP2p,
    ];

    /// The state with uAPI value `v`, if there is one.
    pub fn from_u32(v: u32) -> Option<DeviceState> {
        Self::ALL.get(v as usize).copied()
    }

    /// The uAPI name, as used in error messages and traces.
    pub fn name(self) -> &'static str {
        match self {
            DeviceState::Error => "ERROR",
            DeviceState::Stop => "STOP",
            DeviceState::Running => "RUNNING",
            DeviceState::StopCopy => "STOP_COPY",
            DeviceState::Resuming => "RESUMING",
            DeviceState::RunningP2p => "RUNNING_P2P",
            DeviceState::PreCopy => "PRE_COPY",
            DeviceState::PreCopyP2p => "PRE_COPY_P2P",
        }
    }

    /// States whose entry hands userspace a new data fd (the saving group
    /// STOP_COPY / PRE_COPY / PRE_COPY_P2P shares one fd across its members).
    pub fn has_data_fd(self) -> bool {
        matches!(
            self,
            DeviceState::StopCopy | DeviceState::PreCopy | DeviceState::PreCopyP2p | DeviceState::Resuming
        )
    }

    /// Members of the saving group: moving between them keeps the same fd.
    pub fn is_saving(self) -> bool {
        matches!(self, DeviceState::StopCopy | DeviceState::PreCopy | DeviceState::PreCopyP2p)
    }

    /// The migration flags a device must have to support this state
    /// (the kernel's `state_flags_table`). ERROR is never supported.
    fn required(self) -> Option<MigrationFlags> {
        let f = match self {
            DeviceState::Error => return None,
            DeviceState::RunningP2p => MigrationFlags::STOP_COPY | MigrationFlags::P2P,
            DeviceState::PreCopy => MigrationFlags::STOP_COPY | MigrationFlags::PRE_COPY,
            DeviceState::PreCopyP2p => {
                MigrationFlags::STOP_COPY | MigrationFlags::P2P | MigrationFlags::PRE_COPY
            }
            _ => MigrationFlags::STOP_COPY,
        };
        Some(f)
    }

    /// Whether a device with `flags` supports this state.
    pub fn supported_by(self, flags: MigrationFlags) -> bool {
        match self.required() {
            Some(req) => flags.contains(req),
            None => false,
        }
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `struct vfio_device_feature_migration.flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MigrationFlags(pub u64);

impl MigrationFlags {
    /// `VFIO_MIGRATION_STOP_COPY`.
    pub const STOP_COPY: MigrationFlags = MigrationFlags(1 << 0);
    /// `VFIO_MIGRATION_P2P`.
    pub const P2P: MigrationFlags = MigrationFlags(1 << 1);
    /// `VFIO_MIGRATION_PRE_COPY`.
    pub const PRE_COPY: MigrationFlags = MigrationFlags(1 << 2);

    /// The raw bits.
    pub fn bits(self) -> u64 {
        self.0
    }
    /// Whether every bit of `other` is set.
    pub fn contains(self, other: MigrationFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// STOP_COPY is mandatory; only the three defined bits may be set.
    pub fn is_valid(self) -> bool {
        self.contains(Self::STOP_COPY) && self.0 & !0x7 == 0
    }
}

impl std::ops::BitOr for MigrationFlags {
    type Output = MigrationFlags;
    fn bitor(self, rhs: Self) -> Self {
        MigrationFlags(self.0 | rhs.0)
    }
}

use DeviceState::{
    Error as E, PreCopy as PC, PreCopyP2p as PCP, Resuming as RS, Running as R, RunningP2p as RP,
    Stop as S, StopCopy as SC,
};

/// `TABLE[cur][target]` is the next arc from `cur` toward `target`
/// (the kernel's `vfio_from_fsm_table`), indexed by the uAPI numbers.
const TABLE: [[DeviceState; 8]; 8] = [
    //           ERROR STOP RUNNING STOP_COPY RESUMING RUNNING_P2P PRE_COPY PRE_COPY_P2P
    /* ERROR */ [E, E, E, E, E, E, E, E],
    /* STOP  */ [E, S, RP, SC, RS, RP, RP, RP],
    /* RUN   */ [E, RP, R, RP, RP, RP, PC, RP],
    /* SC    */ [E, S, S, SC, S, S, E, E],
    /* RESUM */ [E, S, S, S, RS, S, S, S],
    /* RP2P  */ [E, S, R, S, S, RP, R, PCP],
    /* PC    */ [E, R, R, PCP, R, R, PC, PCP],
    /* PCP   */ [E, RP, RP, SC, RP, RP, PC, PCP],
];

/// One arc of the kernel's walk from `cur` toward `target` for a device with
/// `flags`: `Some(next)` or `None` when the kernel would answer EINVAL.
/// `next == cur` only when `cur == target`.
pub fn next_step(flags: MigrationFlags, cur: DeviceState, target: DeviceState) -> Option<DeviceState> {
    if !cur.supported_by(flags) || !target.supported_by(flags) {
        return None;
    }
    let mut next = TABLE[cur as usize][target as usize];
    // The skip loop: ERROR ends it (the fixed kernel), so it always terminates:
    // every other row eventually reaches a supported state or ERROR.
    while next != DeviceState::Error && !next.supported_by(flags) {
        next = TABLE[next as usize][target as usize];
    }
    if next == DeviceState::Error {
        None
    } else {
        Some(next)
    }
}

/// The whole walk the kernel takes from `cur` to `target`, excluding `cur`
/// (empty when they are equal), or `None` if the kernel refuses any arc.
pub fn path(flags: MigrationFlags, cur: DeviceState, target: DeviceState) -> Option<Vec<DeviceState>> {
    let mut out = Vec::new();
    let mut at = cur;
    while at != target {
        at = next_step(flags, at, target)?;
        out.push(at);
        if out.len() > 8 {
            // The table has no cycles toward a fixed target; a longer walk is a bug.
            return None;
        }
    }
    if cur != target && !cur.supported_by(flags) {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_FLAGS: [MigrationFlags; 4] = [
        MigrationFlags(1),
        MigrationFlags(1 | 2),
        MigrationFlags(1 | 4),
        MigrationFlags(1 | 2 | 4),
    ];

    #[test]
    fn every_walk_terminates_and_stays_on_supported_states() {
        for flags in ALL_FLAGS {
            for cur in DeviceState::ALL {
                for target in DeviceState::ALL {
                    if let Some(p) = path(flags, cur, target) {
                        assert!(p.iter().all(|s| s.supported_by(flags)), "{cur}->{target} {p:?}");
                        if let Some(last) = p.last() {
                            assert_eq!(*last, target);
                        }
                        // A saving-group state is never passed through on the way elsewhere.
                        for s in &p[..p.len().saturating_sub(1)] {
                            assert!(!s.is_saving() || *s == DeviceState::PreCopyP2p && target == DeviceState::StopCopy,
                                "{cur}->{target} passes {s}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn stop_copy_to_pre_copy_is_refused_not_looped() {
        let all = MigrationFlags(7);
        assert_eq!(next_step(all, DeviceState::StopCopy, DeviceState::PreCopy), None);
        assert_eq!(next_step(all, DeviceState::StopCopy, DeviceState::PreCopyP2p), None);
    }

    #[test]
    fn error_is_never_a_target_and_never_left_by_set() {
        for flags in ALL_FLAGS {
            for s in DeviceState::ALL {
                assert_eq!(next_step(flags, s, DeviceState::Error), None);
                assert_eq!(next_step(flags, DeviceState::Error, s), None);
            }
        }
    }

    #[test]
    fn running_to_stop_skips_p2p_without_it() {
        assert_eq!(path(MigrationFlags(1), DeviceState::Running, DeviceState::Stop), Some(vec![DeviceState::Stop]));
        assert_eq!(
            path(MigrationFlags(3), DeviceState::Running, DeviceState::Stop),
            Some(vec![DeviceState::RunningP2p, DeviceState::Stop])
        );
    }
}
