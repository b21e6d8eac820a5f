//! The conformance suite: every flag set x every (current, target) pair,
//! checked against the kernel's algorithm restated here from the uAPI
//! (include/uapi/linux/vfio.h, drivers/vfio/vfio_main.c
//! vfio_mig_get_next_state) without using vfio_uapi::path.
#![deny(clippy::undocumented_unsafe_blocks)]

#[path = "emu_util.rs"]
mod util;

use std::os::fd::AsRawFd;
use std::time::Duration;

use util::*;
use vfio_core::backend::DeviceBackend;
use vfio_core::emu::EmuDevice;
use vfio_core::vfio_uapi::DeviceState;

const ERROR: u8 = 0;
const STOP: u8 = 1;
const RUNNING: u8 = 2;
const STOP_COPY: u8 = 3;
const RESUMING: u8 = 4;
const RUNNING_P2P: u8 = 5;
const PRE_COPY: u8 = 6;
const PRE_COPY_P2P: u8 = 7;

/// `NEXT[cur][target]`, from the table's comment in vfio_main.c:
/// "from cur, toward target, go next".
const NEXT: [[u8; 8]; 8] = {
    let mut t = [[ERROR; 8]; 8];
    // STOP
    t[1] = [ERROR, STOP, RUNNING_P2P, STOP_COPY, RESUMING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P];
    // RUNNING
    t[2] = [ERROR, RUNNING_P2P, RUNNING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P, PRE_COPY, RUNNING_P2P];
    // STOP_COPY
    t[3] = [ERROR, STOP, STOP, STOP_COPY, STOP, STOP, ERROR, ERROR];
    // RESUMING
    t[4] = [ERROR, STOP, STOP, STOP, RESUMING, STOP, STOP, STOP];
    // RUNNING_P2P
    t[5] = [ERROR, STOP, RUNNING, STOP, STOP, RUNNING_P2P, RUNNING, PRE_COPY_P2P];
    // PRE_COPY
    t[6] = [ERROR, RUNNING, RUNNING, PRE_COPY_P2P, RUNNING, RUNNING, PRE_COPY, PRE_COPY_P2P];
    // PRE_COPY_P2P
    t[7] = [ERROR, RUNNING_P2P, RUNNING_P2P, STOP_COPY, RUNNING_P2P, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P];
    t
};

/// state_flags_table: the migration flags a state needs; ERROR needs all bits.
fn supported(flags: u64, s: u8) -> bool {
    let need: u64 = match s {
        ERROR => return false,
        RUNNING_P2P => 1 | 2,
        PRE_COPY => 1 | 4,
        PRE_COPY_P2P => 1 | 2 | 4,
        _ => 1,
    };
    flags & need == need
}

/// The driver's loop around vfio_mig_get_next_state: the arcs taken, or
/// Err when the kernel answers EINVAL (always before any arc here).
fn model(flags: u64, cur: u8, target: u8) -> Result<Vec<u8>, ()> {
    let mut at = cur;
    let mut path = Vec::new();
    while at != target {
        if !supported(flags, at) || !supported(flags, target) {
            return Err(());
        }
        let mut next = NEXT[at as usize][target as usize];
        while next != ERROR && !supported(flags, next) {
            next = NEXT[next as usize][target as usize];
        }
        if next == ERROR {
            return Err(());
        }
        path.push(next);
        at = next;
        assert!(path.len() <= 8, "model loops");
    }
    Ok(path)
}

/// An arc opens a migration file when it enters STOP_COPY, PRE_COPY,
/// PRE_COPY_P2P or RESUMING from outside the saving group.
fn opens_fd(prev: u8, next: u8) -> bool {
    let saving = |s| s == STOP_COPY || s == PRE_COPY || s == PRE_COPY_P2P;
    (saving(next) && !saving(prev)) || next == RESUMING
}

fn st(s: u8) -> DeviceState {
    DeviceState::from_u32(s as u32).unwrap()
}

