//! Runs the workload on real KVM. Skips (with the reason printed) where
//! /dev/kvm does not work.
#![deny(clippy::undocumented_unsafe_blocks)]
use kvm_core::layout::*;
use kvm_core::{probe, Machine, StopReason, VcpuState, WorkloadParams};
use std::time::{Duration, Instant};

fn kvm_or_skip() -> bool {
    let p = probe();
    if !p.available {
        eprintln!("skipping KVM test: {}", p.reason);
    }
    p.available
}

fn ctl_u32(m: &Machine, off: u64) -> u32 {
    m.ram().read_u32(CTL_ADDR + off).unwrap()
}

fn counter(m: &Machine) -> u64 {
    m.ram().read_u64(CTL_ADDR + CTL_COUNTER).unwrap()
}

/// Waits until the workload has completed an iteration past `past`, so a
/// test asserts on a guest that ran instead of on how soon the host scheduled
/// the vCPU thread (a loaded machine can leave it unscheduled for many ms).
/// Returns how long that took.
fn wait_for_progress(m: &Machine, past: u64) -> Duration {
    let t = Instant::now();
    while counter(m) <= past {
        assert!(m.is_running(), "vCPU stopped before an iteration past {past}: {:?}", m.stop_reason());
        assert!(t.elapsed() < Duration::from_secs(30), "no iteration past {past} within 30 s");
        std::thread::sleep(Duration::from_micros(200));
    }
    t.elapsed()
}

/// Asks the workload to stop at an iteration boundary and waits for it.
fn quiesce(m: &Machine) {
    m.ram().write_u32(CTL_ADDR + CTL_STOP, 1).unwrap();
    if !m.is_running() {
        m.start().unwrap();
    }
    assert_eq!(m.wait_stopped(Duration::from_secs(30)), Some(StopReason::GuestExit), "workload did not stop within 30 s");
    m.ram().write_u32(CTL_ADDR + CTL_STOP, 0).unwrap();
}

fn params(ram: u64) -> WorkloadParams {
    WorkloadParams { region_pages: 64, pages_per_iter: 4, ..WorkloadParams::default_for(ram) }
}

#[test]
fn runs_pauses_and_keeps_checksum() {
    if !kvm_or_skip() {
        return;
    }
    let ram = 4 << 20;
    let p = params(ram);
    let m = Machine::new(ram, p).unwrap();
    m.start().unwrap();
    assert!(m.start().is_err());
    let ran = wait_for_progress(&m, 0);
    let t = Instant::now();
    assert_eq!(m.pause().unwrap(), StopReason::Paused);
    let pause_us = t.elapsed().as_micros();
    let c1 = counter(&m);
    assert!(c1 > 0, "counter did not move");
    quiesce(&m);
    assert_eq!(ctl_u32(&m, CTL_CHECKSUM), region_sum(m.ram(), &p).unwrap());
    let c2 = counter(&m);
    assert!(c2 >= c1);
    eprintln!("kvm: {c1} iterations in {} us, pause took {pause_us} us", ran.as_micros());
    m.destroy();
    assert!(m.start().is_err());
}

#[test]
fn dirty_log_is_exactly_the_written_pages() {
    if !kvm_or_skip() {
        return;
    }
    let ram = 4 << 20;
    let p = WorkloadParams { region_pages: 200, pages_per_iter: 3, ..WorkloadParams::default_for(ram) };
    let m = Machine::new(ram, p).unwrap();
    quiesce(&m); // runs the program up to its first stop check: nothing written yet
    m.sync_dirty_log().unwrap();
    let cur0 = ctl_u32(&m, CTL_CURSOR);
    let c0 = counter(&m);
    // At least one iteration, so the log has pages to check; `want` below
    // allows for the region wrapping any number of times.
    m.start().unwrap();
    wait_for_progress(&m, c0);
    quiesce(&m);
    let iters = counter(&m) - c0;
    let log = m.sync_dirty_log().unwrap();
    let dirty: Vec<u64> = (0..(ram / 4096)).filter(|i| log[(*i / 8) as usize] & (1 << (i % 8)) != 0).collect();
    let writes = iters * p.pages_per_iter as u64;
    let mut want: Vec<u64> = if iters == 0 {
        vec![]
    } else {
        let n = writes.min(p.region_pages as u64);
        let mut v: Vec<u64> =
            (0..n).map(|k| p.region_start as u64 + (cur0 as u64 + k) % p.region_pages as u64).collect();
        v.push(CTL_ADDR / 4096);
        v
    };
    want.sort();
    want.dedup();
    eprintln!("kvm: {iters} iterations, {} pages dirty", dirty.len());
    assert_eq!(dirty, want);
    assert!(m.sync_dirty_log().unwrap().iter().all(|b| *b == 0), "dirty log not cleared by the read");
}

