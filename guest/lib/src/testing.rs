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

/// State shared by the CPUs of one test.
pub(crate) struct Shared {
    kicked: Vec<AtomicBool>,
    /// Bit `w` set: window `w` was reached.
    pub(crate) windows_hit: AtomicU32,
    /// One stall: (window, cpu, duration); taken by the first hit.
    stall: std::sync::Mutex<Option<(Window, u32, Duration)>>,
    /// Longest a pv_wait() spins before returning spuriously.
    pub(crate) wait_bound: Duration,
}

impl Shared {
    pub(crate) fn new(nr_cpus: usize) -> Arc<Self> {
        Arc::new(Self {
            kicked: (0..nr_cpus).map(|_| AtomicBool::new(false)).collect(),
            windows_hit: AtomicU32::new(0),
            stall: std::sync::Mutex::new(None),
            wait_bound: Duration::from_millis(2),
        })
    }

    pub(crate) fn stall_once(&self, w: Window, cpu: u32, d: Duration) {
        *self.stall.lock().unwrap() = Some((w, cpu, d));
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
        Self {
            cpu,
            shared,
            events: core::array::from_fn(|_| AtomicU64::new(0)),
            rng: Cell::new(pvlock_abi::seed::stream_seed(1, pvlock_abi::seed::Stream::LockCpu(cpu))),
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
        // xorshift64*, not the lock code's `next_draw`: here the draws also
        // decide the test's own yields (cpu_relax), and the directed tests'
        // interleavings were tuned with this stream.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
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
        if let Some(d) = stall {
            self.event(LockEvent::WindowStalls, 1);
            std::thread::sleep(d);
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
