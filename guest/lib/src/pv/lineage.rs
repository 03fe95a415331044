//! The PV qspinlock from v4.5 to today, and the variants built on it.
//!
//! One implementation with the lines that differ between releases marked
//! by [`Flavor`], so that the differences read as the diffs they were:
//!
//! | flavor | source, release |
//! |---|---|
//! | `pv-v4.5` | the v4.5 release: 1c4941fd53af (pending bit set by the head, one steal attempt at slow-path entry, `pv_wait_head_or_lock()` takes the lock itself) + cd0272fab785 (`pv_wait_early()`; the head writes `vcpu_running` / `vcpu_halted` around its wait) + 45e898b73562 (statistics). v4.6 and v4.7 run the same lock logic but are not the same state: v4.6 added the `pv_lock_slowpath` counter ("locking/pvqspinlock: Enable slowpath locking count tracking") and hashes with the new `hash_64()` multiplier (689de1d6ca95, see `hash.rs`); pv-v4.5 counts and hashes as v4.5 did. |
//! | `pv-v4.8` | the v4.8 release: v4.7 + 229ce6315747 "Fix double hash race" (v4.8-rc2): the head writes `vcpu_hashed`, not `vcpu_halted`, before `pv_wait()`. The lock logic changed in nothing else; the counters are v4.6-v4.8's (`pv_lock_slowpath`; `pv_wait_again` and `pv_spurious_wakeup` counted in both `pv_wait_node()` and the head, as in v4.5, until "locking/pvstat: Separate wait_again and spurious wakeup stats" in v4.9). |
//! | `pv-rehash-2016` | our reconstruction of "[PATCH v2 2/5] locking/pvqspinlock: Fix missed PV wakeup problem" (July 2016), rule below, on the July 2016 tip tree its thread works on: `pv-v4.8`'s lock, with the separated v4.9 counters (the thread's `_Q_HASH_VAL` diff shows that base: its `pv_wait_node()` context no longer counts `pv_wait_again`). |
//! | `pv-upstream` | today's file (v6.x): hybrid queued/unfair trylock (11752adb68a3), `smp_mb__before_atomic()` + relaxed state cmpxchg in `pv_kick_node()` (34d54f3d6917 era), release/acquire lock-word RMWs, `pv_wait_early()` on the predecessor's state only (75437bb304b20 added `vcpu_is_preempted()`, 89340d0935c9 reverted it: today's behaviour is state only). |
//! | `mutant-no-store-mb` | upstream without the full barrier between `pv_wait_node()`'s halted store and its `locked` re-check (R5). |
//! | `mutant-slow-before-hash` | upstream whose head sets `_Q_SLOW_VAL` before its hash insert (the unlocker can find no entry: `pv_unhash()` BUG). |
//! | `mutant-halted-head` | upstream with v4.5's `vcpu_halted` head write (R1 in an otherwise upstream lock). |
//!
//! Orderings: up to `pv-rehash-2016` the lock-word and state RMWs are the
//! fully ordered `cmpxchg()`/`xchg()` of those releases (on x86 every one of
//! them is a `lock`-prefixed instruction anyway); the relaxed/acquire/release
//! forms and the explicit `smp_mb__before_atomic()` are upstream's.
//!
//! # `pv-rehash-2016`: the rule we implement
//!
//! The patch's aim, per its thread: a head kicked by the unlock slow path
//! that lost the lock to a stealer must hash itself again and set
//! `_Q_SLOW_VAL` before it waits again, so that the stealer's unlock kicks
//! it. The patch text is not available to us; we implement this rule:
//!
//! > Each time the queue head has failed its spin and is about to wait, it
//! > hashes itself and sets `_Q_SLOW_VAL` (as on its first wait) unless it
//! > hashed itself before *and* the locked byte still reads `_Q_SLOW_VAL`.
//! > Being hashed by `pv_kick_node()` (`vcpu_hashed`) counts as hashed only
//! > while the locked byte reads `_Q_SLOW_VAL`.
//!
//! So a kicked-then-stolen head (byte `_Q_LOCKED_VAL`) re-hashes; and a head
//! whose owner is between its `halted -> hashed` cmpxchg and its
//! `_Q_SLOW_VAL` store (window `kick-node-hash`) sees byte 1 and hashes too,
//! while the owner goes on to hash it as well: two `pv_hash()` in flight
//! for one lock (R3), as Peter Zijlstra's reply to the patch pointed out.

