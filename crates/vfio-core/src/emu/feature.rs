//! VFIO_DEVICE_FEATURE and the other device requests, decoded from the raw
//! buffer and checked in the order drivers/vfio/vfio_main.c checks them.

use std::io;
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use super::device::{Shared, State};
use super::dma::{read_ranges, DmaLog};
use super::machine::set_state;
use super::stream;
use vmm_sys::errno;

// The uAPI's numbers, from the one table in vfio-uapi, under the short names
// this module's decoding reads best with.
pub use vfio_uapi::ioctl::{
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT as F_DMA_LOGGING_REPORT,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_START as F_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP as F_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_GET as FEATURE_GET,
    VFIO_DEVICE_FEATURE_MASK as FEATURE_MASK, VFIO_DEVICE_FEATURE_MIGRATION as F_MIGRATION,
    VFIO_DEVICE_FEATURE_MIG_DATA_SIZE as F_MIG_DATA_SIZE,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE as F_MIG_DEVICE_STATE, VFIO_DEVICE_FEATURE_PROBE as FEATURE_PROBE,
    VFIO_DEVICE_FEATURE_SET as FEATURE_SET,
};

/// The payload as the kernel sees it: `argsz - 8` bytes at `arg->data`.
/// Touching bytes the caller's buffer does not have is the EFAULT a bad
/// user pointer gives.
struct Payload<'a> {
    buf: &'a mut [u8],
}

impl Payload<'_> {
    fn get<const N: usize>(&self, off: usize) -> io::Result<[u8; N]> {
        self.buf.get(off..off + N).map(|b| b.try_into().unwrap()).ok_or_else(|| errno(libc::EFAULT))
    }
    fn u32(&self, off: usize) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.get::<4>(off)?))
    }
    fn u64(&self, off: usize) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.get::<8>(off)?))
    }
    fn put(&mut self, off: usize, v: &[u8]) -> io::Result<()> {
        self.buf.get_mut(off..off + v.len()).ok_or_else(|| errno(libc::EFAULT))?.copy_from_slice(v);
        Ok(())
    }
}

/// vfio_check_feature: Ok(true) to run the op, Ok(false) for a PROBE
/// that succeeded (the ioctl answers 0).
fn check_feature(st: &mut State, flags: u32, argsz: usize, supported: u32, minsz: usize, what: &str) -> io::Result<bool> {
    if flags & (FEATURE_GET | FEATURE_SET) & !supported != 0 {
        return Err(st.fail(libc::EINVAL, format!("{what}: GET/SET {:#x} not supported (only {supported:#x})", flags & (FEATURE_GET | FEATURE_SET))));
    }
    if flags & FEATURE_PROBE != 0 {
        return Ok(false);
    }
    if flags & (FEATURE_GET | FEATURE_SET) == 0 {
        return Err(st.fail(libc::EINVAL, format!("{what}: neither GET nor SET nor PROBE")));
    }
    if argsz < minsz {
        return Err(st.fail(libc::EINVAL, format!("{what}: payload of {argsz} bytes, needs {minsz}")));
    }
    Ok(true)
}

