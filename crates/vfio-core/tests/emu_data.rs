//! Data fd semantics and byte-exact save -> load.
#![deny(clippy::undocumented_unsafe_blocks)]

#[path = "emu_util.rs"]
mod util;

use std::os::fd::AsRawFd;

use util::*;
use vfio_core::backend::DeviceBackend;
use vfio_core::emu::{EmuConfig, EmuDevice};
use vfio_core::vfio_uapi::DeviceState;

fn roundtrip(size: u64, seg: usize) {
    let src = EmuDevice::new(EmuConfig { seed: 11, ..cfg(7, size) }).unwrap();
    let dst = EmuDevice::new(EmuConfig { seed: 22, ..cfg(7, size) }).unwrap();
    if size > 0 {
        assert_ne!(src.digest(), dst.digest(), "different seeds, different state");
    }
    let img = image(&src);
    assert_eq!(img.len() as u64, vfio_core::emu::stream::full_len(src.config().layout()));
    load(&dst, &img, seg).unwrap_or_else(|e| panic!("size {size}: {e} {:?}", dst.last_error()));
    assert_eq!(src.digest(), dst.digest(), "size {size}");
    assert_eq!(get_state(&dst), DeviceState::Stop as u32);
}

#[test]
fn save_load_digests_match_small_sizes() {
    for (size, seg) in [(0, 7), (1, 1), (4095, 13), ((1 << 20) + 3, 65536)] {
        roundtrip(size, seg);
    }
}

#[test]
fn save_load_digest_matches_256_mib() {
    roundtrip(256 << 20, 1 << 20);
}

#[test]
fn fresh_digest_is_deterministic_and_dirtying_changes_it() {
    let a = dev(1, 200_000);
    let b = dev(1, 200_000);
    assert_eq!(a.digest(), b.digest());
    a.dirty_region(2).unwrap();
    assert_ne!(a.digest(), b.digest());
    assert_eq!(errno_of(a.dirty_region(99)), libc::EINVAL);
    // The resumed device can be saved again: a second hop keeps the state.
    let img = image(&a);
    load(&b, &img, 1000).unwrap();
    assert_eq!(a.digest(), b.digest());
    go(&b, DeviceState::Running);
    let c = dev(1, 200_000);
    load(&c, &image(&b), 4096).unwrap();
    assert_eq!(c.digest(), a.digest());
}

#[test]
fn precopy_enomsg_info_dirty_then_stop_copy_eof() {
    let src = dev(7, 10 * 65536);
    let fd = go(&src, DeviceState::PreCopy).unwrap();
    let (init, dirty) = precopy_info(&src, &fd).unwrap();
    let full = vfio_core::emu::stream::full_len(src.config().layout());
    assert_eq!(init, full - vfio_core::emu::stream::END_LEN, "everything but END is initial");
    assert_eq!(dirty, 0);
    // Partial read: unread bytes (including those queued in the pipe) stay initial.
    let mut b = vec![0u8; 1000];
    let n = src.data_read(fd.as_raw_fd(), &mut b).unwrap();
    assert!(n > 0);
    let mut stream = b[..n].to_vec();
    assert_eq!(precopy_info(&src, &fd).unwrap().0, init - n as u64);
    stream.extend(read_precopy(&src, &fd));
    assert_eq!(precopy_info(&src, &fd).unwrap(), (0, 0));
    assert_eq!(errno_of(src.data_read(fd.as_raw_fd(), &mut b)), libc::ENOMSG);
    // The device dirties two regions: they come back as dirty bytes.
    src.dirty_region(3).unwrap();
    src.dirty_region(7).unwrap();
    // (Dirtying region 3 again here could race its re-send: the device may
    // already have queued it, making a third record. Distinct regions only.)
    let (i2, d2) = precopy_info(&src, &fd).unwrap();
    assert_eq!(i2, 0);
    assert_eq!(d2, 2 * (56 + 65536));
    stream.extend(read_precopy(&src, &fd));
    assert_eq!(precopy_info(&src, &fd).unwrap(), (0, 0));
    src.dirty_region(5).unwrap();
    assert!(go(&src, DeviceState::PreCopyP2p).is_none());
    assert!(go(&src, DeviceState::StopCopy).is_none());
    assert_eq!(errno_of(precopy_info(&src, &fd)), libc::EINVAL, "not in a PRE_COPY state");
    stream.extend(read_all(&src, &fd));
    assert_eq!(src.data_read(fd.as_raw_fd(), &mut b).unwrap(), 0, "EOF stays EOF");
    assert_eq!(stream.len() as u64, full + 3 * (56 + 65536));
    go(&src, DeviceState::Stop);
    let dst = dev(7, 10 * 65536);
    load(&dst, &stream, 777).unwrap();
    assert_eq!(src.digest(), dst.digest());
}