use super::{
    check_kicked_but_stolen, init_node, pv_kick, pv_wait, unlock_slow_unhash_release, PV_PREV_CHECK_MASK, SLOW_VAL,
};
use crate::node::PvNode;
use crate::qspinlock::{Cx, PvHooks};
use crate::sync::atomic::Ordering;
use crate::system::RawLock;
use crate::word::{self, Mo};
use crate::{Platform, WaitOn};
use pvlock_abi::{LockEvent, TraceEvent, Window};

/// `vcpu_running`.
pub(crate) const RUNNING: u8 = 0;
/// `vcpu_halted`: used only in `pv_wait_node()` (but see `pv-v4.5`).
pub(crate) const HALTED: u8 = 1;
/// `vcpu_hashed`: pv_hash'ed + halted.
pub(crate) const HASHED: u8 = 2;

/// Which point of the lineage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    V45,
    V48,
    Rehash2016,
    Upstream,
    NoStoreMb,
    SlowBeforeHash,
    HaltedHead,
}

impl Flavor {
    /// Built on today's file rather than on v4.5-v4.8.
    fn upstream_base(self) -> bool {
        matches!(self, Flavor::Upstream | Flavor::NoStoreMb | Flavor::SlowBeforeHash | Flavor::HaltedHead)
    }

    /// v4.5-v4.8 statistics: `pv_wait_again` in `pv_wait_node()` too, and a
    /// wakeup of the head to a held lock counted as `pv_spurious_wakeup`.
    /// 08be8f63c40c ("locking/pvstat: Separate wait_again and spurious
    /// wakeup stats", v4.9) moved each counter to one place.
    fn joint_wait_stats(self) -> bool {
        matches!(self, Flavor::V45 | Flavor::V48)
    }

    /// `qstat_pv_lock_slowpath` at the head exists from v4.6 on.
    fn counts_lock_slowpath(self) -> bool {
        self != Flavor::V45
    }

    /// A fully ordered RMW in the old releases, `mo` upstream.
    fn rmw(self, upstream: Mo) -> Mo {
        if self.upstream_base() {
            upstream
        } else {
            Mo::Full
        }
    }
}

pub(crate) struct Lineage(pub(crate) Flavor);

/// The kernel's `lp`: where (if anywhere) the head is hashed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lp {
    /// `NULL`: not hashed.
    None,
    /// `(struct qspinlock **)1`: hashed on our behalf by `pv_kick_node()`.
    ByOwner,
    /// Our own entry, slot index.
    Slot(usize),
}

/// `pv_queued_spin_steal_lock()` (from v4.5 until the hybrid trylock of
/// 11752adb68a3 replaced it): one attempt, only when both the locked byte
/// and pending are clear: *,0,0 -> *,0,1 on the byte.
pub(crate) fn steal_once<P: Platform>(cx: &Cx<'_, '_, P>, lock: &RawLock, mo: Mo) -> bool {
    let val = lock.val.load(Ordering::Relaxed);
    if val & word::LOCKED_PENDING_MASK == 0 && word::cmpxchg_locked(&lock.val, 0, word::LOCKED_VAL, mo) == 0 {
        cx.p.event(LockEvent::PvLockStealing, 1);
        return true;
    }
    false
}

/// `pv_hybrid_queued_unfair_trylock()` (11752adb68a3): keep trying to
/// steal while there is a queue and its head has not set pending.
fn hybrid_trylock<P: Platform>(cx: &Cx<'_, '_, P>, lock: &RawLock) -> bool {
    loop {
        let val = lock.val.load(Ordering::Relaxed);
        // *,0,0 -> *,0,1 ; acquire.
        if val & word::LOCKED_PENDING_MASK == 0
            && word::cmpxchg_locked(&lock.val, 0, word::LOCKED_VAL, Mo::Acquire) == 0
        {
            cx.p.event(LockEvent::PvLockStealing, 1);
            return true;
        }
        if val & word::TAIL_MASK == 0 || val & word::PENDING_MASK != 0 {
            return false;
        }
        cx.relax();
    }
}

/// `trylock_clear_pending()`: 0,1,0 -> 0,0,1 on `locked_pending`, only if
/// the locked byte reads 0 first.
pub(crate) fn trylock_clear_pending(lock: &RawLock, mo: Mo) -> bool {
    word::read_locked(&lock.val, Ordering::Relaxed) == 0
        && word::cmpxchg_locked_pending(&lock.val, word::PENDING_VAL as u16, word::LOCKED_VAL as u16, mo)
            == word::PENDING_VAL as u16
}

