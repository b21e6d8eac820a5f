//! `Device`: one class for the kernel device and the emulated device. The
//! typed helpers live in vfio_core::device::Device, so both backends are
//! driven by the same bytes; this file only converts arguments and results.
//! `Device.open(group, name)` lives with `Group`, which makes kernel devices.

use crate::datafd::DataFd;
use crate::error::{blocking, u64_arg, Blocking, VResult};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::Arc;
use vfio_core::backend::DeviceBackend;
use vfio_core::device::{self as core_device, dma_bitmap_bytes};
use vfio_core::kernel::VfioError;
use vfio_uapi::DeviceState;

/// Largest DMA logging bitmap allocated on the caller's behalf.
const MAX_BITMAP: u64 = 256 << 20;

#[napi(object)]
pub struct DeviceInfo {
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

#[napi(object, object_from_js = false)]
pub struct FeatureResult {
    /// The ioctl's return value.
    pub ret: i32,
    /// The data fd a SET MIG_DEVICE_STATE produced, owned by this object.
    pub data_fd: Option<DataFd>,
}

#[napi(object)]
pub struct DmaRange {
    pub iova: BigInt,
    pub length: BigInt,
}

#[napi]
pub struct Device {
    pub(crate) inner: Arc<core_device::Device>,
}

fn parse_state(s: &str, ctx: &str) -> VResult<DeviceState> {
    DeviceState::ALL
        .iter()
        .copied()
        .find(|st| st.name() == s)
        .ok_or_else(|| VfioError::invalid("VFIO_DEVICE_FEATURE(MIG_DEVICE_STATE)", ctx, &format!("unknown state {s:?}")))
}

impl Device {
    /// Wraps any backend (the emulated device uses this) in the JS class.
    pub(crate) fn from_backend(backend: Arc<dyn DeviceBackend>) -> Self {
        Device { inner: Arc::new(core_device::Device::new(backend)) }
    }
}

#[napi]
impl Device {
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// True for a device emulated inside this process, false for one the
    /// kernel drives (a local migration can pass only the latter's fds).
    #[napi(getter)]
    pub fn in_process(&self) -> bool {
        self.inner.backend().in_process()
    }

    /// The device fd of a device the kernel drives (a local migration
    /// passes it; `fs.read` at a region's offset reads the region), null
    /// for the emulated device. Stays owned by this object.
    #[napi(getter)]
    pub fn fd(&self) -> Option<i32> {
        self.inner.backend().raw_fd()
    }

    #[napi(ts_return_type = "Promise<DeviceInfo>")]
    pub fn info(&self) -> AsyncTask<Blocking<DeviceInfo>> {
        let d = self.inner.clone();
        blocking(move || {
            let i = d.info()?;
            Ok(DeviceInfo { flags: i.flags, num_regions: i.num_regions, num_irqs: i.num_irqs })
        })
    }

    /// Raw VFIO_DEVICE_FEATURE: `index` (1 MIGRATION, 2 MIG_DEVICE_STATE, ...),
    /// `op` the GET (1<<16) / SET (1<<17) / PROBE (1<<18) bits, `payload` the
    /// bytes after the header, overwritten with the answer. No userspace state
    /// check: this is how tests see the kernel's own answer.
    #[napi(ts_return_type = "Promise<FeatureResult>")]
    pub fn feature(&self, index: u32, op: u32, payload: Option<Buffer>) -> AsyncTask<Blocking<FeatureResult>> {
        let d = self.inner.clone();
        blocking(move || {
            let mut payload = payload;
            let bytes: &mut [u8] = match payload.as_mut() {
                Some(b) => b,
                None => &mut [],
            };
            let r = d.feature(index, op, bytes)?;
            Ok(FeatureResult { ret: r.ret, data_fd: r.data_fd.map(DataFd::wrap) })
        })
    }

    /// PROBE: whether `index` is supported with the `op` bits (GET/SET).
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn probe(&self, index: u32, op: Option<u32>) -> AsyncTask<Blocking<bool>> {
        let d = self.inner.clone();
        blocking(move || d.supports(index, op.unwrap_or(0)))
    }

    /// VFIO_MIGRATION_* bits: STOP_COPY 1, P2P 2, PRE_COPY 4.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn migration_flags(&self) -> AsyncTask<Blocking<u32>> {
        let d = self.inner.clone();
        blocking(move || Ok(d.migration_flags()?.bits() as u32))
    }

    #[napi(ts_return_type = "Promise<'ERROR' | 'STOP' | 'RUNNING' | 'STOP_COPY' | 'RESUMING' | 'RUNNING_P2P' | 'PRE_COPY' | 'PRE_COPY_P2P'>")]
    pub fn get_state(&self) -> AsyncTask<Blocking<String>> {
        let d = self.inner.clone();
        blocking(move || Ok(d.state()?.name().to_string()))
    }