#[test]
fn dirty_rate_dirties_while_running() {
    let src = EmuDevice::new(EmuConfig { dirty_rate: 50 << 20, ..cfg(7, 4 << 20) }).unwrap();
    let fd = go(&src, DeviceState::PreCopy).unwrap();
    let mut stream = Vec::new();
    let t0 = std::time::Instant::now();
    // Reads for at least 200 ms and until the dirtying thread has run: on a
    // loaded machine it may not have been scheduled within the 200 ms.
    while t0.elapsed() < std::time::Duration::from_millis(200) || src.stats().dirtied_bytes == 0 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "nothing dirtied within 10 s");
        let mut b = vec![0u8; 256 * 1024];
        match src.data_read(fd.as_raw_fd(), &mut b) {
            Ok(n) => stream.extend_from_slice(&b[..n]),
            Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(src.stats().dirtied_bytes > 0);
    go(&src, DeviceState::StopCopy);
    let dirtied = src.stats().dirtied_bytes;
    stream.extend(read_all(&src, &fd));
    assert_eq!(src.stats().dirtied_bytes, dirtied, "no dirtying in STOP_COPY");
    assert!(stream.len() as u64 > 4 << 20);
    go(&src, DeviceState::Stop);
    let dst = dev(7, 4 << 20);
    load(&dst, &stream, 1 << 16).unwrap();
    assert_eq!(src.digest(), dst.digest());
}

#[test]
fn initial_bytes_limit_defers_the_rest_to_stop_copy() {
    let c = EmuConfig { initial_bytes: Some(64 + 2 * (56 + 65536)), ..cfg(5, 5 * 65536) };
    let src = EmuDevice::new(c.clone()).unwrap();
    let fd = go(&src, DeviceState::PreCopy).unwrap();
    assert_eq!(precopy_info(&src, &fd).unwrap(), (64 + 2 * (56 + 65536), 0));
    let mut s = read_precopy(&src, &fd);
    assert_eq!(s.len(), 64 + 2 * (56 + 65536));
    let mut sz = [0u8; 8];
    let (r, out) = feature(&src, GET | 9, &sz);
    r.unwrap();
    sz.copy_from_slice(&out);
    let remaining = u64::from_le_bytes(sz);
    assert!(go(&src, DeviceState::StopCopy).is_none(), "PRE_COPY -> STOP_COPY without P2P: same fd");
    let rest = read_all(&src, &fd);
    assert_eq!(rest.len() as u64, remaining, "MIG_DATA_SIZE is what STOP_COPY gives");
    s.extend(rest);
    let dst = EmuDevice::new(EmuConfig { seed: 5, ..c }).unwrap();
    load(&dst, &s, 3333).unwrap();
    assert_eq!(src.digest(), dst.digest());
}

#[test]
fn mig_data_size_before_and_during_stop_copy() {
    let d = dev(1, 300_000);
    let (r, out) = feature(&d, GET | 9, &[0u8; 8]);
    r.unwrap();
    let full = u64::from_le_bytes(out.try_into().unwrap());
    assert_eq!(full, vfio_core::emu::stream::full_len(d.config().layout()));
    go(&d, DeviceState::Stop);
    let fd = go(&d, DeviceState::StopCopy).unwrap();
    let mut b = vec![0u8; 100_000];
    let n = d.data_read(fd.as_raw_fd(), &mut b).unwrap();
    let (_, out) = feature(&d, GET | 9, &[0u8; 8]);
    assert_eq!(u64::from_le_bytes(out.try_into().unwrap()), full - n as u64);
}

