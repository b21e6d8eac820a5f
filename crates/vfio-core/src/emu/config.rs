//! What an emulated device is: fixed at construction, checked once.

use std::io;

use vfio_uapi::MigrationFlags;

use super::content::{Layout, DEFAULT_REGION_SIZE, MAX_REGIONS};

/// How an emulated device is built.
#[derive(Clone, Debug)]
pub struct EmuConfig {
    /// Its name in messages ("emulated:nic0").
    pub name: String,
    /// Any legal set: STOP_COPY alone, +P2P, +PRE_COPY, or all three.
    pub flags: MigrationFlags,
    /// Bytes of device state (generated from `seed`, never held in memory).
    pub state_size: u64,
    /// Granularity of dirtying and of the stream's records.
    pub region_size: u32,
    /// Seed of its content and of its dirtying, so runs repeat.
    pub seed: u64,
    /// Bytes the device dirties per second while RUNNING, PRE_COPY or
    /// PRE_COPY_P2P (changeable later with `set_dirty_rate`).
    pub dirty_rate: u64,
    /// Stream bytes a PRE_COPY session offers as initial data (header plus
    /// whole records up to this many bytes); `None` = the whole state. The
    /// regions past it are only sent in STOP_COPY, like mtty's ports.
    pub initial_bytes: Option<u64>,
    /// DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*) with at most this many
    /// ranges tracked (more are merged, as mlx5 does); `None` = unsupported.
    pub dma_logging_max_ranges: Option<u32>,
    /// VFIO_DEVICE_FEATURE_MIG_DATA_SIZE supported.
    pub mig_data_size: bool,
}

impl Default for EmuConfig {
    fn default() -> Self {
        EmuConfig {
            name: "emulated".into(),
            flags: MigrationFlags::STOP_COPY | MigrationFlags::P2P | MigrationFlags::PRE_COPY,
            state_size: 1 << 20,
            region_size: DEFAULT_REGION_SIZE,
            seed: 1,
            dirty_rate: 0,
            initial_bytes: None,
            dma_logging_max_ranges: Some(256),
            mig_data_size: true,
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("EINVAL: {msg}"))
}

impl EmuConfig {
    /// The state layout these sizes give.
    pub fn layout(&self) -> Layout {
        Layout { state_size: self.state_size, region_size: self.region_size }
    }

    /// Refuses what no driver could advertise. The error is EINVAL-kind with
    /// a message naming the field; `raw_os_error` is not set because the
    /// message is what a caller needs here.
    pub fn validate(&self) -> io::Result<()> {
        if !self.flags.is_valid() {
            return Err(invalid(format!(
                "migration flags {:#x}: STOP_COPY (1) is mandatory and only P2P (2) and PRE_COPY (4) may be added",
                self.flags.bits()
            )));
        }
        if self.region_size < 4096 || self.region_size > 64 << 20 {
            return Err(invalid(format!("region_size {} outside 4096 ..= 64 MiB", self.region_size)));
        }
        let regions = self.state_size.div_ceil(self.region_size as u64);
        if regions > MAX_REGIONS {
            return Err(invalid(format!(
                "state_size {} needs {regions} regions of {} bytes, at most {MAX_REGIONS}: raise region_size",
                self.state_size, self.region_size
            )));
        }
        if let Some(n) = self.dma_logging_max_ranges {
            if n == 0 {
                return Err(invalid("dma_logging_max_ranges must be at least 1".into()));
            }
        }
        if self.name.is_empty() {
            return Err(invalid("name is empty".into()));
        }
        Ok(())
    }
}
