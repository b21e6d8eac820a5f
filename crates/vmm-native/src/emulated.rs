//! `EmulatedDevice`: builds and steers the emulated VFIO migration device
//! (vfio_core::emu). Its `device()` is an ordinary `Device` over the
//! emulated backend, so migration code cannot tell it from the kernel's.

use crate::device::Device;
use crate::error::{blocking, js_error, len_arg, u64_arg, Blocking, VResult};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfio_core::backend::DeviceBackend;
use vfio_core::emu::{EmuConfig, EmuDevice, DEFAULT_REGION_SIZE};
use vfio_core::kernel::VfioError;
use vfio_uapi::{DeviceState, MigrationFlags};

#[napi(object)]
pub struct EmulatedDeviceOptions {
    /// Name used in messages (default "emulated").
    pub name: Option<String>,
    /// VFIO_MIGRATION_* bits: STOP_COPY 1 (mandatory), P2P 2, PRE_COPY 4. Default 7.
    pub flags: Option<u32>,
    /// Bytes of device state (default 1 MiB); generated, never held in memory.
    pub state_size: Option<Either<f64, BigInt>>,
    /// Dirtying/record granularity (default 64 KiB).
    pub region_size: Option<u32>,
    /// Seed of the state's content (default 1).
    pub seed: Option<Either<f64, BigInt>>,
    /// Bytes per second dirtied while RUNNING / PRE_COPY / PRE_COPY_P2P.
    pub dirty_rate: Option<Either<f64, BigInt>>,
    /// Initial bytes offered in PRE_COPY (default: the whole state).
    pub initial_bytes: Option<Either<f64, BigInt>>,
    /// DMA logging supported (default true).
    pub dma_logging: Option<bool>,
    /// Ranges the DMA logger tracks before merging (default 256).
    pub dma_max_ranges: Option<u32>,
    /// MIG_DATA_SIZE supported (default true).
    pub mig_data_size: Option<bool>,
}

#[napi(object)]
pub struct EmulatedDeviceStats {
    pub arcs: f64,
    pub resets: f64,
    pub sessions: f64,
    pub dirtied_bytes: f64,
    pub dma_writes: f64,
    pub dma_logged_pages: f64,
    pub bytes_saved: f64,
    pub bytes_loaded: f64,
}

#[napi]
pub struct EmulatedDevice {
    dev: Arc<EmuDevice>,
    /// The Buffer lent to the DMA engine, referenced so it outlives the lending.
    guest: Mutex<Option<Buffer>>,
}

const CALL: &str = "EmulatedDevice";

fn num(v: &Either<f64, BigInt>, name: &str, call: &str) -> VResult<u64> {
    match v {
        Either::A(n) => len_arg(*n, name, call),
        Either::B(b) => u64_arg(b, name, call),
    }
}

fn opt_num(v: &Option<Either<f64, BigInt>>, name: &str, dflt: u64) -> VResult<u64> {
    v.as_ref().map(|v| num(v, name, CALL)).unwrap_or(Ok(dflt))
}

fn config(o: &EmulatedDeviceOptions) -> VResult<EmuConfig> {
    let d = EmuConfig::default();
    let initial = match &o.initial_bytes {
        Some(v) => Some(num(v, "initialBytes", CALL)?),
        None => None,
    };
    let c = EmuConfig {
        name: o.name.clone().unwrap_or(d.name),
        flags: o.flags.map(|f| MigrationFlags(f as u64)).unwrap_or(d.flags),
        state_size: opt_num(&o.state_size, "stateSize", d.state_size)?,
        region_size: o.region_size.unwrap_or(DEFAULT_REGION_SIZE),
        seed: opt_num(&o.seed, "seed", d.seed)?,
        dirty_rate: opt_num(&o.dirty_rate, "dirtyRate", 0)?,
        initial_bytes: initial,
        dma_logging_max_ranges: if o.dma_logging.unwrap_or(true) { Some(o.dma_max_ranges.unwrap_or(256)) } else { None },
        mig_data_size: o.mig_data_size.unwrap_or(true),
    };
    Ok(c)
}

/// errno from a number or a code name ("EIO"), for the fault setter `call`.
fn errno_arg(v: &Either<u32, String>, call: &str) -> VResult<i32> {
    const CODES: [(&str, i32); 12] = [
        ("EIO", libc::EIO),
        ("EINVAL", libc::EINVAL),
        ("ENOMEM", libc::ENOMEM),
        ("EBUSY", libc::EBUSY),
        ("EAGAIN", libc::EAGAIN),
        ("ENODEV", libc::ENODEV),
        ("EFAULT", libc::EFAULT),
        ("ETIMEDOUT", libc::ETIMEDOUT),
        ("EPERM", libc::EPERM),
        ("ENOSPC", libc::ENOSPC),
        ("ENOTTY", libc::ENOTTY),
        ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ];
    match v {
        Either::A(n) if *n > 0 && *n < 4096 => Ok(*n as i32),
        Either::B(s) => CODES.iter().find(|(c, _)| c == s).map(|(_, e)| *e).ok_or_else(|| {
            VfioError::invalid(CALL, format!("{CALL}.{call}: errno {s:?}"), "unknown errno name")
        }),
        Either::A(n) => Err(VfioError::invalid(CALL, format!("{CALL}.{call}: errno {n}"), "must be 1..4095")),
    }
}