fn expect_refused(img: &[u8], errno: i32, what: &str) {
    let dst = dev(7, 3 * 65536 + 10);
    go(&dst, DeviceState::Stop);
    let fd = go(&dst, DeviceState::Resuming).unwrap();
    // mtty fails the write that carries a bad header with EFAULT; nothing
    // else is judged before RESUMING is left.
    let w = write_all(&dst, &fd, img, 4096);
    let header = if errno == libc::EFAULT { libc::EFAULT } else { 0 };
    assert_eq!(w.err().and_then(|e| e.raw_os_error()).unwrap_or(0), header, "{what}: write");
    let r = set_state(&dst, DeviceState::Stop as u32);
    assert_eq!(errno_of(r), errno, "{what}: {:?}", dst.last_error());
    // mtty stays in RESUMING (Linux 6.12, tests/kernel): asking again gives
    // the same verdict, and so does any walk out of RESUMING.
    assert_eq!(get_state(&dst), DeviceState::Resuming as u32, "{what}: device stays in RESUMING");
    assert_eq!(errno_of(set_state(&dst, DeviceState::Stop as u32)), errno, "{what}: again");
    assert_eq!(errno_of(set_state(&dst, DeviceState::Running as u32)), errno, "{what}: to RUNNING");
    assert_eq!(get_state(&dst), DeviceState::Resuming as u32);
    dst.reset().unwrap();
    assert_eq!(get_state(&dst), DeviceState::Running as u32);
    let mut b = [0u8; 1];
    assert_eq!(errno_of(dst.data_write(fd.as_raw_fd(), &b)), libc::ENODEV, "{what}: fd disabled by the reset");
    assert_eq!(errno_of(dst.data_read(fd.as_raw_fd(), &mut b)), libc::ENODEV);
    // And the device still loads a good image afterwards.
    let good = image(&dev(7, 3 * 65536 + 10));
    load(&dst, &good, 1 << 20).unwrap();
}

#[test]
fn the_write_that_completes_a_bad_header_fails() {
    let mut img = image(&dev(7, 65536));
    img[0] ^= 1;
    let dst = dev(7, 65536);
    go(&dst, DeviceState::Stop);
    let fd = go(&dst, DeviceState::Resuming).unwrap();
    write_all(&dst, &fd, &img[..63], 21).unwrap();
    assert_eq!(errno_of(dst.data_write(fd.as_raw_fd(), &img[63..100])), libc::EFAULT);
    assert_eq!(errno_of(dst.data_write(fd.as_raw_fd(), &img[100..200])), libc::EFAULT, "and every later write");
}

#[test]
fn a_short_image_can_be_completed_after_a_refused_stop() {
    let src = dev(7, 3 * 65536 + 10);
    let img = image(&src);
    let dst = dev(7, 3 * 65536 + 10);
    go(&dst, DeviceState::Stop);
    let fd = go(&dst, DeviceState::Resuming).unwrap();
    let half = img.len() / 2;
    write_all(&dst, &fd, &img[..half], 4096).unwrap();
    assert_eq!(errno_of(set_state(&dst, DeviceState::Stop as u32)), libc::EINVAL);
    assert_eq!(get_state(&dst), DeviceState::Resuming as u32);
    write_all(&dst, &fd, &img[half..], 4096).unwrap();
    set_state(&dst, DeviceState::Stop as u32).unwrap();
    assert_eq!(dst.digest(), src.digest());
}

