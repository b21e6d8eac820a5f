//! The emulated device: its state under one lock, the ticker thread that
//! makes it live (dirtying, DMA, asynchronous resets), and the public API.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vfio_uapi::DeviceState;

use super::config::EmuConfig;
use super::content::{digest_of, region_hash, DeviceContent, Rng};
use super::dma::{DmaEngine, DmaLog, GuestMem};
use super::faults::{Countdown, Faults};
use super::session::{LoadSession, SaveSession};
use super::hash::hex;
use vmm_sys::{self as sys, errno};

/// Counters of what the device did, for tests and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct EmuStats {
    /// State machine arcs taken.
    pub arcs: u64,
    /// Resets, requested or injected.
    pub resets: u64,
    /// Data fd sessions opened.
    pub sessions: u64,
    /// Bytes of state the device changed by itself.
    pub dirtied_bytes: u64,
    /// DMA writes into guest memory.
    pub dma_writes: u64,
    /// Pages newly marked in the DMA dirty log.
    pub dma_logged_pages: u64,
    /// Bytes written into saving data fds.
    pub bytes_saved: u64,
    /// Bytes read from resuming data fds.
    pub bytes_loaded: u64,
}

pub struct State {
    pub cfg: EmuConfig,
    pub state: DeviceState,
    pub content: DeviceContent,
    pub saving: Option<SaveSession>,
    pub resuming: Option<LoadSession>,
    /// Files of closed sessions: using them answers ENODEV, like a
    /// driver's disabled migration file.
    pub stale: VecDeque<(u64, u64)>,
    pub zombies: Vec<JoinHandle<()>>,
    pub dirty_rate: u64,
    dirty_budget: f64,
    rng: Rng,
    pub log: Option<DmaLog>,
    pub dma: DmaEngine,
    pub faults: Faults,
    pub last_error: Option<String>,
    pub stats: EmuStats,
    pub shutdown: bool,
    kick: u64,
    next_session: u64,
}

pub struct Shared {
    m: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves a consistent-enough state to tear down.
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// States in which the device's own content changes.
fn dirties_in(s: DeviceState) -> bool {
    matches!(s, DeviceState::Running | DeviceState::PreCopy | DeviceState::PreCopyP2p)
}

/// States in which the device may DMA to memory (everything but the
/// stopped ones; P2P only forbids peer-to-peer traffic).
fn dmas_in(s: DeviceState) -> bool {
    dirties_in(s) || s == DeviceState::RunningP2p
}

impl State {
    pub fn fail(&mut self, e: i32, msg: String) -> io::Error {
        self.last_error = Some(msg);
        errno(e)
    }

    pub fn poke(&mut self) {
        self.kick += 1;
    }

    fn close_saving(&mut self) {
        if let Some(mut s) = self.saving.take() {
            self.stats.bytes_saved += s.written;
            self.stale_push(s.ino);
            sys::eventfd_signal(&s.wake);
            if let Some(t) = s.thread.take() {
                self.zombies.push(t);
            }
        }
    }

    fn close_resuming(&mut self) {
        if let Some(mut s) = self.resuming.take() {
            self.stats.bytes_loaded += s.loader.bytes;
            self.stale_push(s.ino);
            sys::eventfd_signal(&s.wake);
            if let Some(t) = s.thread.take() {
                self.zombies.push(t);
            }
        }
    }

    fn stale_push(&mut self, ino: (u64, u64)) {
        if self.stale.len() >= 64 {
            self.stale.pop_front();
        }
        self.stale.push_back(ino);
    }

    pub fn close_sessions(&mut self) {
        self.close_saving();
        self.close_resuming();
    }

