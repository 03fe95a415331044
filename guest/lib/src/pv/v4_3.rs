//! `pv-v4.3`: "Only kick CPU at unlock time" (75d2270280686, Waiman Long,
//! posted July 2015, first released in v4.3; the file is unchanged in
//! substance in v4.4, checked against a v4.4 tree).
//!
//! New state `vcpu_hashed`: instead of kicking a halted successor, the new
//! owner moves it `halted -> hashed`, sets `_Q_SLOW_VAL` and hashes it on
//! its behalf ([`V43::kick_node`]), so the successor is kicked once, by the
//! unlock. The waiter moves `halted -> running` by cmpxchg after waking so
//! that `hashed` survives; the head skips hashing if it finds itself hashed.
//! Still no stealing and no pending bit for PV waiters; the head's
//! `_Q_SLOW_VAL` is `cmpxchg(1 -> 3)`.
//!
//! The lock events counted here (`pv_wait_node`, `pv_kick_unlock`, ...) are
//! the model's only: PV lock statistics came to the kernel with
//! 45e898b73562 (v4.5), so this era has nothing to compare them with
//! (records say `params.counters = "model-only"`).

use super::{check_kicked_but_stolen, init_node, pv_kick, pv_wait, unlock_slow_unhash_release, SLOW_VAL};
use crate::node::PvNode;
use crate::qspinlock::{plain_trylock, Cx, PvHooks};
use crate::sync::atomic::Ordering;
use crate::system::RawLock;
use crate::word::{self, Mo};
use crate::{Platform, WaitOn};
use pvlock_abi::{LockEvent, TraceEvent, Window};

/// `vcpu_running`.
pub(crate) const RUNNING: u8 = 0;
/// `vcpu_halted`: used only in `pv_wait_node()`.
pub(crate) const HALTED: u8 = 1;
/// `vcpu_hashed`: hashed on our behalf + halted.
pub(crate) const HASHED: u8 = 2;

pub(crate) struct V43;

impl PvHooks for V43 {
    const PV: bool = true;

    fn trylock<P: Platform>(&self, _cx: &Cx<'_, '_, P>, lock: &RawLock) -> bool {
        plain_trylock(lock)
    }

    fn init_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, node: &PvNode) {
        init_node(cx, node);
    }

    /// `pv_wait_node()`.
    fn wait_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, node: &PvNode, _prev: &PvNode) {
        let p = cx.p;
        loop {
            for _ in 0..cx.spin_threshold() {
                if node.locked.load(Ordering::Relaxed) != 0 {
                    return;
                }
                cx.relax();
            }

            // [S] pn->state = halted     [S] next->locked = 1
            //     MB                         MB
            // [L] pn->locked             [RmW] pn->state = hashed
            // `smp_store_mb()`; pairs with the cmpxchg() in kick_node.
            word::xchg_u8(&node.state, HALTED, Mo::Full);
            p.race_window(Window::WaitNodeRecheck);

            if node.locked.load(Ordering::Relaxed) == 0 {
                p.event(LockEvent::PvWaitNode, 1);
                p.trace(TraceEvent::WaitNode, lock.addr(), 0, HALTED as u32);
                p.maybe_interrupt();
                pv_wait(cx, lock, WaitOn::NodeState(&node.state), HALTED);
            }

            // If kick_node changed us to hashed, keep it, so that the head
            // code does not hash us a second time. Fully ordered.
            word::cmpxchg_u8(&node.state, HALTED, RUNNING, Mo::Full);
            p.event(LockEvent::PvSpuriousWakeup, (node.locked.load(Ordering::Relaxed) == 0) as u64);
        }
    }

    /// `pv_kick_node()`: hash a halted successor instead of waking it.
    fn kick_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, next: &PvNode) {
        let p = cx.p;
        // Fully ordered; pairs with `smp_store_mb()` and the cmpxchg in
        // wait_node. If it fails the successor was running and will see
        // its `locked` by itself.
        if word::cmpxchg_u8(&next.state, HALTED, HASHED, Mo::Full) != HALTED {
            return;
        }
        p.race_window(Window::KickNodeHash);
        p.trace(TraceEvent::KickNode, lock.addr(), 0, HASHED as u32);
        // We are the owner and the one who will unlock: program order is
        // all the ordering the `_Q_SLOW_VAL` / hash pair needs here.
        // *,*,1 -> *,*,3 (WRITE_ONCE).
        word::store_locked(&lock.val, SLOW_VAL, Ordering::Relaxed);
        cx.hash.insert(p, lock.addr() as u64, next.addr());
    }

    /// `pv_wait_head()`: returns 0 when the locked byte is clear.
    fn wait_head_or_lock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, node: &PvNode) -> u32 {
        let p = cx.p;
        let addr = lock.addr() as u64;
        // Already hashed by kick_node? Then don't hash again.
        let mut hashed = node.state.load(Ordering::Relaxed) == HASHED;
        let mut waitcnt = 0u64;
        p.event(LockEvent::LockSlowpath, 1);
        loop {
            for _ in 0..cx.spin_threshold() {
                if word::read_locked(&lock.val, Ordering::Relaxed) == 0 {
                    return 0;
                }
                cx.relax();
            }

            if !hashed {
                hashed = true;
                let lp = cx.hash.insert(p, addr, node.addr());
                p.race_window(Window::HeadHashSlow);
                // [S] <hash>                [RmW] l->locked == SLOW
                //     MB                          RMB
                // [RmW] l->locked = SLOW    [L] <unhash>
                // Fully ordered cmpxchg *,*,1 -> *,*,3; pairs with the
                // unlocker's `smp_rmb()`.
                if word::cmpxchg_locked(&lock.val, word::LOCKED_VAL, SLOW_VAL, Mo::Full) == 0 {
                    // Free and `_Q_SLOW_VAL` never set: unhash, take it.
                    cx.hash.clear(p, lp, addr);
                    return 0;
                }
            }
            p.event(LockEvent::PvWaitHead, 1);
            p.event(LockEvent::PvWaitAgain, (waitcnt > 0) as u64);
            p.trace(TraceEvent::WaitHead, lock.addr(), 0, SLOW_VAL as u32);
            p.maybe_interrupt();
            pv_wait(cx, lock, WaitOn::LockedByte(&lock.val), SLOW_VAL);
            p.race_window(Window::HeadTrylock);
            check_kicked_but_stolen(cx, lock);

            if word::read_locked(&lock.val, Ordering::Relaxed) == 0 {
                return 0;
            }
            // Not free after a wakeup: spurious; spin a while, then wait.
            p.event(LockEvent::PvSpuriousWakeup, 1);
            waitcnt += 1;
        }
    }

    /// `__pv_queued_spin_unlock()`.
    fn unlock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock) {
        // Fully ordered: *,*,1 -> *,*,0, or find `_Q_SLOW_VAL`.
        let locked = word::cmpxchg_locked(&lock.val, word::LOCKED_VAL, 0, Mo::Full);
        if locked == word::LOCKED_VAL {
            return;
        }
        if locked != SLOW_VAL {
            super::bad_unlock(cx, lock, locked);
        }
        let node = unlock_slow_unhash_release(cx, lock);
        // The head may not really be halted: kicking a running vCPU is
        // harmless but for the latency.
        cx.p.event(LockEvent::PvKickUnlock, 1);
        pv_kick(cx, lock, node.cpu.load(Ordering::Relaxed));
    }
}
