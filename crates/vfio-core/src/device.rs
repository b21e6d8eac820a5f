//! Typed device helpers, written once over [`DeviceBackend`]: each one
//! encodes a raw `struct vfio_device_feature` (or device_info) buffer, hands
//! it to the backend and decodes the answer, so the kernel device and the
//! emulated device are driven by the same bytes.
//!
//! [`Device::set_state`] is the one place state changes go through: it
//! checks the move against the kernel's own walk first, because kernels
//! without the "terminate the skip loop on the ERROR sentinel" fix never
//! return from STOP_COPY -> PRE_COPY.

use crate::backend::DeviceBackend;
use crate::datafd::DataFd;
use crate::kernel::error::{Result, VfioError};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use vfio_uapi::abi::*;
use vfio_uapi::ioctl::*;
use vfio_uapi::{DeviceState, MigrationFlags};

/// The kernel's cap on DMA logging ranges (one page of range structs).
pub const DMA_LOGGING_MAX_RANGES: usize = 4096 / std::mem::size_of::<vfio_device_feature_dma_logging_range>();

const MIG_STATE_CALL: &str = "VFIO_DEVICE_FEATURE(MIG_DEVICE_STATE)";

/// A VFIO migration device over any backend: the typed helpers, each checked in userspace first.
pub struct Device {
    backend: Arc<dyn DeviceBackend>,
    flags: OnceLock<MigrationFlags>,
    // One state change at a time: the check and the SET must see the same state.
    state_lock: Mutex<()>,
}

/// `VFIO_DEVICE_GET_INFO`'s answer.
#[derive(Clone, Copy, Debug)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Regions the device has.
    pub num_regions: u32,
    /// IRQ indexes the device has.
    pub num_irqs: u32,
}

/// Answer of a raw feature call.
pub struct RawFeature {
    /// The ioctl's return value.
    pub ret: i32,
    /// A SET MIG_DEVICE_STATE that produced a data fd hands it over here.
    pub data_fd: Option<DataFd>,
}

fn syscall_for(index: u32) -> String {
    format!("VFIO_DEVICE_FEATURE({})", feature_name(index))
}

/// Bytes of a DMA logging bitmap for `length` bytes at `page_size`: one bit
/// per page, in whole u64 words (the kernel's iova_bitmap works in u64s).
pub fn dma_bitmap_bytes(length: u64, page_size: u64) -> u64 {
    length.div_ceil(page_size).div_ceil(64) * 8
}

impl Device {
    /// Wraps a backend (a kernel device fd or the emulated device).
    pub fn new(backend: Arc<dyn DeviceBackend>) -> Device {
        Device { backend, flags: OnceLock::new(), state_lock: Mutex::new(()) }
    }

    /// The backend's name, for messages.
    pub fn name(&self) -> &str {
        self.backend.name()
    }

    /// The backend, for calls the helpers do not cover.
    pub fn backend(&self) -> &Arc<dyn DeviceBackend> {
        &self.backend
    }

    /// Sends one VFIO_DEVICE_FEATURE with `payload`, which receives the
    /// answer. `what` completes the message ("GET MIGRATION").
    fn call(&self, flags: u32, payload: &mut [u8], what: &str) -> Result<i32> {
        let index = flags & VFIO_DEVICE_FEATURE_MASK;
        let head = std::mem::size_of::<vfio_device_feature>();
        let argsz = u32::try_from(head + payload.len())
            .map_err(|_| VfioError::invalid(syscall_for(index), format!("{}: VFIO_DEVICE_FEATURE {what}", self.name()), "payload too large"))?;
        let mut buf = vec![0u8; head + payload.len()];
        vfio_device_feature { argsz, flags }.write_to(&mut buf);
        buf[head..].copy_from_slice(payload);
        // SAFETY: the only payloads with user pointers are built by
        // dma_logging_start/report, which point them at vectors that outlive
        // this call; feature() refuses such payloads from its callers.
        let r = unsafe { self.backend.device_feature(&mut buf) }
            .map_err(|e| VfioError::from_io(&e, syscall_for(index), format!("{}: VFIO_DEVICE_FEATURE {what}", self.name())))?;
        payload.copy_from_slice(&buf[head..]);
        Ok(r)
    }