    /// A function reset (VFIO_DEVICE_RESET, or the device's own): every
    /// data fd disabled and the device back in its power-on state. A real
    /// device loses what it held, so the content is again what construction
    /// generated from the configured seed (a loaded image and everything
    /// dirtied since are gone), the DMA engine is idle (a reset clears Bus
    /// Master Enable: nothing is programmed to write until a driver does it
    /// again) and the dirty rate is the configured one. The DMA log stays:
    /// the host set it up through the VFIO feature, not the guest.
    pub fn do_reset(&mut self) {
        self.close_sessions();
        self.state = DeviceState::Running;
        self.content = DeviceContent::fresh(self.cfg.layout(), self.cfg.seed);
        self.dirty_rate = self.cfg.dirty_rate;
        self.dirty_budget = 0.0;
        self.dma.power_on();
        self.faults.fail_recovery = None;
        self.stats.resets += 1;
        self.poke();
    }

    fn mark_dirty(&mut self, i: u32) {
        let g = &mut self.content.gens[i as usize];
        *g = g.wrapping_add(1) % (u32::MAX - 1);
        self.stats.dirtied_bytes += self.content.layout.region_len(i) as u64;
        if let Some(s) = self.saving.as_mut() {
            s.dirtied(self.content.layout, i);
            sys::eventfd_signal(&s.wake);
        }
    }

    fn tick(&mut self, dt: f64) {
        if let Some(at) = self.faults.reset_at {
            if Instant::now() >= at {
                self.faults.reset_at = None;
                self.last_error = Some("the device reset itself (injected asynchronous reset)".into());
                self.do_reset();
            }
        }
        let n = self.content.layout.regions();
        if dirties_in(self.state) && self.dirty_rate > 0 && n > 0 {
            let rsize = self.content.layout.region_size as f64;
            self.dirty_budget =
                (self.dirty_budget + dt * self.dirty_rate as f64).min(self.content.layout.state_size as f64 + rsize);
            while self.dirty_budget >= rsize {
                self.dirty_budget -= rsize;
                let i = self.rng.below(n as u64) as u32;
                self.mark_dirty(i);
            }
        }
        if dmas_in(self.state) {
            self.dma.tick(dt, self.log.as_mut());
            self.stats.dma_writes = self.dma.stats.writes;
            self.stats.dma_logged_pages = self.dma.stats.logged;
        }
    }

    fn ticking(&self) -> bool {
        self.faults.reset_at.is_some()
            || (dirties_in(self.state) && self.dirty_rate > 0)
            || (dmas_in(self.state) && self.dma.active())
    }

    pub fn new_session_id(&mut self) -> u64 {
        self.next_session += 1;
        self.stats.sessions += 1;
        self.next_session
    }
}

/// An emulated VFIO migration v2 device: answers [`DeviceBackend`]
/// requests as a kernel driver would.
///
/// [`DeviceBackend`]: crate::backend::DeviceBackend
pub struct EmuDevice {
    pub(crate) shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
    name: String,
}

impl EmuDevice {
    /// Builds the device (RUNNING) and starts its ticker thread.
    pub fn new(cfg: EmuConfig) -> io::Result<EmuDevice> {
        cfg.validate()?;
        let content = DeviceContent::fresh(cfg.layout(), cfg.seed);
        let name = cfg.name.clone();
        let st = State {
            state: DeviceState::Running,
            content,
            saving: None,
            resuming: None,
            stale: VecDeque::new(),
            zombies: Vec::new(),
            dirty_rate: cfg.dirty_rate,
            dirty_budget: 0.0,
            rng: Rng::new(cfg.seed ^ 0x5eed),
            log: None,
            dma: DmaEngine::new(cfg.seed),
            faults: Faults::default(),
            last_error: None,
            stats: EmuStats::default(),
            shutdown: false,
            kick: 0,
            next_session: 0,
            cfg,
        };
        let shared = Arc::new(Shared { m: Mutex::new(st), cv: Condvar::new() });
        let sh = shared.clone();
        let ticker = std::thread::Builder::new().name("vfio-emu-tick".into()).spawn(move || ticker(sh))?;
        Ok(EmuDevice { shared, ticker: Some(ticker), name })
    }

