//! KvmMachine: the microVM's KVM vCPU for JavaScript. Everything that waits on
//! the vCPU thread or issues ioctls returns a Promise (runs on the libuv pool);
//! guest RAM is handed out once as an external Buffer over the shared mapping.
//! Failures are kvm-core's errors (the native layer's one type), turned into
//! JavaScript errors by `js_error` like every other native failure.
use crate::error::{js_error, VResult};
use kvm_core::error::{invalid, refused, VCPU, VM};
use kvm_core::layout as L;
use kvm_core::{GuestRam, Machine, StopReason, VcpuState, WorkloadParams};
use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Weak};
use std::time::Duration;

thread_local! {
    /// Live machines of this thread's env (main thread or a worker: one env
    /// each), so its cleanup hook can stop their vCPU threads even if
    /// JavaScript never called destroy() before the env goes away.
    static LIVE: RefCell<Vec<Weak<Machine>>> = const { RefCell::new(Vec::new()) };
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

fn register(env: &Env, m: &Arc<Machine>) {
    LIVE.with(|l| {
        let mut live = l.borrow_mut();
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(m));
    });
    if !HOOKED.with(|h| h.replace(true)) {
        let _ = env.add_env_cleanup_hook((), |_| {
            let machines: Vec<Arc<Machine>> =
                LIVE.with(|l| l.borrow_mut().drain(..).filter_map(|w| w.upgrade()).collect());
            for m in machines {
                m.destroy();
            }
        });
    }
}

#[napi(object)]
pub struct KvmProbe {
    pub available: bool,
    /// Why KVM cannot be used (empty when available).
    pub reason: String,
    pub api_version: i32,
}

pub struct ProbeTask;

impl Task for ProbeTask {
    type Output = kvm_core::Probe;
    type JsValue = KvmProbe;
    fn compute(&mut self) -> Result<Self::Output> {
        Ok(kvm_core::probe())
    }
    fn resolve(&mut self, _: Env, p: Self::Output) -> Result<KvmProbe> {
        Ok(KvmProbe { available: p.available, reason: p.reason, api_version: p.api_version })
    }
}

/// Opens /dev/kvm and creates a throw-away VM to tell whether KVM works here.
#[napi(ts_return_type = "Promise<KvmProbe>")]
pub fn kvm_probe() -> AsyncTask<ProbeTask> {
    AsyncTask::new(ProbeTask)
}

/// The fixed guest layout, so the TypeScript mirror can be checked against it.
#[napi(object)]
pub struct KvmLayout {
    pub page_size: u32,
    pub ram_align: u32,
    /// Bytes (4 GiB does not fit a u32).
    pub max_ram: f64,
    pub code_addr: u32,
    pub ctl_addr: u32,
    pub first_data_page: u32,
    pub exit_mmio: u32,
    pub ctl_counter: u32,
    pub ctl_checksum: u32,
    pub ctl_rng: u32,
    pub ctl_cursor: u32,
    pub ctl_region_start: u32,
    pub ctl_region_pages: u32,
    pub ctl_pages_per_iter: u32,
    pub ctl_spin: u32,
    pub ctl_stop: u32,
    pub code_len: u32,
}

#[napi]
pub fn kvm_layout() -> KvmLayout {
    KvmLayout {
        page_size: L::PAGE_SIZE as u32,
        ram_align: L::RAM_ALIGN as u32,
        max_ram: L::MAX_RAM as f64,
        code_addr: L::CODE_ADDR as u32,
        ctl_addr: L::CTL_ADDR as u32,
        first_data_page: L::FIRST_DATA_PAGE,
        exit_mmio: L::EXIT_MMIO as u32,
        ctl_counter: L::CTL_COUNTER as u32,
        ctl_checksum: L::CTL_CHECKSUM as u32,
        ctl_rng: L::CTL_RNG as u32,
        ctl_cursor: L::CTL_CURSOR as u32,
        ctl_region_start: L::CTL_REGION_START as u32,
        ctl_region_pages: L::CTL_REGION_PAGES as u32,
        ctl_pages_per_iter: L::CTL_PAGES_PER_ITER as u32,
        ctl_spin: L::CTL_SPIN as u32,
        ctl_stop: L::CTL_STOP as u32,
        code_len: L::WORKLOAD_CODE.len() as u32,
    }
}

#[napi(object)]
#[derive(Clone, Copy)]
pub struct KvmWorkloadParams {
    /// First guest page of the data region (>= firstDataPage).
    pub region_start: u32,
    pub region_pages: u32,
    pub pages_per_iter: u32,
    /// Busy-loop count after each iteration: the dirty-rate knob.
    pub spin: u32,
    /// xorshift32 seed, non-zero.
    pub seed: u32,
}