fn state_arg(s: &str, call: &str) -> VResult<DeviceState> {
    DeviceState::ALL
        .iter()
        .copied()
        .find(|st| st.name() == s)
        .ok_or_else(|| VfioError::invalid(CALL, format!("{CALL}.{call}: state {s:?}"), "not a migration state name"))
}

fn io_err(dev: &EmuDevice, e: std::io::Error, call: &str) -> VfioError {
    let why = dev.last_error();
    match e.raw_os_error() {
        Some(n) => VfioError::new(n, CALL, format!("{}: {CALL}.{call}", dev.device_name()), why.as_deref()),
        None => VfioError::new(libc::EINVAL, CALL, format!("{}: {CALL}.{call}", dev.device_name()), Some(&e.to_string())),
    }
}

impl EmulatedDevice {
    fn sync<T>(&self, env: &Env, r: VResult<T>) -> Result<T> {
        r.map_err(|e| js_error(env, &e))
    }
}

#[napi]
impl EmulatedDevice {
    #[napi(constructor)]
    pub fn new(env: Env, options: Option<EmulatedDeviceOptions>) -> Result<Self> {
        let o = options.unwrap_or(EmulatedDeviceOptions {
            name: None,
            flags: None,
            state_size: None,
            region_size: None,
            seed: None,
            dirty_rate: None,
            initial_bytes: None,
            dma_logging: None,
            dma_max_ranges: None,
            mig_data_size: None,
        });
        let r = config(&o).and_then(|c| {
            EmuDevice::new(c).map_err(|e| match e.raw_os_error() {
                Some(n) => VfioError::new(n, CALL, format!("new {CALL}"), None),
                None => VfioError::invalid(CALL, format!("new {CALL}"), &e.to_string()),
            })
        });
        let dev = r.map_err(|e| js_error(&env, &e))?;
        Ok(EmulatedDevice { dev: Arc::new(dev), guest: Mutex::new(None) })
    }

    /// The device as a `Device` (same object model as a kernel device).
    #[napi]
    pub fn device(&self) -> Device {
        let backend: Arc<dyn DeviceBackend> = self.dev.clone();
        Device::from_backend(backend)
    }

    #[napi(getter)]
    pub fn name(&self) -> String {
        self.dev.device_name().to_string()
    }

    /// The current migration state, as the device holds it.
    #[napi(getter)]
    pub fn state(&self) -> String {
        self.dev.state().name().to_string()
    }

    /// Why the last request failed, in words (like the driver's dmesg line).
    #[napi(getter)]
    pub fn last_error(&self) -> Option<String> {
        self.dev.last_error()
    }