#[test]
fn state_moves_to_a_new_vm_mid_iteration() {
    if !kvm_or_skip() {
        return;
    }
    let ram = 4 << 20;
    let p = WorkloadParams { spin: 50, ..params(ram) };
    let a = Machine::new(ram, p).unwrap();
    a.start().unwrap();
    wait_for_progress(&a, 0);
    a.pause().unwrap();
    let state = a.save_state().unwrap();
    let bytes = state.to_bytes();
    let mut mem = vec![0u8; ram as usize];
    a.ram().read(0, &mut mem).unwrap();
    let c_saved = counter(&a);
    let rip = state.regs.rip;
    drop(a);

    let b = Machine::new(ram, WorkloadParams { seed: 99, ..p }).unwrap();
    b.ram().write(0, &mem).unwrap();
    b.restore_state(VcpuState::from_bytes(&bytes).unwrap()).unwrap();
    let back = b.save_state().unwrap();
    assert_eq!(back.regs.rip, rip);
    assert_eq!(back.sregs.cr3, PML4_ADDR);
    b.start().unwrap();
    wait_for_progress(&b, c_saved);
    quiesce(&b);
    assert!(counter(&b) > c_saved, "counter did not advance after restore");
    assert_eq!(ctl_u32(&b, CTL_CHECKSUM), region_sum(b.ram(), &p).unwrap());
    assert!(b.restore_state(VcpuState::from_bytes(&bytes).unwrap()).is_ok());
}

#[test]
fn rejects_bad_config() {
    if !kvm_or_skip() {
        return;
    }
    assert_eq!(Machine::new(3 << 20, WorkloadParams::default_for(2 << 20)).err().unwrap().errno, libc::EINVAL);
    let p = WorkloadParams { region_pages: 10_000, ..WorkloadParams::default_for(2 << 20) };
    assert!(Machine::new(2 << 20, p).is_err());
}

#[test]
fn state_saved_at_a_guest_exit_resumes_elsewhere() {
    if !kvm_or_skip() {
        return;
    }
    let ram = 2 << 20;
    let p = WorkloadParams { region_pages: 100, pages_per_iter: 2, spin: 10, ..WorkloadParams::default_for(ram) };
    let a = Machine::new(ram, p).unwrap();
    a.start().unwrap();
    wait_for_progress(&a, 0);
    quiesce(&a);
    let bytes = a.save_state().unwrap().to_bytes();
    let mut mem = vec![0u8; ram as usize];
    a.ram().read(0, &mut mem).unwrap();
    let c = counter(&a);
    let b = Machine::new(ram, p).unwrap();
    b.ram().write(0, &mem).unwrap();
    b.restore_state(VcpuState::from_bytes(&bytes).unwrap()).unwrap();
    b.start().unwrap();
    wait_for_progress(&b, c);
    quiesce(&b);
    assert!(counter(&b) > c);
    assert_eq!(ctl_u32(&b, CTL_CHECKSUM), region_sum(b.ram(), &p).unwrap());
    assert!(b.save_state().is_ok());
    b.start().unwrap();
    assert_eq!(b.save_state().err().unwrap().errno, libc::EBUSY);
    assert_eq!(b.pause().unwrap(), StopReason::Paused);
}

fn dirty_pages(log: &[u8]) -> Vec<u64> {
    (0..log.len() as u64 * 8).filter(|i| log[(*i / 8) as usize] & (1 << (i % 8)) != 0).collect()
}

