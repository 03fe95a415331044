//! Lock torture: every CPU takes random locks in a global order, checks
//! mutual exclusion on each acquisition, and counts; [`verify`] checks the
//! totals once every CPU has finished.
//!
//! One [`Torture`] value describes the run and is shared by all CPUs; each
//! CPU calls [`Torture::run`] once with its own [`Platform`]. The guest binary
//! does that on every vCPU, the host tests on threads with
//! [`crate::host::FutexPlatform`].
//!
//! # Checks on every acquisition
//! - **Owner mark.** Right after `lock()` returns the CPU swaps `cpu + 1` into
//!   the lock's `owner` field; a non-zero old value is a second CPU in the
//!   critical section, reported at once with both CPUs. Before `unlock()` it
//!   moves the field from `cpu + 1` back to 0 by compare-exchange; finding
//!   anything else is the same violation seen from the other side.
//! - **Lost updates.** The plain `count` is incremented by a non-atomic
//!   load ... critical-section delay ... store, so two CPUs inside at once lose
//!   an increment, and the final sum is short ([`verify`]).
//!
//! # Simulated interrupts and why they cannot deadlock
//! With `irq_prob > 0`, [`IrqPlatform`] runs a handler at the lock code's
//! slow-path spin points (`maybe_interrupt()`), as softirq, hardirq and NMI
//! would interrupt a CPU spinning for a lock. The handler takes and releases
//! one *irq lock* through the same [`LockSystem`], so the nested slow path
//! uses MCS nodes 1..3 (`lock_use_node2..4`) and its `pv_wait()` can consume
//! the kick meant for the interrupted waiter.
//!
//! The rule that makes this deadlock-free: the lock array holds the
//! `nr_locks` torture locks followed by [`IRQ_LOCKS_PER_DEPTH`] irq locks per
//! nesting depth `1..=irq_max_depth` ([`total_locks`]). Depth 0 (the
//! workload) only takes torture locks, in ascending index order; a handler
//! at depth `d` only takes a lock of set `d`, and holds it only for its short
//! critical section, during which it takes no other lock and so is never
//! interrupted. Hence a handler never waits for a lock its own CPU holds (the
//! contexts below it hold only torture locks or locks of sets `< d`), and the
//! holder of a set-`d` lock is always the innermost, running context of its
//! CPU, so it always makes progress. This is the discipline the kernel gets
//! from irq-safe locking (a lock taken in hardirq context is never taken with
//! hardirqs enabled), expressed as one lock set per depth.
//!
//! Nothing here allocates: the caller owns the locks, the latency histogram
//! and the per-lock counters.

use core::cell::{Cell, UnsafeCell};
use core::fmt;

use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use crate::system::{HashSlot, LockSystem, RawLock};
use crate::Platform;
use crate::WaitOn;
use pvlock_abi::{GuestPhase, LatencyHistogram, LockEvent, TortureParams, TraceEvent, Variant, Window};

/// Largest `TortureParams::nr_locks`.
pub const MAX_TORTURE_LOCKS: u32 = 1024;
/// Largest `TortureParams::nest` (locks held at once).
pub const MAX_NEST: u32 = 4;
/// Largest `TortureParams::irq_max_depth` (softirq, hardirq, NMI).
pub const MAX_IRQ_DEPTH: u32 = 3;
/// Irq locks per nesting depth. One lock per depth maximises contention
/// among handlers, which is what makes their slow paths queue (the native
/// qspinlock queues only its third contender).
pub const IRQ_LOCKS_PER_DEPTH: usize = 1;
/// Most irq locks a run can have.
pub const MAX_IRQ_LOCKS: usize = IRQ_LOCKS_PER_DEPTH * MAX_IRQ_DEPTH as usize;
/// Most locks a run can use ([`total_locks`]): size a static array by it.
pub const MAX_LOCKS: usize = MAX_TORTURE_LOCKS as usize + MAX_IRQ_LOCKS;

/// A torture lock: the lock word, the owner mark and the plain counter.
/// The VMM reads it by the offsets of [`pvlock_abi::boot::lock_layout`].
#[repr(C)]
pub struct TortureLock {
    /// The lock under test.
    pub raw: RawLock,
    /// Owning CPU + 1, 0 when free (the mutual-exclusion check).
    pub owner: AtomicU32,
    /// Incremented with a plain read-modify-write under the lock.
    pub count: UnsafeCell<u64>,
}

// SAFETY: `raw` and `owner` are atomics. `count` is only accessed (1) by a
// CPU holding `raw`, which the lock algorithm under test makes exclusive -
// a broken algorithm racing here is precisely what the torture detects, and
// the accesses are volatile so each is one real load or store - and (2)
// through `&mut TortureLock` once every CPU has finished.
unsafe impl Sync for TortureLock {}

impl TortureLock {
    /// A free lock with a zero count.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { raw: RawLock::new(), owner: AtomicU32::new(0), count: UnsafeCell::new(0) }
    }

    /// A free lock with a zero count (loom's atomics have no `const fn new`).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self { raw: RawLock::new(), owner: AtomicU32::new(0), count: UnsafeCell::new(0) }
    }

    /// The count, once nobody else can touch the lock.
    pub fn count_mut(&mut self) -> &mut u64 {
        self.count.get_mut()
    }

    /// Mark the lock as owned by `cpu`. `Err(other)` when another CPU's
    /// mark was there: two CPUs inside the critical section.
    ///
    /// The swap is atomic, so of two CPUs inside at once the later one
    /// always sees the earlier one's mark (or the earlier one sees the later
    /// one's mark at [`Self::unmark`]). AcqRel only orders the check with the
    /// count accesses around it; the lock itself provides the real ordering.
    pub fn mark(&self, cpu: u32) -> Result<(), Option<u32>> {
        match self.owner.swap(cpu + 1, Ordering::AcqRel) {
            0 => Ok(()),
            other => Err(Some(other - 1)),
        }
    }

    /// Clear `cpu`'s mark. `Err(other)` when the mark was overwritten by
    /// another CPU (`Some(cpu)`) or cleared by one (`None`). Pairs with
    /// [`Self::mark`]'s swap.
    pub fn unmark(&self, cpu: u32) -> Result<(), Option<u32>> {
        match self.owner.compare_exchange(cpu + 1, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(0) => Err(None),
            Err(other) => Err(Some(other - 1)),
        }
    }

    fn read_count(&self) -> u64 {
        // SAFETY: called only while holding `raw` (see the `Sync` impl) or
        // once every CPU is done (`check_quiescent`); the pointer comes from
        // our own `UnsafeCell` and is aligned.
        unsafe { core::ptr::read_volatile(self.count.get()) }
    }

    fn write_count(&self, v: u64) {
        // SAFETY: as in `read_count`.
        unsafe { core::ptr::write_volatile(self.count.get(), v) }
    }
}

#[cfg(not(loom))]
impl Default for TortureLock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{offset_of, size_of};
    use pvlock_abi::boot::lock_layout;
    assert!(offset_of!(TortureLock, raw) as u64 == lock_layout::WORD);
    assert!(size_of::<RawLock>() == 4);
    assert!(offset_of!(TortureLock, owner) as u64 == lock_layout::OWNER);
    assert!(offset_of!(TortureLock, count) as u64 == lock_layout::COUNT);
    assert!(size_of::<TortureLock>() == 16);
};

/// Number of locks a run with `params` needs: the torture locks, then
/// [`IRQ_LOCKS_PER_DEPTH`] per simulated interrupt depth.
pub const fn total_locks(params: &TortureParams) -> usize {
    let depth = if params.irq_prob == 0 { 0 } else { params.irq_max_depth as usize };
    params.nr_locks as usize + depth * IRQ_LOCKS_PER_DEPTH
}

/// Why a [`TortureParams`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// `nr_locks` is outside `1..=1024`.
    NrLocks(u32),
    /// `nest` is outside `1..=4` or above `nr_locks`.
    Nest(u32),
    /// `irq_max_depth` is above 3.
    IrqDepth(u32),
    /// The lock array is shorter than [`total_locks`].
    TooFewLocks { have: usize, need: usize },
    /// `tsc_khz` is zero.
    ZeroClock,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NrLocks(n) => write!(f, "nr_locks {n} is outside 1..={MAX_TORTURE_LOCKS}"),
            Self::Nest(n) => write!(f, "nest {n} is outside 1..={MAX_NEST} or above nr_locks"),
            Self::IrqDepth(n) => write!(f, "irq_max_depth {n} is above {MAX_IRQ_DEPTH}"),
            Self::TooFewLocks { have, need } => {
                write!(f, "{have} torture locks given, {need} needed")
            }
            Self::ZeroClock => write!(f, "tsc_khz is zero"),
        }
    }
}

