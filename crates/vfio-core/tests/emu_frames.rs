//! The framed data path (DataFd::pump_frames / load_frames) against the
//! emulated device, whose data fds are pipes and so take the splice path:
//! the device's own verdicts (ENOMSG in PRE_COPY, EOF only after the last
//! STOP_COPY byte, failure after a reset) must come through unchanged.
#![deny(clippy::undocumented_unsafe_blocks)]

#[path = "emu_util.rs"]
mod util;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use util::*;
use vfio_core::backend::DeviceBackend;
use vfio_core::datafd::{DataFd, FrameOptions, LoadEnd, LoadFrameOptions};
use vfio_core::device::Device;
use vfio_core::emu::{EmuConfig, EmuDevice};
use vfio_core::vmm_sys as sys;
use vfio_core::transfer::End;
use vfio_core::vfio_uapi::DeviceState;

const DATA_STATE: u64 = 0xffff_ffff_ef10_0004;
const END_OF_STATE: u64 = 0xffff_ffff_ef10_0001;

fn emu(flags: u64, size: u64, seed: u64) -> (Arc<EmuDevice>, Device) {
    let d = Arc::new(EmuDevice::new(EmuConfig { seed, ..cfg(flags, size) }).unwrap());
    let backend: Arc<dyn DeviceBackend> = d.clone();
    (d, Device::new(backend))
}

fn pump(splice: bool) -> FrameOptions {
    FrameOptions { block_size: 1 << 20, max_bytes: u64::MAX, marker: DATA_STATE, idle_timeout: Some(Duration::from_secs(20)), allow_splice: splice }
}

fn load(splice: bool) -> LoadFrameOptions {
    LoadFrameOptions { marker: DATA_STATE, max_bytes: u64::MAX, idle_timeout: Some(Duration::from_secs(20)), allow_splice: splice }
}

/// Loads frames from `from` into `fd` on a thread until the run ends; the
/// source side writes END_OF_STATE after its frames and closes.
fn loader(fd: Arc<DataFd>, from: OwnedFd, splice: bool) -> std::thread::JoinHandle<(u64, LoadEnd)> {
    std::thread::spawn(move || {
        let st = fd.load_frames(from.as_raw_fd(), &load(splice)).expect("load_frames");
        (st.bytes, st.end)
    })
}

#[test]
fn stop_copy_moves_the_whole_state_byte_exact_on_both_paths() {
    for splice in [true, false] {
        let size = (24 << 20) + 12345;
        let (src, sdev) = emu(1, size, 3);
        let (dst, ddev) = emu(1, size, 4);
        let (a, b) = sys::socketpair().unwrap();
        ddev.set_state(DeviceState::Stop).unwrap();
        let rfd = Arc::new(ddev.set_state(DeviceState::Resuming).unwrap().expect("resume fd"));
        let h = loader(rfd.clone(), b, splice);
        let sfd = sdev.set_state(DeviceState::StopCopy).unwrap().expect("saving fd");
        let st = sfd.pump_frames(a.as_raw_fd(), &pump(splice)).unwrap();
        assert_eq!(st.end, End::Eof);
        assert_eq!(st.spliced, if splice { st.frames } else { 0 }, "splice {splice}: every frame on the chosen path");
        assert!(st.frames >= st.bytes / (1 << 20));
        sys::write(a.as_raw_fd(), &END_OF_STATE.to_be_bytes()).unwrap();
        let (bytes, end) = h.join().unwrap();
        assert_eq!((bytes, end), (st.bytes, LoadEnd::Marker(END_OF_STATE)));
        rfd.close();
        ddev.set_state(DeviceState::Stop).unwrap_or_else(|e| panic!("splice {splice}: {e}"));
        assert_eq!(src.digest(), dst.digest(), "splice {splice}");
    }
}

