//! The microVM's KVM side. See docs/microvm.md for the guest layout, the
//! workload and the state format.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod kick;
pub mod layout;
pub mod machine;
pub mod probe;
pub mod ram;
pub mod state;
pub mod vcpu;

pub use error::{Error, Result};
pub use layout::WorkloadParams;
pub use machine::{Machine, StopReason};
pub use probe::{probe, Probe};
pub use ram::GuestRam;
pub use state::VcpuState;