/// Where an owner-mark check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationAt {
    /// Entering the critical section: the mark of `other` was already there.
    Enter,
    /// Leaving it: our mark had been overwritten (or cleared).
    Exit,
}

/// Two CPUs inside one critical section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Index of the lock in the run's lock array.
    pub lock: usize,
    /// The CPU that noticed.
    pub cpu: u32,
    /// The other CPU inside; `None` when it had already cleared the mark.
    pub other: Option<u32>,
    pub at: ViolationAt,
    /// Simulated interrupt depth of the noticing CPU (0 = workload).
    pub irq_depth: u32,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = match self.at {
            ViolationAt::Enter => "entering",
            ViolationAt::Exit => "leaving",
        };
        write!(f, "mutual exclusion violated on lock {}: cpu {} (irq depth {}) ", self.lock, self.cpu, self.irq_depth)?;
        match self.other {
            Some(o) => write!(f, "found cpu {o} inside while {at}"),
            None => write!(f, "found its owner mark cleared by another cpu while {at}"),
        }
    }
}

/// Why a CPU's run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    /// Not finished (the default of a fresh result).
    #[default]
    Running,
    /// `max_acquisitions` reached.
    MaxAcquisitions,
    /// The cycle deadline passed.
    Deadline,
    /// The stop flag was set.
    StopFlag,
    /// A mutual-exclusion violation was seen (see `violation`).
    Violation,
}

/// One CPU's outcome of [`Torture::run`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TortureResult {
    /// The CPU.
    pub cpu: u32,
    /// Outermost acquisitions completed (each takes `nest` torture locks).
    pub acquisitions: u64,
    /// Torture locks taken = increments of torture-lock counts.
    pub lock_acquisitions: u64,
    /// Irq locks taken by simulated handlers = increments of irq-lock counts.
    pub irq_acquisitions: u64,
    /// Simulated interrupt handlers run (= `irq_acquisitions`).
    pub sim_irqs: u64,
    /// Deepest simulated interrupt nesting reached.
    pub max_irq_depth: u32,
    /// Sum of the torture-lock waits (`lock()` call to acquired), ns.
    pub total_wait_ns: u64,
    /// Longest single torture-lock wait, ns (fairness).
    pub max_wait_ns: u64,
    /// Longest single irq-lock wait, ns.
    pub max_irq_wait_ns: u64,
    /// Wall time of the run, ns.
    pub elapsed_ns: u64,
    pub stop: StopReason,
    /// The first mutual-exclusion violation this CPU saw, if any.
    pub violation: Option<Violation>,
}

/// Callbacks from a running CPU. All default to nothing.
pub trait Observer {
    /// Two CPUs inside one critical section, reported at once by the CPU
    /// that noticed (the guest rings its `MutualExclusion` panic doorbell
    /// here and need not return). If it returns, the run finishes the
    /// current acquisition and stops with [`StopReason::Violation`].
    fn violation(&self, _v: &Violation) {}
    /// After every outermost acquisition (a heartbeat): `now_cycles` is
    /// when its last lock was acquired. Only `r.acquisitions` and the
    /// wait figures are current here; the irq counters are filled in when
    /// the run ends.
    fn progress(&self, _r: &TortureResult, _now_cycles: u64) {}
    /// The simulated interrupt depth changed.
    fn irq_depth(&self, _depth: u32) {}
}

/// An [`Observer`] that does nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Cycle/nanosecond conversion from the TSC frequency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub tsc_khz: u64,
}

impl Clock {
    /// `cycles_to_ns` as a multiplier: ns = (cycles * m) >> 32. The fast
    /// path's conversion without a 128-bit division per acquisition (tens
    /// of ns on x86-64; issue 20's bookkeeping budget).
    pub const fn ns_per_cycle_q32(self) -> u64 {
        ((1_000_000u128 << 32) / self.tsc_khz as u128) as u64
    }

    /// `cycles * m >> 32`, saturating (see [`Self::ns_per_cycle_q32`]).
    #[inline(always)]
    pub const fn cycles_to_ns_q32(cycles: u64, m: u64) -> u64 {
        let ns = (cycles as u128 * m as u128) >> 32;
        if ns > u64::MAX as u128 {
            u64::MAX
        } else {
            ns as u64
        }
    }

    pub const fn ns_to_cycles(self, ns: u64) -> u64 {
        (ns as u128 * self.tsc_khz as u128 / 1_000_000) as u64
    }
    pub const fn cycles_to_ns(self, cycles: u64) -> u64 {
        let ns = cycles as u128 * 1_000_000 / self.tsc_khz as u128;
        if ns > u64::MAX as u128 {
            u64::MAX
        } else {
            ns as u64
        }
    }
}

/// A lock-torture run, shared by all CPUs.
#[derive(Clone, Copy)]
pub struct Torture<'a> {
    sys: &'a LockSystem<'a>,
    locks: &'a [TortureLock],
    params: TortureParams,
    clock: Clock,
    stop: &'a AtomicU64,
    deadline: Option<u64>,
}

impl<'a> Torture<'a> {
    /// Check `params` against `locks` (at least [`total_locks`] of them).
    /// `stop` is polled between acquisitions: non-zero ends the run.
    pub fn new(
        sys: &'a LockSystem<'a>,
        locks: &'a [TortureLock],
        params: TortureParams,
        tsc_khz: u64,
        stop: &'a AtomicU64,
    ) -> Result<Self, ParamError> {
        if params.nr_locks == 0 || params.nr_locks > MAX_TORTURE_LOCKS {
            return Err(ParamError::NrLocks(params.nr_locks));
        }
        if params.nest == 0 || params.nest > MAX_NEST || params.nest > params.nr_locks {
            return Err(ParamError::Nest(params.nest));
        }
        if params.irq_max_depth > MAX_IRQ_DEPTH {
            return Err(ParamError::IrqDepth(params.irq_max_depth));
        }
        let need = total_locks(&params);
        if locks.len() < need {
            return Err(ParamError::TooFewLocks { have: locks.len(), need });
        }
        if tsc_khz == 0 {
            return Err(ParamError::ZeroClock);
        }
        Ok(Self { sys, locks, params, clock: Clock { tsc_khz }, stop, deadline: None })
    }

    /// Stop once `p.cycles()` reaches `deadline` (checked between
    /// acquisitions).
    pub fn with_deadline(mut self, deadline: u64) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn params(&self) -> &TortureParams {
        &self.params
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The locks in use: torture locks, then irq locks.
    pub fn locks(&self) -> &'a [TortureLock] {
        &self.locks[..total_locks(&self.params)]
    }