#[test]
fn bad_images_are_refused_and_the_device_stays_resuming() {
    let src = dev(7, 3 * 65536 + 10);
    let img = image(&src);
    let mut bad_magic = img.clone();
    bad_magic[0] ^= 1;
    expect_refused(&bad_magic, libc::EFAULT, "magic");
    let mut bad_version = img.clone();
    bad_version[8] = 9;
    expect_refused(&bad_version, libc::EFAULT, "version");
    let mut payload = img.clone();
    payload[64 + 56 + 100] ^= 0x10;
    expect_refused(&payload, libc::EINVAL, "payload checksum");
    let mut rec = img.clone();
    rec[64 + 4] ^= 1; // region index
    expect_refused(&rec, libc::EINVAL, "record header");
    expect_refused(&img[..img.len() - 1], libc::EINVAL, "truncated");
    expect_refused(&img[..10], libc::EINVAL, "inside the header");
    expect_refused(&[], libc::EINVAL, "empty");
    let mut trailing = img.clone();
    trailing.push(0);
    expect_refused(&trailing, libc::EINVAL, "trailing byte");
    let other = image(&dev(7, 65536));
    expect_refused(&other, libc::EFAULT, "other device shape");
}

#[test]
fn injected_stream_corruption_is_caught_by_the_destination() {
    let src = dev(7, 3 * 65536 + 10);
    src.corrupt_stream_byte(64 + 56 + 65536 + 56 + 5);
    let img = image(&src);
    expect_refused(&img, libc::EINVAL, "corrupt payload byte");
    // One-shot: the next session is clean.
    let img2 = image(&src);
    let dst = dev(7, 3 * 65536 + 10);
    load(&dst, &img2, 1 << 20).unwrap();
    assert_eq!(dst.digest(), src.digest());
}

#[test]
fn short_io_and_eagain_faults() {
    let src = dev(1, 10_000);
    go(&src, DeviceState::Stop);
    let fd = go(&src, DeviceState::StopCopy).unwrap();
    src.eagain(2);
    let mut b = vec![0u8; 4096];
    assert_eq!(errno_of(src.data_read(fd.as_raw_fd(), &mut b)), libc::EAGAIN);
    assert_eq!(errno_of(src.data_read(fd.as_raw_fd(), &mut b)), libc::EAGAIN);
    src.short_io(3, 5);
    for _ in 0..3 {
        assert_eq!(src.data_read(fd.as_raw_fd(), &mut b).unwrap(), 5);
    }
    let mut img = b[..0].to_vec();
    let _ = &mut img;
    let rest = read_all(&src, &fd);
    assert_eq!(rest.len() as u64 + 15, vfio_core::emu::stream::full_len(src.config().layout()));
    let dst = dev(1, 10_000);
    go(&dst, DeviceState::Stop);
    let wfd = go(&dst, DeviceState::Resuming).unwrap();
    dst.short_io(1, 3);
    assert_eq!(dst.data_write(wfd.as_raw_fd(), &[0u8; 10]).unwrap(), 3);
    dst.eagain(1);
    assert_eq!(errno_of(dst.data_write(wfd.as_raw_fd(), &[0u8; 10])), libc::EAGAIN);
}

#[test]
fn wrong_fds_and_directions() {
    let d = dev(7, 1000);
    let mut b = [0u8; 8];
    let (r, _w) = pipe();
    assert_eq!(errno_of(d.data_read(r.as_raw_fd(), &mut b)), libc::EBADF);
    assert_eq!(errno_of(d.data_read(-1, &mut b)), libc::EBADF);
    assert_eq!(errno_of(precopy_info(&d, &r)), libc::ENOTTY);
    let fd = go(&d, DeviceState::PreCopy).unwrap();
    assert_eq!(errno_of(d.data_write(fd.as_raw_fd(), &b)), libc::EBADF);
    let mut small = [0u8; 24];
    small[..4].copy_from_slice(&16u32.to_le_bytes());
    assert_eq!(errno_of(d.precopy_info(fd.as_raw_fd(), &mut small)), libc::EINVAL);
    assert_eq!(errno_of(d.precopy_info(fd.as_raw_fd(), &mut [0u8; 20])), libc::EFAULT);
    go(&d, DeviceState::Running);
    assert_eq!(errno_of(d.data_read(fd.as_raw_fd(), &mut b)), libc::ENODEV, "closed session");
    go(&d, DeviceState::Stop);
    let rfd = go(&d, DeviceState::Resuming).unwrap();
    assert_eq!(errno_of(d.data_read(rfd.as_raw_fd(), &mut b)), libc::EBADF);
    assert_eq!(errno_of(precopy_info(&d, &rfd)), libc::ENOTTY);
}

