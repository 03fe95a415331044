//! An rtmutex model (`kernel/locking/rtmutex.c`) for the acquire-ordering
//! question of the seed fix: the owner word with `RT_MUTEX_HAS_WAITERS`,
//! `wait_lock`, the cmpxchg fast paths, `try_to_take_rt_mutex()`,
//! `mark_rt_mutex_waiters()`, `fixup_rt_mutex_waiters()` and the unlock slow
//! path (`unlock_rt_mutex_safe()`, `mark_wakeup_next_waiter()`).
//!
//! Left out on purpose (they do not touch the ordering in question):
//! priority inheritance and the PI chain walk, the priority-sorted waiter
//! tree (waiters here are FIFO by CPU, all of one priority, so nobody
//! steals from a waiter), ww_mutex, proxy locking.
//!
//! * [`RtFlavor::V4_3`]: before 700318d1d7b3 ("locking/rtmutex: Use
//!   acquire/release semantics", v4.4): full-barrier `cmpxchg()` everywhere.
//! * [`RtFlavor::V4_4`]: 700318d1d7b3: relaxed `mark_rt_mutex_waiters()`,
//!   and `rt_mutex_set_owner()` a plain `WRITE_ONCE()`: a slow-path taker
//!   that finds the owner gone (released by the fast path) takes the lock
//!   with no acquire at all. The bug of the seed (an arm64 PREEMPT_RT crash).
//! * [`RtFlavor::Fixed`]: the seed's patch (Mel Gorman, Dec 2022, merged as
//!   1c0908d8e441 for v6.2): `rt_mutex_set_owner()` is `xchg_acquire()`,
//!   `fixup_rt_mutex_waiters(lock, true)` too; clearing stays a
//!   `WRITE_ONCE()` under `wait_lock`.
//!
//! x86 is TSO: every RMW is a full barrier and every load an acquire, so
//! the guest cannot show the difference; the loom model does
//! (`tests/loom_rtmutex.rs`).

use super::task::{Tasks, TASK_RUNNING, TASK_UNINTERRUPTIBLE};
use crate::sync::atomic::{AtomicU32, Ordering};
use crate::system::{LockSystem, RawLock};
use crate::Platform;
use pvlock_abi::LockEvent;

/// `RT_MUTEX_HAS_WAITERS`.
pub const HAS_WAITERS: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtFlavor {
    V4_3,
    V4_4,
    Fixed,
}

impl RtFlavor {
    pub const ALL: &'static [RtFlavor] = &[RtFlavor::V4_3, RtFlavor::V4_4, RtFlavor::Fixed];
    pub const fn name(self) -> &'static str {
        match self {
            RtFlavor::V4_3 => "rtmutex-v4.3",
            RtFlavor::V4_4 => "rtmutex-v4.4",
            RtFlavor::Fixed => "rtmutex-v6.2",
        }
    }
}

/// `struct rt_mutex_base`.
pub struct RtMutex {
    owner: AtomicU32,
    pub wait_lock: RawLock,
    /// Waiting CPUs (bit n: cpu n); under `wait_lock`. The top waiter is the
    /// lowest CPU (one priority for all).
    waiters: AtomicU32,
}

impl RtMutex {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { owner: AtomicU32::new(0), wait_lock: RawLock::new(), waiters: AtomicU32::new(0) }
    }
    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { owner: AtomicU32::new(0), wait_lock: RawLock::new(), waiters: AtomicU32::new(0) }
    }
    pub fn owner_word(&self) -> u32 {
        self.owner.load(Ordering::Relaxed)
    }
}

#[cfg(not(loom))]
impl Default for RtMutex {
    fn default() -> Self {
        Self::new()
    }
}

fn task_id(cpu: u32) -> u32 {
    super::mutex::task_id(cpu)
}

pub struct RtMutexSystem<'s, 'a> {
    flavor: RtFlavor,
    spin: &'s LockSystem<'a>,
    tasks: Tasks<'s>,
}

impl<'s, 'a> RtMutexSystem<'s, 'a> {
    pub fn new(flavor: RtFlavor, spin: &'s LockSystem<'a>, tasks: Tasks<'s>) -> Self {
        Self { flavor, spin, tasks }
    }

    fn has_waiters(&self, m: &RtMutex) -> bool {
        m.waiters.load(Ordering::Relaxed) != 0
    }

    /// `rt_mutex_owner_encode()` + `rt_mutex_set_owner()`.
    fn set_owner(&self, m: &RtMutex, task: u32) {
        let val = task | if self.has_waiters(m) { HAS_WAITERS } else { 0 };
        match self.flavor {
            // WRITE_ONCE(): "lock->wait_lock is held", but wait_lock orders
            // nothing against a fast-path unlock, which never takes it.
            RtFlavor::V4_4 => m.owner.store(val, Ordering::Relaxed),
            // The seed's xchg_acquire(): pairs with the fast-path unlock's
            // cmpxchg_release, through mark_rt_mutex_waiters()' RMW (an RMW
            // continues the release sequence).
            RtFlavor::Fixed => {
                m.owner.swap(val, Ordering::Acquire);
            }
            // Before 700318d1d7b3 the owner was a plain store too, but the
            // mark's cmpxchg() was a full barrier (below).
            RtFlavor::V4_3 => m.owner.store(val, Ordering::Relaxed),
        }
    }

