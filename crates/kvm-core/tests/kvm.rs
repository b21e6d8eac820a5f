//! Runs the workload on real KVM. Skips (with the reason printed) where
//! /dev/kvm does not work.
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

/// Asks the workload to stop at an iteration boundary and waits for it.
fn quiesce(m: &Machine) {
    m.ram().write_u32(CTL_ADDR + CTL_STOP, 1).unwrap();
    if !m.is_running() {
        m.start().unwrap();
    }
    assert_eq!(m.wait_stopped(Duration::from_secs(5)), Some(StopReason::GuestExit));
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
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(m.pause().unwrap(), StopReason::Paused);
    let pause_us = t.elapsed().as_micros();
    let c1 = counter(&m);
    assert!(c1 > 0, "counter did not move");
    quiesce(&m);
    assert_eq!(ctl_u32(&m, CTL_CHECKSUM), region_sum(m.ram(), &p).unwrap());
    let c2 = counter(&m);
    assert!(c2 >= c1);
    eprintln!("kvm: {c1} iterations in 200 ms, pause took {pause_us} us");
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
    // Let a bounded number of iterations run: the region wraps at most once.
    m.start().unwrap();
    std::thread::sleep(Duration::from_micros(200));
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
    std::thread::sleep(Duration::from_millis(50));
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
    std::thread::sleep(Duration::from_millis(50));
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
    std::thread::sleep(Duration::from_millis(20));
    quiesce(&a);
    let bytes = a.save_state().unwrap().to_bytes();
    let mut mem = vec![0u8; ram as usize];
    a.ram().read(0, &mut mem).unwrap();
    let c = counter(&a);
    let b = Machine::new(ram, p).unwrap();
    b.ram().write(0, &mem).unwrap();
    b.restore_state(VcpuState::from_bytes(&bytes).unwrap()).unwrap();
    b.start().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    quiesce(&b);
    assert!(counter(&b) > c);
    assert_eq!(ctl_u32(&b, CTL_CHECKSUM), region_sum(b.ram(), &p).unwrap());
    assert!(b.save_state().is_ok());
    b.start().unwrap();
    assert_eq!(b.save_state().err().unwrap().errno, libc::EBUSY);
    assert_eq!(b.pause().unwrap(), StopReason::Paused);
}
