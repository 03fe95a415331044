//! The page lock and page bit waits (mm/filemap.c) in the releases pvlock
//! compares ([`PageWakeVariant`]), over the wait queues of
//! [`super::waitqueue`], and the page-wake workload.
//!
//! Sources (read with the search tool unless said otherwise):
//! * `page-wake-v5.7`: `wait_on_page_bit_common()` / `wake_page_function()`
//!   of 62906027091f (v4.10, PageWaiters) .. v5.7: the waiter re-queues
//!   itself while the bit is set; the wake function stops the walk if the
//!   bit is set again and otherwise is `autoremove_wake_function()` (wake,
//!   then `list_del_init()` if the task was sleeping). From the structure
//!   as remembered and the v4.14 `__wake_up_common()` text; not compared
//!   line by line.
//! * `page-wake-rfc-2020-07`: Linus's RFC in the thread of the seed
//!   ("mm: silence soft lockups from unlock_page", 2020-07-22), as quoted
//!   in Oleg's reply: the waker takes the bit for an exclusive waiter,
//!   reads `target = wait->private`, `smp_mb()`, `list_del_init()`, then
//!   `wake_up_state(target)`; the waiter loops until `list_empty_careful()`.
//! * `page-wake-oleg-woken`: Oleg's reply: `wait->flags |= WQ_FLAG_WOKEN;
//!   wmb(); autoremove_wake_function()`; the waiter breaks on WOKEN, then
//!   `finish_wait()`, `rmb()`.
//! * `page-wake-2a9127fcf229`: the merged rewrite (commit message read):
//!   WOKEN, `wake_up_state()`, `list_del_init_careful()` as the very last
//!   access; strictly fair hand-off to exclusive waiters.
//! * `page-wake-upstream`: 5ef64cc8987a (commit message and the folio text
//!   of today read): WOKEN|DONE by store-release, the load-acquire in the
//!   waiter, `WQ_FLAG_CUSTOM` after `sysctl_page_lock_unfairness` (5)
//!   failed attempts.
//!
//! Simplifications, all ours: one wait queue per page (the kernel hashes
//! pages into 256 queues, so `page_match` matters only on collisions); no
//! bookmark in the walk (`WAITQUEUE_WALK_BREAK_CNT` = 64 entries, more than
//! any run here queues); PG_locked is bit 0 and PG_waiters bit 7 of the
//! flag word, as in the kernel's `enum pageflags`.

use super::waitqueue::{
    trace, EntryRef, WaitQueueHead, WaitQueues, WQ_FLAG_CUSTOM, WQ_FLAG_DONE, WQ_FLAG_EXCLUSIVE, WQ_FLAG_WOKEN,
};
use super::{TASK_RUNNING, TASK_UNINTERRUPTIBLE};
use crate::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use crate::torture::{Clock, StopReason};
use crate::Platform;
use pvlock_abi::{GuestPhase, LockEvent, PageWakeVariant, TraceEvent, WakeStep, Window};

/// What `pvlock list variants` says about a page wake path.
pub struct PageWakeInfo {
    pub variant: PageWakeVariant,
    pub summary: &'static str,
    pub source: &'static str,
}

pub const PAGE_WAKE_VARIANTS: &[PageWakeInfo] = &[
    PageWakeInfo {
        variant: PageWakeVariant::V5_7,
        summary: "autoremove_wake_function(): wake, then unlink; a waiter that loses the bit re-queues at the tail",
        source: "mm/filemap.c 62906027091f (v4.10) .. v5.7, from memory",
    },
    PageWakeInfo {
        variant: PageWakeVariant::Rfc2020,
        summary: "target = wait->private; smp_mb(); list_del_init(); wake_up_state(target): the target may have exited",
        source: "Linus's RFC 'mm: silence soft lockups from unlock_page' (2020-07-22), as quoted in the seed",
    },
    PageWakeInfo {
        variant: PageWakeVariant::OlegWoken,
        summary: "flags |= WQ_FLAG_WOKEN; wmb(); autoremove_wake_function(); the waiter breaks on WOKEN, rmb()",
        source: "Oleg Nesterov's reply in the seed (2020-07-23)",
    },
    PageWakeInfo {
        variant: PageWakeVariant::Rewrite2a9127,
        summary: "WOKEN, wake, list_del_init_careful() last; the waker hands the bit to exclusive waiters",
        source: "2a9127fcf229 'mm: rewrite wait_on_page_bit_common() logic' (commit message read)",
    },
    PageWakeInfo {
        variant: PageWakeVariant::Upstream,
        summary: "store-release of WOKEN|DONE, hand-off after sysctl_page_lock_unfairness (5) steals",
        source: "5ef64cc8987a (v5.9) and folio_wait_bit_common() today (text read)",
    },
    PageWakeInfo {
        variant: PageWakeVariant::MutantDelBeforePrivate,
        summary: "the RFC with list_del_init() before reading wait->private: reads a returned stack frame",
        source: "none (mutant)",
    },
    PageWakeInfo {
        variant: PageWakeVariant::MutantWokenAfterWake,
        summary: "Oleg's WOKEN with the flag stored after the wakeup (no wmb()): a lost wakeup",
        source: "none (mutant)",
    },
];