/// Brings `d` to `s` (from RUNNING), returning the data fd it holds there.
fn reach(d: &EmuDevice, flags: u64, s: u8, img: &[u8]) -> Option<std::os::fd::OwnedFd> {
    d.reset().unwrap();
    assert_eq!(get_state(d), RUNNING as u32);
    match s {
        ERROR => {
            // Fail a move and its recovery: a device that cannot restore itself.
            d.fail_next_move(DeviceState::Stop, libc::EIO, true);
            assert_eq!(errno_of(set_state(d, STOP as u32)), libc::EIO);
            let after = get_state(d);
            assert_ne!(after, STOP as u32);
            assert_eq!(errno_of(set_state(d, STOP as u32)), libc::EIO);
            assert_eq!(get_state(d), ERROR as u32);
            None
        }
        RUNNING => None,
        RESUMING => {
            let fd = go(d, DeviceState::Stop);
            assert!(fd.is_none());
            let fd = go(d, DeviceState::Resuming).unwrap();
            // A valid image, so leaving RESUMING is the walk and not a verdict.
            write_all(d, &fd, img, 1 << 16).unwrap();
            Some(fd)
        }
        _ => {
            let fd = go(d, st(s));
            let _ = flags;
            fd
        }
    }
}

#[test]
fn every_flag_set_every_pair_matches_the_kernel_walk() {
    let mut checked = 0;
    for flags in ALL_FLAGS {
        let d = dev(flags, 3 * 4096 + 5);
        let twin = dev(flags, 3 * 4096 + 5);
        let img = image(&twin);
        for cur in 0..8u8 {
            if cur != ERROR && !supported(flags, cur) {
                continue; // unreachable on this device
            }
            for target in 0..8u8 {
                let held = reach(&d, flags, cur, &img);
                assert_eq!(get_state(&d), cur as u32, "flags {flags:#x}: reaching {cur}");
                let want = model(flags, cur, target);
                let got = set_state(&d, target as u32);
                let ctx = format!("flags {flags:#x}: {} -> {}", st(cur), st(target));
                match want {
                    Ok(path) => {
                        let fd = got.unwrap_or_else(|e| panic!("{ctx}: {e} ({:?})", d.last_error()));
                        assert_eq!(get_state(&d), target as u32, "{ctx}");
                        let expect_fd = match path.len() {
                            0 => false,
                            n => opens_fd(if n == 1 { cur } else { path[n - 2] }, path[n - 1]),
                        };
                        assert_eq!(fd.is_some(), expect_fd, "{ctx}: fd presence (path {path:?})");
                        if let Some(fd) = &fd {
                            assert!(fd.as_raw_fd() >= 0);
                            // Saving group members share one fd: no fresh fd on an arc inside it.
                            assert!(!(cur == PRE_COPY || cur == PRE_COPY_P2P) || target == RESUMING, "{ctx}");
                        }
                        assert!(d.stats().arcs >= path.len() as u64, "{ctx}: arcs counted");
                    }
                    Err(()) => {
                        assert_eq!(errno_of(got), libc::EINVAL, "{ctx}");
                        assert_eq!(get_state(&d), cur as u32, "{ctx}: a refused move changes nothing");
                    }
                }
                drop(held);
                checked += 1;
            }
        }
    }
    // 4 flag sets: (states supported + ERROR) x 8 targets.
    assert_eq!(checked, (5 + 6 + 6 + 8) * 8);
}

#[test]
fn the_model_refuses_what_the_uapi_blocks() {
    assert_eq!(model(7, STOP_COPY, PRE_COPY), Err(()));
    assert_eq!(model(7, STOP_COPY, PRE_COPY_P2P), Err(()));
    assert_eq!(model(7, RUNNING, ERROR), Err(()));
    assert_eq!(model(1, RUNNING, RUNNING_P2P), Err(()));
    assert_eq!(model(7, RESUMING, PRE_COPY), Ok(vec![STOP, RUNNING_P2P, RUNNING, PRE_COPY]));
    assert_eq!(model(5, PRE_COPY, STOP_COPY), Ok(vec![STOP_COPY]));
    assert_eq!(model(7, ERROR, ERROR), Ok(vec![]));
}

