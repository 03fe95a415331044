//! The kernel mutex (`kernel/locking/mutex.c`) in the releases pvlock
//! compares, written once with the release as a [`MutexFlavor`]. Its
//! `wait_lock` is a [`RawLock`] taken through the run's [`LockSystem`], so
//! the sleeping lock sits on whichever qspinlock variant the run selects.
//!
//! | flavor | release | lock word | spinning | hand-off |
//! |---|---|---|---|---|
//! | `mutex-v2.6.28` | before 0d66bf6d3514 (v2.6.29, adaptive spinning) | `count` 1/0/-1 | none | none |
//! | `mutex-v4.9` | v4.9 | `count` + plain `owner` | OSQ + owner spinning, `owner->on_cpu` only | none |
//! | `mutex-v4.10` | v4.10: 3ca0ff571b09 (owner word), 9d659ae14b54 (HANDOFF), b341afb325eb (waiter spins), 05ffc9517 / 5aff60a186 (`vcpu_is_preempted()`) | `owner` = task \| flags | + `vcpu_is_preempted()` | `owner == current` |
//! | `mutex-v5.12` | v4.11..v5.14: e274795ea7b7 (`MUTEX_FLAG_PICKUP`) | as v4.10 | as v4.10 | PICKUP; HANDOFF set only when becoming first |
//! | `mutex-v5.13` | no mainline release (tip between 048661a1f963 "locking/mutex: Fix HANDOFF condition" and ad90880dc962, both merged for v5.15; stable 5.10.64 / 5.14.3 took the first alone) | as v4.10 | as v4.10 | PICKUP; HANDOFF re-requested on every wakeup as first |
//! | `mutex-upstream` | v5.15+ (checked against v6.17's text): HANDOFF requested inside the trylock's cmpxchg (ad90880dc962, `__mutex_trylock_or_handoff()`) | as v4.10 | as v4.10 | PICKUP; HANDOFF only on an owned mutex |
//!
//! Commit ids are as the kernel history names them; where this file could
//! only check a release's text (not the id) the module docs say so
//! (`docs/SLEEPING.md`).
//!
//! Tasks are the [`Tasks`] of the run: one per CPU; a task's id in the
//! owner word is `(cpu + 1) << 3`, leaving the three flag bits free as a
//! `task_struct` pointer does.
//!
//! The `need_resched()` of one task per vCPU is false (nothing else is
//! runnable), so an optimistic spinner stops only when the owner goes to
//! sleep (`on_cpu`), releases, or — from v4.10 — its vCPU is preempted:
//! exactly the lock-holder-preemption question.

use super::osq::{self, Osq, OsqFlavor};
use super::task::{Tasks, TASK_RUNNING, TASK_UNINTERRUPTIBLE};
use crate::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};
use crate::system::{LockSystem, RawLock};
use crate::Platform;
use pvlock_abi::{LockEvent, TraceEvent, Window};

/// `MUTEX_FLAG_WAITERS`: the wait list is not empty; unlock must wake.
pub const FLAG_WAITERS: u32 = 0x01;
/// `MUTEX_FLAG_HANDOFF`: unlock must hand the mutex to the top waiter.
pub const FLAG_HANDOFF: u32 = 0x02;
/// `MUTEX_FLAG_PICKUP`: handed off, waiting for the new owner to pick it up.
pub const FLAG_PICKUP: u32 = 0x04;
/// `MUTEX_FLAGS`.
pub const FLAGS: u32 = 0x07;

/// Which release of `mutex.c` (see the module table): the ABI's names.
pub use pvlock_abi::MutexVariant as MutexFlavor;

/// What differs between the releases.
trait Release {
    fn counting(self) -> bool;
    fn pickup(self) -> bool;
    fn sets_handoff_flag(self) -> bool;
    fn checks_preempted(self) -> bool;
}

impl Release for MutexFlavor {
    /// The counting mutex of v4.9 and before.
    fn counting(self) -> bool {
        matches!(self, MutexFlavor::V2_6_28 | MutexFlavor::V4_9)
    }

    /// Hand-off pickup through `MUTEX_FLAG_PICKUP` (e274795ea7b7 and later).
    fn pickup(self) -> bool {
        !self.counting() && self != MutexFlavor::V4_10
    }

    /// HANDOFF set by a separate `__mutex_set_flag()` (v4.10..v5.15), which
    /// can land on an unlocked mutex; the trylock then clears it.
    fn sets_handoff_flag(self) -> bool {
        matches!(self, MutexFlavor::V4_10 | MutexFlavor::V5_12 | MutexFlavor::V5_13)
    }

    /// `vcpu_is_preempted()` in the owner-running checks (v4.10 and later).
    fn checks_preempted(self) -> bool {
        !self.counting()
    }
}