/// `PG_locked`.
pub const PG_LOCKED: u32 = 0;
/// `PG_waiters`: the flag word's bit 7, so `clear_bit_unlock_is_negative_byte()`
/// reads it in the same `lock andb`.
pub const PG_WAITERS: u32 = 7;
/// [`TraceEvent::PageWaitSeen`]'s value: the waiter saw its entry
/// unlinked (`list_empty_careful()`).
pub const SEEN_UNLINKED: u32 = 1;
/// ... saw `WQ_FLAG_WOKEN` in its entry's flags.
pub const SEEN_WOKEN: u32 = 2;
/// A walk step (one entry visited: the wake function, a wakeup's kick
/// included) longer than this many TSC cycles (40 us at 2.5 GHz; a visit
/// takes well under 10 us even with the kick's VM exit) had its vCPU
/// preempted, by the host or the VMM's window stall; its time is left out
/// of the per-entry walk cost (`page_wake_visit_cycles`), so that the cost
/// compares wake paths rather than host scheduling.
pub const STALL_GAP_CYCLES: u64 = 100_000;
/// `sysctl_page_lock_unfairness`'s default (5ef64cc8987a).
pub const PAGE_LOCK_UNFAIRNESS: i32 = 5;
/// Most pages a run may have.
pub const MAX_PAGES: usize = pvlock_abi::MAX_PAGES;

/// A page as the lock sees it: its flag word, and our owner mark (CPU + 1)
/// for the exclusion check.
#[repr(C, align(64))]
pub struct Page {
    pub flags: AtomicU32,
    pub owner: AtomicU32,
}

impl Page {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { flags: AtomicU32::new(0), owner: AtomicU32::new(0) }
    }
    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { flags: AtomicU32::new(0), owner: AtomicU32::new(0) }
    }
    fn test_bit(&self, bit: u32) -> bool {
        self.flags.load(Ordering::Relaxed) & (1 << bit) != 0
    }
    /// `test_and_set_bit()`: a fully ordered RMW (`lock bts`).
    fn test_and_set_bit(&self, bit: u32) -> bool {
        self.flags.fetch_or(1 << bit, Ordering::SeqCst) & (1 << bit) != 0
    }
    /// `test_and_set_bit_lock()`: acquire.
    fn test_and_set_bit_lock(&self, bit: u32) -> bool {
        self.flags.fetch_or(1 << bit, Ordering::Acquire) & (1 << bit) != 0
    }
    /// `SetPageWaiters()` / `ClearPageWaiters()`: atomic bit ops, under the
    /// queue lock.
    fn set_waiters(&self, on: bool) {
        if on {
            self.flags.fetch_or(1 << PG_WAITERS, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!(1 << PG_WAITERS), Ordering::Relaxed);
        }
    }
    pub fn is_locked(&self) -> bool {
        self.test_bit(PG_LOCKED)
    }
}

#[cfg(not(loom))]
impl Default for Page {
    fn default() -> Self {
        Self::new()
    }
}

/// `enum behavior` of `wait_on_page_bit_common()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// `lock_page()`: take the bit when woken.
    Exclusive,
    /// `wait_on_page_locked()`: return once the bit is clear.
    Shared,
}