impl Lineage {
    /// `pv_wait_early()`: every 256 spins, look at the predecessor.
    #[inline]
    fn wait_early(&self, prev: &PvNode, loop_: u32) -> bool {
        if loop_ & PV_PREV_CHECK_MASK != 0 {
            return false;
        }
        prev.state.load(Ordering::Relaxed) != RUNNING
    }
}

impl PvHooks for Lineage {
    const PV: bool = true;

    fn trylock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock) -> bool {
        if self.0.upstream_base() {
            hybrid_trylock(cx, lock)
        } else {
            steal_once(cx, lock, Mo::Full)
        }
    }

    fn init_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, node: &PvNode) {
        init_node(cx, node);
    }

    /// `pv_wait_node()`: waits on its own node's state byte.
    fn wait_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, node: &PvNode, prev: &PvNode) {
        let p = cx.p;
        let f = self.0;
        let mut waitcnt = 0u64;
        loop {
            let mut wait_early = false;
            let mut loop_ = cx.spin_threshold();
            while loop_ != 0 {
                if node.locked.load(Ordering::Relaxed) != 0 {
                    return;
                }
                if self.wait_early(prev, loop_) {
                    wait_early = true;
                    break;
                }
                cx.relax();
                loop_ -= 1;
            }

            // [S] pn->state = halted     [S] next->locked = 1
            //     MB                         MB
            // [L] pn->locked             [RmW] pn->state = hashed
            // Pairs with the state cmpxchg in kick_node.
            if f == Flavor::NoStoreMb {
                // The mutant: `WRITE_ONCE()` only; the store may pass the
                // load below (store buffering), nobody hashes us: R5.
                node.state.store(HALTED, Ordering::Relaxed);
            } else {
                // `smp_store_mb()` (x86: xchg).
                word::xchg_u8(&node.state, HALTED, Mo::Full);
            }
            p.race_window(Window::WaitNodeRecheck);

            if node.locked.load(Ordering::Relaxed) == 0 {
                p.event(LockEvent::PvWaitNode, 1);
                if f.joint_wait_stats() {
                    p.event(LockEvent::PvWaitAgain, (waitcnt > 0) as u64);
                }
                p.event(LockEvent::PvWaitEarly, wait_early as u64);
                p.trace(TraceEvent::WaitNode, lock.addr(), 0, HALTED as u32);
                p.maybe_interrupt();
                pv_wait(cx, lock, WaitOn::NodeState(&node.state), HALTED);
            }

            // If kick_node changed us to hashed, keep that so the head code
            // does not hash us again. Fully ordered.
            word::cmpxchg_u8(&node.state, HALTED, RUNNING, Mo::Full);

            // Still not our turn: spurious; spin again before halting.
            p.event(LockEvent::PvSpuriousWakeup, (node.locked.load(Ordering::Relaxed) == 0) as u64);
            waitcnt += 1;
        }
    }

    /// `pv_kick_node()`: advance a halted successor to hashed and hash it.
    fn kick_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, next: &PvNode) {
        let p = cx.p;
        let old = if self.0.upstream_base() {
            // The `next->locked = 1` store must be ordered before the read
            // of the state whether or not the cmpxchg succeeds: explicit
            // barrier, then a relaxed cmpxchg. Pairs with `smp_store_mb()`
            // and the cmpxchg in wait_node.
            word::smp_mb__before_atomic();
            word::cmpxchg_u8(&next.state, HALTED, HASHED, Mo::Relaxed)
        } else {
            // Fully ordered; pairs with `smp_store_mb()` in wait_node.
            word::cmpxchg_u8(&next.state, HALTED, HASHED, Mo::Full)
        };
        if old != HALTED {
            return;
        }
        p.race_window(Window::KickNodeHash);
        p.trace(TraceEvent::KickNode, lock.addr(), 0, HASHED as u32);
        // Same CPU will unlock: program order orders `_Q_SLOW_VAL` and the
        // hash entry for it. *,*,1 -> *,*,3 (WRITE_ONCE).
        word::store_locked(&lock.val, SLOW_VAL, Ordering::Relaxed);
        cx.hash.insert(p, lock.addr() as u64, next.addr());
    }

    /// `pv_wait_head_or_lock()`.
    fn wait_head_or_lock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, node: &PvNode) -> u32 {
        let p = cx.p;
        let f = self.0;
        let addr = lock.addr() as u64;
        let acq = f.rmw(Mo::Acquire);

        // Already hashed on our behalf by kick_node? Then not again.
        let mut lp = if node.state.load(Ordering::Relaxed) == HASHED { Lp::ByOwner } else { Lp::None };
        if f.counts_lock_slowpath() {
            p.event(LockEvent::LockSlowpath, 1);
        }

        let mut waitcnt = 0u64;
        loop {
            // For the successors' wait-early check.
            node.state.store(RUNNING, Ordering::Relaxed);

            // Pending set: no stealing while we actively spin. *,0,* -> *,1,*
            word::store_pending(&lock.val, 1);
            for _ in 0..cx.spin_threshold() {
                // *,1,0 -> *,0,1
                if trylock_clear_pending(lock, acq) {
                    return lock.val.load(Ordering::Relaxed) | word::LOCKED_VAL as u32;
                }
                cx.relax();
            }
            // *,1,* -> *,0,*
            word::store_pending(&lock.val, 0);

            let need_hash = match (f, lp) {
                (_, Lp::None) => true,
                // The re-hash rule (module doc).
                (Flavor::Rehash2016, _) => word::read_locked(&lock.val, Ordering::Relaxed) != SLOW_VAL,
                _ => false,
            };
            if need_hash {
                if f == Flavor::SlowBeforeHash {
                    // The mutant: `_Q_SLOW_VAL` first, the entry after.
                    let old = word::xchg_locked(&lock.val, SLOW_VAL, Mo::Full);
                    p.race_window(Window::HeadHashSlow);
                    if old == 0 {
                        word::store_locked(&lock.val, word::LOCKED_VAL, Ordering::Relaxed);
                        return lock.val.load(Ordering::Relaxed) | word::LOCKED_VAL as u32;
                    }
                    lp = Lp::Slot(cx.hash.insert(p, addr, node.addr()));
                } else {
                    let slot = cx.hash.insert(p, addr, node.addr());
                    lp = Lp::Slot(slot);
                    p.race_window(Window::HeadHashSlow);
                    // Hash before `_Q_SLOW_VAL`, so that an unlocker that
                    // sees the slow value finds the entry:
                    //   [S] <hash>                [RmW] l->locked == SLOW
                    //       MB                          RMB
                    //   [RmW] l->locked = SLOW    [L] <unhash>
                    // Fully ordered xchg; pairs with the unlocker's smp_rmb().
                    if word::xchg_locked(&lock.val, SLOW_VAL, Mo::Full) == 0 {
                        // It was free and is now ours: *,*,0 -> *,*,1 and
                        // drop the entry nobody will look for.
                        word::store_locked(&lock.val, word::LOCKED_VAL, Ordering::Relaxed);
                        cx.hash.clear(p, slot, addr);
                        return lock.val.load(Ordering::Relaxed) | word::LOCKED_VAL as u32;
                    }
                }
            }

            // v4.5-v4.7 wrote `vcpu_halted` here (cd0272fab785), which lets
            // a stalled owner's kick_node() hash us a second time (R1);
            // 229ce6315747 writes `vcpu_hashed`.
            let st = if matches!(f, Flavor::V45 | Flavor::HaltedHead) { HALTED } else { HASHED };
            node.state.store(st, Ordering::Relaxed);
            p.event(LockEvent::PvWaitHead, 1);
            p.event(LockEvent::PvWaitAgain, (waitcnt > 0) as u64);
            // Trace: the state just written and the lock word (race diagrams).
            p.trace(TraceEvent::WaitHead, lock.addr(), st as u16, lock.val.load(Ordering::Relaxed));
            p.maybe_interrupt();
            pv_wait(cx, lock, WaitOn::LockedByte(&lock.val), SLOW_VAL);
            p.race_window(Window::HeadTrylock);
            check_kicked_but_stolen(cx, lock);
            if f.joint_wait_stats() {
                // v4.5-v4.8 counted a wakeup to a held lock as spurious;
                // v4.9 on says "because of lock stealing, the head may have
                // to wait again" and counts nothing.
                p.event(LockEvent::PvSpuriousWakeup, (word::read_locked(&lock.val, Ordering::Relaxed) != 0) as u64);
            }
            waitcnt += 1;
        }
    }

    /// `__pv_queued_spin_unlock()` and its slow path.
    fn unlock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock) {
        // *,*,1 -> *,*,0 unless `_Q_SLOW_VAL`: we must unhash first.
        let locked = word::cmpxchg_locked(&lock.val, word::LOCKED_VAL, 0, self.0.rmw(Mo::Release));
        if locked == word::LOCKED_VAL {
            return;
        }
        if locked != SLOW_VAL {
            super::bad_unlock(cx, lock, locked);
        }
        let node = unlock_slow_unhash_release(cx, lock);
        cx.p.event(LockEvent::PvKickUnlock, 1);
        pv_kick(cx, lock, node.cpu.load(Ordering::Relaxed));
    }
}
