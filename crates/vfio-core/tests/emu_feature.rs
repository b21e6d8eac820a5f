//! VFIO_DEVICE_FEATURE validation (vfio_ioctl_device_feature +
//! vfio_check_feature order), GET_INFO and DMA logging.
#![deny(clippy::undocumented_unsafe_blocks)]

#[path = "emu_util.rs"]
mod util;

use std::time::Duration;

use util::*;
use vfio_core::backend::DeviceBackend;
use vfio_core::emu::{EmuConfig, EmuDevice};

fn raw(d: &EmuDevice, argsz: u32, flags: u32, payload_len: usize) -> std::io::Result<i32> {
    let mut b = vec![0u8; 8 + payload_len];
    b[..4].copy_from_slice(&argsz.to_le_bytes());
    b[4..8].copy_from_slice(&flags.to_le_bytes());
    // SAFETY: the emulated device follows payload pointers only through
    // process_vm_readv/writev, which fault cleanly (EFAULT) on bad ones.
    unsafe { d.device_feature(&mut b) }
}

#[test]
fn header_checks() {
    let d = dev(7, 10);
    assert_eq!(errno_of(raw(&d, 7, GET | 1, 8)), libc::EINVAL, "argsz < header");
    assert_eq!(errno_of(raw(&d, 16, GET | 1 | (1 << 19), 8)), libc::EINVAL, "unknown flag bit");
    assert_eq!(errno_of(raw(&d, 16, GET | SET | 2, 8)), libc::EINVAL, "GET|SET without PROBE");
    // SAFETY: no payload, so no pointer to follow.
    assert_eq!(errno_of(unsafe { d.device_feature(&mut [0u8; 4]) }), libc::EFAULT, "no header at all");
    // Unknown features and features the device lacks: ENOTTY, before any op check.
    for f in [0u32, 3, 4, 5, 10, 11, 12, 0xffff] {
        assert_eq!(errno_of(raw(&d, 16, GET | f, 8)), libc::ENOTTY, "feature {f}");
    }
}

#[test]
fn check_feature_order() {
    let d = dev(7, 10);
    // MIGRATION: GET only, 8 bytes.
    assert_eq!(raw(&d, 8, PROBE | GET | 1, 0).unwrap(), 0);
    assert_eq!(raw(&d, 8, PROBE | 1, 0).unwrap(), 0, "PROBE with no op");
    assert_eq!(errno_of(raw(&d, 16, PROBE | SET | 1, 8)), libc::EINVAL, "PROBE of an op it lacks");
    assert_eq!(errno_of(raw(&d, 16, SET | 1, 8)), libc::EINVAL);
    assert_eq!(errno_of(raw(&d, 16, 1, 8)), libc::EINVAL, "neither GET nor SET");
    assert_eq!(errno_of(raw(&d, 12, GET | 1, 8)), libc::EINVAL, "payload too small");
    let (r, out) = feature(&d, GET | 1, &[0u8; 8]);
    r.unwrap();
    assert_eq!(u64::from_le_bytes(out.try_into().unwrap()), 7);
    // MIG_DEVICE_STATE: GET and SET, PROBE of both together is fine.
    assert_eq!(raw(&d, 8, PROBE | GET | SET | 2, 0).unwrap(), 0);
    assert_eq!(errno_of(raw(&d, 15, SET | 2, 8)), libc::EINVAL);
    // argsz larger than the buffer: the kernel would fault reading it.
    assert_eq!(errno_of(raw(&d, 16, SET | 2, 2)), libc::EFAULT);
    // MIG_DATA_SIZE: GET only.
    assert_eq!(errno_of(raw(&d, 16, SET | 9, 8)), libc::EINVAL);
    assert_eq!(raw(&d, 8, PROBE | GET | 9, 0).unwrap(), 0);
    // DMA logging: START/STOP are SET, REPORT is GET.
    assert_eq!(raw(&d, 8, PROBE | SET | 6, 0).unwrap(), 0);
    assert_eq!(errno_of(raw(&d, 8, PROBE | GET | 6, 0)), libc::EINVAL);
    assert_eq!(raw(&d, 8, PROBE | SET | 7, 0).unwrap(), 0);
    assert_eq!(raw(&d, 8, SET | 7, 0).unwrap(), 0, "STOP takes no payload");
    assert_eq!(raw(&d, 8, PROBE | GET | 8, 0).unwrap(), 0);
    assert_eq!(errno_of(raw(&d, 16, GET | 8, 8)), libc::EINVAL, "REPORT needs 32 bytes");
}