#[test]
fn pre_copy_ends_each_round_with_enomsg_and_stop_copy_with_eof() {
    let (_src, sdev) = emu(1 | 4, 3 << 20, 5);
    let (a, b) = sys::socketpair().unwrap();
    let sink = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match sys::read(b.as_raw_fd(), &mut buf) {
                Ok(0) => return n,
                Ok(k) => n += k as u64,
                Err(e) => panic!("{e}"),
            }
        }
    });
    let fd = sdev.set_state(DeviceState::PreCopy).unwrap().expect("pre-copy fd");
    let first = fd.pump_frames(a.as_raw_fd(), &pump(true)).unwrap();
    assert_eq!(first.end, End::NoData, "the initial data, then ENOMSG from the backend");
    assert!(first.bytes > 0);
    let again = fd.pump_frames(a.as_raw_fd(), &pump(true)).unwrap();
    assert_eq!((again.bytes, again.end), (0, End::NoData), "nothing new: ENOMSG at once");
    assert!(sdev.set_state(DeviceState::StopCopy).unwrap().is_none(), "PRE_COPY -> STOP_COPY keeps the fd");
    let rest = fd.pump_frames(a.as_raw_fd(), &pump(true)).unwrap();
    assert_eq!(rest.end, End::Eof);
    drop(a);
    let wire = sink.join().unwrap();
    assert_eq!(wire, first.bytes + rest.bytes + 16 * (first.frames + rest.frames));
}

#[test]
fn a_reset_mid_stream_is_an_error_not_the_end_of_the_state() {
    let (src, sdev) = emu(1, 256 << 20, 6);
    let (a, b) = sys::socketpair().unwrap();
    // A slow reader, so the device is still producing when it resets.
    let sink = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(k @ 1..) = sys::read(b.as_raw_fd(), &mut buf) {
            let _ = k;
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let fd = sdev.set_state(DeviceState::StopCopy).unwrap().expect("saving fd");
    src.async_reset(Duration::from_millis(30));
    let e = fd.pump_frames(a.as_raw_fd(), &pump(true)).expect_err("a reset device has no end of state to report");
    assert!(matches!(e.errno, libc::ENODEV | libc::EIO | libc::EBADF), "errno {}: {}", e.errno, e.message);
    drop(a);
    sink.join().unwrap();
    assert_eq!(sdev.state().unwrap(), DeviceState::Running);
}

#[test]
fn the_transfer_engine_also_takes_the_end_of_the_state_from_the_device() {
    // transfer_to splices the same pipe: its closed end must be confirmed by
    // the device (EOF after the last byte) and a reset must be an error.
    use vfio_core::transfer::Options;
    let size = 8 << 20;
    let (_src, sdev) = emu(1, size, 7);
    let (a, b) = sys::socketpair().unwrap();
    let sink = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(k @ 1..) = sys::read(b.as_raw_fd(), &mut buf) {
            n += k as u64;
        }
        n
    });
    let fd = sdev.set_state(DeviceState::StopCopy).unwrap().expect("saving fd");
    let st = fd.transfer_to(a.as_raw_fd(), u64::MAX, &Options::default()).unwrap();
    assert_eq!(st.end, End::Eof);
    drop(a);
    assert_eq!(sink.join().unwrap(), st.bytes);
    assert!(st.bytes > size, "the image: header, records and END around {size} bytes of state");

    let (src, sdev) = emu(1, 256 << 20, 8);
    let (a, b) = sys::socketpair().unwrap();
    let sink = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(1..) = sys::read(b.as_raw_fd(), &mut buf) {
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let fd = sdev.set_state(DeviceState::StopCopy).unwrap().expect("saving fd");
    src.async_reset(Duration::from_millis(30));
    let e = fd.transfer_to(a.as_raw_fd(), u64::MAX, &Options::default()).expect_err("a reset is not the end of the state");
    assert!(matches!(e.errno, libc::ENODEV | libc::EIO | libc::EBADF), "errno {}: {}", e.errno, e.message);
    drop(a);
    sink.join().unwrap();
}