    /// Run the workload on the calling CPU until `max_acquisitions`, the
    /// deadline, the stop flag or a violation. Every torture-lock wait is
    /// recorded in `latency` (ns). `per_lock` is either empty or at least
    /// [`total_locks`] long; it then receives this CPU's count increments per
    /// lock (what [`verify`] compares lock by lock).
    pub fn run<P: Platform>(
        &self,
        p: &P,
        obs: &dyn Observer,
        latency: &mut LatencyHistogram,
        per_lock: &mut [u64],
    ) -> TortureResult {
        let n = self.params.nr_locks as usize;
        let nest = self.params.nest as usize;
        let per_lock = if per_lock.len() >= total_locks(&self.params) { per_lock } else { &mut [][..] };
        let cs = self.clock.ns_to_cycles(self.params.cs_ns as u64);
        let think = self.clock.ns_to_cycles(self.params.think_ns as u64);
        let irq = IrqPlatform::new(p, self, obs);
        let cpu = p.cpu();
        let mut r = TortureResult { cpu, ..TortureResult::default() };
        let ns_q32 = self.clock.ns_per_cycle_q32();
        let start = p.cycles();
        irq.set_phase(GuestPhase::Running, 0, 0);

        loop {
            if self.params.max_acquisitions != 0 && r.acquisitions >= self.params.max_acquisitions {
                r.stop = StopReason::MaxAcquisitions;
                break;
            }
            // Relaxed: a hint to stop; nothing is read on its account.
            if self.stop.load(Ordering::Relaxed) != 0 {
                r.stop = StopReason::StopFlag;
                break;
            }

            let (idx, k) = pick_locks(p, n, nest);
            let held = &idx[..k];
            let mut violation = None;
            // One clock read serves the deadline check and the first
            // lock's wait start (the pick above is done already).
            let mut t0 = p.cycles();
            if self.deadline.is_some_and(|d| t0 >= d) {
                r.stop = StopReason::Deadline;
                break;
            }
            let mut acquired_at = t0;

            // Take the locks in ascending index order (the global order).
            for (j, &i) in held.iter().enumerate() {
                let lock = &self.locks[i];
                if j > 0 {
                    t0 = p.cycles();
                }
                self.sys.lock(&irq, &lock.raw);
                acquired_at = p.cycles();
                let waited = Clock::cycles_to_ns_q32(acquired_at.saturating_sub(t0), ns_q32);
                latency.record(waited);
                r.total_wait_ns = r.total_wait_ns.saturating_add(waited);
                r.max_wait_ns = r.max_wait_ns.max(waited);
                if let Err(other) = lock.mark(cpu) {
                    let v = Violation { lock: i, cpu, other, at: ViolationAt::Enter, irq_depth: 0 };
                    obs.violation(&v);
                    violation.get_or_insert(v);
                }
                r.lock_acquisitions += 1;
                if let Some(c) = per_lock.get_mut(i) {
                    *c += 1;
                }
            }

            // The critical section: load every count, dwell, store them
            // back incremented. A second CPU inside loses updates.
            let inner = &self.locks[held[k - 1]];
            irq.set_phase(GuestPhase::Holding, lock_addr(inner), 0);
            let mut counts = [0u64; MAX_NEST as usize];
            for (c, &i) in counts.iter_mut().zip(held) {
                *c = self.locks[i].read_count();
            }
            irq.race_window(Window::CriticalSection);
            spin_for(&irq, cs);
            for (c, &i) in counts.iter().zip(held) {
                self.locks[i].write_count(c + 1);
            }

            for &i in held.iter().rev() {
                let lock = &self.locks[i];
                if let Err(other) = lock.unmark(cpu) {
                    let v = Violation { lock: i, cpu, other, at: ViolationAt::Exit, irq_depth: 0 };
                    obs.violation(&v);
                    violation.get_or_insert(v);
                }
                self.sys.unlock(&irq, &lock.raw);
            }
            irq.set_phase(GuestPhase::Running, 0, 0);

            r.acquisitions += 1;
            // The heartbeat is the last acquisition's time (at most a
            // critical section old): no extra clock read. The irq
            // counters are folded into `r` once, after the loop.
            obs.progress(&r, acquired_at);
            if let Some(v) = violation.or(irq.violation.get()) {
                r.violation = Some(v);
                r.stop = StopReason::Violation;
                break;
            }
            spin_for(&irq, think);
        }

        irq.fill(&mut r);
        if r.violation.is_none() {
            r.violation = irq.violation.get();
        }
        for (c, total) in irq.counts.iter().zip(per_lock.iter_mut().skip(n).take(irq.irq_locks.len())) {
            *total += c.get();
        }
        r.elapsed_ns = self.clock.cycles_to_ns(p.cycles().saturating_sub(start));
        irq.set_phase(GuestPhase::Done, 0, 0);
        r
    }
}

/// The dedicated microbenchmark the torture's bookkeeping is measured
/// against (`pvlock bench`, issue 20): the same critical section and think
/// time around `lock` (or around nothing), with no owner mark, counter,
/// latency timestamp, random draw or phase update. Runs until `stop` or
/// `deadline` (in `p.cycles()`), checked once per iteration as the torture
/// does. Returns the iterations and the cycles they took.
pub fn lock_loop<P: Platform>(
    p: &P,
    lock: Option<(&LockSystem<'_>, &RawLock)>,
    clock: Clock,
    params: &TortureParams,
    deadline: u64,
    stop: &AtomicU64,
) -> (u64, u64) {
    let cs = clock.ns_to_cycles(params.cs_ns as u64);
    let think = clock.ns_to_cycles(params.think_ns as u64);
    let start = p.cycles();
    let mut n = 0u64;
    // Relaxed: a hint to stop, as in `Torture::run`.
    while stop.load(Ordering::Relaxed) == 0 && p.cycles() < deadline {
        if let Some((sys, l)) = lock {
            sys.lock(p, l);
            spin_for(p, cs);
            sys.unlock(p, l);
        } else {
            spin_for(p, cs);
        }
        n += 1;
        spin_for(p, think);
    }
    (n, p.cycles().wrapping_sub(start))
}

fn lock_addr(l: &TortureLock) -> usize {
    &l.raw as *const RawLock as usize
}

/// Busy-wait `cycles` cycles.
fn spin_for<P: Platform>(p: &P, cycles: u64) {
    if cycles == 0 {
        return;
    }
    let t0 = p.cycles();
    while p.cycles().wrapping_sub(t0) < cycles {
        p.cpu_relax();
    }
}

/// A random index in `0..n` (multiply-shift; the bias is below 2^-22).
fn random_below<P: Platform>(p: &P, n: usize) -> usize {
    (((p.random() >> 32) * n as u64) >> 32) as usize
}

/// `nest` distinct random locks out of `0..n`, sorted ascending.
fn pick_locks<P: Platform>(p: &P, n: usize, nest: usize) -> ([usize; MAX_NEST as usize], usize) {
    let mut idx = [0usize; MAX_NEST as usize];
    if nest >= n {
        // Every lock (nest <= n is checked in `Torture::new`).
        for (i, slot) in idx.iter_mut().enumerate().take(n) {
            *slot = i;
        }
        return (idx, n);
    }
    let mut k = 0;
    while k < nest {
        let i = random_below(p, n);
        if !idx[..k].contains(&i) {
            idx[k] = i;
            k += 1;
        }
    }
    idx[..k].sort_unstable();
    (idx, k)
}

/// A [`Platform`] that runs simulated interrupt handlers at the lock code's
/// spin points and delegates everything else to the CPU's platform. See the
/// module documentation for the lock-set rule that keeps it deadlock-free.
pub struct IrqPlatform<'a, P: Platform> {
    inner: &'a P,
    sys: &'a LockSystem<'a>,
    /// Set `d` (depth `d`, 1-based) is `irq_locks[(d-1)*K .. d*K]`.
    irq_locks: &'a [TortureLock],
    /// Index of `irq_locks[0]` in the run's lock array (for reports).
    irq_base: usize,
    prob: u32,
    max_depth: u32,
    cs_cycles: u64,
    clock: Clock,
    obs: &'a dyn Observer,
    depth: Cell<u32>,
    /// The last phase set, restored when a handler returns.
    phase: Cell<(GuestPhase, usize, usize)>,
    counts: [Cell<u64>; MAX_IRQ_LOCKS],
    handlers: Cell<u64>,
    max_depth_seen: Cell<u32>,
    max_wait_ns: Cell<u64>,
    violation: Cell<Option<Violation>>,
}

impl<'a, P: Platform> IrqPlatform<'a, P> {
    /// The handler platform for one CPU of `torture`: irq locks, depth,
    /// probability (`irq_prob / 2^32` per spin point) and critical-section
    /// length (`cs_ns`, the same as the workload's) come from its params.
    pub fn new(inner: &'a P, torture: &Torture<'a>, obs: &'a dyn Observer) -> Self {
        let params = &torture.params;
        let base = params.nr_locks as usize;
        let irq_locks = &torture.locks[base..total_locks(params)];
        let usable = (irq_locks.len() / IRQ_LOCKS_PER_DEPTH) as u32;
        Self {
            inner,
            sys: torture.sys,
            irq_locks,
            irq_base: base,
            prob: params.irq_prob,
            max_depth: params.irq_max_depth.min(MAX_IRQ_DEPTH).min(usable),
            cs_cycles: torture.clock.ns_to_cycles(params.cs_ns as u64),
            clock: torture.clock,
            obs,
            depth: Cell::new(0),
            phase: Cell::new((GuestPhase::Running, 0, 0)),
            counts: Default::default(),
            handlers: Cell::new(0),
            max_depth_seen: Cell::new(0),
            max_wait_ns: Cell::new(0),
            violation: Cell::new(None),
        }
    }

    /// Current simulated interrupt depth (0 = not in a handler).
    pub fn depth(&self) -> u32 {
        self.depth.get()
    }