    /// Moves the device to `target`, refusing in userspace (EINVAL) any move
    /// the kernel has no arc for. Resolves the new data fd, or null.
    #[napi(ts_args_type = "target: 'ERROR' | 'STOP' | 'RUNNING' | 'STOP_COPY' | 'RESUMING' | 'RUNNING_P2P' | 'PRE_COPY' | 'PRE_COPY_P2P'", ts_return_type = "Promise<DataFd | null>")]
    pub fn set_state(&self, target: String) -> AsyncTask<Blocking<Option<DataFd>>> {
        let d = self.inner.clone();
        blocking(move || {
            let ctx = format!("{}: VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE", d.name());
            let target = parse_state(&target, &ctx)?;
            Ok(d.set_state(target)?.map(DataFd::wrap))
        })
    }

    /// MIG_DATA_SIZE: estimated STOP_COPY bytes.
    #[napi(ts_return_type = "Promise<bigint>")]
    pub fn mig_data_size(&self) -> AsyncTask<Blocking<BigInt>> {
        let d = self.inner.clone();
        blocking(move || Ok(BigInt::from(d.mig_data_size()?)))
    }

    /// Starts DMA logging; resolves the page size the device chose.
    #[napi(ts_return_type = "Promise<bigint>")]
    pub fn dma_logging_start(&self, page_size: BigInt, ranges: Vec<DmaRange>) -> AsyncTask<Blocking<BigInt>> {
        let d = self.inner.clone();
        let call = "VFIO_DEVICE_FEATURE(DMA_LOGGING_START)";
        let page_size = u64_arg(&page_size, "pageSize", call);
        let ranges: VResult<Vec<(u64, u64)>> =
            ranges.iter().map(|r| Ok((u64_arg(&r.iova, "iova", call)?, u64_arg(&r.length, "length", call)?))).collect();
        blocking(move || Ok(BigInt::from(d.dma_logging_start(page_size?, &ranges?)?)))
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn dma_logging_stop(&self) -> AsyncTask<Blocking<()>> {
        let d = self.inner.clone();
        blocking(move || d.dma_logging_stop())
    }

    /// Reads and clears the device's dirty log of `iova..iova+length` into
    /// `bitmap` (allocated when omitted; bit n = page n); resolves the bitmap.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn dma_logging_report(&self, iova: BigInt, length: BigInt, page_size: BigInt, bitmap: Option<Buffer>) -> AsyncTask<Blocking<Buffer>> {
        let d = self.inner.clone();
        let call = "VFIO_DEVICE_FEATURE(DMA_LOGGING_REPORT)";
        let args = (u64_arg(&iova, "iova", call), u64_arg(&length, "length", call), u64_arg(&page_size, "pageSize", call));
        blocking(move || {
            let (iova, length, page_size) = (args.0?, args.1?, args.2?);
            let mut bitmap = match bitmap {
                Some(b) => b,
                None if page_size != 0 => {
                    let n = dma_bitmap_bytes(length, page_size);
                    if n > MAX_BITMAP {
                        let why = format!("a bitmap of {n} bytes is over the {MAX_BITMAP}-byte limit; split the range");
                        return Err(VfioError::invalid(call, format!("{}: {call}", d.name()), &why));
                    }
                    Buffer::from(vec![0u8; n as usize])
                }
                None => Buffer::from(Vec::new()),
            };
            d.dma_logging_report(iova, length, page_size, &mut bitmap)?;
            Ok(bitmap)
        })
    }

    /// VFIO_DEVICE_SET_IRQS with eventfds (ACTION_TRIGGER): interrupt
    /// `index` (0 INTx, 1 MSI, 2 MSI-X) from vector `start` signals `fds`
    /// (-1 unsets a vector). The fds stay the caller's; the kernel takes
    /// its own reference.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_irq_eventfds(&self, index: u32, start: u32, fds: Vec<i32>) -> AsyncTask<Blocking<()>> {
        let d = self.inner.clone();
        blocking(move || {
            d.backend()
                .set_irq_eventfds(index, start, &fds)
                .map_err(|e| VfioError::from_io(&e, "VFIO_DEVICE_SET_IRQS", format!("{}: VFIO_DEVICE_SET_IRQS index {index} start {start} count {}", d.name(), fds.len())))
        })
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn reset(&self) -> AsyncTask<Blocking<()>> {
        let d = self.inner.clone();
        blocking(move || d.reset())
    }
}