#[test]
fn saving_group_shares_one_fd() {
    let d = dev(7, 100_000);
    let fd = go(&d, DeviceState::PreCopy).expect("RUNNING -> PRE_COPY opens the fd");
    let head = read_precopy(&d, &fd);
    assert!(go(&d, DeviceState::PreCopyP2p).is_none());
    assert!(go(&d, DeviceState::StopCopy).is_none(), "PRE_COPY_P2P -> STOP_COPY keeps the fd");
    let rest = read_all(&d, &fd);
    go(&d, DeviceState::Stop);
    let dst = dev(7, 100_000);
    let mut img = head;
    img.extend_from_slice(&rest);
    load(&dst, &img, 4096).unwrap();
    assert_eq!(dst.digest(), d.digest());
}

#[test]
fn set_to_current_state_is_a_no_op() {
    for flags in ALL_FLAGS {
        let d = dev(flags, 10);
        assert!(go(&d, DeviceState::Running).is_none());
        go(&d, DeviceState::Stop);
        assert!(go(&d, DeviceState::Stop).is_none());
        assert_eq!(d.stats().arcs, if flags & 2 != 0 { 2 } else { 1 });
    }
}

#[test]
fn a_failing_arc_leaves_the_device_where_it_got() {
    let d = dev(7, 4096);
    d.fail_next_move(DeviceState::StopCopy, libc::EIO, false);
    // RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY fails on the last arc.
    assert_eq!(errno_of(set_state(&d, STOP_COPY as u32)), libc::EIO);
    assert_eq!(get_state(&d), STOP as u32);
    assert!(d.last_error().unwrap().contains("injected"));
    // Recovery works since the fault was one-shot.
    assert!(go(&d, DeviceState::Running).is_none());
    // With a failing recovery the device ends in ERROR, only reset leaves it.
    d.fail_next_move(DeviceState::PreCopy, libc::ENOMEM, true);
    assert_eq!(errno_of(set_state(&d, PRE_COPY as u32)), libc::ENOMEM);
    assert_eq!(get_state(&d), RUNNING as u32);
    assert_eq!(errno_of(set_state(&d, STOP as u32)), libc::ENOMEM);
    assert_eq!(get_state(&d), ERROR as u32);
    for t in 1..8 {
        assert_eq!(errno_of(set_state(&d, t)), libc::EINVAL);
    }
    d.reset().unwrap();
    assert_eq!(get_state(&d), RUNNING as u32);
}

#[test]
fn out_of_range_state_is_einval() {
    let d = dev(7, 1);
    assert_eq!(errno_of(set_state(&d, 8)), libc::EINVAL);
    assert_eq!(errno_of(set_state(&d, u32::MAX)), libc::EINVAL);
    assert_eq!(errno_of(set_state(&d, ERROR as u32)), libc::EINVAL);
    assert_eq!(get_state(&d), RUNNING as u32);
}

#[test]
fn async_reset_invalidates_the_held_fd() {
    let d = dev(7, 1 << 20);
    let fd = go(&d, DeviceState::PreCopy).unwrap();
    d.async_reset(Duration::from_millis(20));
    let t0 = std::time::Instant::now();
    while get_state(&d) != RUNNING as u32 {
        assert!(t0.elapsed() < Duration::from_secs(5), "reset never happened");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut b = [0u8; 16];
    assert_eq!(errno_of(d.data_read(fd.as_raw_fd(), &mut b)), libc::ENODEV);
    assert_eq!(errno_of(precopy_info(&d, &fd)), libc::EINVAL, "not in PRE_COPY any more");
    let fd2 = go(&d, DeviceState::PreCopy).expect("a new fd while the old one is held");
    assert_ne!(vfio_core_inode(&fd), vfio_core_inode(&fd2));
    assert_eq!(errno_of(precopy_info(&d, &fd)), libc::ENODEV);
    assert_eq!(d.stats().resets, 1);
}

fn vfio_core_inode(fd: &std::os::fd::OwnedFd) -> u64 {
    // SAFETY: libc::stat is plain integers; all-zero is a value.
    let mut s: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel fills the local.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut s) }, 0);
    s.st_ino
}