    /// Handlers run so far.
    pub fn handlers(&self) -> u64 {
        self.handlers.get()
    }

    /// The first violation a handler saw.
    pub fn violation(&self) -> Option<Violation> {
        self.violation.get()
    }

    /// This CPU's acquisitions of irq lock `i` (index into `irq_locks`).
    pub fn irq_lock_count(&self, i: usize) -> u64 {
        self.counts.get(i).map_or(0, Cell::get)
    }

    fn fill(&self, r: &mut TortureResult) {
        r.irq_acquisitions = self.handlers.get();
        r.sim_irqs = self.handlers.get();
        r.max_irq_depth = self.max_depth_seen.get();
        r.max_irq_wait_ns = self.max_wait_ns.get();
    }

    /// One simulated interrupt at nesting depth `depth` (1-based).
    fn handler(&self, depth: u32) {
        let p = self.inner;
        let cpu = p.cpu();
        let saved = self.phase.get();
        self.depth.set(depth);
        self.obs.irq_depth(depth);
        self.max_depth_seen.set(self.max_depth_seen.get().max(depth));
        self.handlers.set(self.handlers.get() + 1);
        p.event(LockEvent::SimIrqs, 1);

        let set = (depth as usize - 1) * IRQ_LOCKS_PER_DEPTH;
        let i = set + random_below(p, IRQ_LOCKS_PER_DEPTH);
        let lock = &self.irq_locks[i];
        let index = self.irq_base + i;
        p.trace(TraceEvent::IrqEnter, lock_addr(lock), depth as u16, index as u32);

        let t0 = p.cycles();
        self.sys.lock(self, &lock.raw);
        let waited = self.clock.cycles_to_ns(p.cycles().saturating_sub(t0));
        self.max_wait_ns.set(self.max_wait_ns.get().max(waited));
        self.set_phase(GuestPhase::Holding, lock_addr(lock), 0);
        if let Err(other) = lock.mark(cpu) {
            self.report(Violation { lock: index, cpu, other, at: ViolationAt::Enter, irq_depth: depth });
        }
        let c = lock.read_count();
        spin_for(p, self.cs_cycles);
        lock.write_count(c + 1);
        self.counts[i].set(self.counts[i].get() + 1);
        if let Err(other) = lock.unmark(cpu) {
            self.report(Violation { lock: index, cpu, other, at: ViolationAt::Exit, irq_depth: depth });
        }
        self.sys.unlock(self, &lock.raw);

        p.trace(TraceEvent::IrqExit, lock_addr(lock), depth as u16, index as u32);
        self.depth.set(depth - 1);
        self.obs.irq_depth(depth - 1);
        let (phase, l, node) = saved;
        self.set_phase(phase, l, node);
    }

    fn report(&self, v: Violation) {
        self.obs.violation(&v);
        if self.violation.get().is_none() {
            self.violation.set(Some(v));
        }
    }
}

impl<P: Platform> Platform for IrqPlatform<'_, P> {
    fn cpu(&self) -> u32 {
        self.inner.cpu()
    }
    fn nr_cpus(&self) -> u32 {
        self.inner.nr_cpus()
    }
    fn pv_wait(&self, on: WaitOn<'_>, val: u8) {
        // `kvm_wait()` (arch/x86/kernel/kvm.c, since the KVM PV qspinlock
        // support of v4.2) starts with `if (in_nmi()) return;`: a waiter in
        // NMI context never halts, it goes back to spinning. Our innermost
        // simulated level is the NMI (softirq, hardirq, NMI).
        if self.depth.get() == MAX_IRQ_DEPTH {
            return;
        }
        self.inner.pv_wait(on, val)
    }
    fn pv_kick(&self, cpu: u32) {
        self.inner.pv_kick(cpu)
    }
    fn vcpu_is_preempted(&self, cpu: u32) -> bool {
        self.inner.vcpu_is_preempted(cpu)
    }
    fn cycles(&self) -> u64 {
        self.inner.cycles()
    }
    fn ns_per_kcycle(&self) -> u64 {
        self.inner.ns_per_kcycle()
    }
    fn random(&self) -> u64 {
        self.inner.random()
    }
    fn cpu_relax(&self) {
        self.inner.cpu_relax()
    }
    fn race_window(&self, w: Window) {
        self.inner.race_window(w)
    }
    fn maybe_interrupt(&self) {
        self.inner.maybe_interrupt();
        let depth = self.depth.get();
        if self.prob == 0 || depth >= self.max_depth {
            return;
        }
        if ((self.inner.random() >> 32) as u32) < self.prob {
            self.handler(depth + 1);
        }
    }
    fn event(&self, ev: LockEvent, n: u64) {
        self.inner.event(ev, n)
    }
    fn event_max(&self, ev: LockEvent, v: u64) {
        self.inner.event_max(ev, v)
    }
    fn set_phase(&self, phase: GuestPhase, lock: usize, node: usize) {
        self.phase.set((phase, lock, node));
        self.inner.set_phase(phase, lock, node)
    }
    fn trace(&self, ev: TraceEvent, lock: usize, arg: u16, value: u32) {
        self.inner.trace(ev, lock, arg, value)
    }
    fn bug(&self, msg: fmt::Arguments<'_>) -> ! {
        self.inner.bug(msg)
    }
}

/// Most failures a [`VerifyReport`] keeps; later ones are only counted.
pub const MAX_FAILURES: usize = 16;

/// One thing [`verify`] found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A CPU saw two owners during the run.
    MutualExclusion(Violation),
    /// The counts of a lock set do not add up to the acquisitions.
    TotalCount { set: LockSet, expected: u64, actual: u64 },
    /// One lock's count differs from the CPUs' increments of it.
    LockCount { lock: usize, expected: u64, actual: u64 },
    /// A lock's owner mark is still set: CPU `cpu` never left.
    OwnerLeft { lock: usize, cpu: u32 },
    /// A qspinlock-family lock word is not 0 (held, pending or a queue).
    LockWordNotFree { lock: usize, val: u32 },
    /// PV hash entries left in the table after every lock was released.
    StaleHash {
        entries: usize,
        /// Address of the first stale entry's lock (0 if unknown).
        first_addr: u64,
        /// Its index in the run's lock array, if it is one of ours.
        first_lock: Option<usize>,
    },
    /// A per-CPU per-lock array is shorter than the lock array.
    PerLockTooShort { index: usize, len: usize, need: usize },
}

/// The torture locks or the irq locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockSet {
    Torture,
    Irq,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MutualExclusion(v) => write!(f, "{v}"),
            Self::TotalCount { set, expected, actual } => {
                let set = match set {
                    LockSet::Torture => "torture",
                    LockSet::Irq => "irq",
                };
                write!(f, "{set} lock counts sum to {actual}, {expected} acquisitions made (lost or extra updates)")
            }
            Self::LockCount { lock, expected, actual } => {
                write!(f, "lock {lock}: count {actual}, {expected} increments made")
            }
            Self::OwnerLeft { lock, cpu } => {
                write!(f, "lock {lock}: owner mark of cpu {cpu} left set")
            }
            Self::LockWordNotFree { lock, val } => {
                write!(f, "lock {lock}: lock word {val:#010x} after the run, not 0")
            }
            Self::StaleHash { entries, first_addr, first_lock } => {
                write!(f, "{entries} stale PV hash entries after the run")?;
                match first_lock {
                    Some(l) => write!(f, " (the first for lock {l} at {first_addr:#x})"),
                    None if first_addr != 0 => write!(f, " (the first for an unknown lock at {first_addr:#x})"),
                    None => Ok(()),
                }
            }
            Self::PerLockTooShort { index, len, need } => {
                write!(f, "per-lock array {index} has {len} entries, {need} needed")
            }
        }
    }
}

