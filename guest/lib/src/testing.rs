//! A minimal host-thread platform for this crate's own unit tests: pv_wait
//! spins (bounded: it returns spuriously after a while, so a lost wakeup
//! is a slowdown here, not a hang), pv_kick sets a per-CPU flag, `bug()`
//! panics, windows can stall one CPU once, and simulated interrupts take
//! per-depth locks through the same [`LockSystem`]. The full futex
//! platform is `host.rs`.

use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::system::{LockSystem, RawLock};
use crate::{Platform, WaitOn};
use pvlock_abi::{GuestPhase, LockEvent, TraceEvent, Window, NR_LOCK_EVENTS};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a window's stall lasts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StallUntil {
    /// A fixed time.
    Elapsed(Duration),
    /// Until CPU `cpu` has entered a queue head's wait (`pv_wait` on a
    /// lock's locked byte), or `timeout` (then [`Shared::stall_timed_out`]).
    HeadWaits { cpu: u32, timeout: Duration },
}

/// State shared by the CPUs of one test.
pub(crate) struct Shared {
    kicked: Vec<AtomicBool>,
    /// Per CPU: waits it entered as a queue head (on a locked byte).
    head_waits: Vec<AtomicU64>,
    /// Bit `w` set: window `w` was reached.
    pub(crate) windows_hit: AtomicU32,
    /// One stall: (window, cpu, how long); taken by the first hit.
    stall: std::sync::Mutex<Option<(Window, u32, StallUntil)>>,
    /// A [`StallUntil::HeadWaits`] stall ended by its timeout.
    pub(crate) stall_timed_out: AtomicBool,
    /// Longest a pv_wait() spins before returning spuriously.
    pub(crate) wait_bound: Duration,
    /// The run seed: CPU `n` draws `pvlock_abi::seed`'s `LockCpu(n)`
    /// stream of it, as the guest's vCPU and the host platform's thread do.
    seed: u64,
}

impl Shared {
    pub(crate) fn new(nr_cpus: usize) -> Arc<Self> {
        Self::with_seed(nr_cpus, 1)
    }

    pub(crate) fn with_seed(nr_cpus: usize, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            kicked: (0..nr_cpus).map(|_| AtomicBool::new(false)).collect(),
            head_waits: (0..nr_cpus).map(|_| AtomicU64::new(0)).collect(),
            windows_hit: AtomicU32::new(0),
            stall: std::sync::Mutex::new(None),
            stall_timed_out: AtomicBool::new(false),
            wait_bound: Duration::from_millis(2),
            seed,
        })
    }

    pub(crate) fn stall_once(&self, w: Window, cpu: u32, d: Duration) {
        self.stall_once_until(w, cpu, StallUntil::Elapsed(d));
    }

    pub(crate) fn stall_once_until(&self, w: Window, cpu: u32, until: StallUntil) {
        *self.stall.lock().unwrap() = Some((w, cpu, until));
    }

    /// Waits CPU `cpu` has entered as a queue head.
    pub(crate) fn head_waits(&self, cpu: u32) -> u64 {
        self.head_waits[cpu as usize].load(Ordering::Acquire)
    }
}

/// Simulated interrupts: at a spin point, with probability `1/every`, take
/// `locks[depth]` (one lock per nesting depth) through `sys`.
pub(crate) struct Irq<'a> {
    pub(crate) sys: &'a LockSystem<'a>,
    pub(crate) locks: &'a [RawLock],
    pub(crate) every: u64,
}

pub(crate) struct TestPlatform<'a> {
    cpu: u32,
    shared: Arc<Shared>,
    events: [AtomicU64; NR_LOCK_EVENTS],
    rng: Cell<u64>,
    depth: Cell<usize>,
    irq: Option<Irq<'a>>,
    epoch: Instant,
}

impl<'a> TestPlatform<'a> {
    /// A lone CPU (single-threaded tests).
    pub(crate) fn new(cpu: u32) -> Self {
        Self::with(Shared::new(cpu as usize + 1), cpu, None)
    }

