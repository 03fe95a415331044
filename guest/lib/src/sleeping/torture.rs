//! Mutex torture: every CPU's task takes random mutexes of the run, checks
//! mutual exclusion with the owner mark, bumps a plain counter inside, and
//! records the sleeping-lock facts (wait per acquisition, the path that
//! took the mutex). The spinlock torture (`crate::torture`) is the model;
//! the torture lock is its [`TortureLock`] (so the VMM's owner-mark reads,
//! holder preemption and count checks work unchanged) followed by the mutex.
//! The `TortureLock`'s own lock word is not used: the mutex's word and its
//! `wait_lock` live in [`Mutex`].

use super::mutex::{AcquirePath, Mutex, MutexSystem};
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::torture::{Clock, Observer, StopReason, TortureLock, Violation, ViolationAt};
use crate::Platform;
use core::fmt;
use pvlock_abi::{GuestPhase, LatencyHistogram, TortureParams, Variant, Window};

/// Most mutexes a run may have.
pub const MAX_MUTEXES: usize = pvlock_abi::MAX_MUTEXES;

/// A torture mutex as the VMM sees it: a [`TortureLock`] (owner mark and
/// plain counter at the usual offsets), then the mutex.
#[repr(C)]
pub struct MutexTortureLock {
    pub base: TortureLock,
    pub mutex: Mutex,
}

impl MutexTortureLock {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { base: TortureLock::new(), mutex: Mutex::new() }
    }
    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { base: TortureLock::new(), mutex: Mutex::new() }
    }

    fn read_count(&self) -> u64 {
        // SAFETY: only while holding `mutex` (the exclusion under test; a
        // broken mutex racing here is what the count check detects, and the
        // access is volatile so it is one real load), or after the run.
        unsafe { core::ptr::read_volatile(self.base.count.get()) }
    }

    fn write_count(&self, v: u64) {
        // SAFETY: as in `read_count`.
        unsafe { core::ptr::write_volatile(self.base.count.get(), v) }
    }
}

#[cfg(not(loom))]
impl Default for MutexTortureLock {
    fn default() -> Self {
        Self::new()
    }
}

/// Parameters the mutex torture cannot run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MutexParamError {
    /// `torture.nr_locks` outside `1..=MAX_MUTEXES` (or the lock array).
    NrLocks(u32),
    /// `torture.nest` above 1: the mutex torture takes one mutex at a time.
    Nest(u32),
    /// `torture.irq_prob` set: a mutex is never taken in interrupt context.
    Irqs,
    /// `tsc_khz` is zero.
    ZeroClock,
}

impl fmt::Display for MutexParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NrLocks(n) => write!(f, "torture.nr_locks = {n}: the mutex torture takes 1..={MAX_MUTEXES}"),
            Self::Nest(n) => write!(f, "torture.nest = {n}: the mutex torture takes one mutex at a time (nest = 1)"),
            Self::Irqs => write!(f, "torture.irq_prob must be 0: a mutex is never taken in interrupt context"),
            Self::ZeroClock => write!(f, "tsc_khz is zero"),
        }
    }
}

/// One CPU's outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MutexTortureResult {
    pub cpu: u32,
    pub acquisitions: u64,
    /// Sum and maximum of `mutex_lock()` call to acquired, ns.
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
    /// Acquisitions by [`AcquirePath`] (index = path as u16).
    pub paths: [u64; 8],
    pub elapsed_ns: u64,
    pub stop: StopReason,
    pub violation: Option<Violation>,
}

/// A mutex-torture run, shared by all CPUs.
pub struct MutexTorture<'s, 'a> {
    sys: &'s MutexSystem<'s, 'a>,
    locks: &'s [MutexTortureLock],
    params: TortureParams,
    clock: Clock,
    stop: &'s AtomicU64,
    deadline: Option<u64>,
    /// Mutexes `first_lock..nr_locks` are tortured (1 with a recursive
    /// locker holding mutex 0, `lock.mutex_recursive`).
    first_lock: usize,
}

impl<'s, 'a> MutexTorture<'s, 'a> {
    /// Checks `params`: 1..=[`MAX_MUTEXES`] locks, no nesting and no
    /// simulated interrupts (a mutex is never taken in interrupt context).
    pub fn new(
        sys: &'s MutexSystem<'s, 'a>,
        locks: &'s [MutexTortureLock],
        params: TortureParams,
        tsc_khz: u64,
        stop: &'s AtomicU64,
    ) -> Result<Self, MutexParamError> {
        if params.nr_locks == 0 || params.nr_locks as usize > MAX_MUTEXES.min(locks.len()) {
            return Err(MutexParamError::NrLocks(params.nr_locks));
        }
        if params.nest > 1 {
            return Err(MutexParamError::Nest(params.nest));
        }
        if params.irq_prob != 0 {
            return Err(MutexParamError::Irqs);
        }
        if tsc_khz == 0 {
            return Err(MutexParamError::ZeroClock);
        }
        Ok(Self { sys, locks, params, clock: Clock { tsc_khz }, stop, deadline: None, first_lock: 0 })
    }