#[test]
fn absent_features_are_enotty() {
    let d = EmuDevice::new(EmuConfig { dma_logging_max_ranges: None, mig_data_size: false, ..cfg(1, 10) }).unwrap();
    for f in [6u32, 7, 8] {
        assert_eq!(errno_of(raw(&d, 8, PROBE | SET | f, 0)), libc::ENOTTY, "logging feature {f}");
    }
    assert_eq!(errno_of(raw(&d, 16, GET | 9, 8)), libc::ENOTTY);
    // P2P states on a device without P2P: the walk refuses them.
    assert_eq!(errno_of(set_state(&d, 5)), libc::EINVAL);
    assert_eq!(errno_of(set_state(&d, 6)), libc::EINVAL);
    assert_eq!(errno_of(set_state(&d, 7)), libc::EINVAL);
}

#[test]
fn bad_config_is_refused() {
    for flags in [0u64, 2, 4, 6, 8 | 1, 1 << 40] {
        let e = EmuDevice::new(cfg(flags, 10)).err().expect("illegal flags accepted");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("flags"), "{e}");
    }
    assert!(EmuDevice::new(EmuConfig { region_size: 100, ..cfg(1, 10) }).is_err());
    assert!(EmuDevice::new(EmuConfig { state_size: 1 << 40, ..cfg(1, 0) }).is_err());
    assert!(EmuDevice::new(EmuConfig { state_size: 8 << 30, region_size: 1 << 20, ..cfg(1, 0) }).is_ok(), "GiBs without holding them");
}

#[test]
fn get_info() {
    let d = dev(1, 10);
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&24u32.to_le_bytes());
    d.get_info(&mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 3, "RESET | PCI");
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 9);
    assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 5);
    b[..4].copy_from_slice(&12u32.to_le_bytes());
    assert_eq!(errno_of(d.get_info(&mut b)), libc::EINVAL);
    assert_eq!(errno_of(d.get_info(&mut b[..8])), libc::EFAULT);
    assert_eq!(d.name(), "emulated");
}

fn start(d: &EmuDevice, page_size: u64, ranges: &[(u64, u64)]) -> (std::io::Result<i32>, u64) {
    let mut r = Vec::new();
    for &(iova, len) in ranges {
        r.extend_from_slice(&iova.to_le_bytes());
        r.extend_from_slice(&len.to_le_bytes());
    }
    start_raw(d, page_size, ranges.len() as u32, if r.is_empty() { 0 } else { r.as_ptr() as u64 })
}

fn start_raw(d: &EmuDevice, page_size: u64, n: u32, ptr: u64) -> (std::io::Result<i32>, u64) {
    let mut p = Vec::new();
    p.extend_from_slice(&page_size.to_le_bytes());
    p.extend_from_slice(&n.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&ptr.to_le_bytes());
    let (r, out) = feature(d, SET | 6, &p);
    (r, u64::from_le_bytes(out[..8].try_into().unwrap()))
}

fn report(d: &EmuDevice, iova: u64, length: u64, page_size: u64, bitmap: &mut [u64]) -> std::io::Result<i32> {
    report_raw(d, iova, length, page_size, bitmap.as_mut_ptr() as u64)
}

fn report_raw(d: &EmuDevice, iova: u64, length: u64, page_size: u64, ptr: u64) -> std::io::Result<i32> {
    let mut p = Vec::new();
    for v in [iova, length, page_size, ptr] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    feature(d, GET | 8, &p).0
}

#[test]
fn dma_logging_start_validation() {
    let d = dev(7, 10);
    assert_eq!(errno_of(start(&d, 4096, &[]).0), libc::EINVAL, "no ranges");
    let many: Vec<(u64, u64)> = (0..257).map(|i| (i * 8192, 4096)).collect();
    assert_eq!(errno_of(start(&d, 4096, &many).0), libc::E2BIG);
    assert_eq!(errno_of(start(&d, 4096, &[(100, 4096)]).0), libc::EINVAL, "unaligned iova");
    assert_eq!(errno_of(start(&d, 4096, &[(0, 4097)]).0), libc::EINVAL, "unaligned length");
    assert_eq!(errno_of(start(&d, 4096, &[(u64::MAX - 4095, 8192)]).0), libc::EOVERFLOW);
    assert_eq!(errno_of(start(&d, 4096, &[(0, 8192), (4096, 4096)]).0), libc::EINVAL, "overlap");
    assert_eq!(errno_of(start_raw(&d, 4096, 1, 0).0), libc::EFAULT, "NULL ranges");
    assert_eq!(errno_of(start_raw(&d, 4096, 2, 8).0), libc::EFAULT, "unmapped ranges");
    assert_eq!(errno_of(start(&d, 1000, &[(0, 0)]).0), libc::EINVAL, "page size the device lacks");
    assert_eq!(errno_of(report(&d, 0, 4096, 4096, &mut [0u64; 1])), libc::EINVAL, "REPORT before START");
    let (r, ps) = start(&d, 4096, &[(0, 1 << 20)]);
    r.unwrap();
    assert_eq!(ps, 4096);
    assert_eq!(errno_of(start(&d, 4096, &[(0, 4096)]).0), libc::EBUSY);
    let mut bm = [0u64; 4];
    assert_eq!(errno_of(report(&d, 0, 4096, 1000, &mut bm)), libc::EINVAL, "report page size");
    assert_eq!(errno_of(report(&d, 0, 4096, 2048, &mut bm)), libc::EINVAL, "below 4 KiB");
    assert_eq!(errno_of(report(&d, u64::MAX, 2, 4096, &mut bm)), libc::EOVERFLOW);
    assert_eq!(errno_of(report_raw(&d, 0, 4096, 4096, 0)), libc::EFAULT);
    raw(&d, 8, SET | 7, 0).unwrap();
    assert_eq!(errno_of(report(&d, 0, 4096, 4096, &mut bm)), libc::EINVAL, "stopped");
}

