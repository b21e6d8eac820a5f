//! One microVM: a KVM VM with dirty-logged RAM in slot 0 (and slot 1 for RAM
//! past 3 GiB, above the hole: layout::slots) and one vCPU whose
//! KVM_RUN loop lives on its own thread. Every vCPU ioctl happens on that
//! thread (commands go over a channel), so KVM_RUN never contends with a
//! state save for the vCPU mutex inside the kernel.
use crate::error::{kvm as kvm_err, refused, sys, Error, Result, KVM, VCPU, VM};
use crate::kick;
use crate::layout::{self, WorkloadParams, EXIT_MMIO, LEGACY_EXIT_MMIO};
use crate::ram::GuestRam;
use crate::state::VcpuState;
use crate::vcpu;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Intel KVM wants three pages outside RAM for its real-mode TSS; harmless elsewhere.
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// Why the vCPU is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Never run yet, or stopped by pause().
    Paused,
    /// The workload saw the stop flag and left through the exit port.
    GuestExit,
    /// KVM_RUN failed or the guest did something the program never does.
    Error(Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Running,
    Stopped(StopReason),
    Gone,
}

struct Shared {
    status: Mutex<Status>,
    cv: Condvar,
    pause_req: AtomicBool,
}

enum Cmd {
    Run,
    Save(Sender<Result<VcpuState>>),
    Restore(Box<VcpuState>, Sender<Result<()>>),
    Quit,
}

struct RunCtx {
    thread: libc::pthread_t,
    immediate_exit: *mut u8,
}
// SAFETY: the pointer is into the vCPU's kvm_run mmap, which outlives every
// use (the thread is joined before the VcpuFd drops), and the only access
// from another thread is a volatile byte store the kernel expects to race.
unsafe impl Send for RunCtx {}

/// A VM, its guest RAM and its one vCPU thread; destroyed on drop.
pub struct Machine {
    ram: Arc<GuestRam>,
    vm: Arc<VmFd>,
    shared: Arc<Shared>,
    tx: Mutex<Option<Sender<Cmd>>>,
    join: Mutex<Option<JoinHandle<()>>>,
    ctx: Mutex<Option<RunCtx>>,
}