    pub(crate) fn with(shared: Arc<Shared>, cpu: u32, irq: Option<Irq<'a>>) -> Self {
        let seed = shared.seed;
        Self {
            cpu,
            shared,
            events: core::array::from_fn(|_| AtomicU64::new(0)),
            rng: Cell::new(pvlock_abi::seed::stream_seed(seed, pvlock_abi::seed::Stream::LockCpu(cpu))),
            depth: Cell::new(0),
            irq,
            epoch: Instant::now(),
        }
    }

    pub(crate) fn count(&self, ev: LockEvent) -> u64 {
        self.events[ev.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn counts(&self) -> Vec<u64> {
        self.events.iter().map(|e| e.load(Ordering::Relaxed)).collect()
    }
}

impl Platform for TestPlatform<'_> {
    fn cpu(&self) -> u32 {
        self.cpu
    }
    fn nr_cpus(&self) -> u32 {
        self.shared.kicked.len() as u32
    }
    fn pv_wait(&self, on: WaitOn<'_>, val: u8) {
        if matches!(on, WaitOn::LockedByte(_)) {
            self.shared.head_waits[self.cpu as usize].fetch_add(1, Ordering::AcqRel);
        }
        let me = &self.shared.kicked[self.cpu as usize];
        let start = Instant::now();
        while on.load() == val && !me.load(Ordering::Acquire) && start.elapsed() < self.shared.wait_bound {
            std::thread::yield_now();
        }
        me.store(false, Ordering::Release);
    }
    fn pv_kick(&self, cpu: u32) {
        self.shared.kicked[cpu as usize].store(true, Ordering::Release);
    }
    fn vcpu_is_preempted(&self, _cpu: u32) -> bool {
        false
    }
    fn cycles(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }
    fn random(&self) -> u64 {
        let x = pvlock_abi::seed::next_draw(self.rng.get());
        self.rng.set(x);
        x
    }
    fn cpu_relax(&self) {
        std::hint::spin_loop();
        if self.random().is_multiple_of(64) {
            std::thread::yield_now();
        }
    }
    fn race_window(&self, w: Window) {
        self.shared.windows_hit.fetch_or(1 << w as u32, Ordering::Relaxed);
        let stall = {
            let mut s = self.shared.stall.lock().unwrap();
            match *s {
                Some((sw, cpu, d)) if sw == w && cpu == self.cpu => {
                    *s = None;
                    Some(d)
                }
                _ => None,
            }
        };
        match stall {
            None => {}
            Some(StallUntil::Elapsed(d)) => {
                self.event(LockEvent::WindowStalls, 1);
                std::thread::sleep(d);
            }
            Some(StallUntil::HeadWaits { cpu, timeout }) => {
                self.event(LockEvent::WindowStalls, 1);
                let (t0, n0) = (Instant::now(), self.shared.head_waits(cpu));
                while self.shared.head_waits(cpu) == n0 {
                    if t0.elapsed() >= timeout {
                        self.shared.stall_timed_out.store(true, Ordering::Release);
                        break;
                    }
                    std::thread::yield_now();
                }
            }
        }
    }
    fn maybe_interrupt(&self) {
        let Some(irq) = &self.irq else { return };
        let d = self.depth.get();
        if d >= irq.locks.len() || !self.random().is_multiple_of(irq.every) {
            return;
        }
        self.depth.set(d + 1);
        self.event(LockEvent::SimIrqs, 1);
        irq.sys.lock(self, &irq.locks[d]);
        std::thread::yield_now();
        irq.sys.unlock(self, &irq.locks[d]);
        self.depth.set(d);
    }
    fn event(&self, ev: LockEvent, n: u64) {
        self.events[ev.index()].fetch_add(n, Ordering::Relaxed);
    }
    fn event_max(&self, ev: LockEvent, v: u64) {
        self.events[ev.index()].fetch_max(v, Ordering::Relaxed);
    }
    fn set_phase(&self, _phase: GuestPhase, _lock: usize, _node: usize) {}
    fn trace(&self, _ev: TraceEvent, _lock: usize, _arg: u16, _value: u32) {}
    fn bug(&self, msg: core::fmt::Arguments<'_>) -> ! {
        panic!("BUG on cpu {}: {}", self.cpu, msg)
    }
}