    /// Leave mutex 0 alone (another task holds it for the whole run); with
    /// one mutex the task only waits for the deadline.
    pub fn without_first_lock(mut self) -> Self {
        self.first_lock = 1;
        self
    }

    pub fn sys(&self) -> &'s MutexSystem<'s, 'a> {
        self.sys
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn with_deadline(mut self, deadline: u64) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// This CPU's task runs the torture loop.
    pub fn run<P: Platform>(&self, p: &P, obs: &dyn Observer, latency: &mut LatencyHistogram) -> MutexTortureResult {
        let cpu = p.cpu();
        let first = self.first_lock as u64;
        let n = (self.params.nr_locks as u64).saturating_sub(first);
        let cs = self.clock.ns_to_cycles(self.params.cs_ns as u64);
        let think = self.clock.ns_to_cycles(self.params.think_ns as u64);
        let mut r = MutexTortureResult { cpu, ..Default::default() };
        let start = p.cycles();
        loop {
            if self.params.max_acquisitions != 0 && r.acquisitions >= self.params.max_acquisitions {
                r.stop = StopReason::MaxAcquisitions;
                break;
            }
            // Relaxed: a hint to stop.
            if self.stop.load(Ordering::Relaxed) != 0 {
                r.stop = StopReason::StopFlag;
                break;
            }
            if self.deadline.is_some_and(|d| p.cycles() >= d) {
                r.stop = StopReason::Deadline;
                break;
            }
            if n == 0 {
                p.cpu_relax();
                continue;
            }
            let i = (first + if n == 1 { 0 } else { p.random() % n }) as usize;
            let l = &self.locks[i];
            let t0 = p.cycles();
            self.sys.tasks().begin_slice(p);
            self.sys.lock(p, &l.mutex);
            let waited = self.clock.cycles_to_ns(p.cycles().saturating_sub(t0));
            latency.record(waited);
            r.total_wait_ns = r.total_wait_ns.saturating_add(waited);
            r.max_wait_ns = r.max_wait_ns.max(waited);
            let mut violation = None;
            if let Err(other) = l.base.mark(cpu) {
                let v = Violation { lock: i, cpu, other, at: ViolationAt::Enter, irq_depth: 0 };
                obs.violation(&v);
                violation = Some(v);
            }
            p.set_phase(GuestPhase::Holding, l.mutex.addr(), 0);
            let c = l.read_count();
            p.race_window(Window::CriticalSection);
            spin_for(p, cs);
            l.write_count(c + 1);
            if let Err(other) = l.base.unmark(cpu) {
                let v = Violation { lock: i, cpu, other, at: ViolationAt::Exit, irq_depth: 0 };
                obs.violation(&v);
                violation.get_or_insert(v);
            }
            self.sys.unlock(p, &l.mutex);
            p.set_phase(GuestPhase::Running, 0, 0);
            r.acquisitions += 1;
            r.elapsed_ns = self.clock.cycles_to_ns(p.cycles().saturating_sub(start));
            if let Some(v) = violation {
                r.violation = Some(v);
                r.stop = StopReason::Violation;
                break;
            }
            spin_for(p, think);
        }
        r.elapsed_ns = self.clock.cycles_to_ns(p.cycles().saturating_sub(start));
        r
    }
}

/// Busy-wait `cycles` (critical section or think time).
fn spin_for<P: Platform>(p: &P, cycles: u64) {
    let t = p.cycles();
    while p.cycles().wrapping_sub(t) < cycles {
        p.cpu_relax();
    }
}

/// Records which path took each mutex: a [`Platform`] wrapper would cost
/// every call, so the paths are counted from the trace hook instead (the
/// mutex sends [`pvlock_abi::TraceEvent::Acquired`] with the path).
pub fn path_index(path: AcquirePath) -> usize {
    path as usize
}

/// After the run, with every CPU done: each mutex free, no waiters, its
/// `wait_lock` free; returns the first mutex that is not, with its words.
pub fn check_quiescent(locks: &[MutexTortureLock], wait_lock: Variant) -> Result<(), (usize, u32, i32)> {
    for (i, l) in locks.iter().enumerate() {
        let m = &l.mutex;
        let owner = m.owner_word();
        let w = m.wait_lock.val.load(Ordering::Relaxed);
        let spin_free =
            if crate::torture::lock_word_must_be_zero(wait_lock) { w & 0xffff == 0 } else { w >> 16 == w & 0xffff };
        // Counting flavors end at 1 (free); 0 only if a waiter left it so
        // ("set it to 0 if there are no waiters left" then no unlock) - not
        // free. Owner-word flavors keep count at 1.
        if owner != 0 || !m.no_waiters() || !spin_free || m.count() != 1 {
            return Err((i, owner, m.count()));
        }
    }
    Ok(())
}

/// The plain counts, once every CPU is done.
pub fn counts(locks: &[MutexTortureLock]) -> impl Iterator<Item = u64> + '_ {
    locks.iter().map(|l| l.read_count())
}