/// Guests above the old 1 GiB - 2 MiB limit, up to MAX_RAM: the region is the
/// top of RAM (the last page directory in use), the guest leaves through the
/// exit page above RAM, and a move copies only the fixed pages and what the
/// dirty log reported, so the test touches a few hundred KiB of each guest.
#[test]
fn big_guests_run_dirty_and_move() {
    if !kvm_or_skip() {
        return;
    }
    for ram in [2u64 << 30, MAX_RAM] {
        let pages = ram / PAGE_SIZE;
        let p = WorkloadParams {
            region_start: (pages - 64) as u32,
            region_pages: 64,
            pages_per_iter: 4,
            spin: 200,
            ..WorkloadParams::default_for(ram)
        };
        let a = Machine::new(ram, p).unwrap();
        quiesce(&a);
        // Clears what reaching the first stop check logged (here the host marks
        // the program's and control block's pages on their first access).
        let mut moved = dirty_pages(&a.sync_dirty_log().unwrap());
        let (cur0, c0) = (ctl_u32(&a, CTL_CURSOR) as u64, counter(&a));
        a.start().unwrap();
        wait_for_progress(&a, c0);
        quiesce(&a);
        let iters = counter(&a) - c0;
        assert!(iters > 0, "{ram:#x}: guest did not run");
        let mut want: Vec<u64> = (0..(iters * 4).min(64)).map(|k| pages - 64 + (cur0 + k) % 64).collect();
        want.push(CTL_ADDR / PAGE_SIZE);
        want.sort();
        let logged = dirty_pages(&a.sync_dirty_log().unwrap());
        assert_eq!(logged, want, "{ram:#x}: dirty log after {iters} iterations");
        moved.extend(logged);
        assert_eq!(ctl_u32(&a, CTL_CHECKSUM), region_sum(a.ram(), &p).unwrap());

        // Paused once it is under way again, so the saved state is taken
        // from a running workload (usually mid-iteration), not at the exit.
        let c_quiesced = counter(&a);
        a.start().unwrap();
        wait_for_progress(&a, c_quiesced);
        a.pause().unwrap();
        let bytes = a.save_state().unwrap().to_bytes();
        moved.extend(dirty_pages(&a.sync_dirty_log().unwrap()));
        moved.extend(0..FIRST_DATA_PAGE as u64); // installed before logging began
        moved.sort();
        moved.dedup();
        assert!(moved.iter().all(|&pg| pg < FIRST_DATA_PAGE as u64 || pg == CTL_ADDR / PAGE_SIZE || pg >= pages - 64));
        let c = counter(&a);
        let b = Machine::new(ram, WorkloadParams { seed: 5, ..p }).unwrap();
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        for pg in &moved {
            a.ram().read(pg * PAGE_SIZE, &mut buf).unwrap();
            b.ram().write(pg * PAGE_SIZE, &buf).unwrap();
        }
        drop(a);
        b.restore_state(VcpuState::from_bytes(&bytes).unwrap()).unwrap();
        b.start().unwrap();
        wait_for_progress(&b, c);
        quiesce(&b);
        assert!(counter(&b) > c, "{ram:#x}: counter did not advance after the move");
        assert_eq!(ctl_u32(&b, CTL_CHECKSUM), region_sum(b.ram(), &p).unwrap(), "{ram:#x}: checksum after the move");
        eprintln!("kvm {} MiB: {iters} iterations, {} pages moved", ram >> 20, moved.len());
    }
}

/// A RAM image from the previous layout (exit page at 0x3fe00000, program
/// storing there) still stops cleanly: restored RAM carries its own program.
#[test]
fn previous_layouts_exit_page_still_stops() {
    if !kvm_or_skip() {
        return;
    }
    let ram = 4 << 20;
    let m = Machine::new(ram, params(ram)).unwrap();
    let at = WORKLOAD_CODE.windows(3).position(|w| w == [0x89, 0x04, 0x25]).unwrap() as u64 + 3;
    m.ram().write(CODE_ADDR + at, &(LEGACY_EXIT_MMIO as u32).to_le_bytes()).unwrap();
    m.ram().write_u64(PD_ADDR + (LEGACY_EXIT_MMIO / RAM_ALIGN) * 8, LEGACY_EXIT_MMIO | 0xe7).unwrap();
    m.start().unwrap();
    wait_for_progress(&m, 0);
    quiesce(&m);
    assert!(counter(&m) > 0);
}