/// What the pages run with.
pub struct PageSystem<'s, 'a> {
    pub wq: WaitQueues<'s, 'a>,
    pub variant: PageWakeVariant,
    pub pages: &'s [Page],
    pub queues: &'s [WaitQueueHead],
}

/// The wait key (`struct wait_page_key`).
struct Key {
    page: u32,
    bit_nr: u32,
    page_match: bool,
}

impl<'s, 'a> PageSystem<'s, 'a> {
    /// `page_waitqueue(page)`.
    fn queue(&self, page: usize) -> &'s WaitQueueHead {
        &self.queues[page % self.queues.len()]
    }

    // --------------------------------------------------------- lock side --

    /// `lock_page()`: the trylock, else `__lock_page()`.
    pub fn lock_page<P: Platform>(&self, p: &P, page: usize) {
        if self.pages[page].test_and_set_bit_lock(PG_LOCKED) {
            self.wait_on_page_bit_common(p, page, PG_LOCKED, Behavior::Exclusive);
        }
        if self.pages[page].owner.swap(p.cpu() + 1, Ordering::Relaxed) != 0 {
            p.bug(format_args!("page {page} locked by two tasks (mutual exclusion)"));
        }
    }

    /// `wait_on_page_locked()`.
    pub fn wait_on_page_locked<P: Platform>(&self, p: &P, page: usize) -> bool {
        if !self.pages[page].is_locked() {
            return false;
        }
        self.wait_on_page_bit_common(p, page, PG_LOCKED, Behavior::Shared);
        true
    }

    /// `unlock_page()`: `clear_bit_unlock_is_negative_byte()` (`lock andb`:
    /// the release of the page, and a full barrier before the PG_waiters
    /// test, pairing with the waiter's `SetPageWaiters()` + bit test under
    /// the queue lock) then `wake_up_page_bit()` if there are waiters.
    pub fn unlock_page<P: Platform>(&self, p: &P, page: usize) {
        let pg = &self.pages[page];
        if pg.owner.swap(0, Ordering::Relaxed) != p.cpu() + 1 {
            p.bug(format_args!("unlock_page({page}) by a task that does not hold it"));
        }
        let old = pg.flags.fetch_and(!(1 << PG_LOCKED), Ordering::SeqCst);
        if old & (1 << PG_WAITERS) != 0 {
            self.wake_up_page_bit(p, page, PG_LOCKED);
        }
    }

    /// `wake_up_page_bit()`: the walk of `__wake_up_locked_key()` under the
    /// queue lock, then `ClearPageWaiters()` if nothing (for this page) is
    /// left queued.
    fn wake_up_page_bit<P: Platform>(&self, p: &P, page: usize, bit_nr: u32) {
        let q = self.queue(page);
        let wq = &self.wq;
        let mut key = Key { page: page as u32 + 1, bit_nr, page_match: false };
        p.event(LockEvent::PageWakeCalls, 1);
        wq.spin.lock(p, &q.lock);
        p.event(LockEvent::PageWakeQueued, q.len() as u64);
        let t0 = p.cycles();
        // __wake_up_common(nr_exclusive = 1): list_for_each_entry_safe.
        let mut nr_exclusive = 1u32;
        let mut cur = wq.first(q);
        while cur != super::waitqueue::HEAD {
            let tv = p.cycles();
            let r = wq.entry_ref(p, cur, WakeStep::Walk);
            let next = wq.next_checked(p, r);
            let flags = wq.check_entry(p, r, WakeStep::Walk).flags.load(Ordering::Relaxed);
            p.event(LockEvent::PageWakeVisits, 1);
            trace(p, TraceEvent::PageVisit, q.addr(), r.owner(), flags);
            let ret = self.wake_page_function(p, q, r, &mut key);
            let dv = p.cycles().wrapping_sub(tv);
            if dv < STALL_GAP_CYCLES {
                p.event(LockEvent::PageWakeVisitCycles, dv);
                p.event(LockEvent::PageWakeVisitsTimed, 1);
            } else {
                p.event(LockEvent::PageWakeVisitsStalled, 1);
            }
            if ret < 0 {
                break;
            }
            if ret > 0 && flags & WQ_FLAG_EXCLUSIVE != 0 {
                nr_exclusive -= 1;
                if nr_exclusive == 0 {
                    break;
                }
            }
            cur = next;
        }
        let dt = p.cycles().wrapping_sub(t0);
        p.event(LockEvent::PageWakeLoopCycles, dt);
        p.event_max(LockEvent::PageWakeLoopMaxCycles, dt);
        if !wq.active(q) || !key.page_match {
            self.pages[page].set_waiters(false);
        }
        wq.spin.unlock(p, &q.lock);
    }

    /// `wake_page_function()` of the run's variant, for entry `r`.
    fn wake_page_function<P: Platform>(&self, p: &P, q: &WaitQueueHead, r: EntryRef, key: &mut Key) -> i32 {
        let wq = &self.wq;
        let f = wq.check_entry(p, r, WakeStep::Walk);
        // wake_page_match()
        if f.page.load(Ordering::Relaxed) != key.page {
            return 0;
        }
        key.page_match = true;
        if f.bit_nr.load(Ordering::Relaxed) != key.bit_nr {
            return 0;
        }
        let page = &self.pages[key.page as usize - 1];
        let flags = f.flags.load(Ordering::Relaxed);
        match self.variant {
            PageWakeVariant::V5_7 => {
                // Stop walking if it's locked again.
                if page.test_bit(key.bit_nr) {
                    return -1;
                }
                self.autoremove_wake_function(p, q, r)
            }
            PageWakeVariant::Rfc2020 | PageWakeVariant::MutantDelBeforePrivate => {
                let mut ret = 0;
                if flags & WQ_FLAG_EXCLUSIVE != 0 {
                    if page.test_and_set_bit(key.bit_nr) {
                        return -1;
                    }
                    ret = 1;
                }
                let target = if self.variant == PageWakeVariant::Rfc2020 {
                    let t = wq.read_private(p, r, WakeStep::ReadPrivate);
                    // smp_mb(): the RFC's, before the unlink; orders the
                    // private read before the list_del_init the waiter
                    // watches for (its list_empty_careful()).
                    fence(Ordering::SeqCst);
                    wq.list_del_init(p, q, r.id, Some(r), false);
                    p.race_window(Window::PageWakeBetween);
                    t
                } else {
                    // Mutant: unlink first, then read wait->private from an
                    // entry the waiter may already have returned from.
                    fence(Ordering::SeqCst);
                    wq.list_del_init(p, q, r.id, Some(r), false);
                    p.race_window(Window::PageWakeBetween);
                    wq.read_private(p, r, WakeStep::ReadPrivate)
                };
                // "There's another memory barrier in the wakeup path":
                // try_to_wake_up()'s, in wake_task().
                wq.wake_task(p, target);
                ret
            }
            PageWakeVariant::OlegWoken | PageWakeVariant::MutantWokenAfterWake => {
                let mut ret = 0;
                if flags & WQ_FLAG_EXCLUSIVE != 0 {
                    if page.test_and_set_bit(key.bit_nr) {
                        return -1;
                    }
                    ret = 1;
                }
                if self.variant == PageWakeVariant::OlegWoken {
                    let f = wq.check_entry(p, r, WakeStep::SetFlags).flags.fetch_or(WQ_FLAG_WOKEN, Ordering::Relaxed);
                    trace(p, TraceEvent::PageSetWoken, q.addr(), r.owner(), f | WQ_FLAG_WOKEN);
                    // wmb(): WOKEN visible before the wakeup; pairs with the
                    // waiter's rmb() after finish_wait() and with its
                    // set_current_state() + WOKEN test (the wakeup's own
                    // barrier orders the state read after this).
                    fence(Ordering::Release);
                    self.autoremove_wake_function(p, q, r).max(ret)
                } else {
                    // Mutant: the WOKEN store made visible after the wakeup
                    // (what the wmb() forbids).
                    let t = wq.read_private(p, r, WakeStep::ReadPrivate);
                    let woke = wq.wake_task(p, t);
                    p.race_window(Window::PageWakeBeforeWoken);
                    let f = wq.check_entry(p, r, WakeStep::SetFlags).flags.fetch_or(WQ_FLAG_WOKEN, Ordering::Relaxed);
                    trace(p, TraceEvent::PageSetWoken, q.addr(), r.owner(), f | WQ_FLAG_WOKEN);
                    if woke {
                        wq.list_del_init(p, q, r.id, Some(r), false);
                        ret.max(1)
                    } else {
                        ret
                    }
                }
            }
            PageWakeVariant::Rewrite2a9127 | PageWakeVariant::Upstream => {
                let mut flags = flags;
                if flags & WQ_FLAG_EXCLUSIVE != 0 {
                    if self.variant == PageWakeVariant::Rewrite2a9127 {
                        if page.test_and_set_bit(key.bit_nr) {
                            return -1;
                        }
                    } else {
                        if page.test_bit(key.bit_nr) {
                            return -1;
                        }
                        if flags & WQ_FLAG_CUSTOM != 0 {
                            if page.test_and_set_bit(key.bit_nr) {
                                return -1;
                            }
                            flags |= WQ_FLAG_DONE;
                        }
                    }
                }
                let fr = wq.check_entry(p, r, WakeStep::SetFlags);
                if self.variant == PageWakeVariant::Rewrite2a9127 {
                    // Plain `wait->flags |= WQ_FLAG_WOKEN` (under the queue
                    // lock); the waiter reads it after set_current_state()
                    // (the wakeup's barrier is the partner).
                    fr.flags.store(flags | WQ_FLAG_WOKEN, Ordering::Relaxed);
                } else {
                    // smp_store_release(): pairs with the waiter's
                    // smp_load_acquire(&wait->flags).
                    fr.flags.store(flags | WQ_FLAG_WOKEN, Ordering::Release);
                }
                trace(p, TraceEvent::PageSetWoken, q.addr(), r.owner(), flags | WQ_FLAG_WOKEN);
                let t = wq.read_private(p, r, WakeStep::ReadPrivate);
                wq.wake_task(p, t);
                // The waiter may see WOKEN and spin on its entry: it still
                // needs the queue lock (finish_wait()) until this unlink.
                p.race_window(Window::PageWakeBetween);
                // The absolute last access (store-release of `next`).
                wq.list_del_init(p, q, r.id, Some(r), true);
                (flags & WQ_FLAG_EXCLUSIVE != 0) as i32
            }
        }
    }

    /// `autoremove_wake_function()`: `default_wake_function()` (the task
    /// pointer read from the live, linked entry) and, if it woke the task,
    /// `list_del_init()`: the waiter cannot return before that (its
    /// `finish_wait()` takes the queue lock while the entry is linked).
    fn autoremove_wake_function<P: Platform>(&self, p: &P, q: &WaitQueueHead, r: EntryRef) -> i32 {
        let t = self.wq.read_private(p, r, WakeStep::ReadPrivate);
        let woke = self.wq.wake_task(p, t);
        if woke {
            p.race_window(Window::PageWakeBetween);
            self.wq.list_del_init(p, q, r.id, Some(r), false);
        }
        woke as i32
    }

    // --------------------------------------------------------- wait side --

    /// `io_schedule()` in state `TASK_UNINTERRUPTIBLE` (set by the caller).
    fn io_schedule<P: Platform>(&self, p: &P) {
        self.wq.tasks.schedule(p);
    }

    /// `signal_pending_state(TASK_UNINTERRUPTIBLE|TASK_KILLABLE)`: a fatal
    /// signal (`lock_page_killable()` semantics; none is sent in the runs).
    fn signal_pending<P: Platform>(&self, p: &P) -> bool {
        self.wq.tasks.fatal_signal_pending(p)
    }

    /// `wait_on_page_bit_common()`: returns 0, or -EINTR (-4).
    pub fn wait_on_page_bit_common<P: Platform>(&self, p: &P, page: usize, bit_nr: u32, behavior: Behavior) -> i32 {
        let wq = &self.wq;
        let q = self.queue(page);
        let id = wq.enter_frame(p, self.variant as u32);
        let me = wq.own(p, id);
        me.page.store(page as u32 + 1, Ordering::Relaxed);
        me.bit_nr.store(bit_nr, Ordering::Relaxed);
        p.event(LockEvent::PageWaits, 1);
        p.set_phase(GuestPhase::Waiting, q.addr(), me as *const _ as usize);
        let ret = match self.variant {
            PageWakeVariant::V5_7 => self.wait_v5_7(p, q, id, page, bit_nr, behavior),
            PageWakeVariant::Rfc2020 | PageWakeVariant::MutantDelBeforePrivate => {
                self.wait_rfc(p, q, id, page, bit_nr, behavior)
            }
            PageWakeVariant::OlegWoken | PageWakeVariant::MutantWokenAfterWake => {
                self.wait_oleg(p, q, id, page, bit_nr, behavior)
            }
            PageWakeVariant::Rewrite2a9127 => self.wait_2a9127(p, q, id, page, bit_nr, behavior),
            PageWakeVariant::Upstream => self.wait_upstream(p, q, id, page, bit_nr, behavior),
        };
        // The frame is gone from here on.
        trace(p, TraceEvent::PageWaitReturn, q.addr(), p.cpu(), ret as u32);
        wq.leave_frame(p, id);
        p.set_phase(GuestPhase::Running, 0, 0);
        ret
    }

    /// v4.10..v5.7: queue (again) while the bit is set; an exclusive waiter
    /// that loses the bit after a wakeup re-queues at the tail.
    fn wait_v5_7<P: Platform>(&self, p: &P, q: &WaitQueueHead, id: u32, page: usize, bit_nr: u32, b: Behavior) -> i32 {
        let wq = &self.wq;
        let pg = &self.pages[page];
        let me = wq.own(p, id);
        me.flags.store(if b == Behavior::Exclusive { WQ_FLAG_EXCLUSIVE } else { 0 }, Ordering::Relaxed);
        let mut ret = 0;
        let mut queued_before = false;
        loop {
            wq.spin.lock(p, &q.lock);
            if wq.list_empty(p, id) {
                if queued_before {
                    p.event(LockEvent::PageWaitRequeue, 1);
                }
                wq.add_tail(p, q, id);
                queued_before = true;
                pg.set_waiters(true);
            }
            // set_current_state() under the lock: its smp_mb() pairs with
            // try_to_wake_up()'s, so a waker that found us (under the lock,
            // after this) sees the sleeping state.
            wq.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
            wq.spin.unlock(p, &q.lock);
            if pg.test_bit(bit_nr) {
                self.io_schedule(p);
            }
            match b {
                Behavior::Exclusive => {
                    if !pg.test_and_set_bit_lock(bit_nr) {
                        break;
                    }
                }
                Behavior::Shared => {
                    if !pg.test_bit(bit_nr) {
                        break;
                    }
                }
            }
            if self.signal_pending(p) {
                ret = -4;
                break;
            }
        }
        wq.finish_wait(p, q, id, false);
        ret
    }

    /// The common setup of the 2020 paths: under the queue lock,
    /// `SetPageWaiters()` and the last trylock (`trylock_page_bit_common()`:
    /// exclusive takes the bit, shared tests it; success sets WOKEN, and
    /// DONE from 5ef64cc8987a on), else queue the entry.
    fn queue_unless_trylock<P: Platform>(&self, p: &P, q: &WaitQueueHead, id: u32, page: usize, bit_nr: u32) {
        let wq = &self.wq;
        let pg = &self.pages[page];
        let me = wq.own(p, id);
        let exclusive = me.flags.load(Ordering::Relaxed) & WQ_FLAG_EXCLUSIVE != 0;
        wq.spin.lock(p, &q.lock);
        pg.set_waiters(true);
        // PG_waiters visible before the bit test (test_and_set_bit() is
        // fully ordered; the shared test gets the same from x86's locked
        // SetPageWaiters()): pairs with unlock_page()'s lock andb.
        let got = if exclusive {
            !pg.test_and_set_bit(bit_nr)
        } else {
            fence(Ordering::SeqCst);
            !pg.test_bit(bit_nr)
        };
        if got {
            let done = if self.variant == PageWakeVariant::Upstream { WQ_FLAG_DONE } else { 0 };
            me.flags.fetch_or(WQ_FLAG_WOKEN | done, Ordering::Relaxed);
        } else {
            wq.add_tail(p, q, id);
        }
        wq.spin.unlock(p, &q.lock);
    }

    fn wait_rfc<P: Platform>(&self, p: &P, q: &WaitQueueHead, id: u32, page: usize, bit_nr: u32, b: Behavior) -> i32 {
        let wq = &self.wq;
        wq.own(p, id).flags.store(if b == Behavior::Exclusive { WQ_FLAG_EXCLUSIVE } else { 0 }, Ordering::Relaxed);
        self.queue_unless_trylock(p, q, id, page, bit_nr);
        loop {
            wq.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
            if self.signal_pending(p) {
                break;
            }
            // The entry unlinked by the waker is success: no lock taken.
            if wq.list_empty_careful(p, id, false) {
                trace(p, TraceEvent::PageWaitSeen, q.addr(), p.cpu(), SEEN_UNLINKED);
                break;
            }
            self.io_schedule(p);
        }
        let ok = wq.list_empty_careful(p, id, false);
        wq.finish_wait(p, q, id, false);
        if ok {
            0
        } else {
            -4
        }
    }

    fn wait_oleg<P: Platform>(&self, p: &P, q: &WaitQueueHead, id: u32, page: usize, bit_nr: u32, b: Behavior) -> i32 {
        let wq = &self.wq;
        let me = wq.own(p, id);
        me.flags.store(if b == Behavior::Exclusive { WQ_FLAG_EXCLUSIVE } else { 0 }, Ordering::Relaxed);
        self.queue_unless_trylock(p, q, id, page, bit_nr);
        loop {
            // set_current_state()'s smp_mb() pairs with the wakeup's: a
            // waker that saw us not sleeping set WOKEN before (wmb()).
            wq.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
            if me.flags.load(Ordering::Relaxed) & WQ_FLAG_WOKEN != 0 {
                trace(p, TraceEvent::PageWaitSeen, q.addr(), p.cpu(), SEEN_WOKEN);
                break;
            }
            if self.signal_pending(p) {
                break;
            }
            self.io_schedule(p);
        }
        wq.finish_wait(p, q, id, false);
        // rmb(): pairs with the waker's wmb().
        fence(Ordering::Acquire);
        if me.flags.load(Ordering::Relaxed) & WQ_FLAG_WOKEN != 0 {
            0
        } else {
            -4
        }
    }

    fn wait_2a9127<P: Platform>(
        &self,
        p: &P,
        q: &WaitQueueHead,
        id: u32,
        page: usize,
        bit_nr: u32,
        b: Behavior,
    ) -> i32 {
        let wq = &self.wq;
        let me = wq.own(p, id);
        me.flags.store(if b == Behavior::Exclusive { WQ_FLAG_EXCLUSIVE } else { 0 }, Ordering::Relaxed);
        self.queue_unless_trylock(p, q, id, page, bit_nr);
        loop {
            wq.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
            if self.signal_pending(p) {
                break;
            }
            if me.flags.load(Ordering::Relaxed) & WQ_FLAG_WOKEN != 0 {
                trace(p, TraceEvent::PageWaitSeen, q.addr(), p.cpu(), SEEN_WOKEN);
                break;
            }
            self.io_schedule(p);
        }
        // finish_wait(): list_empty_careful()'s load-acquire pairs with the
        // waker's list_del_init_careful().
        wq.finish_wait(p, q, id, true);
        if me.flags.load(Ordering::Relaxed) & WQ_FLAG_WOKEN != 0 {
            0
        } else {
            -4
        }
    }

    fn wait_upstream<P: Platform>(
        &self,
        p: &P,
        q: &WaitQueueHead,
        id: u32,
        page: usize,
        bit_nr: u32,
        b: Behavior,
    ) -> i32 {
        let wq = &self.wq;
        let me = wq.own(p, id);
        let pg = &self.pages[page];
        let mut unfairness = PAGE_LOCK_UNFAIRNESS;
        'repeat: loop {
            let mut f = 0;
            if b == Behavior::Exclusive {
                f = WQ_FLAG_EXCLUSIVE;
                unfairness -= 1;
                if unfairness < 0 {
                    f |= WQ_FLAG_CUSTOM;
                }
            }
            me.flags.store(f, Ordering::Relaxed);
            self.queue_unless_trylock(p, q, id, page, bit_nr);
            loop {
                wq.tasks.set_current_state(p, TASK_UNINTERRUPTIBLE);
                // smp_load_acquire(): pairs with the waker's store-release.
                let flags = me.flags.load(Ordering::Acquire);
                if flags & WQ_FLAG_WOKEN == 0 {
                    if self.signal_pending(p) {
                        break 'repeat;
                    }
                    self.io_schedule(p);
                    continue;
                }
                trace(p, TraceEvent::PageWaitSeen, q.addr(), p.cpu(), SEEN_WOKEN);
                if b != Behavior::Exclusive || flags & WQ_FLAG_DONE != 0 {
                    break 'repeat;
                }
                // Woken without the hand-off: take the bit ourselves, or
                // queue again.
                if pg.test_and_set_bit(bit_nr) {
                    p.event(LockEvent::PageWaitRequeue, 1);
                    continue 'repeat;
                }
                me.flags.fetch_or(WQ_FLAG_DONE, Ordering::Relaxed);
                break 'repeat;
            }
        }
        wq.finish_wait(p, q, id, true);
        let flags = me.flags.load(Ordering::Relaxed);
        let ok = match b {
            Behavior::Exclusive => flags & WQ_FLAG_DONE != 0,
            Behavior::Shared => flags & WQ_FLAG_WOKEN != 0,
        };
        if ok {
            0
        } else {
            -4
        }
    }
}