#[test]
fn the_data_fd_is_a_real_fd() {
    // Plain read(2) on the fd, no backend involved: the stream is there.
    let src = dev(1, 100_000);
    go(&src, DeviceState::Stop);
    let fd = go(&src, DeviceState::StopCopy).unwrap();
    let mut f = std::fs::File::from(fd);
    let mut img = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut img).unwrap();
    assert_eq!(img.len() as u64, vfio_core::emu::stream::full_len(src.config().layout()));
    go(&src, DeviceState::Stop);
    let dst = dev(1, 100_000);
    go(&dst, DeviceState::Stop);
    let wfd = go(&dst, DeviceState::Resuming).unwrap();
    let mut w = std::fs::File::from(wfd);
    std::io::Write::write_all(&mut w, &img).unwrap();
    go(&dst, DeviceState::Stop);
    assert_eq!(src.digest(), dst.digest());
}

fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut p = [0i32; 2];
    // SAFETY: the kernel writes two ints into the local array.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: pipe succeeded: two fresh fds nothing else owns.
    unsafe { (std::os::fd::OwnedFd::from_raw_fd(p[0]), std::os::fd::OwnedFd::from_raw_fd(p[1])) }
}

#[test]
fn records_in_any_order_load_and_a_region_never_sent_is_refused() {
    let src = dev(7, 3 * 65536 + 10);
    let img = image(&src);
    let rec = 56 + 65536;
    let (r0, r1) = (64..64 + rec, 64 + rec..64 + 2 * rec);
    // Regions 0 and 1 swapped: same records, same END, another order.
    let mut swapped = img.clone();
    swapped[r0.clone()].copy_from_slice(&img[r1.clone()]);
    swapped[r1.clone()].copy_from_slice(&img[r0.clone()]);
    let dst = dev(7, 3 * 65536 + 10);
    load(&dst, &swapped, 65536).unwrap();
    assert_eq!(dst.digest(), src.digest());
    // Region 0 twice, region 1 never: END's counts still agree.
    let mut twice = img.clone();
    twice[r1.clone()].copy_from_slice(&img[r0.clone()]);
    let dst = dev(7, 3 * 65536 + 10);
    assert_eq!(errno_of(load(&dst, &twice, 65536)), libc::EINVAL);
    assert_eq!(get_state(&dst), DeviceState::Resuming as u32);
    let why = dst.last_error().unwrap_or_default();
    assert!(why.contains("region 1 never received"), "{why}");
}

#[test]
fn a_reader_that_keeps_pace_gets_the_whole_image() {
    // Larger than the saving thread's batch (4 MiB) and read as fast as it
    // comes: the thread must not go to sleep after a full batch.
    let src = dev(1, 24 << 20);
    go(&src, DeviceState::Stop);
    let fd = go(&src, DeviceState::StopCopy).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut n = 0u64;
        let mut b = vec![0u8; 1 << 20];
        loop {
            match std::io::Read::read(&mut f, &mut b).unwrap() {
                0 => break,
                k => n += k as u64,
            }
        }
        tx.send(n).unwrap();
    });
    let n = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the saving fd stalled before EOF");
    reader.join().unwrap();
    assert_eq!(n, vfio_core::emu::stream::full_len(src.config().layout()));
    go(&src, DeviceState::Stop);
}

#[test]
fn a_resumed_device_saves_the_same_bytes_again() {
    let a = EmuDevice::new(EmuConfig { seed: 5, ..cfg(1, 5 * 65536 + 77) }).unwrap();
    a.dirty_region(3).unwrap();
    let first = image(&a);
    let b = dev(1, 5 * 65536 + 77);
    load(&b, &first, 10_000).unwrap();
    // b's region hashes came from the records it checked; saving reuses them.
    assert_eq!(image(&b), first);
    assert_eq!(image(&a), first);
}