    /// `rt_mutex_clear_owner()` / `mark_wakeup_next_waiter()`'s owner store:
    /// WRITE_ONCE() under `wait_lock`; the wait_lock release publishes it.
    fn clear_owner(&self, m: &RtMutex) {
        let val = if self.has_waiters(m) { HAS_WAITERS } else { 0 };
        m.owner.store(val, Ordering::Relaxed);
    }

    /// `mark_rt_mutex_waiters()`: set the bit so that the owner's fast-path
    /// unlock fails and takes `wait_lock`.
    fn mark_waiters(&self, m: &RtMutex) {
        let order = match self.flavor {
            RtFlavor::V4_3 => Ordering::SeqCst,
            _ => Ordering::Relaxed,
        };
        let mut owner = m.owner.load(Ordering::Relaxed);
        while let Err(o) = m.owner.compare_exchange(owner, owner | HAS_WAITERS, order, Ordering::Relaxed) {
            owner = o;
        }
    }

    /// `fixup_rt_mutex_waiters(lock, acquire_lock = true)`.
    fn fixup_waiters(&self, m: &RtMutex) {
        if self.has_waiters(m) {
            return;
        }
        let owner = m.owner.load(Ordering::Relaxed);
        if owner & HAS_WAITERS != 0 {
            match self.flavor {
                RtFlavor::Fixed => {
                    m.owner.swap(owner & !HAS_WAITERS, Ordering::Acquire);
                }
                _ => m.owner.store(owner & !HAS_WAITERS, Ordering::Relaxed),
            }
        }
    }

    /// `try_to_take_rt_mutex(lock, current, waiter)` (under `wait_lock`).
    fn try_to_take<P: Platform>(&self, p: &P, m: &RtMutex, waiter: bool) -> bool {
        self.mark_waiters(m);
        if m.owner.load(Ordering::Relaxed) & !HAS_WAITERS != 0 {
            return false;
        }
        let me = 1u32 << p.cpu();
        let w = m.waiters.load(Ordering::Relaxed);
        if waiter {
            // Only the top waiter may take it; it dequeues itself.
            if w & w.wrapping_neg() != me {
                return false;
            }
            m.waiters.store(w & !me, Ordering::Relaxed);
        } else if w != 0 {
            // One priority for all: no stealing from a waiter.
            return false;
        }
        // takeit:
        self.set_owner(m, task_id(p.cpu()));
        true
    }

    /// `rt_mutex_lock()`.
    pub fn lock<P: Platform>(&self, p: &P, m: &RtMutex) {
        // rt_mutex_cmpxchg_acquire(lock, NULL, current)
        let order = if self.flavor == RtFlavor::V4_3 { Ordering::SeqCst } else { Ordering::Acquire };
        if m.owner.compare_exchange(0, task_id(p.cpu()), order, Ordering::Relaxed).is_ok() {
            return;
        }
        p.event(LockEvent::RtMutexSlowpath, 1);
        self.spin.lock(p, &m.wait_lock);
        if !self.try_to_take(p, m, false) {
            self.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
            // task_blocks_on_rt_mutex(): enqueue.
            let w = m.waiters.load(Ordering::Relaxed);
            m.waiters.store(w | 1 << p.cpu(), Ordering::Relaxed);
            loop {
                if self.try_to_take(p, m, true) {
                    break;
                }
                self.spin.unlock(p, &m.wait_lock);
                self.tasks.schedule(p);
                self.spin.lock(p, &m.wait_lock);
                self.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
            }
            self.tasks.set_current_state_plain(p, TASK_RUNNING);
        }
        self.fixup_waiters(m);
        self.spin.unlock(p, &m.wait_lock);
    }

    /// `rt_mutex_unlock()`.
    pub fn unlock<P: Platform>(&self, p: &P, m: &RtMutex) {
        let me = task_id(p.cpu());
        let order = if self.flavor == RtFlavor::V4_3 { Ordering::SeqCst } else { Ordering::Release };
        // rt_mutex_cmpxchg_release(lock, current, NULL)
        if m.owner.compare_exchange(me, 0, order, Ordering::Relaxed).is_ok() {
            return;
        }
        self.spin.lock(p, &m.wait_lock);
        while !self.has_waiters(m) {
            // unlock_rt_mutex_safe(): clear the bit, drop wait_lock, then
            // the release cmpxchg (a new waiter may set the bit again).
            m.owner.store(me, Ordering::Relaxed);
            self.spin.unlock(p, &m.wait_lock);
            if m.owner.compare_exchange(me, 0, order, Ordering::Relaxed).is_ok() {
                return;
            }
            self.spin.lock(p, &m.wait_lock);
        }
        // mark_wakeup_next_waiter(): the top waiter will take it; the owner
        // word says "no owner, waiters" (ordered by wait_lock).
        let w = m.waiters.load(Ordering::Relaxed);
        let top = w.trailing_zeros();
        self.clear_owner(m);
        self.spin.unlock(p, &m.wait_lock);
        self.tasks.wake_up_process(p, top);
    }
}