/// The path by which a `mutex_lock()` got the mutex (the acquire audit
/// checks each; the torture counts them). Sent as the `arg` of
/// [`TraceEvent::Acquired`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u16)]
pub enum AcquirePath {
    /// `__mutex_trylock_fast()` / `__mutex_fastpath_lock()`.
    Fast = 1,
    /// The trylock at the top of `__mutex_lock_common()`.
    Trylock = 2,
    /// Optimistic spinning (OSQ head).
    Spin = 3,
    /// The trylock right after taking `wait_lock`.
    TrylockWaitLock = 4,
    /// The wait loop's own trylock / xchg, or a waiter-spinner's trylock.
    WaitLoop = 5,
    /// Picking up a hand-off (`owner == current`, or `MUTEX_FLAG_PICKUP`).
    HandoffPickup = 6,
}

impl AcquirePath {
    pub const ALL: &'static [AcquirePath] = &[
        AcquirePath::Fast,
        AcquirePath::Trylock,
        AcquirePath::Spin,
        AcquirePath::TrylockWaitLock,
        AcquirePath::WaitLoop,
        AcquirePath::HandoffPickup,
    ];
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| *p as u16 == v)
    }
}

/// `mutex_lock_killable()` was interrupted by a fatal signal (`-EINTR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupted;

/// `struct mutex`.
pub struct Mutex {
    /// Owner-word flavors: task id | flags. Counting flavors: the owner
    /// task (`mutex_set_owner()`), a hint for spinners only.
    owner: AtomicU32,
    /// Counting flavors: 1 unlocked, 0 locked, < 0 locked with waiters.
    count: AtomicI32,
    /// `wait_lock`: a raw spinlock of the run's variant.
    pub wait_lock: RawLock,
    /// Spinners' MCS queue.
    osq: Osq,
    /// Wait list (FIFO), cpu + 1 of the first and last waiter; 0 = empty.
    /// Under `wait_lock`, except the racy `__mutex_waiter_is_first()`.
    head: AtomicU32,
    tail: AtomicU32,
    /// When the last hand-off was made (cycles), for the pickup latency.
    handoff_at: AtomicU64,
}

impl Mutex {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            owner: AtomicU32::new(0),
            count: AtomicI32::new(1),
            wait_lock: RawLock::new(),
            osq: Osq::new(),
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            handoff_at: AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self {
            owner: AtomicU32::new(0),
            count: AtomicI32::new(1),
            wait_lock: RawLock::new(),
            osq: Osq::new(),
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            handoff_at: AtomicU64::new(0),
        }
    }

    pub fn addr(&self) -> usize {
        self as *const Mutex as usize
    }

    /// Start from a given owner word (model checking: a state the model
    /// would need many steps to reach, e.g. held with HANDOFF requested).
    pub fn preset_owner_word(&self, w: u32) {
        self.owner.store(w, Ordering::Relaxed);
        self.count.store(if w == 0 { 1 } else { 0 }, Ordering::Relaxed);
    }

    /// The raw owner word (for checks and dumps).
    pub fn owner_word(&self) -> u32 {
        self.owner.load(Ordering::Relaxed)
    }

    /// The count (counting flavors).
    pub fn count(&self) -> i32 {
        self.count.load(Ordering::Relaxed)
    }

    /// The wait list is empty.
    pub fn no_waiters(&self) -> bool {
        self.head.load(Ordering::Relaxed) == 0
    }
}

#[cfg(not(loom))]
impl Default for Mutex {
    fn default() -> Self {
        Self::new()
    }
}

/// A task's id in the owner word.
#[inline]
pub const fn task_id(cpu: u32) -> u32 {
    (cpu + 1) << 3
}

/// The CPU of a task id (`task_cpu(owner)`).
#[inline]
const fn task_cpu(id: u32) -> u32 {
    (id >> 3) - 1
}

/// Mutexes on behalf of the run's tasks, with the run's spinlock system for
/// their `wait_lock`s.
pub struct MutexSystem<'s, 'a> {
    flavor: MutexFlavor,
    spin: &'s LockSystem<'a>,
    tasks: Tasks<'s>,
}

impl<'s, 'a> MutexSystem<'s, 'a> {
    pub fn new(flavor: MutexFlavor, spin: &'s LockSystem<'a>, tasks: Tasks<'s>) -> Self {
        Self { flavor, spin, tasks }
    }

    pub fn flavor(&self) -> MutexFlavor {
        self.flavor
    }

