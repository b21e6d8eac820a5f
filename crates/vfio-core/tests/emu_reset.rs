//! VFIO_DEVICE_RESET puts the device back in its power-on state, as a
//! function reset does to hardware; and the faults that make a reset,
//! PRECOPY_INFO or a DMA log report fail.

#[path = "emu_util.rs"]
mod util;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use util::*;
use vfio_core::backend::DeviceBackend;
use vfio_core::emu::{EmuConfig, EmuDevice};
use vfio_core::vfio_uapi::DeviceState;

const RUNNING: u32 = DeviceState::Running as u32;
const PRE_COPY: u32 = DeviceState::PreCopy as u32;
const ERROR: u32 = DeviceState::Error as u32;

const F_DMA_LOGGING_START: u32 = 6;
const F_DMA_LOGGING_REPORT: u32 = 8;

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn reset_forgets_a_loaded_image_and_everything_dirtied_since() {
    let d = dev(7, 1 << 20);
    let power_on = d.digest();
    let other = EmuDevice::new(EmuConfig { seed: 9, ..cfg(7, 1 << 20) }).unwrap();
    other.dirty_region(3).unwrap();
    load(&d, &image(&other), 1 << 16).unwrap();
    assert_eq!(d.digest(), other.digest(), "the image was installed");
    go(&d, DeviceState::Running);
    d.dirty_region(1).unwrap();
    assert_ne!(d.digest(), power_on);
    d.reset().unwrap();
    assert_eq!(get_state(&d), RUNNING);
    assert_eq!(d.digest(), power_on, "back to what construction generated");
    assert_eq!(d.digest(), dev(7, 1 << 20).digest(), "the same as a device just powered on");
}

#[test]
fn reset_mid_resume_leaves_the_power_on_state_not_a_partial_image() {
    let d = dev(7, 1 << 20);
    let power_on = d.digest();
    let img = image(&EmuDevice::new(EmuConfig { seed: 5, ..cfg(7, 1 << 20) }).unwrap());
    go(&d, DeviceState::Stop);
    let fd = go(&d, DeviceState::Resuming).unwrap();
    write_all(&d, &fd, &img[..img.len() / 2], 1 << 16).unwrap();
    d.reset().unwrap();
    assert_eq!(get_state(&d), RUNNING);
    assert_eq!(d.digest(), power_on);
}

#[test]
fn reset_stops_dma_and_restores_the_configured_dirty_rate() {
    let d = EmuDevice::new(EmuConfig { dirty_rate: 0, ..cfg(7, 1 << 20) }).unwrap();
    let mut guest = vec![0u8; 16 * 4096];
    // SAFETY: `guest` outlives the attachment: it is detached below before
    // the vector is dropped.
    unsafe { d.attach_guest_memory(guest.as_mut_ptr(), guest.len(), 0).unwrap() };
    d.start_dma(20_000).unwrap();
    d.set_dirty_rate(64 << 20);
    wait_for("DMA writes and dirtying", || d.stats().dma_writes > 0 && d.stats().dirtied_bytes > 0);
    d.reset().unwrap();
    let (writes, dirtied) = (d.stats().dma_writes, d.stats().dirtied_bytes);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(d.stats().dma_writes, writes, "no DMA after a reset until it is programmed again");
    assert_eq!(d.stats().dirtied_bytes, dirtied, "the configured dirty rate (0) again");
    d.detach_guest_memory();
    drop(guest);
}

#[test]
fn a_failed_reset_changes_nothing_and_is_one_shot() {
    let d = dev(7, 1 << 20);
    d.dirty_region(2).unwrap();
    let before = d.digest();
    let fd = go(&d, DeviceState::PreCopy).unwrap();
    d.fail_reset(libc::EIO, 1);
    assert_eq!(errno_of(d.reset()), libc::EIO);
    assert!(d.last_error().unwrap().contains("reset failed"), "{:?}", d.last_error());
    assert_eq!(get_state(&d), PRE_COPY);
    precopy_info(&d, &fd).expect("the data fd is still the live one");
    assert_eq!(d.digest(), before);
    assert_eq!(d.stats().resets, 0);
    d.reset().unwrap();
    assert_eq!(get_state(&d), RUNNING);
    assert_eq!(d.stats().resets, 1);
}