impl From<KvmWorkloadParams> for WorkloadParams {
    fn from(p: KvmWorkloadParams) -> Self {
        WorkloadParams {
            region_start: p.region_start,
            region_pages: p.region_pages,
            pages_per_iter: p.pages_per_iter,
            spin: p.spin,
            seed: p.seed,
        }
    }
}

/// Why the vCPU is stopped: 'paused' (host), 'guest-exit' (the workload saw its
/// stop flag), 'error' (with `error`).
#[napi(object)]
pub struct KvmStop {
    pub reason: String,
    pub error: Option<String>,
}

fn stop_to_js(r: StopReason) -> KvmStop {
    match r {
        StopReason::Paused => KvmStop { reason: "paused".into(), error: None },
        StopReason::GuestExit => KvmStop { reason: "guest-exit".into(), error: None },
        StopReason::Error(e) => KvmStop { reason: "error".into(), error: Some(e.message) },
    }
}

pub struct CreateTask {
    ram_size: u64,
    params: WorkloadParams,
}

impl Task for CreateTask {
    type Output = VResult<Arc<Machine>>;
    type JsValue = KvmMachine;
    fn compute(&mut self) -> Result<Self::Output> {
        Ok(Machine::new(self.ram_size, self.params).map(Arc::new))
    }
    fn resolve(&mut self, env: Env, m: Self::Output) -> Result<KvmMachine> {
        let m = m.map_err(|e| js_error(&env, &e))?;
        register(&env, &m);
        Ok(KvmMachine { inner: m, memory_taken: AtomicBool::new(false) })
    }
}

/// Creates a VM with `ramSize` bytes of guest RAM (multiple of 2 MiB), the
/// workload installed and the vCPU at its entry, stopped.
#[napi(ts_return_type = "Promise<KvmMachine>")]
pub fn create_kvm_machine(env: Env, ram_size: f64, params: KvmWorkloadParams) -> Result<AsyncTask<CreateTask>> {
    if !(ram_size.is_finite() && ram_size > 0.0 && ram_size.fract() == 0.0 && ram_size <= L::MAX_RAM as f64) {
        let why = format!("ramSize {ram_size} must be a positive integer of at most {} bytes", L::MAX_RAM);
        return Err(js_error(&env, &invalid(VM, "createKvmMachine", why)));
    }
    Ok(AsyncTask::new(CreateTask { ram_size: ram_size as u64, params: params.into() }))
}

/// One operation on the machine, run on the libuv pool.
macro_rules! op_task {
    ($name:ident, $out:ty, $js:ty, $conv:expr) => {
        pub struct $name {
            m: Arc<Machine>,
            f: Box<dyn FnMut(&Machine) -> kvm_core::Result<$out> + Send>,
        }
        impl Task for $name {
            type Output = VResult<$out>;
            type JsValue = $js;
            fn compute(&mut self) -> Result<Self::Output> {
                Ok((self.f)(&self.m))
            }
            fn resolve(&mut self, env: Env, o: Self::Output) -> Result<$js> {
                let o = o.map_err(|e| js_error(&env, &e))?;
                #[allow(clippy::redundant_closure_call)]
                Ok(($conv)(o))
            }
        }
    };
}

op_task!(UnitTask, (), (), |o| o);
op_task!(StopTask, StopReason, KvmStop, stop_to_js);
op_task!(MaybeStopTask, Option<StopReason>, Option<KvmStop>, |o: Option<StopReason>| o.map(stop_to_js));
op_task!(BytesTask, Vec<u8>, Buffer, Buffer::from);

#[napi]
pub struct KvmMachine {
    inner: Arc<Machine>,
    memory_taken: AtomicBool,
}

#[napi]
impl KvmMachine {
    #[napi(getter)]
    pub fn ram_size(&self) -> f64 {
        self.inner.ram().len() as f64
    }

    #[napi(getter)]
    pub fn running(&self) -> bool {
        self.inner.is_running()
    }

