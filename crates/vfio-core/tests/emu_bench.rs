//! Throughput of the emulated device's data path, measured, never asserted:
//! `cargo test -p vfio-core --release --test emu_bench -- --ignored --nocapture --test-threads 1`
//! (`EMU_BENCH_MIB` sets the state size, default 1024). Each line gives MiB/s
//! of device state for: save alone (generate + write into the pipe, read out
//! and dropped), load alone (an image held in memory written into the
//! resume fd, then RESUMING -> STOP), and save -> load with the source fd
//! spliced into the destination fd, as a migration's transfer would.
#![deny(clippy::undocumented_unsafe_blocks)]

#[path = "emu_util.rs"]
mod util;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use util::*;
use vfio_core::emu::{EmuConfig, EmuDevice};
use vfio_core::vfio_uapi::DeviceState;

fn size() -> u64 {
    std::env::var("EMU_BENCH_MIB").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(1024) << 20
}

fn device(seed: u64, size: u64) -> EmuDevice {
    EmuDevice::new(EmuConfig { seed, ..cfg(7, size) }).unwrap()
}

fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

/// Reads the fd to EOF with plain read(2); `keep` collects the bytes.
fn drain(fd: &OwnedFd, mut keep: Option<&mut Vec<u8>>) -> u64 {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        // SAFETY: the kernel writes at most buf.len() bytes into `buf`.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "read: {e}");
            continue;
        }
        if n == 0 {
            return total;
        }
        if let Some(k) = keep.as_deref_mut() {
            k.extend_from_slice(&buf[..n as usize]);
        }
        total += n as u64;
    }
}

fn write_all_raw(fd: &OwnedFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: the kernel reads at most data.len() bytes of `data`.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len().min(1 << 20)) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "write: {e}");
            continue;
        }
        data = &data[n as usize..];
    }
}

fn save(d: &EmuDevice, keep: Option<&mut Vec<u8>>) -> (u64, f64) {
    go(d, DeviceState::Stop);
    let t = Instant::now();
    let fd = go(d, DeviceState::StopCopy).unwrap();
    let n = drain(&fd, keep);
    let secs = t.elapsed().as_secs_f64();
    go(d, DeviceState::Stop);
    (n, secs)
}

#[test]
#[ignore]
fn bench_save_load_pipe() {
    let size = size();
    let src = device(11, size);

    // Save alone, the bytes read and dropped.
    let (n, secs) = save(&src, None);
    assert_eq!(n, vfio_core::emu::stream::full_len(src.config().layout()));
    println!("save alone:     {:8.0} MiB/s ({} MiB in {secs:.3} s)", rate(size, secs), size >> 20);
    // The image for the load below (untimed: the copy into memory is ours).
    let mut img = Vec::with_capacity(n as usize);
    save(&src, Some(&mut img));
    assert_eq!(n, img.len() as u64);

    // Load alone.
    let dst = device(22, size);
    go(&dst, DeviceState::Stop);
    let t = Instant::now();
    let fd = go(&dst, DeviceState::Resuming).unwrap();
    write_all_raw(&fd, &img);
    let written = t.elapsed().as_secs_f64();
    go(&dst, DeviceState::Stop);
    let secs = t.elapsed().as_secs_f64();
    drop(fd);
    println!(
        "load alone:     {:8.0} MiB/s ({secs:.3} s; RESUMING -> STOP took {:.1} ms)",
        rate(size, secs),
        (secs - written) * 1e3
    );
    drop(img);
    assert_eq!(src.digest(), dst.digest());

    // Save -> load, the source fd spliced into the destination fd.
    let src = device(33, size);
    let dst = device(44, size);
    go(&src, DeviceState::Stop);
    go(&dst, DeviceState::Stop);
    let t = Instant::now();
    let out = go(&src, DeviceState::StopCopy).unwrap();
    let inp = go(&dst, DeviceState::Resuming).unwrap();
    let mut moved = 0u64;
    loop {
        // SAFETY: null offsets; no user memory is involved.
        let n = unsafe {
            libc::splice(out.as_raw_fd(), std::ptr::null_mut(), inp.as_raw_fd(), std::ptr::null_mut(), 1 << 20, libc::SPLICE_F_MOVE)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "splice: {e}");
            continue;
        }
        if n == 0 {
            break;
        }
        moved += n as u64;
    }
    let spliced = t.elapsed().as_secs_f64();
    go(&src, DeviceState::Stop);
    go(&dst, DeviceState::Stop);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(moved, vfio_core::emu::stream::full_len(src.config().layout()));
    println!(
        "save -> load:   {:8.0} MiB/s ({secs:.3} s; leaving STOP_COPY/RESUMING took {:.1} ms)",
        rate(size, secs),
        (secs - spliced) * 1e3
    );
    let t = Instant::now();
    assert_eq!(src.digest(), dst.digest());
    println!("digests:        {:.1} ms (both sides, hashes cached)", t.elapsed().as_secs_f64() * 1e3);
    let fresh = device(55, size);
    let t = Instant::now();
    let _ = fresh.digest();
    println!("fresh digest:   {:8.0} MiB/s (generate + hash every region)", rate(size, t.elapsed().as_secs_f64()));
}