#[test]
fn a_device_in_error_whose_reset_fails_stays_in_error() {
    let d = dev(7, 4096);
    d.fail_next_move(DeviceState::Stop, libc::EIO, true);
    assert_eq!(errno_of(set_state(&d, DeviceState::Stop as u32)), libc::EIO);
    assert_eq!(errno_of(set_state(&d, DeviceState::Stop as u32)), libc::EIO);
    assert_eq!(get_state(&d), ERROR);
    d.fail_reset(libc::ETIMEDOUT, 2);
    assert_eq!(errno_of(d.reset()), libc::ETIMEDOUT);
    assert_eq!(errno_of(d.reset()), libc::ETIMEDOUT);
    assert_eq!(get_state(&d), ERROR);
    d.reset().unwrap();
    assert_eq!(get_state(&d), RUNNING);
}

#[test]
fn precopy_info_fault_comes_after_the_kernels_checks() {
    let d = dev(7, 1 << 20);
    let fd = go(&d, DeviceState::PreCopy).unwrap();
    d.fail_precopy_info(libc::EIO, 2);
    let mut short = [0u8; 24];
    short[..4].copy_from_slice(&16u32.to_le_bytes());
    assert_eq!(errno_of(d.precopy_info(fd.as_raw_fd(), &mut short)), libc::EINVAL, "argsz is checked first");
    assert_eq!(errno_of(precopy_info(&d, &fd)), libc::EIO);
    assert_eq!(errno_of(precopy_info(&d, &fd)), libc::EIO);
    let (initial, _) = precopy_info(&d, &fd).expect("the fault was for two calls");
    assert!(initial > 0);
}

fn dma_report(d: &EmuDevice, iova: u64, length: u64, page_size: u64, bitmap: &mut [u64]) -> std::io::Result<i32> {
    let mut p = Vec::new();
    for v in [iova, length, page_size, bitmap.as_mut_ptr() as u64] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    feature(d, GET | F_DMA_LOGGING_REPORT, &p).0
}

#[test]
fn dma_report_fault_keeps_the_pages_logged() {
    let d = dev(7, 4096);
    let mut guest = vec![0u8; 64 * 4096];
    // SAFETY: `guest` outlives the attachment: detached below before it is dropped.
    unsafe { d.attach_guest_memory(guest.as_mut_ptr(), guest.len(), 0).unwrap() };
    let ranges = [0u64, 64 * 4096];
    let mut start = Vec::new();
    start.extend_from_slice(&4096u64.to_le_bytes());
    start.extend_from_slice(&1u32.to_le_bytes());
    start.extend_from_slice(&0u32.to_le_bytes());
    start.extend_from_slice(&(ranges.as_ptr() as u64).to_le_bytes());
    feature(&d, SET | F_DMA_LOGGING_START, &start).0.unwrap();
    d.start_dma(5000).unwrap();
    wait_for("logged DMA pages", || d.logged_pages().is_some_and(|p| !p.is_empty()));
    d.stop_dma();
    let logged = d.logged_pages().unwrap();
    d.fail_dma_report(libc::EIO, 1);
    let mut bm = [0u64; 1];
    assert_eq!(errno_of(dma_report(&d, 0, 64 * 4096, 1000, &mut bm)), libc::EINVAL, "the kernel's checks come first");
    assert_eq!(errno_of(dma_report(&d, 0, 64 * 4096, 4096, &mut bm)), libc::EIO);
    assert_eq!(bm[0], 0, "a failed report writes no bits");
    assert_eq!(d.logged_pages().unwrap(), logged, "and clears none");
    dma_report(&d, 0, 64 * 4096, 4096, &mut bm).unwrap();
    let want = logged.iter().fold(0u64, |w, &p| w | 1 << (p / 4096));
    assert_eq!(bm[0], want);
    d.detach_guest_memory();
    drop(guest);
}
