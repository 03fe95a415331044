//! `pv-hashval-2016`: Peter Zijlstra's proposal in the July 2016 thread
//! "[PATCH v2 2/5] locking/pvqspinlock: Fix missed PV wakeup problem"
//! (his reply of 2016-07-15 with a `_Q_HASH_VAL` diff against
//! `kernel/locking/qspinlock_paravirt.h`).
//!
//! **Source.** The posted diff, which covers the file up to the start of
//! `__pv_queued_spin_unlock_slowpath()`'s body: the new states, the new
//! `pv_wait_early()` test, `pv_wait_node()`, `pv_kick_node()`,
//! `pv_wait_head_or_lock()` and the slow unlock's "wait while
//! `_Q_HASH_VAL`" loop. Its base tree is the July 2016 tip file: v4.7 +
//! 229ce6315747 (the head writes `vcpu_hashed`) + 08be8f63c40c (its
//! `pv_wait_node()` context counts `pv_wait_node` and `pv_wait_early` but no
//! longer `pv_wait_again`; the head's `pv_spurious_wakeup` is gone too),
//! which shipped in v4.9, not the v4.7/v4.8 release file. We follow it:
//! * `_Q_HASH_VAL` (3) in the locked byte means "hashing in progress",
//!   `_Q_SLOW_VAL` becomes 7;
//! * whoever moves the locked byte `1 -> _Q_HASH_VAL` by cmpxchg owns the
//!   hashing: it inserts the entry, then `smp_store_release()`s
//!   `_Q_SLOW_VAL`. So there is at most one entry per lock, and a head that
//!   lost the lock to a stealer hashes itself again (the stealer holds the
//!   byte at 1): R2's fix;
//! * states node/head x running/halted; `pv_wait_early()` stops on an odd
//!   state (`node_halted`, `head_halted`); `pv_kick_node()` moves
//!   `node_halted -> head_running` (so successors keep spinning while the
//!   new head has not halted again) and then races the head for the hashing;
//! * the head, after its spin: cmpxchg `1 -> _Q_HASH_VAL`: won, hash and
//!   publish `_Q_SLOW_VAL`; found `_Q_HASH_VAL` (the owner's `pv_kick_node()`
//!   is hashing us), spin until it is not; found 0, go back to the trylock
//!   loop; found `_Q_SLOW_VAL`, already hashed. Then `head_halted` and
//!   `pv_wait(&l->locked, _Q_SLOW_VAL)` (which returns at once if the byte
//!   is not the slow value, KVM's checked wait).
//!
//! What the diff does not show and we chose: the slow unlock after
//! `pv_unhash()` is the file's (release the byte, kick the node's CPU).
//!
//! **The gap, kept on purpose** (it is the diff's; the testbed must show
//! it): `pv_wait_node()` returns right after its halted store when it finds
//! `locked` already set, with its state still `node_halted`, so (a) its
//! successors' wait-early check sees a halted predecessor and stops
//! spinning early, and (b) the new owner's `pv_kick_node()` succeeds on it
//! and hashes a head that is running: an extra slow unlock and kick.
//! Latency, not a lost wakeup.

use super::lineage::{steal_once, trylock_clear_pending};
use super::{check_kicked_but_stolen, init_node, pv_kick, pv_wait, unlock_slow_unhash_release, PV_PREV_CHECK_MASK};
use crate::node::PvNode;
use crate::qspinlock::{Cx, PvHooks};
use crate::sync::atomic::Ordering;
use crate::system::RawLock;
use crate::word::{self, Mo};
use crate::{Platform, WaitOn};
use pvlock_abi::{LockEvent, TraceEvent, Window};

/// `vcpu_node_running`.
pub(crate) const NODE_RUNNING: u8 = 0;
/// `vcpu_node_halted`.
pub(crate) const NODE_HALTED: u8 = 1;
/// `vcpu_head_running`.
pub(crate) const HEAD_RUNNING: u8 = 2;
/// `vcpu_head_halted`.
pub(crate) const HEAD_HALTED: u8 = 3;