    /// BLAKE3 (hex) of the whole device state: equal digests, equal bytes.
    /// May hash gigabytes, hence a Promise.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn digest(&self) -> AsyncTask<Blocking<String>> {
        let d = self.dev.clone();
        blocking(move || Ok(d.digest()))
    }

    #[napi]
    pub fn set_dirty_rate(&self, env: Env, bytes_per_sec: Either<f64, BigInt>) -> Result<()> {
        let r = num(&bytes_per_sec, "bytesPerSec", "EmulatedDevice.setDirtyRate");
        let v = self.sync(&env, r)?;
        self.dev.set_dirty_rate(v);
        Ok(())
    }

    /// Marks region `index` written (deterministic dirtying for tests).
    #[napi]
    pub fn dirty_region(&self, env: Env, index: u32) -> Result<()> {
        let r = self.dev.dirty_region(index).map_err(|e| io_err(&self.dev, e, "dirtyRegion"));
        self.sync(&env, r)
    }

    /// The next arc into `state` fails with `errno`; with `recovery` the
    /// following SET fails too and leaves the device in ERROR.
    #[napi(ts_args_type = "state: string, errno: number | string, recovery?: boolean")]
    pub fn fail_next_move(&self, env: Env, state: String, errno: Either<u32, String>, recovery: Option<bool>) -> Result<()> {
        let r = state_arg(&state, "failNextMove").and_then(|s| Ok((s, errno_arg(&errno, "failNextMove")?)));
        let (s, e) = self.sync(&env, r)?;
        self.dev.fail_next_move(s, e, recovery.unwrap_or(false));
        Ok(())
    }

    /// The next `count` (default 1) VFIO_DEVICE_RESETs fail with `errno`
    /// and change nothing.
    #[napi(ts_args_type = "errno: number | string, count?: number")]
    pub fn fail_reset(&self, env: Env, errno: Either<u32, String>, count: Option<u32>) -> Result<()> {
        let e = self.sync(&env, errno_arg(&errno, "failReset"))?;
        self.dev.fail_reset(e, count.unwrap_or(1));
        Ok(())
    }

    /// The next `count` (default 1) VFIO_MIG_GET_PRECOPY_INFO calls that
    /// the kernel would let through fail with `errno`.
    #[napi(ts_args_type = "errno: number | string, count?: number")]
    pub fn fail_precopy_info(&self, env: Env, errno: Either<u32, String>, count: Option<u32>) -> Result<()> {
        let e = self.sync(&env, errno_arg(&errno, "failPrecopyInfo"))?;
        self.dev.fail_precopy_info(e, count.unwrap_or(1));
        Ok(())
    }

    /// The next `count` (default 1) DMA_LOGGING_REPORTs that pass the
    /// kernel's checks fail with `errno`; their pages stay logged.
    #[napi(ts_args_type = "errno: number | string, count?: number")]
    pub fn fail_dma_report(&self, env: Env, errno: Either<u32, String>, count: Option<u32>) -> Result<()> {
        let e = self.sync(&env, errno_arg(&errno, "failDmaReport"))?;
        self.dev.fail_dma_report(e, count.unwrap_or(1));
        Ok(())
    }

    /// Flips byte `offset` of the next saving session's stream.
    #[napi]
    pub fn corrupt_stream_byte(&self, env: Env, offset: Either<f64, BigInt>) -> Result<()> {
        let r = num(&offset, "offset", "EmulatedDevice.corruptStreamByte");
        let v = self.sync(&env, r)?;
        self.dev.corrupt_stream_byte(v);
        Ok(())
    }

    /// The next `count` data reads/writes move at most `maxBytes` (>= 1).
    #[napi]
    pub fn short_io(&self, count: u32, max_bytes: u32) {
        self.dev.short_io(count, max_bytes as usize);
    }

    /// The next `count` data reads/writes fail with EAGAIN.
    #[napi]
    pub fn eagain(&self, count: u32) {
        self.dev.eagain(count);
    }

    /// The device resets itself after `afterMs`: data fds invalidated,
    /// RUNNING, back in its power-on state (docs/emulated-device.md, Reset).
    #[napi]
    pub fn async_reset(&self, env: Env, after_ms: f64) -> Result<()> {
        let r = len_arg(after_ms, "afterMs", "EmulatedDevice.asyncReset");
        let ms = self.sync(&env, r)?;
        self.dev.async_reset(Duration::from_millis(ms));
        Ok(())
    }

    #[napi]
    pub fn clear_faults(&self) {
        self.dev.clear_faults();
    }

    /// Lends `buffer` to the DMA engine as guest memory at `iova`; the
    /// buffer stays referenced until detached or replaced.
    #[napi]
    pub fn attach_guest_memory(&self, env: Env, mut buffer: Buffer, iova: Either<f64, BigInt>) -> Result<()> {
        let iova = self.sync(&env, num(&iova, "iova", "EmulatedDevice.attachGuestMemory"))?;
        let mut g = self.guest.lock().unwrap_or_else(|p| p.into_inner());
        let (ptr, len) = (buffer.as_mut().as_mut_ptr(), buffer.len());
        // SAFETY: the Buffer is kept in `self.guest` until it is detached,
        // replaced (after the device stopped using it) or self is dropped.
        let r = unsafe { self.dev.attach_guest_memory(ptr, len, iova) }.map_err(|e| io_err(&self.dev, e, "attachGuestMemory"));
        self.sync(&env, r)?;
        *g = Some(buffer);
        Ok(())
    }

    #[napi]
    pub fn detach_guest_memory(&self) {
        let mut g = self.guest.lock().unwrap_or_else(|p| p.into_inner());
        self.dev.detach_guest_memory();
        *g = None;
    }

    /// Starts the DMA engine: `pagesPerSec` random page writes per second,
    /// logged when DMA logging covers them.
    #[napi]
    pub fn start_dma(&self, env: Env, pages_per_sec: f64) -> Result<()> {
        let rate = self.sync(&env, len_arg(pages_per_sec, "pagesPerSec", "EmulatedDevice.startDma"))?;
        let r = self.dev.start_dma(rate).map_err(|e| io_err(&self.dev, e, "startDma"));
        self.sync(&env, r)
    }

    #[napi]
    pub fn stop_dma(&self) {
        self.dev.stop_dma();
    }

    /// IOVAs of the pages in the DMA dirty log, or null when logging is off.
    #[napi]
    pub fn logged_pages(&self) -> Option<Vec<BigInt>> {
        self.dev.logged_pages().map(|v| v.into_iter().map(BigInt::from).collect())
    }

    #[napi]
    pub fn stats(&self) -> EmulatedDeviceStats {
        let s = self.dev.stats();
        EmulatedDeviceStats {
            arcs: s.arcs as f64,
            resets: s.resets as f64,
            sessions: s.sessions as f64,
            dirtied_bytes: s.dirtied_bytes as f64,
            dma_writes: s.dma_writes as f64,
            dma_logged_pages: s.dma_logged_pages as f64,
            bytes_saved: s.bytes_saved as f64,
            bytes_loaded: s.bytes_loaded as f64,
        }
    }
}

impl Drop for EmulatedDevice {
    fn drop(&mut self) {
        // A Device may keep the emulated backend alive: it must stop
        // touching the Buffer we are about to release.
        self.dev.detach_guest_memory();
    }
}