impl Machine {
    /// Creates the VM with `ram_size` bytes of RAM and the workload installed;
    /// the vCPU waits at the entry point, stopped.
    pub fn new(ram_size: u64, params: WorkloadParams) -> Result<Machine> {
        layout::validate_ram_size(ram_size)?;
        params.validate(ram_size)?;
        let kvm = Kvm::new().map_err(|e| kvm_err(e, KVM, "open"))?;
        let vm = kvm.create_vm().map_err(|e| kvm_err(e, KVM, "KVM_CREATE_VM"))?;
        if let Err(e) = vm.set_tss_address(KVM_TSS_ADDR) {
            if e.errno() != libc::ENOTTY && e.errno() != libc::EINVAL {
                return Err(kvm_err(e, VM, "KVM_SET_TSS_ADDR"));
            }
        }
        let ram = Arc::new(GuestRam::new(ram_size as usize)?);
        layout::install(&ram, &params)?;
        for (slot, (gpa, offset, len)) in layout::slots(ram_size).into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: KVM_MEM_LOG_DIRTY_PAGES,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: ram.as_ptr() as u64 + offset,
            };
            // SAFETY: the range lies inside the mapping owned by `ram`, which
            // this Machine keeps alive at least as long as the VM fd.
            unsafe { vm.set_user_memory_region(region) }.map_err(|e| kvm_err(e, VM, "KVM_SET_USER_MEMORY_REGION"))?;
        }
        let mut vcpu = vm.create_vcpu(0).map_err(|e| kvm_err(e, VM, "KVM_CREATE_VCPU"))?;
        vcpu::set_cpuid(&kvm, &vcpu)?;
        vcpu::init_long_mode(&vcpu)?;
        let msrs = vcpu::saveable_msrs(&kvm)?;
        let has_xsave = kvm.check_extension(Cap::Xsave);
        let has_xcrs = kvm.check_extension(Cap::Xcrs);
        kick::install_handler()?;

        let shared = Arc::new(Shared {
            status: Mutex::new(Status::Stopped(StopReason::Paused)),
            cv: Condvar::new(),
            pause_req: AtomicBool::new(false),
        });
        let (tx, rx) = channel::<Cmd>();
        let (ctx_tx, ctx_rx) = channel::<RunCtx>();
        let sh = shared.clone();
        let join = std::thread::Builder::new()
            .name("microvm-vcpu0".into())
            .spawn(move || {
                kick::unblock_on_this_thread();
                let immediate_exit = &mut vcpu.get_kvm_run().immediate_exit as *mut u8;
                let thread = vmm_sys::signal::this_thread();
                let _ = ctx_tx.send(RunCtx { thread, immediate_exit });
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Cmd::Run => run_loop(&mut vcpu, &sh),
                        Cmd::Save(reply) => {
                            let _ = reply.send(vcpu::save(&vcpu, &msrs, has_xsave, has_xcrs));
                        }
                        Cmd::Restore(s, reply) => {
                            let _ = reply.send(vcpu::restore(&vcpu, &s, has_xsave, has_xcrs));
                        }
                        Cmd::Quit => break,
                    }
                }
                *sh.status.lock().unwrap() = Status::Gone;
                sh.cv.notify_all();
            })
            .map_err(|e| sys(&e, VCPU, "clone", "of the vCPU thread"))?;
        let ctx = ctx_rx.recv().map_err(|_| refused(libc::EIO, VCPU, "Machine::new", "the vCPU thread died during start-up"))?;
        Ok(Machine {
            ram,
            vm: Arc::new(vm),
            shared,
            tx: Mutex::new(Some(tx)),
            join: Mutex::new(Some(join)),
            ctx: Mutex::new(Some(ctx)),
        })
    }

    /// Guest RAM (shared with any JavaScript Buffer over it).
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    fn send(&self, op: &str, cmd: Cmd) -> Result<()> {
        let tx = self.tx.lock().unwrap();
        match tx.as_ref() {
            Some(tx) => tx.send(cmd).map_err(|_| refused(libc::EIO, VCPU, op, "the vCPU thread has exited")),
            None => Err(destroyed(op)),
        }
    }

    /// Whether the vCPU is in its run loop.
    pub fn is_running(&self) -> bool {
        *self.shared.status.lock().unwrap() == Status::Running
    }

    /// Last stop reason, or None while running.
    pub fn stop_reason(&self) -> Option<StopReason> {
        match &*self.shared.status.lock().unwrap() {
            Status::Stopped(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// Starts or resumes the run loop; EBUSY if running, ENODEV once destroyed.
    pub fn start(&self) -> Result<()> {
        let mut st = self.shared.status.lock().unwrap();
        match &*st {
            Status::Running => return Err(refused(libc::EBUSY, VCPU, "Machine::start", "the vCPU is already running")),
            Status::Gone => return Err(destroyed("Machine::start")),
            Status::Stopped(_) => {}
        }
        // Marked running before the thread picks the command up so a pause()
        // issued right after start() waits for the run instead of returning early.
        *st = Status::Running;
        drop(st);
        self.send("Machine::start", Cmd::Run)
    }

    /// Stops the vCPU and returns why it stopped (GuestExit if it had already
    /// left on its own). Prompt: the run is kicked, not waited out.
    pub fn pause(&self) -> Result<StopReason> {
        let ctx = self.ctx.lock().unwrap();
        let mut st = self.shared.status.lock().unwrap();
        let Some(ctx) = ctx.as_ref() else {
            return Err(destroyed("Machine::pause"));
        };
        let mut kicked = false;
        loop {
            match &*st {
                Status::Stopped(r) => return Ok(r.clone()),
                Status::Gone => return Err(destroyed("Machine::pause")),
                Status::Running => {}
            }
            if !kicked {
                self.shared.pause_req.store(true, Ordering::SeqCst);
                kicked = true;
            }
            // Re-armed on every round: the thread clears it when it stops,
            // under this lock, so it is never left set for the next run.
            // SAFETY: ctx exists only while the vCPU fd (and its kvm_run
            // mapping) does: destroy() clears it after joining the thread.
            unsafe { std::ptr::write_volatile(ctx.immediate_exit, 1) };
            kick::kick(ctx.thread);
            st = self.shared.cv.wait_timeout(st, Duration::from_millis(2)).unwrap().0;
        }
    }

    /// Waits (bounded) for the vCPU to stop on its own, e.g. after the host set
    /// the workload's stop flag. None on timeout.
    pub fn wait_stopped(&self, timeout: Duration) -> Option<StopReason> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.status.lock().unwrap();
        loop {
            match &*st {
                Status::Stopped(r) => return Some(r.clone()),
                Status::Gone => return Some(StopReason::Error(destroyed("Machine::wait_stopped"))),
                Status::Running => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self.shared.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    fn require_stopped(&self, op: &str) -> Result<()> {
        match &*self.shared.status.lock().unwrap() {
            Status::Stopped(_) => Ok(()),
            Status::Running => Err(refused(libc::EBUSY, VCPU, op, "the vCPU is running; pause it first")),
            Status::Gone => Err(destroyed(op)),
        }
    }

    /// The stopped vCPU's complete state; EBUSY while running.
    pub fn save_state(&self) -> Result<VcpuState> {
        const OP: &str = "Machine::save_state";
        self.require_stopped(OP)?;
        let (tx, rx) = channel();
        self.send(OP, Cmd::Save(tx))?;
        rx.recv().map_err(|_| refused(libc::EIO, VCPU, OP, "the vCPU thread exited while saving"))?
    }

    /// Loads a saved state into the stopped vCPU; EBUSY while running.
    pub fn restore_state(&self, s: VcpuState) -> Result<()> {
        const OP: &str = "Machine::restore_state";
        self.require_stopped(OP)?;
        let (tx, rx) = channel();
        self.send(OP, Cmd::Restore(Box::new(s), tx))?;
        rx.recv().map_err(|_| refused(libc::EIO, VCPU, OP, "the vCPU thread exited while restoring"))?
    }

    /// KVM_GET_DIRTY_LOG: one bit per 4 KiB page, LSB-first within each byte,
    /// cleared by the read. Safe while the vCPU runs.
    pub fn sync_dirty_log(&self) -> Result<Vec<u8>> {
        if self.tx.lock().unwrap().is_none() {
            return Err(destroyed("Machine::sync_dirty_log"));
        }
        // One bitmap per slot, in RAM-offset order; each slot but the last
        // ends on a byte boundary (3 GiB of pages), so they concatenate.
        let mut out: Vec<u8> = Vec::with_capacity((self.ram.len() / 4096).div_ceil(8));
        for (slot, (_, _, len)) in layout::slots(self.ram.len() as u64).into_iter().enumerate() {
            let words = self.vm.get_dirty_log(slot as u32, len as usize).map_err(|e| kvm_err(e, VM, "KVM_GET_DIRTY_LOG"))?;
            let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            bytes.truncate((len as usize / 4096).div_ceil(8));
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// Stops and joins the vCPU thread. Idempotent.
    pub fn destroy(&self) {
        if self.ctx.lock().unwrap().is_some() {
            let _ = self.pause();
        }
        if let Some(tx) = self.tx.lock().unwrap().take() {
            let _ = tx.send(Cmd::Quit);
        }
        if let Some(j) = self.join.lock().unwrap().take() {
            let _ = j.join();
        }
        *self.ctx.lock().unwrap() = None;
    }
}

/// `op` on a machine whose vCPU thread and VM are gone.
fn destroyed(op: &str) -> Error {
    refused(libc::ENODEV, VM, op, "the microVM was destroyed")
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn run_loop(vcpu: &mut VcpuFd, sh: &Shared) {
    let reason = loop {
        if sh.pause_req.load(Ordering::SeqCst) {
            break StopReason::Paused;
        }
        match vcpu.run() {
            Ok(VcpuExit::MmioWrite(addr, _)) if addr == EXIT_MMIO || addr == LEGACY_EXIT_MMIO => {
                // KVM finishes an MMIO exit only on the next KVM_RUN; do that now
                // (immediate_exit makes it return at once) so a state save
                // taken after this stop is consistent.
                vcpu.set_kvm_immediate_exit(1);
                let _ = vcpu.run();
                break StopReason::GuestExit;
            }
            Ok(VcpuExit::Intr) => continue,
            Ok(other) => {
                let what = format!("{other:?}");
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                break StopReason::Error(refused(libc::EIO, VCPU, "KVM_RUN", format!("unexpected vCPU exit {what} at rip {rip:#x}")));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => break StopReason::Error(kvm_err(e, VCPU, "KVM_RUN")),
        }
    };
    let mut st = sh.status.lock().unwrap();
    vcpu.set_kvm_immediate_exit(0);
    sh.pause_req.store(false, Ordering::SeqCst);
    *st = Status::Stopped(reason);
    sh.cv.notify_all();
}