/// `_Q_HASH_VAL`: somebody is inserting the hash entry.
pub(crate) const HASH_VAL: u8 = 3;
/// `_Q_SLOW_VAL` of this proposal.
pub(crate) const SLOW_VAL: u8 = 7;

pub(crate) struct Hashval;

/// What `try_hash()` found.
enum Hashed {
    /// We moved 1 -> HASH and hashed; the byte is now SLOW.
    ByUs,
    /// The byte was not 1: its value.
    Found(u8),
}

/// Own the hashing by `cmpxchg(1 -> _Q_HASH_VAL)`, insert, publish
/// `_Q_SLOW_VAL`. `head`: called by the queue head (for the window name).
fn try_hash<P: Platform>(cx: &Cx<'_, '_, P>, lock: &RawLock, node: &PvNode, head: bool) -> Hashed {
    let p = cx.p;
    // Fully ordered: *,*,1 -> *,*,HASH.
    let old = word::cmpxchg_locked(&lock.val, word::LOCKED_VAL, HASH_VAL, Mo::Full);
    if old != word::LOCKED_VAL {
        return Hashed::Found(old);
    }
    p.race_window(Window::HashvalHeld);
    cx.hash.insert(p, lock.addr() as u64, node.addr());
    if head {
        p.race_window(Window::HeadHashSlow);
    }
    // *,*,HASH -> *,*,SLOW. Release: the entry is visible to whoever sees
    // the slow value; pairs with the unlocker's acquire load / smp_rmb().
    word::store_locked(&lock.val, SLOW_VAL, Ordering::Release);
    Hashed::ByUs
}

impl Hashval {
    /// `pv_wait_early()`: the predecessor is in one of the halted states.
    #[inline]
    fn wait_early(prev: &PvNode, loop_: u32) -> bool {
        if loop_ & PV_PREV_CHECK_MASK != 0 {
            return false;
        }
        matches!(prev.state.load(Ordering::Relaxed), NODE_HALTED | HEAD_HALTED)
    }
}

impl PvHooks for Hashval {
    const PV: bool = true;

