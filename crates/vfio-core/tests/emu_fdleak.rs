//! No fd or thread outlives the device. Alone in its binary: /proc/self/fd
//! is process-wide and other tests would race the count.
#![deny(clippy::undocumented_unsafe_blocks)]

#[path = "emu_util.rs"]
mod util;

use std::os::fd::AsRawFd;
use std::time::Duration;

use util::*;
use vfio_core::backend::DeviceBackend;
use vfio_core::vfio_uapi::DeviceState;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn full_cycles_leak_nothing() {
    let (f0, t0) = (fds(), threads());
    for _ in 0..3 {
        let src = dev(7, 300_000);
        let dst = dev(7, 300_000);
        let fd = go(&src, DeviceState::PreCopy).unwrap();
        let mut img = read_precopy(&src, &fd);
        go(&src, DeviceState::StopCopy);
        img.extend(read_all(&src, &fd));
        drop(fd);
        go(&src, DeviceState::Stop);
        load(&dst, &img, 5000).unwrap();
        assert_eq!(src.digest(), dst.digest());
        // Sessions abandoned mid-way, by reset and by drop.
        let held = go(&src, DeviceState::StopCopy).unwrap();
        src.reset().unwrap();
        let mut b = [0u8; 8];
        assert_eq!(errno_of(src.data_read(held.as_raw_fd(), &mut b)), libc::ENODEV);
        drop(held);
        go(&dst, DeviceState::Stop);
        let _resume = go(&dst, DeviceState::Resuming).unwrap();
        let _saving = go(&src, DeviceState::PreCopy).unwrap();
        src.async_reset(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        drop(src);
        drop(dst);
    }
    // Data fds the caller still held were dropped with the bindings above.
    assert_eq!(fds(), f0, "fd leak");
    let t1 = std::time::Instant::now();
    while threads() != t0 && t1.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(threads(), t0, "thread leak");
}