/// One CPU's outcome of the page-wake workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageWakeResult {
    pub cpu: u32,
    /// Page locks taken.
    pub locks: u64,
    /// Waits for a page unlock that queued.
    pub waits: u64,
    pub stop: StopReason,
}

/// The page-wake workload: every CPU's task takes a random page's lock
/// (critical section `cs_ns`) or waits for it to be unlocked; after every
/// wait that queued, the task exits and a new task takes its CPU after
/// `think_ns` (the window in which a late waker touches a freed task).
pub struct PageWakeRun<'s, 'a> {
    pub sys: &'s PageSystem<'s, 'a>,
    pub nr_pages: usize,
    pub cs_cycles: u64,
    pub think_cycles: u64,
    pub clock: Clock,
    pub stop: &'s AtomicU64,
    pub deadline: Option<u64>,
    pub max_ops: u64,
}

impl PageWakeRun<'_, '_> {
    pub fn run<P: Platform>(&self, p: &P) -> PageWakeResult {
        let mut r = PageWakeResult { cpu: p.cpu(), ..Default::default() };
        let sys = self.sys;
        let _ = self.clock;
        loop {
            if self.max_ops != 0 && r.locks + r.waits >= self.max_ops {
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
            let rnd = p.random();
            let page = if self.nr_pages == 1 { 0 } else { (rnd >> 8) as usize % self.nr_pages };
            if rnd & 1 == 0 {
                sys.lock_page(p, page);
                p.set_phase(GuestPhase::Holding, &sys.pages[page] as *const Page as usize, 0);
                p.race_window(Window::CriticalSection);
                spin_for(p, self.cs_cycles);
                p.set_phase(GuestPhase::Unlocking, 0, 0);
                sys.unlock_page(p, page);
                p.set_phase(GuestPhase::Running, 0, 0);
                r.locks += 1;
            } else if sys.wait_on_page_locked(p, page) {
                r.waits += 1;
                sys.wq.task_exit(p);
                p.race_window(Window::PageTaskExit);
                spin_for(p, self.think_cycles);
                sys.wq.task_fork(p);
            }
            spin_for(p, self.think_cycles);
        }
        debug_assert_eq!(sys.wq.tasks.current(p).state.load(Ordering::Relaxed), TASK_RUNNING);
        r
    }
}

/// After the run, every CPU done: no page locked, no queue with entries.
pub fn check_quiescent(sys: &PageSystem<'_, '_>, nr_pages: usize) -> Result<(), usize> {
    for i in 0..nr_pages {
        if sys.pages[i].is_locked() || !sys.queue(i).is_empty() {
            return Err(i);
        }
    }
    Ok(())
}

fn spin_for<P: Platform>(p: &P, cycles: u64) {
    let t = p.cycles();
    while p.cycles().wrapping_sub(t) < cycles {
        p.cpu_relax();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_page_wake_variant_is_described_once() {
        for v in PageWakeVariant::ALL {
            assert_eq!(PAGE_WAKE_VARIANTS.iter().filter(|i| i.variant == *v).count(), 1, "{v}");
        }
    }
}