pub fn device_feature(shared: &Arc<Shared>, st: &mut State, buf: &mut [u8]) -> io::Result<i32> {
    if buf.len() < 8 {
        return Err(st.fail(libc::EFAULT, format!("feature buffer of {} bytes has no header", buf.len())));
    }
    let argsz = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    let flags = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    if argsz < 8 {
        return Err(st.fail(libc::EINVAL, format!("argsz {argsz} smaller than the 8-byte header")));
    }
    if flags & !(FEATURE_MASK | FEATURE_GET | FEATURE_SET | FEATURE_PROBE) != 0 {
        return Err(st.fail(libc::EINVAL, format!("unknown flags in {flags:#x}")));
    }
    if flags & FEATURE_PROBE == 0 && flags & FEATURE_SET != 0 && flags & FEATURE_GET != 0 {
        return Err(st.fail(libc::EINVAL, "GET and SET together without PROBE".into()));
    }
    let psz = argsz - 8;
    let end = buf.len().min(argsz);
    let mut p = Payload { buf: &mut buf[8..end] };
    let feature = flags & FEATURE_MASK;
    let run = |st: &mut State, supported, minsz, what| check_feature(st, flags, psz, supported, minsz, what);
    match feature {
        F_MIGRATION => {
            if !run(st, FEATURE_GET, 8, "MIGRATION")? {
                return Ok(0);
            }
            p.put(0, &st.cfg.flags.bits().to_le_bytes())?;
            Ok(0)
        }
        F_MIG_DEVICE_STATE => {
            if !run(st, FEATURE_GET | FEATURE_SET, 8, "MIG_DEVICE_STATE")? {
                return Ok(0);
            }
            let requested = p.u32(0)?;
            let _ = p.u32(4)?;
            if flags & FEATURE_GET != 0 {
                p.put(0, &(st.state as u32).to_le_bytes())?;
                p.put(4, &(-1i32).to_le_bytes())?;
                return Ok(0);
            }
            match set_state(shared, st, requested) {
                Ok(fd) => {
                    let raw = fd.map(|f| f.into_raw_fd()).unwrap_or(-1);
                    p.put(4, &raw.to_le_bytes())?;
                    Ok(0)
                }
                Err(e) => {
                    p.put(4, &(-1i32).to_le_bytes())?;
                    Err(e)
                }
            }
        }
        F_DMA_LOGGING_START | F_DMA_LOGGING_STOP | F_DMA_LOGGING_REPORT if st.cfg.dma_logging_max_ranges.is_none() => {
            Err(st.fail(libc::ENOTTY, "DMA logging not supported by this device".into()))
        }
        F_DMA_LOGGING_START => {
            if !run(st, FEATURE_SET, 24, "DMA_LOGGING_START")? {
                return Ok(0);
            }
            let page_size = p.u64(0)?;
            let num = p.u32(8)?;
            let ranges_ptr = p.u64(16)?;
            let ranges = read_ranges(page_size, num, ranges_ptr)
                .map_err(|e| st.fail(e.raw_os_error().unwrap_or(libc::EINVAL), format!("DMA_LOGGING_START: {num} ranges of page size {page_size} refused")))?;
            if st.log.is_some() {
                return Err(st.fail(libc::EBUSY, "DMA_LOGGING_START: logging already started".into()));
            }
            let max = st.cfg.dma_logging_max_ranges.unwrap_or(1);
            let log = DmaLog::start(page_size, ranges, max)
                .map_err(|e| st.fail(e.raw_os_error().unwrap_or(libc::EINVAL), format!("DMA_LOGGING_START: page size {page_size} unsupported (4 KiB ..= 1 GiB, power of 2)")))?;
            p.put(0, &log.page_size.to_le_bytes())?;
            st.log = Some(log);
            Ok(0)
        }
        F_DMA_LOGGING_STOP => {
            if !run(st, FEATURE_SET, 0, "DMA_LOGGING_STOP")? {
                return Ok(0);
            }
            st.log = None;
            Ok(0)
        }
        F_DMA_LOGGING_REPORT => {
            if !run(st, FEATURE_GET, 32, "DMA_LOGGING_REPORT")? {
                return Ok(0);
            }
            let iova = p.u64(0)?;
            let length = p.u64(8)?;
            let page_size = p.u64(16)?;
            let bitmap = p.u64(24)?;
            if page_size < 4096 || !page_size.is_power_of_two() {
                return Err(st.fail(libc::EINVAL, format!("DMA_LOGGING_REPORT: page size {page_size}")));
            }
            if iova.checked_add(length).is_none() {
                return Err(st.fail(libc::EOVERFLOW, format!("DMA_LOGGING_REPORT: {iova:#x} + {length:#x} overflows")));
            }
            if length == 0 {
                return Err(st.fail(libc::EINVAL, "DMA_LOGGING_REPORT: empty range".into()));
            }
            if st.log.is_none() {
                return Err(st.fail(libc::EINVAL, "DMA_LOGGING_REPORT: logging not started".into()));
            }
            if let Some(e) = st.faults.fail_dma_report.take() {
                return Err(st.fail(e, "DMA_LOGGING_REPORT failed (injected); the pages stay logged".into()));
            }
            let log = st.log.as_mut().expect("logging checked above");
            log.report(iova, length, page_size, bitmap)
                .map_err(|e| st.fail(e.raw_os_error().unwrap_or(libc::EFAULT), format!("DMA_LOGGING_REPORT: bitmap at {bitmap:#x} not writable")))?;
            Ok(0)
        }
        F_MIG_DATA_SIZE => {
            if !st.cfg.mig_data_size {
                return Err(st.fail(libc::ENOTTY, "MIG_DATA_SIZE not supported by this device".into()));
            }
            if !run(st, FEATURE_GET, 8, "MIG_DATA_SIZE")? {
                return Ok(0);
            }
            let layout = st.content.layout;
            let n = match &st.saving {
                Some(s) => s.remaining(layout).stop_copy,
                None => stream::full_len(layout),
            };
            p.put(0, &n.to_le_bytes())?;
            Ok(0)
        }
        _ => Err(st.fail(libc::ENOTTY, format!("feature {feature} not supported by this device"))),
    }
}

/// VFIO_DEVICE_GET_INFO: a PCI device with reset, like mtty.
pub fn get_info(st: &mut State, buf: &mut [u8]) -> io::Result<()> {
    if buf.len() < 16 {
        return Err(st.fail(libc::EFAULT, format!("device info buffer of {} bytes", buf.len())));
    }
    let argsz = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    if argsz < 16 {
        return Err(st.fail(libc::EINVAL, format!("device info argsz {argsz} < 16")));
    }
    const FLAGS_RESET: u32 = 1 << 0;
    const FLAGS_PCI: u32 = 1 << 1;
    buf[4..8].copy_from_slice(&(FLAGS_RESET | FLAGS_PCI).to_le_bytes());
    buf[8..12].copy_from_slice(&9u32.to_le_bytes()); // VFIO_PCI_NUM_REGIONS
    buf[12..16].copy_from_slice(&5u32.to_le_bytes()); // VFIO_PCI_NUM_IRQS
    if argsz >= 20 && buf.len() >= 20 {
        buf[16..20].copy_from_slice(&0u32.to_le_bytes()); // no capability chain
    }
    Ok(())
}