    fn get<T: Pod>(&self, index: u32) -> Result<T> {
        let mut p = T::default();
        let mut bytes = p.as_bytes().to_vec();
        self.call(VFIO_DEVICE_FEATURE_GET | index, &mut bytes, &format!("GET {}", feature_name(index)))?;
        p = T::read_from(&bytes).expect("payload has the struct's size");
        Ok(p)
    }

    /// `VFIO_DEVICE_GET_INFO`.
    pub fn info(&self) -> Result<DeviceInfo> {
        let mut buf = [0u8; std::mem::size_of::<vfio_device_info>()];
        vfio_device_info { argsz: buf.len() as u32, ..Default::default() }.write_to(&mut buf);
        self.backend
            .get_info(&mut buf)
            .map_err(|e| VfioError::from_io(&e, "VFIO_DEVICE_GET_INFO", format!("{}: VFIO_DEVICE_GET_INFO", self.name())))?;
        let i = vfio_device_info::read_from(&buf).expect("buffer has the struct's size");
        Ok(DeviceInfo { flags: i.flags, num_regions: i.num_regions, num_irqs: i.num_irqs })
    }

    /// The raw call: `index` | `op` (GET/SET/PROBE bits) with `payload` in
    /// and out, no userspace checks of the state machine. Features whose
    /// payload carries a user pointer (DMA logging START and REPORT) are
    /// refused: a wrong pointer there would let the device write anywhere
    /// in this process; use the typed helpers.
    pub fn feature(&self, index: u32, op: u32, payload: &mut [u8]) -> Result<RawFeature> {
        let what = format!("{} {}", feature_op(op), feature_name(index));
        let ctx = || format!("{}: VFIO_DEVICE_FEATURE {what}", self.name());
        if index > VFIO_DEVICE_FEATURE_MASK {
            return Err(VfioError::invalid(syscall_for(index), ctx(), "feature index must fit in 16 bits"));
        }
        if op & VFIO_DEVICE_FEATURE_MASK != 0 {
            return Err(VfioError::invalid(syscall_for(index), ctx(), "op must hold only the GET/SET/PROBE bits"));
        }
        let carries_pointer = op & VFIO_DEVICE_FEATURE_PROBE == 0
            && matches!(index, VFIO_DEVICE_FEATURE_DMA_LOGGING_START | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT);
        if carries_pointer {
            return Err(VfioError::invalid(syscall_for(index), ctx(), "the payload carries a user pointer; use the typed DMA logging helpers"));
        }
        let ret = self.call(index | op, payload, &what)?;
        let mut data_fd = None;
        if index == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE && op & (VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE) == VFIO_DEVICE_FEATURE_SET {
            if let Some(st) = vfio_device_feature_mig_state::read_from(payload) {
                if st.data_fd >= 0 {
                    let state = DeviceState::from_u32(st.device_state).unwrap_or(DeviceState::Error);
                    // SAFETY: the backend passed ownership of this new fd to us.
                    data_fd = Some(DataFd::new(unsafe { OwnedFd::from_raw_fd(st.data_fd) }, self.backend.clone(), state));
                }
            }
        }
        Ok(RawFeature { ret, data_fd })
    }