    /// Guest RAM as a Buffer over the VM's own mapping (no copy). Only once per
    /// machine: V8 refuses two external buffers over the same memory.
    #[napi]
    pub fn memory<'env>(&self, env: &'env Env) -> Result<BufferSlice<'env>> {
        if self.memory_taken.swap(true, Ordering::SeqCst) {
            let why = "memory() was already called for this machine; keep that Buffer";
            return Err(js_error(env, &refused(libc::EEXIST, VM, "KvmMachine.memory", why)));
        }
        let ram: Arc<GuestRam> = self.inner.ram().clone();
        let (ptr, len) = (ram.as_ptr(), ram.len());
        // SAFETY: the Arc moved into the finalizer keeps the mapping alive for
        // as long as V8 can reach the Buffer, even after destroy().
        unsafe { BufferSlice::from_external(env, ptr, len, ram, |_, ram| drop(ram)) }
    }

    /// Starts (or resumes) the vCPU run loop on its thread. Synchronous: it
    /// only marks the vCPU running and queues the command for its thread (no
    /// wait), and a trip through the thread pool would add a switch's worth
    /// of milliseconds to every migration's downtime on a busy host.
    #[napi]
    pub fn start(&self, env: Env) -> Result<()> {
        self.inner.start().map_err(|e| js_error(&env, &e))
    }

    /// Kicks the vCPU out of KVM_RUN; resolves once it has stopped.
    #[napi(ts_return_type = "Promise<KvmStop>")]
    pub fn pause(&self) -> AsyncTask<StopTask> {
        AsyncTask::new(StopTask { m: self.inner.clone(), f: Box::new(|m| m.pause()) })
    }

    /// Resolves when the vCPU stops by itself (or null after `timeoutMs`).
    #[napi(ts_return_type = "Promise<KvmStop | null>")]
    pub fn wait_stopped(&self, timeout_ms: u32) -> AsyncTask<MaybeStopTask> {
        let t = Duration::from_millis(timeout_ms as u64);
        AsyncTask::new(MaybeStopTask { m: self.inner.clone(), f: Box::new(move |m| Ok(m.wait_stopped(t))) })
    }

    /// The whole vCPU state (regs, sregs, fpu/xsave, xcrs, msrs, events,
    /// debugregs) in the KVMVCPU1 format. The vCPU must be stopped.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn get_state(&self) -> AsyncTask<BytesTask> {
        AsyncTask::new(BytesTask { m: self.inner.clone(), f: Box::new(|m| m.save_state().map(|s| s.to_bytes())) })
    }

    #[napi(ts_return_type = "Promise<void>")]
    pub fn set_state(&self, env: Env, state: Buffer) -> Result<AsyncTask<UnitTask>> {
        let s = VcpuState::from_bytes(&state).map_err(|e| js_error(&env, &e))?;
        let mut s = Some(s);
        Ok(AsyncTask::new(UnitTask {
            m: self.inner.clone(),
            f: Box::new(move |m| match s.take() {
                Some(s) => m.restore_state(s),
                None => Err(invalid(VCPU, "KvmMachine.setState", "the state was already consumed")),
            }),
        }))
    }

    /// KVM_GET_DIRTY_LOG: returns and clears the bitmap, one bit per 4 KiB page
    /// (bit i%8 of byte i/8). Works while running.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn sync_dirty_log(&self) -> AsyncTask<BytesTask> {
        AsyncTask::new(BytesTask { m: self.inner.clone(), f: Box::new(|m| m.sync_dirty_log()) })
    }

    /// The memfd behind guest RAM, for a local migration to pass (SCM_RIGHTS)
    /// to the VMM taking the guest over. It stays this machine's: valid
    /// while the machine lives and no `adoptRam`/`detachRam` replaced it.
    #[napi(getter)]
    pub fn ram_fd(&self) -> i32 {
        self.inner.ram().fd()
    }

    /// Local migration, destination: maps `fd` (the source's guest RAM, as
    /// the channel passed it) over this machine's RAM at the same address,
    /// and owns it from now on (closed here on failure too). Refused while
    /// the vCPU runs, and unless the file is exactly as long as this RAM.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn adopt_ram(&self, fd: i32) -> AsyncTask<UnitTask> {
        let mut fd = Some(fd);
        AsyncTask::new(UnitTask {
            m: self.inner.clone(),
            f: Box::new(move |m| {
                let Some(raw) = fd.take().filter(|&n| n >= 0) else {
                    return Err(invalid(VM, "KvmMachine.adoptRam", "fd must be a descriptor number, given once"));
                };
                // SAFETY: the caller hands the descriptor over (this method's
                // contract); nothing else closes it from here on.
                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
                if m.is_running() {
                    return Err(refused(libc::EBUSY, VM, "KvmMachine.adoptRam", "the vCPU runs: RAM is replaced only before the guest starts here"));
                }
                m.ram().replace(owned)
            }),
        })
    }

    /// Maps fresh zeroed RAM over what `adoptRam` mapped, closing the
    /// source's fd: a destination that failed before the go-ahead keeps no
    /// way to write the pages the source goes on running with.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn detach_ram(&self) -> AsyncTask<UnitTask> {
        AsyncTask::new(UnitTask {
            m: self.inner.clone(),
            f: Box::new(|m| {
                if m.is_running() {
                    return Err(refused(libc::EBUSY, VM, "KvmMachine.detachRam", "the vCPU runs"));
                }
                m.ram().detach()
            }),
        })
    }

    /// Stops and joins the vCPU thread and closes the VM. The memory Buffer
    /// stays valid (it holds its own reference to the mapping).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn destroy(&self) -> AsyncTask<UnitTask> {
        AsyncTask::new(UnitTask {
            m: self.inner.clone(),
            f: Box::new(|m| {
                m.destroy();
                Ok(())
            }),
        })
    }
}