/// What [`verify`] found: up to [`MAX_FAILURES`] failures, and how many more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    failures: [Option<Failure>; MAX_FAILURES],
    len: usize,
    /// Failures found beyond the first [`MAX_FAILURES`].
    pub dropped: usize,
    /// Sum of all lock counts.
    pub total_count: u64,
    /// Sum of all CPUs' count increments (torture and irq locks).
    pub total_acquisitions: u64,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.len == 0
    }
    /// Failures kept (the first [`MAX_FAILURES`]).
    pub fn failures(&self) -> impl Iterator<Item = &Failure> {
        self.failures[..self.len].iter().flatten()
    }
    /// Number of failures, kept or dropped.
    pub fn count(&self) -> usize {
        self.len + self.dropped
    }
    /// Whether any failure matches `f`.
    pub fn any(&self, f: impl Fn(&Failure) -> bool) -> bool {
        self.failures().any(f)
    }
    fn push(&mut self, f: Failure) {
        if self.len < MAX_FAILURES {
            self.failures[self.len] = Some(f);
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return write!(f, "ok: {} acquisitions, counts match", self.total_acquisitions);
        }
        for fail in self.failures() {
            writeln!(f, "{fail}")?;
        }
        if self.dropped > 0 {
            writeln!(f, "... and {} more", self.dropped)?;
        }
        Ok(())
    }
}

/// Check the end state of a run once every CPU has finished (`&mut` proves
/// it): each CPU's violation, the torture and irq count totals against
/// `results`, each lock's count against the sum of `per_lock` (one array
/// per CPU, as filled by [`Torture::run`]; pass `&[]` to skip), no owner
/// mark left, every qspinlock-family lock word 0, and no PV hash entry left
/// (`sys.hash_in_use()`).
///
/// `locks` is the run's lock array (torture locks, then irq locks: exactly
/// [`total_locks`] long, or longer with unused locks at zero).
pub fn verify(
    sys: &LockSystem<'_>,
    locks: &mut [TortureLock],
    params: &TortureParams,
    results: &[TortureResult],
    per_lock: &[&[u64]],
) -> VerifyReport {
    // SAFETY: `&mut` excludes every other access to the locks.
    unsafe { verify_quiescent(sys, locks, params, results, per_lock) }
}

/// [`verify`] through a shared reference, for the guest, whose lock array is
/// a static every vCPU shares.
///
/// # Safety
/// No CPU may touch `locks` during the call, and every CPU's last write to
/// them must happen before it (e.g. each vCPU finished [`Torture::run`],
/// then passed an end barrier that the caller passed too, with release and
/// acquire ordering). Otherwise reading the plain counts is a data race.
pub unsafe fn verify_quiescent(
    sys: &LockSystem<'_>,
    locks: &[TortureLock],
    params: &TortureParams,
    results: &[TortureResult],
    per_lock: &[&[u64]],
) -> VerifyReport {
    // SAFETY: forwarded from our caller.
    unsafe { check_quiescent(locks, params, results, per_lock, SystemFacts::of(sys)) }
}

/// Whether a free lock of `variant` has an all-zero word (not so for the
/// ticket lock, whose head and tail keep counting).
pub fn lock_word_must_be_zero(variant: Variant) -> bool {
    variant == Variant::Qspinlock || variant.is_pv()
}

/// What [`verify`] needs to know about the lock system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemFacts {
    /// Free lock words must be 0 ([`lock_word_must_be_zero`]).
    pub word_must_be_zero: bool,
    /// PV hash entries in use.
    pub hash_in_use: usize,
    /// Lock address of the first entry in use (0 if none).
    pub first_hashed_lock: u64,
}

impl SystemFacts {
    pub fn of(sys: &LockSystem<'_>) -> Self {
        let first = sys.hash_table().iter().map(HashSlot::lock_addr).find(|&a| a != 0);
        Self {
            word_must_be_zero: lock_word_must_be_zero(sys.config().variant),
            hash_in_use: sys.hash_in_use(),
            first_hashed_lock: first.unwrap_or(0),
        }
    }
}

/// [`verify`] with the lock-system facts passed in.
pub fn check_end_state(
    locks: &mut [TortureLock],
    params: &TortureParams,
    results: &[TortureResult],
    per_lock: &[&[u64]],
    facts: SystemFacts,
) -> VerifyReport {
    // SAFETY: `&mut` excludes every other access to the locks.
    unsafe { check_quiescent(locks, params, results, per_lock, facts) }
}

/// A lock's end state as recorded outside the run: what the VMM read back
/// from guest memory (the torture lock's count and owner mark at the
/// offsets of [`pvlock_abi::boot::lock_layout`], and its address).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordedLock {
    /// The lock's address in the run (what PV hash entries name).
    pub addr: u64,
    /// Its plain counter.
    pub count: u64,
    /// Owning CPU + 1, 0 when free.
    pub owner: u32,
    /// Its lock word, when it was read (`None`: the word is not checked).
    pub word: Option<u32>,
}

/// [`verify`] over a run's recorded end state: the harness judges a VMM
/// run with the same checks a host-thread run gets. `results` need only
/// each CPU's `lock_acquisitions` and `irq_acquisitions` (and `violation`,
/// if one was recorded); `facts.word_must_be_zero` applies only to locks
/// whose word was read.
pub fn check_recorded(
    locks: &[RecordedLock],
    params: &TortureParams,
    results: &[TortureResult],
    facts: SystemFacts,
) -> VerifyReport {
    // SAFETY: recorded locks are plain values; nothing else can touch them.
    unsafe { check_quiescent(locks, params, results, &[], facts) }
}

/// The end state of one lock, as [`check_quiescent`] reads it.
trait EndState {
    /// # Safety
    /// As [`verify_quiescent`] (no CPU touches the lock any more).
    unsafe fn count(&self) -> u64;
    fn owner(&self) -> u32;
    fn word(&self) -> Option<u32>;
    fn addr(&self) -> u64;
}

impl EndState for TortureLock {
    unsafe fn count(&self) -> u64 {
        self.read_count()
    }
    fn owner(&self) -> u32 {
        self.owner.load(Ordering::Relaxed)
    }
    fn word(&self) -> Option<u32> {
        Some(self.raw.val.load(Ordering::Relaxed))
    }
    fn addr(&self) -> u64 {
        self.raw.addr() as u64
    }
}

impl EndState for RecordedLock {
    unsafe fn count(&self) -> u64 {
        self.count
    }
    fn owner(&self) -> u32 {
        self.owner
    }
    fn word(&self) -> Option<u32> {
        self.word
    }
    fn addr(&self) -> u64 {
        self.addr
    }
}