    /// Whether the device supports `index` with the `op` bits (GET/SET),
    /// by PROBE; ENOTTY means no.
    pub fn supports(&self, index: u32, op: u32) -> Result<bool> {
        match self.feature(index, op | VFIO_DEVICE_FEATURE_PROBE, &mut []) {
            Ok(_) => Ok(true),
            Err(e) if e.errno == libc::ENOTTY => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The device's migration flags (cached: they never change).
    pub fn migration_flags(&self) -> Result<MigrationFlags> {
        if let Some(f) = self.flags.get() {
            return Ok(*f);
        }
        let m: vfio_device_feature_migration = self.get(VFIO_DEVICE_FEATURE_MIGRATION)?;
        let f = MigrationFlags(m.flags);
        if !f.is_valid() {
            return Err(VfioError::new(
                libc::EPROTO,
                syscall_for(VFIO_DEVICE_FEATURE_MIGRATION),
                format!("{}: VFIO_DEVICE_FEATURE GET MIGRATION", self.name()),
                Some(&format!("flags {:#x} lack STOP_COPY or have unknown bits", m.flags)),
            ));
        }
        Ok(*self.flags.get_or_init(|| f))
    }

    /// The current migration state (GET MIG_DEVICE_STATE).
    pub fn state(&self) -> Result<DeviceState> {
        let s: vfio_device_feature_mig_state = self.get(VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)?;
        DeviceState::from_u32(s.device_state).ok_or_else(|| {
            VfioError::new(
                libc::EPROTO,
                MIG_STATE_CALL,
                format!("{}: VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE", self.name()),
                Some(&format!("unknown state {}", s.device_state)),
            )
        })
    }

    /// Moves the device to `target`. Refuses in userspace, with EINVAL, any
    /// move the kernel has no walk for. Returns the data fd the move
    /// produced (entering STOP_COPY, PRE_COPY, PRE_COPY_P2P or RESUMING
    /// from outside the saving group), else None.
    pub fn set_state(&self, target: DeviceState) -> Result<Option<DataFd>> {
        let _g = self.state_lock.lock().unwrap_or_else(|p| p.into_inner());
        let flags = self.migration_flags()?;
        let cur = self.state()?;
        let ctx = format!("{}: VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE {cur} -> {target}", self.name());
        let refuse = |why: String| Err(VfioError::invalid(MIG_STATE_CALL, &ctx, &format!("refused in userspace: {why}")));
        if target == DeviceState::Error {
            return refuse("ERROR cannot be requested".into());
        }
        if cur == DeviceState::Error {
            return refuse("the device is in ERROR; only a reset leaves it".into());
        }
        if !target.supported_by(flags) {
            return refuse(format!("the device does not support {target} (migration flags {:#x})", flags.bits()));
        }
        if vfio_uapi::path(flags, cur, target).is_none() {
            return refuse("the kernel has no arc".into());
        }
        let mut payload = vfio_device_feature_mig_state { device_state: target as u32, data_fd: -1 }.as_bytes().to_vec();
        let sent = self.call(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &mut payload, "");
        if let Err(mut e) = sent {
            // A failed multi-arc move may stop anywhere on the way: say where.
            let now = match self.state() {
                Ok(s) => format!("device now in {s}"),
                Err(_) => "device state unreadable".to_string(),
            };
            e.syscall = MIG_STATE_CALL.to_string();
            e.message = format!("{ctx}: {} ({}); {now}", e.code(), crate::kernel::error::strerror(e.errno));
            return Err(e);
        }
        let st = vfio_device_feature_mig_state::read_from(&payload).expect("payload has the struct's size");
        if st.data_fd < 0 {
            return Ok(None);
        }
        // SAFETY: the backend passed ownership of this new fd to us.
        let fd = unsafe { OwnedFd::from_raw_fd(st.data_fd) };
        Ok(Some(DataFd::new(fd, self.backend.clone(), target)))
    }

    /// MIG_DATA_SIZE: the device's estimate of its STOP_COPY data.
    pub fn mig_data_size(&self) -> Result<u64> {
        let s: vfio_device_feature_mig_data_size = self.get(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE)?;
        Ok(s.stop_copy_length)
    }

    /// Starts device DMA logging over `ranges` (iova, length); returns the
    /// page size the device chose (it may differ from the hint).
    pub fn dma_logging_start(&self, page_size: u64, ranges: &[(u64, u64)]) -> Result<u64> {
        let syscall = syscall_for(VFIO_DEVICE_FEATURE_DMA_LOGGING_START);
        let ctx = format!("{}: VFIO_DEVICE_FEATURE SET DMA_LOGGING_START", self.name());
        if page_size == 0 || !page_size.is_power_of_two() {
            return Err(VfioError::invalid(syscall, ctx, "page size must be a power of two"));
        }
        if ranges.is_empty() || ranges.len() > DMA_LOGGING_MAX_RANGES {
            return Err(VfioError::invalid(syscall, ctx, &format!("1..{DMA_LOGGING_MAX_RANGES} ranges are allowed, got {}", ranges.len())));
        }
        if let Some((i, _)) = ranges.iter().enumerate().find(|(_, (iova, len))| *len == 0 || iova.checked_add(*len).is_none()) {
            return Err(VfioError::invalid(syscall, ctx, &format!("range {i} is empty or wraps")));
        }
        let rs: Vec<vfio_device_feature_dma_logging_range> =
            ranges.iter().map(|&(iova, length)| vfio_device_feature_dma_logging_range { iova, length }).collect();
        let ctl = vfio_device_feature_dma_logging_control {
            page_size,
            num_ranges: rs.len() as u32,
            reserved: 0,
            ranges: rs.as_ptr() as u64,
        };
        let mut payload = ctl.as_bytes().to_vec();
        self.call(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, &mut payload, "SET DMA_LOGGING_START")?;
        let out = vfio_device_feature_dma_logging_control::read_from(&payload).expect("payload has the struct's size");
        drop(rs); // the ranges had to outlive the call
        Ok(out.page_size)
    }

    /// Stops device DMA logging.
    pub fn dma_logging_stop(&self) -> Result<()> {
        self.call(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, &mut [], "SET DMA_LOGGING_STOP").map(|_| ())
    }

    /// Reads and clears the dirty log of `iova..iova+length` into `bitmap`
    /// (bit n = page n, little-endian u64 words). Any error means the log
    /// is lost: treat every page as dirty.
    pub fn dma_logging_report(&self, iova: u64, length: u64, page_size: u64, bitmap: &mut [u8]) -> Result<()> {
        let syscall = syscall_for(VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT);
        let ctx = format!("{}: VFIO_DEVICE_FEATURE GET DMA_LOGGING_REPORT iova {iova:#x} length {length:#x}", self.name());
        // Same checks, order and errnos as vfio_main.c's logging report
        // validation, so a caller sees the kernel's answer either way.
        if page_size < 4096 || !page_size.is_power_of_two() {
            return Err(VfioError::invalid(syscall, ctx, "page size must be a power of two, at least 4096"));
        }
        if iova.checked_add(length).is_none() {
            return Err(VfioError::new(libc::EOVERFLOW, syscall, &ctx, Some("iova + length wraps past 2^64")));
        }
        if length == 0 {
            return Err(VfioError::invalid(syscall, ctx, "range is empty"));
        }
        let need = dma_bitmap_bytes(length, page_size);
        if (bitmap.len() as u64) < need {
            return Err(VfioError::invalid(syscall, ctx, &format!("bitmap of {} bytes is too small, {need} needed", bitmap.len())));
        }
        // u64-aligned scratch: a Node Buffer may start at any byte.
        let mut words = vec![0u64; (need / 8) as usize];
        let rep = vfio_device_feature_dma_logging_report { iova, length, page_size, bitmap: words.as_mut_ptr() as u64 };
        let mut payload = rep.as_bytes().to_vec();
        self.call(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, &mut payload, "GET DMA_LOGGING_REPORT")?;
        for (chunk, w) in bitmap[..need as usize].chunks_exact_mut(8).zip(&words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        Ok(())
    }

    /// `VFIO_DEVICE_RESET`: back to RUNNING; every data fd stops working.
    pub fn reset(&self) -> Result<()> {
        let _g = self.state_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.backend
            .reset()
            .map_err(|e| VfioError::from_io(&e, "VFIO_DEVICE_RESET", format!("{}: VFIO_DEVICE_RESET", self.name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::os::fd::IntoRawFd;

    /// Answers MIGRATION and MIG_DEVICE_STATE like a driver, counting SETs.
    struct Fake {
        flags: u64,
        state: Mutex<DeviceState>,
        sets: Mutex<u32>,
    }

    impl DeviceBackend for Fake {
        unsafe fn device_feature(&self, buf: &mut [u8]) -> io::Result<i32> {
            let h = vfio_device_feature::read_from(buf).unwrap();
            assert_eq!(h.argsz as usize, buf.len());
            let p = &mut buf[8..];
            match (h.flags & VFIO_DEVICE_FEATURE_MASK, h.flags & !VFIO_DEVICE_FEATURE_MASK) {
                (VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_GET) => {
                    vfio_device_feature_migration { flags: self.flags }.write_to(p);
                }
                (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_GET) => {
                    let s = *self.state.lock().unwrap() as u32;
                    vfio_device_feature_mig_state { device_state: s, data_fd: -1 }.write_to(p);
                }
                (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_SET) => {
                    *self.sets.lock().unwrap() += 1;
                    let req = vfio_device_feature_mig_state::read_from(p).unwrap();
                    let target = DeviceState::from_u32(req.device_state).unwrap();
                    let mut cur = self.state.lock().unwrap();
                    let fd = if target.has_data_fd() && !(cur.is_saving() && target.is_saving()) {
                        vmm_sys::pipe()?.0.into_raw_fd()
                    } else {
                        -1
                    };
                    *cur = target;
                    vfio_device_feature_mig_state { device_state: target as u32, data_fd: fd }.write_to(p);
                }
                _ => return Err(io::Error::from_raw_os_error(libc::ENOTTY)),
            }
            Ok(0)
        }
        fn get_info(&self, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOTTY))
        }
        fn reset(&self) -> io::Result<()> {
            *self.state.lock().unwrap() = DeviceState::Running;
            Ok(())
        }
        fn precopy_info(&self, _: i32, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOTTY))
        }
        fn data_read(&self, _: i32, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn data_write(&self, _: i32, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn name(&self) -> &str {
            "fake:dev0"
        }
    }

    fn device(flags: u64, state: DeviceState) -> (Device, Arc<Fake>) {
        let f = Arc::new(Fake { flags, state: Mutex::new(state), sets: Mutex::new(0) });
        (Device::new(f.clone()), f)
    }

    #[test]
    fn stop_copy_to_pre_copy_is_refused_before_the_backend_sees_it() {
        let (d, f) = device(7, DeviceState::StopCopy);
        let e = d.set_state(DeviceState::PreCopy).err().unwrap();
        assert_eq!(e.code(), "EINVAL");
        assert_eq!(e.syscall, "VFIO_DEVICE_FEATURE(MIG_DEVICE_STATE)");
        assert_eq!(
            e.message,
            "fake:dev0: VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE STOP_COPY -> PRE_COPY: EINVAL (refused in userspace: the kernel has no arc)"
        );
        assert_eq!(*f.sets.lock().unwrap(), 0);
    }

    #[test]
    fn unsupported_targets_and_error_are_refused() {
        let (d, f) = device(1, DeviceState::Running);
        assert!(d.set_state(DeviceState::PreCopy).err().unwrap().message.contains("does not support PRE_COPY"));
        assert!(d.set_state(DeviceState::Error).err().unwrap().message.contains("ERROR cannot be requested"));
        *f.state.lock().unwrap() = DeviceState::Error;
        assert!(d.set_state(DeviceState::Running).err().unwrap().message.contains("only a reset"));
        assert_eq!(*f.sets.lock().unwrap(), 0);
    }

    #[test]
    fn legal_moves_reach_the_backend_and_hand_over_data_fds() {
        let (d, f) = device(7, DeviceState::Running);
        let fd = d.set_state(DeviceState::PreCopy).unwrap().expect("entering PRE_COPY makes a data fd");
        assert!(fd.raw_fd().is_some());
        assert!(d.set_state(DeviceState::StopCopy).unwrap().is_none(), "the saving group keeps its fd");
        assert!(d.set_state(DeviceState::Stop).unwrap().is_none());
        assert!(d.set_state(DeviceState::Resuming).unwrap().is_some());
        assert_eq!(d.state().unwrap(), DeviceState::Resuming);
        assert_eq!(*f.sets.lock().unwrap(), 4);
        assert_eq!(d.migration_flags().unwrap(), MigrationFlags(7));
    }

    #[test]
    fn dma_logging_report_arguments_get_the_kernels_errnos() {
        // The fake answers ENOTTY to a report: anything else came from the check.
        let (d, _) = device(7, DeviceState::Running);
        let mut bm = [0u8; 64];
        let code = |r: Result<()>| r.err().map(|e| e.code());
        assert_eq!(code(d.dma_logging_report(0, 1 << 20, 1000, &mut bm)), Some("EINVAL"));
        assert_eq!(code(d.dma_logging_report(0, 1 << 20, 2048, &mut bm)), Some("EINVAL"), "below 4 KiB");
        assert_eq!(code(d.dma_logging_report(u64::MAX - 4095, 2 << 20, 4096, &mut bm)), Some("EOVERFLOW"));
        assert_eq!(code(d.dma_logging_report(u64::MAX - 4095, 2 << 20, 1000, &mut bm)), Some("EINVAL"), "page size is checked first");
        assert_eq!(code(d.dma_logging_report(0, 1 << 20, 4096, &mut bm)), Some("ENOTTY"), "a sound report reaches the driver");
    }

    #[test]
    fn raw_feature_skips_the_check_and_refuses_pointer_payloads() {
        let (d, f) = device(7, DeviceState::StopCopy);
        let mut p = vfio_device_feature_mig_state { device_state: DeviceState::Stop as u32, data_fd: -1 }.as_bytes().to_vec();
        let r = d.feature(VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_SET, &mut p).unwrap();
        assert_eq!(r.ret, 0);
        assert!(r.data_fd.is_none());
        assert_eq!(*f.sets.lock().unwrap(), 1);
        let mut ctl = vec![0u8; 24];
        let e = d.feature(VFIO_DEVICE_FEATURE_DMA_LOGGING_START, VFIO_DEVICE_FEATURE_SET, &mut ctl).err().unwrap();
        assert!(e.message.contains("user pointer"));
        assert!(d.feature(0x10000, VFIO_DEVICE_FEATURE_GET, &mut []).is_err());
        assert!(!d.supports(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, VFIO_DEVICE_FEATURE_GET).unwrap());
        let e = d.mig_data_size().err().unwrap();
        assert_eq!((e.code(), e.syscall.as_str()), ("ENOTTY", "VFIO_DEVICE_FEATURE(MIG_DATA_SIZE)"));
    }

    #[test]
    fn dma_logging_arguments_are_checked() {
        let (d, _) = device(7, DeviceState::Running);
        assert!(d.dma_logging_start(4096, &[]).is_err());
        assert!(d.dma_logging_start(3000, &[(0, 4096)]).is_err());
        assert!(d.dma_logging_start(4096, &[(u64::MAX, 2)]).is_err());
        let many = vec![(0u64, 4096u64); DMA_LOGGING_MAX_RANGES + 1];
        assert!(d.dma_logging_start(4096, &many).is_err());
        let mut small = [0u8; 8];
        let e = d.dma_logging_report(0, 65 * 4096, 4096, &mut small).err().unwrap();
        assert!(e.message.contains("16 needed"), "{}", e.message);
        assert_eq!(dma_bitmap_bytes(64 * 4096, 4096), 8);
        assert_eq!(dma_bitmap_bytes(1, 4096), 8);
    }
}