    /// Runs `f` under the lock, then joins the session threads it retired
    /// (outside the lock: they take it to notice they are done).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut g = self.shared.lock();
        let r = f(&mut g);
        let z = std::mem::take(&mut g.zombies);
        drop(g);
        self.shared.cv.notify_all();
        for t in z {
            let _ = t.join();
        }
        r
    }

    /// The configured name.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// The configuration it was built with.
    pub fn config(&self) -> EmuConfig {
        self.with(|s| s.cfg.clone())
    }

    /// The current migration state.
    pub fn state(&self) -> DeviceState {
        self.with(|s| s.state)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EmuStats {
        self.with(|s| s.stats.clone())
    }

    /// Why the last request failed, in words (the errno alone is what the
    /// kernel would give; this is what its dmesg would say).
    pub fn last_error(&self) -> Option<String> {
        self.with(|s| s.last_error.clone())
    }

    /// Sets how fast the device dirties its own state (0 stops it).
    pub fn set_dirty_rate(&self, bytes_per_sec: u64) {
        self.with(|s| {
            s.dirty_rate = bytes_per_sec;
            s.poke();
        })
    }

    /// Bumps region `i` as if the device had written it (tests use this
    /// for deterministic dirtying).
    pub fn dirty_region(&self, i: u32) -> io::Result<()> {
        self.with(|s| {
            let n = s.content.layout.regions();
            if i >= n {
                return Err(s.fail(libc::EINVAL, format!("region {i} out of range (device has {n})")));
            }
            s.mark_dirty(i);
            Ok(())
        })
    }

    /// BLAKE3 over the layout and every region's hash, hex: equal digests
    /// mean byte-equal device state. Regions never hashed are generated and
    /// hashed outside the lock.
    pub fn digest(&self) -> String {
        loop {
            let (layout, seed, stale) = self.with(|s| (s.content.layout, s.content.seed, s.content.stale()));
            let mut scratch = Vec::new();
            let computed: Vec<(u32, u32, [u8; 32])> = stale
                .into_iter()
                .map(|(i, g)| {
                    scratch.resize(layout.region_len(i) as usize, 0);
                    super::content::fill(seed, i, g, &mut scratch);
                    (i, g, region_hash(i, &scratch))
                })
                .collect();
            let done = self.with(|s| {
                if s.content.seed != seed {
                    return None; // a resume replaced the content meanwhile
                }
                for (i, g, h) in computed {
                    if s.content.gens[i as usize] == g {
                        s.content.hashes[i as usize] = Some((g, h));
                    }
                }
                if !s.content.stale().is_empty() {
                    return None; // dirtied meanwhile: hash the new generations
                }
                let hs = s.content.hashes.iter().map(|h| h.unwrap().1);
                Some(hex(&digest_of(layout, hs)))
            });
            if let Some(d) = done {
                return d;
            }
        }
    }

    // Fault injection.

    /// The next arc into `state` fails with `errno`, leaving the device in
    /// the state before that arc (mtty); with `recovery`, the first arc of
    /// the next SET fails too and the device ends in ERROR.
    pub fn fail_next_move(&self, state: DeviceState, errno: i32, recovery: bool) {
        self.with(|s| s.faults.fail_move = Some((state, errno, recovery)))
    }

    /// Flips byte `offset` of the next saving session's stream.
    pub fn corrupt_stream_byte(&self, offset: u64) {
        self.with(|s| s.faults.corrupt.push(offset))
    }

    /// The next `count` data reads/writes move at most `max_bytes`.
    pub fn short_io(&self, count: u32, max_bytes: usize) {
        self.with(|s| s.faults.short_io = (count, max_bytes.max(1)))
    }

    /// The next `count` data reads/writes fail with EAGAIN.
    pub fn eagain(&self, count: u32) {
        self.with(|s| s.faults.eagain = count)
    }

    /// The device resets itself `after` from now, from its own thread.
    pub fn async_reset(&self, after: Duration) {
        self.with(|s| {
            s.faults.reset_at = Some(Instant::now() + after);
            s.poke();
        })
    }

    /// The next `count` VFIO_DEVICE_RESETs fail with `errno` and leave the
    /// device as it was (its state unknown to the caller, as after a
    /// function reset the PCI core could not perform).
    pub fn fail_reset(&self, errno: i32, count: u32) {
        self.with(|s| s.faults.fail_reset = Countdown(count, errno))
    }

    /// The next `count` VFIO_MIG_GET_PRECOPY_INFO calls on a valid saving
    /// fd in PRE_COPY fail with `errno`.
    pub fn fail_precopy_info(&self, errno: i32, count: u32) {
        self.with(|s| s.faults.fail_precopy_info = Countdown(count, errno))
    }

    /// The next `count` DMA_LOGGING_REPORTs that pass the kernel's checks
    /// fail with `errno`; the pages they would have reported stay logged.
    pub fn fail_dma_report(&self, errno: i32, count: u32) {
        self.with(|s| s.faults.fail_dma_report = Countdown(count, errno))
    }

    /// Disarms every injected fault.
    pub fn clear_faults(&self) {
        self.with(|s| s.faults = Faults::default())
    }

    // DMA engine.

    /// Lends guest memory to the DMA engine at IOVA `iova`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid and writable until
    /// [`detach_guest_memory`](Self::detach_guest_memory) or drop.
    pub unsafe fn attach_guest_memory(&self, ptr: *mut u8, len: usize, iova: u64) -> io::Result<()> {
        self.with(|s| {
            if ptr.is_null() || len == 0 || iova.checked_add(len as u64).is_none() {
                return Err(s.fail(libc::EINVAL, format!("guest memory {ptr:p}+{len} at iova {iova:#x} is invalid")));
            }
            s.dma.mem = Some(GuestMem { ptr, len, iova });
            s.poke();
            Ok(())
        })
    }

    /// Takes the guest memory back from the DMA engine (stops its writes).
    pub fn detach_guest_memory(&self) {
        self.with(|s| s.dma.mem = None)
    }

    /// Starts DMA at `pages_per_sec` random page writes per second.
    pub fn start_dma(&self, pages_per_sec: u64) -> io::Result<()> {
        self.with(|s| {
            if s.dma.mem.is_none() {
                return Err(s.fail(libc::EINVAL, "no guest memory attached".into()));
            }
            s.dma.rate = pages_per_sec;
            s.poke();
            Ok(())
        })
    }

    /// Stops DMA (the memory stays attached).
    pub fn stop_dma(&self) {
        self.with(|s| s.dma.rate = 0)
    }

    /// Pages in the DMA dirty log (None when logging is off).
    pub fn logged_pages(&self) -> Option<Vec<u64>> {
        self.with(|s| s.log.as_ref().map(|l| l.dirty.iter().copied().collect()))
    }
}

impl Drop for EmuDevice {
    fn drop(&mut self) {
        self.with(|s| {
            s.shutdown = true;
            s.dma.mem = None;
            s.close_sessions();
        });
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

fn ticker(shared: Arc<Shared>) {
    let mut last = Instant::now();
    let mut g = shared.lock();
    loop {
        if g.shutdown {
            return;
        }
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        g.tick(dt);
        if !g.zombies.is_empty() {
            let z = std::mem::take(&mut g.zombies);
            drop(g);
            for t in z {
                let _ = t.join();
            }
            g = shared.lock();
            continue;
        }
        if g.ticking() {
            let wait = match g.faults.reset_at {
                Some(at) => at.saturating_duration_since(Instant::now()).min(Duration::from_millis(5)),
                None => Duration::from_millis(5),
            };
            g = shared.cv.wait_timeout(g, wait).unwrap_or_else(|p| p.into_inner()).0;
        } else {
            let seen = g.kick;
            while g.kick == seen && !g.shutdown {
                g = shared.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            last = Instant::now();
        }
    }
}