    pub fn tasks(&self) -> Tasks<'s> {
        self.tasks
    }

    /// `mutex_lock()`.
    pub fn lock<P: Platform>(&self, p: &P, m: &Mutex) {
        if self.lock_common(p, m, false).is_err() {
            p.bug(format_args!("mutex_lock() (uninterruptible) returned -EINTR"))
        }
    }

    /// `mutex_lock_killable()`.
    pub fn lock_killable<P: Platform>(&self, p: &P, m: &Mutex) -> Result<(), Interrupted> {
        self.lock_common(p, m, true)
    }

    fn lock_common<P: Platform>(&self, p: &P, m: &Mutex, killable: bool) -> Result<(), Interrupted> {
        p.trace(TraceEvent::LockEnter, m.addr(), 0, 0);
        let path =
            if self.flavor.counting() { self.lock_counting(p, m, killable)? } else { self.lock_owner(p, m, killable)? };
        p.trace(TraceEvent::Acquired, m.addr(), path as u16, 0);
        Ok(())
    }

    /// `mutex_unlock()`.
    pub fn unlock<P: Platform>(&self, p: &P, m: &Mutex) {
        if self.flavor.counting() {
            self.unlock_counting(p, m)
        } else {
            self.unlock_owner(p, m)
        }
        p.trace(TraceEvent::Released, m.addr(), 0, 0);
    }

    // ------------------------------------------------------ wait list --

    /// `list_add_tail()` of the current task (under `wait_lock`).
    fn add_waiter<P: Platform>(&self, p: &P, m: &Mutex) {
        let me = p.cpu() + 1;
        self.tasks.current(p).wait_next.store(0, Ordering::Relaxed);
        match m.tail.load(Ordering::Relaxed) {
            0 => m.head.store(me, Ordering::Relaxed),
            t => self.tasks.get(p, t - 1).wait_next.store(me, Ordering::Relaxed),
        }
        m.tail.store(me, Ordering::Relaxed);
    }

    /// `list_del()` of the current task (under `wait_lock`).
    fn remove_waiter<P: Platform>(&self, p: &P, m: &Mutex) {
        let me = p.cpu() + 1;
        let next = self.tasks.current(p).wait_next.load(Ordering::Relaxed);
        let mut prev = 0;
        let mut cur = m.head.load(Ordering::Relaxed);
        while cur != me {
            if cur == 0 {
                p.bug(format_args!("mutex {:#x}: cpu {} is not on its wait list", m.addr(), p.cpu()))
            }
            prev = cur;
            cur = self.tasks.get(p, cur - 1).wait_next.load(Ordering::Relaxed);
        }
        match prev {
            0 => m.head.store(next, Ordering::Relaxed),
            _ => self.tasks.get(p, prev - 1).wait_next.store(next, Ordering::Relaxed),
        }
        if m.tail.load(Ordering::Relaxed) == me {
            m.tail.store(prev, Ordering::Relaxed);
        }
    }

    /// The first waiter's CPU (under `wait_lock`).
    fn first_waiter(&self, m: &Mutex) -> Option<u32> {
        match m.head.load(Ordering::Relaxed) {
            0 => None,
            h => Some(h - 1),
        }
    }

    /// `__mutex_waiter_is_first()`: read without `wait_lock`, as upstream.
    fn waiter_is_first<P: Platform>(&self, p: &P, m: &Mutex) -> bool {
        m.head.load(Ordering::Relaxed) == p.cpu() + 1
    }

    // ------------------------------------------------ owner spinning --

    /// `mutex_can_spin_on_owner()`.
    fn can_spin_on_owner<P: Platform>(&self, p: &P, owner: u32) -> bool {
        if self.tasks.need_resched(p) {
            return false;
        }
        owner == 0 || self.owner_on_cpu(p, owner)
    }

    /// `owner->on_cpu` (v4.9) or `owner_on_cpu()` (v4.10+: and not
    /// `vcpu_is_preempted(task_cpu(owner))`).
    fn owner_on_cpu<P: Platform>(&self, p: &P, owner: u32) -> bool {
        let cpu = task_cpu(owner);
        self.tasks.on_cpu(cpu) && !(self.flavor.checks_preempted() && p.vcpu_is_preempted(cpu))
    }

    fn owner_task(&self, m: &Mutex) -> u32 {
        m.owner.load(Ordering::Relaxed) & !FLAGS
    }

    /// `mutex_spin_on_owner()`: spin while `owner` owns `m` and is running.
    /// Also measures the spinning, and how much of it was on an owner whose
    /// vCPU was preempted (asked of the VMM's flag whatever the flavor: a
    /// v4.9 spinner does not look, the measurement does).
    fn spin_on_owner<P: Platform>(&self, p: &P, m: &Mutex, owner: u32) -> bool {
        let cpu = task_cpu(owner);
        let start = p.cycles();
        let mut last = start;
        let mut wasted = 0u64;
        let mut was_preempted = false;
        let mut ret = true;
        // `barrier()` between the owner check and `owner->on_cpu`: relaxed
        // loads; the owner word's value is only a hint here.
        while self.owner_task(m) == owner {
            let preempted = p.vcpu_is_preempted(cpu);
            let now = p.cycles();
            // Wasted: an interval that starts and ends with the owner
            // preempted (so a v4.10+ spinner that stops at its first sight
            // of the flag wastes nothing, whatever happened before).
            if preempted && was_preempted {
                wasted += now.wrapping_sub(last);
            }
            was_preempted = preempted;
            last = now;
            if !self.tasks.on_cpu(cpu) || self.tasks.need_resched(p) {
                ret = false;
                break;
            }
            if self.flavor.checks_preempted() && preempted {
                p.event(LockEvent::MutexSpinBreakPreempted, 1);
                ret = false;
                break;
            }
            p.cpu_relax();
        }
        p.event(LockEvent::MutexSpinCycles, last.wrapping_sub(start));
        p.event(LockEvent::MutexSpinPreemptedCycles, wasted);
        ret
    }

    /// The end of a failed `mutex_optimistic_spin()`: reschedule if asked.
    fn spin_failed<P: Platform>(&self, p: &P) {
        p.event(LockEvent::MutexOptFail, 1);
        if self.tasks.need_resched(p) {
            self.tasks.set_current_state_plain(p, TASK_RUNNING);
            self.tasks.schedule(p);
        }
    }

    // --------------------------------------------- counting (<= v4.9) --

    /// `mutex_set_owner()`: a plain store, a hint for spinners.
    fn set_owner<P: Platform>(&self, p: &P, m: &Mutex) {
        m.owner.store(task_id(p.cpu()), Ordering::Relaxed);
    }

    fn lock_counting<P: Platform>(&self, p: &P, m: &Mutex, killable: bool) -> Result<AcquirePath, Interrupted> {
        // __mutex_fastpath_lock(): atomic_dec_return_acquire() (asm-generic
        // mutex-dec.h since 81a43adae3b9, v4.2; x86's `lock decl` is a full
        // barrier). 1 -> 0 takes it; pairs with the unlock's release inc.
        if m.count.fetch_sub(1, Ordering::Acquire) == 1 {
            self.set_owner(p, m);
            p.event(LockEvent::MutexFastpath, 1);
            return Ok(AcquirePath::Fast);
        }
        if self.flavor == MutexFlavor::V4_9 && self.optimistic_spin_counting(p, m) {
            p.event(LockEvent::MutexOptLock, 1);
            return Ok(AcquirePath::Spin);
        }
        self.spin.lock(p, &m.wait_lock);
        // "Once more, try to acquire the lock" (v4.9 only if unlocked).
        let once_more = match self.flavor {
            MutexFlavor::V4_9 => m.count.load(Ordering::Relaxed) == 1 && m.count.swap(0, Ordering::Acquire) == 1,
            _ => false,
        };
        if once_more {
            self.set_owner(p, m);
            self.spin.unlock(p, &m.wait_lock);
            return Ok(AcquirePath::TrylockWaitLock);
        }
        self.add_waiter(p, m);
        // As in lock_owner(): wakeups as first waiter that did not get the
        // mutex (the counting mutex has no hand-off to request at all).
        let mut no_handoff = 0u64;
        let mut woke = false;
        loop {
            // xchg to -1 so that the unlock takes its slow path and wakes
            // the other waiters; acquire pairs with the unlock's store of 1.
            // v4.9 only tries when unlocked; 2.6.28 always xchg'ed.
            let try_it = self.flavor == MutexFlavor::V2_6_28 || m.count.load(Ordering::Relaxed) >= 0;
            if try_it && m.count.swap(-1, Ordering::Acquire) == 1 {
                break;
            }
            if woke && self.waiter_is_first(p, m) {
                no_handoff += 1;
            }
            if killable && self.tasks.fatal_signal_pending(p) {
                self.tasks.set_current_state_plain(p, TASK_RUNNING);
                self.remove_waiter(p, m);
                self.spin.unlock(p, &m.wait_lock);
                return Err(Interrupted);
            }
            // __set_task_state(): plain, ordered by wait_lock against the
            // unlocker's wake_up_process() (which takes wait_lock).
            self.tasks.set_current_state_plain(p, TASK_UNINTERRUPTIBLE);
            self.spin.unlock(p, &m.wait_lock);
            self.tasks.schedule(p);
            woke = true;
            self.spin.lock(p, &m.wait_lock);
        }
        if no_handoff != 0 {
            p.event_max(LockEvent::MutexFirstWakeNoHandoffMax, no_handoff);
        }
        self.tasks.set_current_state_plain(p, TASK_RUNNING);
        self.remove_waiter(p, m);
        // "set it to 0 if there are no waiters left"
        if m.no_waiters() {
            m.count.store(0, Ordering::Relaxed);
        }
        self.set_owner(p, m);
        self.spin.unlock(p, &m.wait_lock);
        p.event(LockEvent::MutexSlowpath, 1);
        Ok(AcquirePath::WaitLoop)
    }

    /// v4.9's `mutex_optimistic_spin()`.
    fn optimistic_spin_counting<P: Platform>(&self, p: &P, m: &Mutex) -> bool {
        if !self.can_spin_on_owner(p, m.owner.load(Ordering::Relaxed))
            || !osq::lock(&self.tasks, p, &m.osq, OsqFlavor::V4_9)
        {
            self.spin_failed(p);
            return false;
        }
        loop {
            let owner = m.owner.load(Ordering::Relaxed);
            if owner != 0 && !self.spin_on_owner(p, m, owner) {
                break;
            }
            // mutex_try_to_acquire(): only when unlocked; acquire pairs with
            // the unlock's release.
            if m.count.load(Ordering::Relaxed) == 1
                && m.count.compare_exchange(1, 0, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                self.set_owner(p, m);
                osq::unlock(&self.tasks, p, &m.osq);
                return true;
            }
            // No owner: we may have come between the owner's acquire and its
            // mutex_set_owner(); stop if we must reschedule.
            if owner == 0 && self.tasks.need_resched(p) {
                break;
            }
            p.cpu_relax();
        }
        osq::unlock(&self.tasks, p, &m.osq);
        self.spin_failed(p);
        false
    }

    fn unlock_counting<P: Platform>(&self, p: &P, m: &Mutex) {
        // mutex_clear_owner()
        m.owner.store(0, Ordering::Relaxed);
        // __mutex_fastpath_unlock(): atomic_inc_return_release(); > 0 means
        // nobody waits. Release pairs with the lockers' acquires.
        if m.count.fetch_add(1, Ordering::Release) >= 0 {
            return;
        }
        // __mutex_unlock_common_slowpath(): x86 has
        // __mutex_slowpath_needs_to_unlock() == 1: `atomic_set(count, 1)`.
        // A plain `mov` on x86, i.e. a release store under TSO; written as
        // a release RMW so the model checker judges the x86 code: a relaxed
        // store would not continue the inc's release sequence in C11, and
        // loom 0.7 let a later xchg of this word, ordered after this store
        // by wait_lock and the wakeup, read a value from before it (seen
        // in the v2.6.28 model; a coherence violation, so loom's, not ours).
        m.count.swap(1, Ordering::Release);
        self.spin.lock(p, &m.wait_lock);
        if let Some(w) = self.first_waiter(m) {
            self.tasks.wake_up_process(p, w);
        }
        self.spin.unlock(p, &m.wait_lock);
    }

    // ------------------------------------------- owner word (v4.10+) --

    /// The ordering of a lock-taking cmpxchg (the mutant relaxes one).
    fn acquire_order(&self, path: AcquirePath) -> Ordering {
        match (self.flavor, path) {
            (MutexFlavor::MutantRelaxedFastpath, AcquirePath::Fast) => Ordering::Relaxed,
            _ => Ordering::Acquire,
        }
    }

    /// v4.10's `__mutex_trylock(lock, handoff)` (9d659ae14b54).
    fn trylock_v4_10<P: Platform>(&self, p: &P, m: &Mutex, handoff: bool) -> Option<AcquirePath> {
        let curr = task_id(p.cpu());
        let mut owner = m.owner.load(Ordering::Relaxed);
        loop {
            let mut flags = owner & FLAGS;
            if owner & !FLAGS != 0 {
                if handoff && owner & !FLAGS == curr {
                    // "Provide ACQUIRE semantics for the lock-handoff": the
                    // load was a plain read, so smp_mb(); pairs with
                    // __mutex_handoff()'s release cmpxchg.
                    fence(Ordering::SeqCst);
                    self.picked_up(p, m);
                    return Some(AcquirePath::HandoffPickup);
                }
                return None;
            }
            // Our HANDOFF must not outlive our acquisition.
            if handoff {
                flags &= !FLAG_HANDOFF;
            }
            match m.owner.compare_exchange(owner, curr | flags, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => {
                    self.note_steal(p, m, owner);
                    return Some(AcquirePath::Trylock);
                }
                Err(o) => owner = o,
            }
        }
    }

    /// v4.11+ `__mutex_trylock_or_owner()` (e274795ea7b7) and upstream's
    /// `__mutex_trylock_common(lock, handoff)`: Ok(path) when taken, else
    /// Err(owner task).
    fn trylock_common<P: Platform>(&self, p: &P, m: &Mutex, handoff: bool) -> Result<AcquirePath, u32> {
        let curr = task_id(p.cpu());
        let mut owner = m.owner.load(Ordering::Relaxed);
        loop {
            let mut flags = owner & FLAGS;
            let mut task = owner & !FLAGS;
            let path;
            if task != 0 {
                if flags & FLAG_PICKUP != 0 {
                    if task != curr {
                        return Err(task);
                    }
                    flags &= !FLAG_PICKUP;
                    path = AcquirePath::HandoffPickup;
                } else if handoff && !self.flavor.sets_handoff_flag() {
                    // Upstream: request a hand-off in the same cmpxchg
                    // (unless one is requested already).
                    if flags & FLAG_HANDOFF != 0 {
                        return Err(task);
                    }
                    flags |= FLAG_HANDOFF;
                    path = AcquirePath::WaitLoop; // not taken: see below
                } else {
                    return Err(task);
                }
            } else {
                if flags & (FLAG_HANDOFF | FLAG_PICKUP) != 0 && !self.flavor.sets_handoff_flag() {
                    // MUTEX_WARN_ON(): a flag on an unlocked mutex.
                    p.bug(format_args!("mutex {:#x}: unlocked with flags {flags:#x}", m.addr()))
                }
                task = curr;
                path = AcquirePath::Trylock;
            }
            if self.flavor.sets_handoff_flag() {
                // "We set the HANDOFF bit, we must make sure it doesn't live
                // past the point where we acquire it."
                flags &= !FLAG_HANDOFF;
            }
            // Acquire: pairs with the unlock's / __mutex_handoff()'s release.
            match m.owner.compare_exchange(owner, task | flags, self.acquire_order(path), Ordering::Relaxed) {
                Ok(_) if task == curr => {
                    if path == AcquirePath::HandoffPickup {
                        self.picked_up(p, m);
                    } else {
                        self.note_steal(p, m, owner);
                    }
                    return Ok(path);
                }
                Ok(_) => return Err(task),
                Err(o) => owner = o,
            }
        }
    }

    /// After taking the unlocked mutex whose word was `was`: if that word
    /// carried a HANDOFF request and we are not the first waiter (who made
    /// it), we stole the request (v4.11..v5.14 cleared it doing so; v4.10
    /// kept it). Only a marker for directed schedules.
    fn note_steal<P: Platform>(&self, p: &P, m: &Mutex, was: u32) {
        if was & FLAG_HANDOFF != 0 && !self.waiter_is_first(p, m) {
            p.race_window(Window::MutexHandoffStolen);
        }
    }

    /// No hand-off request stands for the current task: the owner word
    /// (read now) is not ours and carries neither HANDOFF nor PICKUP, so
    /// no unlock will give the mutex to us; we compete with every
    /// newcomer. Relaxed: a reading for the statistics, not a decision.
    fn no_request_standing(&self, m: &Mutex, curr: u32) -> bool {
        let w = m.owner.load(Ordering::Relaxed);
        w & !FLAGS != curr && w & (FLAG_HANDOFF | FLAG_PICKUP) == 0
    }

    fn picked_up<P: Platform>(&self, p: &P, m: &Mutex) {
        let at = m.handoff_at.load(Ordering::Relaxed);
        if at != 0 {
            p.event(LockEvent::MutexHandoffCycles, p.cycles().wrapping_sub(at));
        }
    }

    /// `__mutex_trylock()` of the flavor (no hand-off).
    fn trylock<P: Platform>(&self, p: &P, m: &Mutex) -> Option<AcquirePath> {
        match self.flavor {
            MutexFlavor::V4_10 => self.trylock_v4_10(p, m, false),
            _ => self.trylock_common(p, m, false).ok(),
        }
    }

    /// `mutex_optimistic_spin(lock, ww_ctx, waiter)` of v4.10 and later.
    fn optimistic_spin<P: Platform>(&self, p: &P, m: &Mutex, waiter: bool) -> Option<AcquirePath> {
        if !waiter
            && (!self.can_spin_on_owner(p, self.owner_task(m)) || !osq::lock(&self.tasks, p, &m.osq, OsqFlavor::V4_10))
        {
            self.spin_failed(p);
            return None;
        }
        let curr = task_id(p.cpu());
        let got = loop {
            if self.flavor == MutexFlavor::V4_10 {
                let owner = self.owner_task(m);
                if owner != 0 {
                    if waiter && owner == curr {
                        // Handed off to us while spinning: smp_mb() as ACQUIRE,
                        // pairs with __mutex_handoff()'s release.
                        fence(Ordering::SeqCst);
                        self.picked_up(p, m);
                        break Some(AcquirePath::HandoffPickup);
                    }
                    if !self.spin_on_owner(p, m, owner) {
                        break None;
                    }
                }
                if let Some(path) = self.trylock_v4_10(p, m, waiter) {
                    break Some(path);
                }
            } else {
                match self.trylock_common(p, m, false) {
                    Ok(path) => break Some(path),
                    Err(owner) => {
                        if !self.spin_on_owner(p, m, owner) {
                            break None;
                        }
                    }
                }
            }
            p.cpu_relax();
        };
        if !waiter {
            osq::unlock(&self.tasks, p, &m.osq);
        }
        match got {
            Some(path) => {
                p.event(LockEvent::MutexOptLock, 1);
                Some(if path == AcquirePath::HandoffPickup {
                    path
                } else if waiter {
                    AcquirePath::WaitLoop
                } else {
                    AcquirePath::Spin
                })
            }
            None => {
                self.spin_failed(p);
                None
            }
        }
    }

    fn lock_owner<P: Platform>(&self, p: &P, m: &Mutex, killable: bool) -> Result<AcquirePath, Interrupted> {
        let curr = task_id(p.cpu());
        // __mutex_trylock_fast(): 0 -> current, acquire; pairs with the
        // unlock's release cmpxchg.
        if m.owner.compare_exchange(0, curr, self.acquire_order(AcquirePath::Fast), Ordering::Relaxed).is_ok() {
            p.event(LockEvent::MutexFastpath, 1);
            return Ok(AcquirePath::Fast);
        }
        if let Some(path) = self.trylock(p, m) {
            return Ok(path);
        }
        if let Some(path) = self.optimistic_spin(p, m, false) {
            return Ok(path);
        }
        self.spin.lock(p, &m.wait_lock);
        if self.trylock(p, m).is_some() {
            self.spin.unlock(p, &m.wait_lock);
            return Ok(AcquirePath::TrylockWaitLock);
        }
        self.add_waiter(p, m);
        if self.waiter_is_first(p, m) {
            // __mutex_add_waiter(): atomic_long_or(), relaxed.
            m.owner.fetch_or(FLAG_WAITERS, Ordering::Relaxed);
        }
        self.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
        let mut first = false;
        // Wakeups as first waiter after which no hand-off request stood for
        // us (LockEvent::MutexFirstWakeNoHandoffMax), and those on which our
        // own request, set on an unlocked mutex, was stolen
        // (LockEvent::MutexHandoffRequestStolen): observations of the owner
        // word after the wakeup's HANDOFF decision, the same for every
        // flavor. They tell the 048661a1f963 bug (a lost request is not
        // renewed) from the race ad90880dc962 closed (each request set on
        // an unlocked mutex can be stolen).
        let mut not_renewed = 0u64;
        let mut stolen = 0u64;
        let path = loop {
            // Holding wait_lock we are serialised against the unlock's
            // hand-off: pick it up before looking at signals.
            let got = match self.flavor {
                MutexFlavor::V4_10 => self.trylock_v4_10(p, m, first),
                _ => self.trylock_common(p, m, false).ok(),
            };
            if let Some(path) = got {
                break path;
            }
            if killable && self.tasks.fatal_signal_pending(p) {
                self.tasks.set_current_state_plain(p, TASK_RUNNING);
                self.remove_waiter(p, m);
                if m.no_waiters() {
                    m.owner.fetch_and(!FLAGS, Ordering::Relaxed);
                }
                self.spin.unlock(p, &m.wait_lock);
                return Err(Interrupted);
            }
            self.spin.unlock(p, &m.wait_lock);
            if self.waiter_is_first(p, m) {
                p.race_window(Window::MutexFirstSleeps);
            }
            self.tasks.schedule(p);
            // Did this wakeup's own HANDOFF request land on an unlocked
            // mutex (where a stealer's trylock can take it away)?
            let mut set_on_unlocked = false;
            let got = match self.flavor {
                MutexFlavor::V4_10 => {
                    if !first && self.waiter_is_first(p, m) {
                        first = true;
                        set_on_unlocked = self.set_handoff_flag(p, m);
                    }
                    // "Here we order against unlock; we must either see it
                    // change state back to RUNNING ... or see its unlock".
                    self.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
                    if first && !set_on_unlocked && self.no_request_standing(m, curr) {
                        not_renewed += 1;
                    }
                    // v4.10 spins first, then tries.
                    let spun = if first { self.optimistic_spin(p, m, true) } else { None };
                    let got = spun.or_else(|| self.trylock_v4_10(p, m, first));
                    if got.is_none() && set_on_unlocked && self.no_request_standing(m, curr) {
                        stolen += 1;
                    }
                    got
                }
                MutexFlavor::V5_12 | MutexFlavor::V5_13 => {
                    if self.flavor == MutexFlavor::V5_12 {
                        // The HANDOFF condition before 048661a1f963: only
                        // when we *become* first. Once a steal has cleared
                        // the flag, it is never requested again.
                        if !first {
                            first = self.waiter_is_first(p, m);
                            if first {
                                set_on_unlocked = self.set_handoff_flag(p, m);
                            }
                        }
                    } else {
                        // 048661a1f963: on every wakeup as first.
                        first = self.waiter_is_first(p, m);
                        if first {
                            set_on_unlocked = self.set_handoff_flag(p, m);
                        }
                    }
                    self.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
                    if first && !set_on_unlocked && self.no_request_standing(m, curr) {
                        not_renewed += 1;
                    }
                    let got = self.trylock_common(p, m, false).ok();
                    if got.is_none() && set_on_unlocked && self.no_request_standing(m, curr) {
                        stolen += 1;
                    }
                    got.or_else(|| if first { self.optimistic_spin(p, m, true) } else { None })
                }
                _ => {
                    first = self.waiter_is_first(p, m);
                    self.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
                    // __mutex_trylock_or_handoff(lock, first): the request
                    // is made by the trylock, so it is read after it.
                    let got = self.trylock_common(p, m, first).ok();
                    if got.is_none() && first && self.no_request_standing(m, curr) {
                        not_renewed += 1;
                    }
                    got.or_else(|| if first { self.optimistic_spin(p, m, true) } else { None })
                }
            };
            if let Some(path) = got {
                self.spin.lock(p, &m.wait_lock);
                break path;
            }
            self.spin.lock(p, &m.wait_lock);
        };
        if not_renewed != 0 {
            p.event_max(LockEvent::MutexFirstWakeNoHandoffMax, not_renewed);
        }
        if stolen != 0 {
            p.event(LockEvent::MutexHandoffRequestStolen, stolen);
        }
        // acquired:
        self.tasks.set_current_state_plain(p, TASK_RUNNING);
        self.remove_waiter(p, m);
        if m.no_waiters() {
            // __mutex_clear_flag(lock, MUTEX_FLAGS)
            m.owner.fetch_and(!FLAGS, Ordering::Relaxed);
        }
        self.spin.unlock(p, &m.wait_lock);
        p.event(LockEvent::MutexSlowpath, 1);
        Ok(if path == AcquirePath::HandoffPickup { path } else { AcquirePath::WaitLoop })
    }

    /// `__mutex_set_flag(lock, MUTEX_FLAG_HANDOFF)` (v4.10..v5.15): a
    /// relaxed `atomic_long_or()`. Set on a mutex that is unlocked at that
    /// moment, the flag can be taken away by a stealer's trylock before our
    /// own: that is the `mutex-handoff-set` race window (only then).
    /// Returns whether it was so set.
    fn set_handoff_flag<P: Platform>(&self, p: &P, m: &Mutex) -> bool {
        let old = m.owner.fetch_or(FLAG_HANDOFF, Ordering::Relaxed);
        let unlocked = old & !FLAGS == 0;
        if unlocked {
            p.race_window(Window::MutexHandoffSet);
        }
        unlocked
    }

    /// `__mutex_handoff(lock, task)`: release cmpxchg; pairs with the
    /// pickup's acquire (cmpxchg or v4.10's smp_mb()).
    fn handoff<P: Platform>(&self, p: &P, m: &Mutex, to: Option<u32>) {
        let mut owner = m.owner.load(Ordering::Relaxed);
        if to.is_some() {
            m.handoff_at.store(p.cycles(), Ordering::Relaxed);
            p.event(LockEvent::MutexHandoff, 1);
        }
        loop {
            if owner & !FLAGS != task_id(p.cpu()) {
                p.bug(format_args!("mutex {:#x}: hand-off by a non-owner (owner {owner:#x})", m.addr()))
            }
            let mut new = owner & FLAG_WAITERS;
            if let Some(cpu) = to {
                new |= task_id(cpu);
                if self.flavor.pickup() {
                    new |= FLAG_PICKUP;
                }
            }
            match m.owner.compare_exchange(owner, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(o) => owner = o,
            }
        }
    }

    fn unlock_owner<P: Platform>(&self, p: &P, m: &Mutex) {
        let curr = task_id(p.cpu());
        // __mutex_unlock_fast(): current -> 0, release.
        if m.owner.compare_exchange(curr, 0, Ordering::Release, Ordering::Relaxed).is_ok() {
            return;
        }
        // __mutex_unlock_slowpath(): release first (keeping the flags),
        // unless HANDOFF: then the owner field goes to the top waiter.
        let mut owner = m.owner.load(Ordering::Relaxed);
        loop {
            if owner & !FLAGS != curr || owner & FLAG_PICKUP != 0 {
                p.bug(format_args!("mutex {:#x}: unlock by cpu {} with owner {owner:#x}", m.addr(), p.cpu()))
            }
            if owner & FLAG_HANDOFF != 0 {
                break;
            }
            match m.owner.compare_exchange(owner, owner & FLAGS, Ordering::Release, Ordering::Relaxed) {
                Ok(_) if owner & FLAG_WAITERS != 0 => break,
                Ok(_) => return,
                Err(o) => owner = o,
            }
        }
        self.spin.lock(p, &m.wait_lock);
        let next = self.first_waiter(m);
        if owner & FLAG_HANDOFF != 0 {
            self.handoff(p, m, next);
        }
        self.spin.unlock(p, &m.wait_lock);
        // wake_up_q(): after dropping wait_lock.
        if let Some(w) = next {
            self.tasks.wake_up_process(p, w);
        }
    }
}