/// # Safety
/// As [`verify_quiescent`].
unsafe fn check_quiescent<L: EndState>(
    locks: &[L],
    params: &TortureParams,
    results: &[TortureResult],
    per_lock: &[&[u64]],
    facts: SystemFacts,
) -> VerifyReport {
    let mut rep = VerifyReport::default();
    let n = (params.nr_locks as usize).min(locks.len());

    for v in results.iter().filter_map(|r| r.violation) {
        rep.push(Failure::MutualExclusion(v));
    }

    let torture_expected: u64 = results.iter().map(|r| r.lock_acquisitions).sum();
    let irq_expected: u64 = results.iter().map(|r| r.irq_acquisitions).sum();
    let mut torture_actual = 0u64;
    let mut irq_actual = 0u64;
    for (i, l) in locks.iter().enumerate() {
        // SAFETY: forwarded from our caller.
        let c = unsafe { l.count() };
        if i < n {
            torture_actual = torture_actual.wrapping_add(c);
        } else {
            irq_actual = irq_actual.wrapping_add(c);
        }
    }
    rep.total_count = torture_actual.wrapping_add(irq_actual);
    rep.total_acquisitions = torture_expected + irq_expected;
    if torture_actual != torture_expected {
        rep.push(Failure::TotalCount { set: LockSet::Torture, expected: torture_expected, actual: torture_actual });
    }
    if irq_actual != irq_expected {
        rep.push(Failure::TotalCount { set: LockSet::Irq, expected: irq_expected, actual: irq_actual });
    }

    let mut per_lock_ok = true;
    for (index, a) in per_lock.iter().enumerate() {
        if a.len() < locks.len() {
            rep.push(Failure::PerLockTooShort { index, len: a.len(), need: locks.len() });
            per_lock_ok = false;
        }
    }

    for (i, l) in locks.iter().enumerate() {
        if per_lock_ok && !per_lock.is_empty() {
            let expected: u64 = per_lock.iter().map(|a| a[i]).sum();
            // SAFETY: forwarded from our caller.
            let actual = unsafe { l.count() };
            if actual != expected {
                rep.push(Failure::LockCount { lock: i, expected, actual });
            }
        }
        let owner = l.owner();
        if owner != 0 {
            rep.push(Failure::OwnerLeft { lock: i, cpu: owner - 1 });
        }
        if let Some(val) = l.word().filter(|&v| facts.word_must_be_zero && v != 0) {
            rep.push(Failure::LockWordNotFree { lock: i, val });
        }
    }

    if facts.hash_in_use != 0 {
        let addr = facts.first_hashed_lock;
        rep.push(Failure::StaleHash {
            entries: facts.hash_in_use,
            first_addr: addr,
            first_lock: locks.iter().position(|l| l.addr() == addr && addr != 0),
        });
    }
    rep
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::system::{HashSlot, LockConfig, PerCpuNodes};
    use std::cell::RefCell;
    use std::vec::Vec;

    /// One CPU that never has to wait: no contention in these tests.
    struct OneCpu {
        cpu: u32,
        t: Cell<u64>,
        rng: Cell<u64>,
        events: RefCell<[u64; pvlock_abi::NR_LOCK_EVENTS]>,
        traces: RefCell<Vec<(TraceEvent, u16, u32)>>,
        phases: RefCell<Vec<GuestPhase>>,
    }

    impl OneCpu {
        fn new(cpu: u32) -> Self {
            Self {
                cpu,
                t: Cell::new(0),
                rng: Cell::new(42),
                events: RefCell::new([0; pvlock_abi::NR_LOCK_EVENTS]),
                traces: RefCell::new(Vec::new()),
                phases: RefCell::new(Vec::new()),
            }
        }
        fn event_count(&self, ev: LockEvent) -> u64 {
            self.events.borrow()[ev.index()]
        }
    }

    impl Platform for OneCpu {
        fn cpu(&self) -> u32 {
            self.cpu
        }
        fn nr_cpus(&self) -> u32 {
            self.cpu + 1
        }
        fn pv_wait(&self, _on: WaitOn<'_>, _val: u8) {}
        fn pv_kick(&self, _cpu: u32) {}
        fn vcpu_is_preempted(&self, _cpu: u32) -> bool {
            false
        }
        fn cycles(&self) -> u64 {
            // Every read advances the clock by 10 "ns".
            self.t.set(self.t.get() + 10);
            self.t.get()
        }
        fn random(&self) -> u64 {
            let mut x = self.rng.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.rng.set(x);
            x
        }
        fn cpu_relax(&self) {}
        fn race_window(&self, _w: Window) {}
        fn event(&self, ev: LockEvent, n: u64) {
            self.events.borrow_mut()[ev.index()] += n;
        }
        fn event_max(&self, ev: LockEvent, v: u64) {
            let mut e = self.events.borrow_mut();
            e[ev.index()] = e[ev.index()].max(v);
        }
        fn set_phase(&self, phase: GuestPhase, _lock: usize, _node: usize) {
            self.phases.borrow_mut().push(phase);
        }
        fn trace(&self, ev: TraceEvent, _lock: usize, arg: u16, value: u32) {
            self.traces.borrow_mut().push((ev, arg, value));
        }
        fn bug(&self, msg: fmt::Arguments<'_>) -> ! {
            panic!("BUG: {msg}")
        }
    }

    #[derive(Default)]
    struct Recorder {
        violations: RefCell<Vec<Violation>>,
        progress: Cell<u64>,
    }

    impl Observer for Recorder {
        fn violation(&self, v: &Violation) {
            self.violations.borrow_mut().push(*v);
        }
        fn progress(&self, r: &TortureResult, _now: u64) {
            self.progress.set(r.acquisitions);
        }
    }

    fn params(nr_locks: u32, nest: u32) -> TortureParams {
        TortureParams { nr_locks, nest, cs_ns: 30, think_ns: 20, max_acquisitions: 50, ..TortureParams::default() }
    }

    fn locks(n: usize) -> Vec<TortureLock> {
        (0..n).map(|_| TortureLock::new()).collect()
    }

    fn set_count(l: &mut TortureLock, c: u64) {
        *l.count_mut() = c;
    }

    fn result(cpu: u32, lock_acquisitions: u64, irq_acquisitions: u64) -> TortureResult {
        TortureResult {
            cpu,
            acquisitions: lock_acquisitions,
            lock_acquisitions,
            irq_acquisitions,
            ..Default::default()
        }
    }

    /// Three torture locks and (irq depth 2) two irq locks, counts that
    /// match two CPUs' results exactly.
    fn consistent() -> (Vec<TortureLock>, TortureParams, Vec<TortureResult>, Vec<Vec<u64>>) {
        let p = TortureParams { irq_prob: 1, irq_max_depth: 2, ..params(3, 1) };
        assert_eq!(total_locks(&p), 5);
        let mut l = locks(5);
        let per_cpu = vec![vec![3, 0, 2, 1, 0], vec![1, 4, 0, 2, 5]];
        for (i, lock) in l.iter_mut().enumerate() {
            set_count(lock, per_cpu[0][i] + per_cpu[1][i]);
        }
        (l, p, vec![result(0, 5, 1), result(1, 5, 7)], per_cpu)
    }

    /// A clean qspinlock-family system.
    const Z: SystemFacts = SystemFacts { word_must_be_zero: true, hash_in_use: 0, first_hashed_lock: 0 };

    fn refs(v: &[Vec<u64>]) -> Vec<&[u64]> {
        v.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn verify_accepts_a_consistent_end_state() {
        let (mut l, p, r, pl) = consistent();
        let rep = check_end_state(&mut l, &p, &r, &refs(&pl), Z);
        assert!(rep.is_ok(), "{rep}");
        assert_eq!(rep.total_count, 18);
        assert_eq!(rep.total_acquisitions, 18);
        // Without per-lock arrays too.
        assert!(check_end_state(&mut l, &p, &r, &[], Z).is_ok());
    }

    #[test]
    fn verify_catches_a_lost_update() {
        let (mut l, p, r, pl) = consistent();
        set_count(&mut l[1], 3); // 4 increments made, one lost
        let rep = check_end_state(&mut l, &p, &r, &refs(&pl), Z);
        assert!(rep.any(|f| *f == Failure::TotalCount { set: LockSet::Torture, expected: 10, actual: 9 }), "{rep}");
        assert!(rep.any(|f| *f == Failure::LockCount { lock: 1, expected: 4, actual: 3 }), "{rep}");
        assert_eq!(rep.count(), 2, "{rep}");
        // The totals alone catch it without per-lock arrays.
        let rep = check_end_state(&mut l, &p, &r, &[], Z);
        assert_eq!(rep.count(), 1, "{rep}");
    }

    #[test]
    fn verify_catches_an_extra_update_and_irq_lock_counts() {
        let (mut l, p, r, pl) = consistent();
        set_count(&mut l[4], 6);
        let rep = check_end_state(&mut l, &p, &r, &refs(&pl), Z);
        assert!(rep.any(|f| *f == Failure::TotalCount { set: LockSet::Irq, expected: 8, actual: 9 }), "{rep}");
        assert!(rep.any(|f| *f == Failure::LockCount { lock: 4, expected: 5, actual: 6 }), "{rep}");
    }

    #[test]
    fn verify_checks_torture_and_irq_sets_separately() {
        // Grand total right, but one increment moved from a torture lock
        // to an irq lock.
        let (mut l, p, r, _) = consistent();
        set_count(&mut l[0], 3);
        set_count(&mut l[3], 4);
        let rep = check_end_state(&mut l, &p, &r, &[], Z);
        assert_eq!(rep.total_count, rep.total_acquisitions);
        assert!(rep.any(|f| matches!(f, Failure::TotalCount { set: LockSet::Torture, .. })), "{rep}");
        assert!(rep.any(|f| matches!(f, Failure::TotalCount { set: LockSet::Irq, .. })), "{rep}");
    }

    #[test]
    fn verify_per_lock_catches_compensating_errors() {
        // Totals right, but lock 0 got one increment too many and lock 2
        // one too few: only the per-lock comparison sees it.
        let (mut l, p, r, pl) = consistent();
        set_count(&mut l[0], 5);
        set_count(&mut l[2], 1);
        assert_eq!(check_end_state(&mut l, &p, &r, &[], Z).count(), 0);
        let rep = check_end_state(&mut l, &p, &r, &refs(&pl), Z);
        assert!(rep.any(|f| *f == Failure::LockCount { lock: 0, expected: 4, actual: 5 }), "{rep}");
        assert!(rep.any(|f| *f == Failure::LockCount { lock: 2, expected: 2, actual: 1 }), "{rep}");
        assert_eq!(rep.count(), 2, "{rep}");
    }

    #[test]
    fn verify_rejects_short_per_lock_arrays() {
        let (mut l, p, r, mut pl) = consistent();
        pl[1].truncate(3);
        let rep = check_end_state(&mut l, &p, &r, &refs(&pl), Z);
        assert_eq!(
            rep.failures().copied().collect::<Vec<_>>(),
            [Failure::PerLockTooShort { index: 1, len: 3, need: 5 }]
        );
    }

    #[test]
    fn verify_catches_a_left_over_owner() {
        let (mut l, p, r, pl) = consistent();
        l[2].owner.store(7 + 1, Ordering::Relaxed);
        l[4].owner.store(1, Ordering::Relaxed);
        let rep = check_end_state(&mut l, &p, &r, &refs(&pl), Z);
        let got: Vec<_> = rep.failures().copied().collect();
        assert_eq!(got, [Failure::OwnerLeft { lock: 2, cpu: 7 }, Failure::OwnerLeft { lock: 4, cpu: 0 }], "{rep}");
    }

    #[test]
    fn verify_catches_a_stale_hash_entry() {
        let (mut l, p, r, pl) = consistent();
        let addr = l[2].raw.addr() as u64;
        let facts = SystemFacts { hash_in_use: 1, first_hashed_lock: addr, ..Z };
        let rep = check_end_state(&mut l, &p, &r, &refs(&pl), facts);
        let got: Vec<_> = rep.failures().copied().collect();
        let want = Failure::StaleHash { entries: 1, first_addr: addr, first_lock: Some(2) };
        assert_eq!(got, [want], "{rep}");
        assert!(std::format!("{rep}").contains("1 stale PV hash entries after the run (the first for lock 2"), "{rep}");
        // An entry for a lock that is not ours.
        let facts = SystemFacts { hash_in_use: 3, first_hashed_lock: 0x1000, ..Z };
        let rep = check_end_state(&mut l, &p, &r, &refs(&pl), facts);
        assert!(rep.any(|f| *f == Failure::StaleHash { entries: 3, first_addr: 0x1000, first_lock: None }), "{rep}");
    }

    /// A VMM run's recorded end state goes through the same checks.
    #[test]
    fn recorded_end_states_are_judged_alike() {
        let (l, p, r, _) = consistent();
        let rec = |l: &[TortureLock]| -> Vec<RecordedLock> {
            l.iter()
                .enumerate()
                .map(|(i, x)| RecordedLock {
                    addr: 0x10_0000 + 64 * i as u64,
                    count: x.read_count(),
                    owner: x.owner.load(Ordering::Relaxed),
                    word: None,
                })
                .collect()
        };
        let mut locks = rec(&l);
        assert!(check_recorded(&locks, &p, &r, Z).is_ok());
        // A lost update in the irq set, an owner left on lock 0, a stale
        // entry for lock 4, and a word that is not read (so not checked).
        locks[3].count -= 1;
        locks[0].owner = 2;
        let facts = SystemFacts { hash_in_use: 1, first_hashed_lock: locks[4].addr, ..Z };
        let got: Vec<_> = check_recorded(&locks, &p, &r, facts).failures().copied().collect();
        assert_eq!(
            got,
            [
                Failure::TotalCount { set: LockSet::Irq, expected: 8, actual: 7 },
                Failure::OwnerLeft { lock: 0, cpu: 1 },
                Failure::StaleHash { entries: 1, first_addr: 0x10_0100, first_lock: Some(4) },
            ]
        );
        locks = rec(&l);
        locks[2].word = Some(1);
        let got: Vec<_> = check_recorded(&locks, &p, &r, Z).failures().copied().collect();
        assert_eq!(got, [Failure::LockWordNotFree { lock: 2, val: 1 }]);
    }

    #[test]
    fn verify_reads_stale_entries_from_the_real_hash_table() {
        let (nodes, hash, cfg) = system_for(Variant::PvUpstream);
        let sys = LockSystem::new(cfg, &nodes, &hash);
        let (mut l, p, r, pl) = consistent();
        assert!(verify(&sys, &mut l, &p, &r, &refs(&pl)).is_ok());
        // Plant what a double hash leaves behind: an entry for lock 1
        // after every lock was released.
        let addr = l[1].raw.addr() as u64;
        hash[77].lock.store(addr, Ordering::Relaxed);
        hash[77].node.store(0x2000, Ordering::Relaxed);
        assert_eq!(SystemFacts::of(&sys), SystemFacts { hash_in_use: 1, first_hashed_lock: addr, ..Z });
        let rep = verify(&sys, &mut l, &p, &r, &refs(&pl));
        let got: Vec<_> = rep.failures().copied().collect();
        assert_eq!(got, [Failure::StaleHash { entries: 1, first_addr: addr, first_lock: Some(1) }], "{rep}");
    }

    #[test]
    fn verify_checks_lock_words_of_the_qspinlock_family_only() {
        let (mut l, p, r, pl) = consistent();
        l[1].raw.val.store(0x0004_0001, Ordering::Relaxed);
        let rep = check_end_state(&mut l, &p, &r, &refs(&pl), Z);
        let got: Vec<_> = rep.failures().copied().collect();
        assert_eq!(got, [Failure::LockWordNotFree { lock: 1, val: 0x0004_0001 }], "{rep}");
        // A ticket lock's free word is not 0.
        assert!(check_end_state(
            &mut l,
            &p,
            &r,
            &refs(&pl),
            SystemFacts { word_must_be_zero: false, hash_in_use: 0, first_hashed_lock: 0 }
        )
        .is_ok());
        assert!(lock_word_must_be_zero(Variant::Qspinlock));
        assert!(lock_word_must_be_zero(Variant::PvUpstream));
        assert!(!lock_word_must_be_zero(Variant::Ticket));
    }

    #[test]
    fn verify_reports_violations_and_caps_the_list() {
        let (mut l, p, mut r, _) = consistent();
        let v = Violation { lock: 1, cpu: 1, other: Some(0), at: ViolationAt::Enter, irq_depth: 0 };
        r[1].violation = Some(v);
        let rep = check_end_state(&mut l, &p, &r, &[], Z);
        assert_eq!(rep.failures().copied().collect::<Vec<_>>(), [Failure::MutualExclusion(v)]);
        assert!(std::format!("{rep}").contains("cpu 1 (irq depth 0) found cpu 0 inside"), "{rep}");

        // Many failures: the first MAX_FAILURES are kept, the rest counted.
        let mut many = locks(40);
        for lk in many.iter_mut() {
            lk.owner.store(3, Ordering::Relaxed);
        }
        let rep = check_end_state(&mut many, &params(40, 1), &[], &[], Z);
        assert_eq!(rep.count(), 40);
        assert_eq!(rep.failures().count(), MAX_FAILURES);
        assert_eq!(rep.dropped, 40 - MAX_FAILURES);
    }

    #[test]
    fn mark_and_unmark_name_both_cpus() {
        let l = TortureLock::new();
        assert_eq!(l.mark(0), Ok(()));
        assert_eq!(l.mark(3), Err(Some(0)), "the second owner sees the first");
        assert_eq!(l.unmark(0), Err(Some(3)), "the first owner sees the second on exit");
        assert_eq!(l.unmark(3), Ok(()));
        assert_eq!(l.unmark(3), Err(None), "a cleared mark");
        assert_eq!(l.owner.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn params_are_checked() {
        let stop = AtomicU64::new(0);
        let nodes = [PerCpuNodes::new()];
        let hash: Vec<HashSlot> = (0..256).map(|_| HashSlot::new()).collect();
        let cfg = LockConfig { variant: Variant::Qspinlock, spin_threshold: 16, hash_bits: 8 };
        let sys = LockSystem::new(cfg, &nodes, &hash);
        let l = locks(8);
        let t = |p: TortureParams| Torture::new(&sys, &l, p, 1_000_000, &stop).err();
        assert_eq!(t(params(0, 1)), Some(ParamError::NrLocks(0)));
        assert_eq!(t(params(1025, 1)), Some(ParamError::NrLocks(1025)));
        assert_eq!(t(params(2, 3)), Some(ParamError::Nest(3)));
        assert_eq!(t(params(8, 5)), Some(ParamError::Nest(5)));
        assert_eq!(t(params(8, 0)), Some(ParamError::Nest(0)));
        assert_eq!(t(TortureParams { irq_max_depth: 4, ..params(4, 1) }), Some(ParamError::IrqDepth(4)));
        assert_eq!(t(params(9, 1)), Some(ParamError::TooFewLocks { have: 8, need: 9 }));
        assert_eq!(
            t(TortureParams { irq_prob: 1, irq_max_depth: 3, ..params(6, 1) }),
            Some(ParamError::TooFewLocks { have: 8, need: 9 })
        );
        // Irq depth without a probability needs no irq locks.
        assert_eq!(t(TortureParams { irq_max_depth: 3, ..params(8, 1) }), None);
        assert_eq!(Torture::new(&sys, &l, params(8, 4), 0, &stop).err(), Some(ParamError::ZeroClock));
        assert_eq!(t(params(8, 4)), None);
    }

    #[test]
    fn clock_converts_both_ways() {
        let c = Clock { tsc_khz: 2_500_000 };
        assert_eq!(c.ns_to_cycles(1000), 2500);
        assert_eq!(c.cycles_to_ns(2500), 1000);
        assert_eq!(c.cycles_to_ns(u64::MAX), u64::MAX / 2500 * 1000 + (u64::MAX % 2500) * 1000 / 2500);
        assert_eq!(Clock { tsc_khz: 1 }.cycles_to_ns(u64::MAX), u64::MAX, "saturates");
    }

    #[test]
    fn pick_locks_is_sorted_distinct_and_in_range() {
        let p = OneCpu::new(0);
        for (n, nest) in [(1, 1), (4, 4), (5, 2), (1024, 4), (3, 2)] {
            for _ in 0..200 {
                let (idx, k) = pick_locks(&p, n, nest);
                assert_eq!(k, nest);
                assert!(idx[..k].windows(2).all(|w| w[0] < w[1]), "{idx:?}");
                assert!(idx[..k].iter().all(|&i| i < n));
            }
        }
    }

    fn system_for(variant: Variant) -> (Vec<PerCpuNodes>, Vec<HashSlot>, LockConfig) {
        let nodes = (0..4).map(|_| PerCpuNodes::new()).collect();
        let hash = (0..256).map(|_| HashSlot::new()).collect();
        (nodes, hash, LockConfig { variant, spin_threshold: 16, hash_bits: 8 })
    }

    #[test]
    fn one_cpu_run_counts_every_acquisition_and_verifies() {
        for &variant in [Variant::Qspinlock, Variant::PvUpstream, Variant::Ticket].iter() {
            let (nodes, hash, cfg) = system_for(variant);
            let sys = LockSystem::new(cfg, &nodes, &hash);
            let mut l = locks(6);
            let stop = AtomicU64::new(0);
            let p = params(6, 3);
            let mut hist = LatencyHistogram::default();
            let mut per_lock = [0u64; 6];
            let rec = Recorder::default();
            let cpu = OneCpu::new(2);
            let r = Torture::new(&sys, &l, p, 1_000_000, &stop).unwrap().run(&cpu, &rec, &mut hist, &mut per_lock);
            assert_eq!(r.cpu, 2);
            assert_eq!(r.stop, StopReason::MaxAcquisitions);
            assert_eq!(r.acquisitions, 50);
            assert_eq!(r.lock_acquisitions, 150);
            assert_eq!(rec.progress.get(), 50);
            assert_eq!(hist.buckets.iter().sum::<u64>(), 150, "one latency sample per lock() call");
            assert!(r.max_wait_ns > 0 && r.total_wait_ns >= r.max_wait_ns);
            assert!(r.elapsed_ns > 0);
            assert_eq!(per_lock.iter().sum::<u64>(), 150);
            assert!(rec.violations.borrow().is_empty());
            assert_eq!(cpu.phases.borrow().last(), Some(&GuestPhase::Done));
            let rep = verify(&sys, &mut l, &p, &[r], &[&per_lock]);
            assert!(rep.is_ok(), "{variant:?}: {rep}");
        }
    }

    #[test]
    fn run_stops_on_flag_and_deadline() {
        let (nodes, hash, cfg) = system_for(Variant::Qspinlock);
        let sys = LockSystem::new(cfg, &nodes, &hash);
        let l = locks(2);
        let stop = AtomicU64::new(1);
        let p = TortureParams { max_acquisitions: 0, ..params(2, 1) };
        let mut hist = LatencyHistogram::default();
        let t = Torture::new(&sys, &l, p, 1_000_000, &stop).unwrap();
        let r = t.run(&OneCpu::new(0), &NoObserver, &mut hist, &mut []);
        assert_eq!((r.stop, r.acquisitions), (StopReason::StopFlag, 0));
        stop.store(0, Ordering::Relaxed);
        let r = t.with_deadline(5_000).run(&OneCpu::new(0), &NoObserver, &mut hist, &mut []);
        assert_eq!(r.stop, StopReason::Deadline);
        assert!(r.acquisitions > 0);
    }

    #[test]
    fn run_reports_a_second_owner_with_both_cpus() {
        let (nodes, hash, cfg) = system_for(Variant::Qspinlock);
        let sys = LockSystem::new(cfg, &nodes, &hash);
        let mut l = locks(1);
        // CPU 3 "is inside" without holding the lock: a broken exclusion.
        l[0].owner.store(3 + 1, Ordering::Relaxed);
        let stop = AtomicU64::new(0);
        let p = params(1, 1);
        let mut hist = LatencyHistogram::default();
        let rec = Recorder::default();
        let r = Torture::new(&sys, &l, p, 1_000_000, &stop).unwrap().run(&OneCpu::new(1), &rec, &mut hist, &mut []);
        let want = Violation { lock: 0, cpu: 1, other: Some(3), at: ViolationAt::Enter, irq_depth: 0 };
        assert_eq!(r.stop, StopReason::Violation);
        assert_eq!(r.acquisitions, 1, "the acquisition in progress is completed");
        assert_eq!(r.violation, Some(want));
        assert_eq!(rec.violations.borrow().as_slice(), [want]);
        let rep = verify(&sys, &mut l, &p, &[r], &[]);
        assert!(rep.any(|f| *f == Failure::MutualExclusion(want)), "{rep}");
    }

    #[test]
    fn irq_handler_takes_its_depths_lock_and_restores_state() {
        let (nodes, hash, cfg) = system_for(Variant::PvUpstream);
        let sys = LockSystem::new(cfg, &nodes, &hash);
        let p = TortureParams { irq_prob: u32::MAX, irq_max_depth: 3, ..params(2, 1) };
        let mut l = locks(total_locks(&p));
        let stop = AtomicU64::new(0);
        let t = Torture::new(&sys, &l, p, 1_000_000, &stop).unwrap();
        let cpu = OneCpu::new(0);
        let rec = Recorder::default();
        let irq = IrqPlatform::new(&cpu, &t, &rec);
        irq.set_phase(GuestPhase::Queued, 0x1234, 1);
        // As the lock code would at a spin point: one handler, at depth 1.
        irq.maybe_interrupt();
        assert_eq!(irq.depth(), 0);
        assert_eq!(irq.handlers(), 1);
        assert_eq!(irq.irq_lock_count(0), 1);
        assert_eq!(cpu.event_count(LockEvent::SimIrqs), 1);
        let irq_traces: Vec<_> = cpu
            .traces
            .borrow()
            .iter()
            .copied()
            .filter(|t| matches!(t.0, TraceEvent::IrqEnter | TraceEvent::IrqExit))
            .collect();
        assert_eq!(
            irq_traces,
            [(TraceEvent::IrqEnter, 1, 2), (TraceEvent::IrqExit, 1, 2)],
            "depth 1 takes lock nr_locks + 0"
        );
        assert_eq!(cpu.phases.borrow().last(), Some(&GuestPhase::Queued), "phase restored");
        let mut r = TortureResult::default();
        irq.fill(&mut r);
        assert_eq!((r.irq_acquisitions, r.max_irq_depth), (1, 1));
        assert_eq!(*l[2].count_mut(), 1);
        assert_eq!(l[2].owner.load(Ordering::Relaxed), 0);

        // Depth limit: with irq_max_depth 0 nothing runs.
        let p0 = TortureParams { irq_max_depth: 0, ..p };
        let l0 = locks(total_locks(&p0));
        let t0 = Torture::new(&sys, &l0, p0, 1_000_000, &stop).unwrap();
        let irq = IrqPlatform::new(&cpu, &t0, &rec);
        irq.maybe_interrupt();
        assert_eq!(irq.handlers(), 0);
    }
}