    fn trylock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock) -> bool {
        steal_once(cx, lock, Mo::Full)
    }

    fn init_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, node: &PvNode) {
        init_node(cx, node);
    }

    fn wait_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, node: &PvNode, prev: &PvNode) {
        let p = cx.p;
        loop {
            let mut wait_early = false;
            let mut loop_ = cx.spin_threshold();
            while loop_ != 0 {
                if node.locked.load(Ordering::Relaxed) != 0 {
                    // May return with NODE_HALTED still set: the gap.
                    return;
                }
                if Self::wait_early(prev, loop_) {
                    wait_early = true;
                    break;
                }
                cx.relax();
                loop_ -= 1;
            }

            // `smp_store_mb()`; pairs with the state cmpxchg in kick_node.
            word::xchg_u8(&node.state, NODE_HALTED, Mo::Full);
            p.race_window(Window::WaitNodeRecheck);

            if node.locked.load(Ordering::Relaxed) == 0 {
                p.event(LockEvent::PvWaitNode, 1);
                p.event(LockEvent::PvWaitEarly, wait_early as u64);
                p.trace(TraceEvent::WaitNode, lock.addr(), 0, NODE_HALTED as u32);
                p.maybe_interrupt();
                pv_wait(cx, lock, WaitOn::NodeState(&node.state), NODE_HALTED);
                // Keep `head_halted` if kick_node advanced us. Fully ordered.
                word::cmpxchg_u8(&node.state, NODE_HALTED, NODE_RUNNING, Mo::Full);
                p.event(LockEvent::PvSpuriousWakeup, (node.locked.load(Ordering::Relaxed) == 0) as u64);
            }
        }
    }

    fn kick_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, next: &PvNode) {
        // `node_halted -> head_running`, as the diff has it: the successor
        // is the head now and not (yet) halted as one, so its own
        // successors' wait-early check keeps them spinning. Fully ordered
        // `cmpxchg()`; pairs with `smp_store_mb()` and the cmpxchg in
        // wait_node.
        if word::cmpxchg_u8(&next.state, NODE_HALTED, HEAD_RUNNING, Mo::Full) != NODE_HALTED {
            return;
        }
        cx.p.race_window(Window::KickNodeHash);
        cx.p.trace(TraceEvent::KickNode, lock.addr(), 0, HEAD_RUNNING as u32);
        // We hold the lock (byte 1); the head may race us for the hashing,
        // whoever wins the cmpxchg hashes, the other does nothing.
        let _ = try_hash(cx, lock, next, false);
    }

    fn wait_head_or_lock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, node: &PvNode) -> u32 {
        let p = cx.p;
        p.event(LockEvent::LockSlowpath, 1);
        let mut waitcnt = 0u64;
        'spin: loop {
            node.state.store(HEAD_RUNNING, Ordering::Relaxed);
            // *,0,* -> *,1,*: no stealing while we spin.
            word::store_pending(&lock.val, 1);
            for _ in 0..cx.spin_threshold() {
                if trylock_clear_pending(lock, Mo::Full) {
                    return lock.val.load(Ordering::Relaxed) | word::LOCKED_VAL as u32;
                }
                cx.relax();
            }
            word::store_pending(&lock.val, 0);

            // Make sure we are hashed before we wait (the diff's switch).
            match try_hash(cx, lock, node, true) {
                Hashed::ByUs | Hashed::Found(SLOW_VAL) => {}
                // Free: go back to trylock (`continue` of `for (;; waitcnt++)`).
                Hashed::Found(0) => {
                    waitcnt += 1;
                    continue 'spin;
                }
                // `pv_kick_node()` is hashing us: wait for it, then wait;
                // `pv_wait()` re-checks the byte, so whatever the owner did
                // meanwhile (unlock, or publish `_Q_SLOW_VAL`) is seen there.
                Hashed::Found(HASH_VAL) => {
                    while word::read_locked(&lock.val, Ordering::Relaxed) == HASH_VAL {
                        cx.relax();
                    }
                }
                Hashed::Found(v) => super::bad_unlock(cx, lock, v),
            }

            node.state.store(HEAD_HALTED, Ordering::Relaxed);
            p.event(LockEvent::PvWaitHead, 1);
            p.event(LockEvent::PvWaitAgain, (waitcnt > 0) as u64);
            p.trace(TraceEvent::WaitHead, lock.addr(), 0, SLOW_VAL as u32);
            p.maybe_interrupt();
            pv_wait(cx, lock, WaitOn::LockedByte(&lock.val), SLOW_VAL);
            p.race_window(Window::HeadTrylock);
            check_kicked_but_stolen(cx, lock);
            waitcnt += 1;
        }
    }

    fn unlock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock) {
        // Fully ordered: *,*,1 -> *,*,0 unless hashed or being hashed.
        let mut locked = word::cmpxchg_locked(&lock.val, word::LOCKED_VAL, 0, Mo::Full);
        if locked == word::LOCKED_VAL {
            return;
        }
        // Hashing in progress: wait for `_Q_SLOW_VAL` (R4's latency). The
        // diff spins with `READ_ONCE()`; the `smp_rmb()` in
        // `unlock_slow_unhash_release()` then orders the unhash after the
        // load that saw `_Q_SLOW_VAL`, pairing with the hasher's
        // `smp_store_release(&l->locked, _Q_SLOW_VAL)` after its insert.
        while locked == HASH_VAL {
            cx.p.cpu_relax();
            locked = word::read_locked(&lock.val, Ordering::Relaxed);
        }
        if locked != SLOW_VAL {
            super::bad_unlock(cx, lock, locked);
        }
        let node = unlock_slow_unhash_release(cx, lock);
        cx.p.event(LockEvent::PvKickUnlock, 1);
        pv_kick(cx, lock, node.cpu.load(Ordering::Relaxed));
    }
}