#[test]
fn dma_engine_marks_logged_pages_and_report_reads_and_clears() {
    let d = dev(7, 10);
    let mut guest = vec![0u8; 64 * 4096];
    let iova = 0x1_0000_0000u64;
    // SAFETY: DMA into `guest` stops at stop_dma() below, before the test
    // reads it, and no later write can happen while it is dropped.
    unsafe { d.attach_guest_memory(guest.as_mut_ptr(), guest.len(), iova).unwrap() };
    // Track only the first half of guest memory.
    let (r, _) = start(&d, 4096, &[(iova, 32 * 4096)]);
    r.unwrap();
    d.start_dma(5000).unwrap();
    let t0 = std::time::Instant::now();
    while d.stats().dma_logged_pages < 10 {
        assert!(t0.elapsed() < Duration::from_secs(5), "DMA engine idle");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.stop_dma();
    let logged = d.logged_pages().unwrap();
    assert!(!logged.is_empty());
    assert!(logged.iter().all(|&p| p >= iova && p < iova + 32 * 4096 && p % 4096 == 0));
    // Guest memory really was written where the log says (and maybe elsewhere).
    for &p in &logged {
        let off = (p - iova) as usize;
        assert!(guest[off..off + 4096].iter().any(|&b| b != 0), "page {p:#x} logged but untouched");
    }
    // Bits only set: a bit the caller set stays set.
    let mut bm = [0u64; 1];
    bm[0] = 1 << 63;
    report(&d, iova, 64 * 4096, 4096, &mut bm).unwrap();
    let mut want = 1u64 << 63;
    for &p in &logged {
        want |= 1 << ((p - iova) / 4096);
    }
    assert_eq!(bm[0], want);
    // Read and clear: a second report adds nothing.
    let mut bm2 = [0u64; 1];
    report(&d, iova, 64 * 4096, 4096, &mut bm2).unwrap();
    assert_eq!(bm2[0], 0);
    assert!(d.logged_pages().unwrap().is_empty());
    // A coarser report page: one bit per 2 pages.
    d.start_dma(5000).unwrap();
    let t0 = std::time::Instant::now();
    while d.logged_pages().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "DMA engine idle after a restart");
        std::thread::sleep(Duration::from_millis(2));
    }
    d.stop_dma();
    let logged = d.logged_pages().unwrap();
    let mut bm3 = [0u64; 1];
    report(&d, iova, 64 * 4096, 8192, &mut bm3).unwrap();
    let mut want = 0u64;
    for &p in &logged {
        want |= 1 << ((p - iova) / 8192);
    }
    assert_eq!(bm3[0], want);
    d.detach_guest_memory();
    assert_eq!(errno_of(d.start_dma(1)), libc::EINVAL);
}

#[test]
fn more_ranges_than_the_device_tracks_are_merged() {
    let d = EmuDevice::new(EmuConfig { dma_logging_max_ranges: Some(2), ..cfg(7, 10) }).unwrap();
    let (r, _) = start(&d, 4096, &[(0, 4096), (8192, 4096), (1 << 20, 4096)]);
    r.unwrap();
    let mut guest = vec![0u8; 16 * 4096];
    // SAFETY: `guest` outlives the device: drop(d) comes first below.
    unsafe { d.attach_guest_memory(guest.as_mut_ptr(), guest.len(), 0).unwrap() };
    d.start_dma(20000).unwrap();
    let t0 = std::time::Instant::now();
    // The gap page 4096 is now tracked too (merged 0..12288): it shows up eventually.
    while !d.logged_pages().unwrap().contains(&4096) {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    d.stop_dma();
    assert!(d.logged_pages().unwrap().iter().all(|&p| p < 3 * 4096));
    drop(d);
    drop(guest);
}
