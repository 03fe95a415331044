//! `pv-v4.2`: the first PV qspinlock, as released in v4.2.
//!
//! Source: a23db284fe0d ("locking/pvqspinlock: Implement simple paravirt
//! support for the qspinlock", v4.2-rc1) with the two follow-ups that
//! shipped before 75d2270280686: b92b8b35a2e3 (the halted-state `xchg()`
//! became `smp_store_mb()`; on x86 both are one `xchg`) and 93edc8bd7750
//! (`smp_rmb()` after the failed unlock cmpxchg, July 2015). We follow that
//! form: the file as of 93edc8bd7750, the last change before 75d2270280686.
//! No v4.2 tree was available to read; this is reconstructed from the
//! commits above and the v4.3/v4.4 file, and says so.
//!
//! Two states only: a queued waiter halts with `vcpu_halted`; the new owner
//! moves it back to `vcpu_running` with `xchg()` and kicks it at once if it
//! was halted ([`V42::kick_node`]); the head hashes itself and sets
//! `_Q_SLOW_VAL` with `cmpxchg(1 -> 3)`; the unlocker kicks the head only if
//! its node says halted. Under overcommit a waiter is kicked twice per
//! acquisition: once to become head, once to take the lock. No stealing:
//! the slow path's trylock is the whole-word one.
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
/// `vcpu_halted`.
pub(crate) const HALTED: u8 = 1;

pub(crate) struct V42;

impl PvHooks for V42 {
    const PV: bool = true;

    fn trylock<P: Platform>(&self, _cx: &Cx<'_, '_, P>, lock: &RawLock) -> bool {
        plain_trylock(lock)
    }

    fn init_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, node: &PvNode) {
        init_node(cx, node);
    }

    /// `pv_wait_node()`: spin, then halt until the predecessor kicks us.
    fn wait_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, node: &PvNode, _prev: &PvNode) {
        let p = cx.p;
        let mut waitcnt = 0u64;
        loop {
            for _ in 0..cx.spin_threshold() {
                if node.locked.load(Ordering::Relaxed) != 0 {
                    return;
                }
                cx.relax();
            }

            // [S] pn->state = halted     [S] next->locked = 1
            //     MB                         MB
            // [L] pn->locked             [RmW] pn->state = running
            // `smp_store_mb()` (x86: xchg); pairs with the xchg() in kick_node.
            word::xchg_u8(&node.state, HALTED, Mo::Full);
            p.race_window(Window::WaitNodeRecheck);

            if node.locked.load(Ordering::Relaxed) == 0 {
                p.event(LockEvent::PvWaitNode, 1);
                p.event(LockEvent::PvWaitAgain, (waitcnt > 0) as u64);
                p.trace(TraceEvent::WaitNode, lock.addr(), 0, HALTED as u32);
                p.maybe_interrupt();
                pv_wait(cx, lock, WaitOn::NodeState(&node.state), HALTED);
            }

            // "Reset the vCPU state to avoid unnecessary CPU kicking": a
            // plain store in this era (the cmpxchg came with 75d2270280686).
            node.state.store(RUNNING, Ordering::Relaxed);
            p.event(LockEvent::PvSpuriousWakeup, (node.locked.load(Ordering::Relaxed) == 0) as u64);
            waitcnt += 1;
        }
    }

    /// `pv_kick_node()`: the successor may be halted; wake it now.
    fn kick_node<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, next: &PvNode) {
        // Fully ordered; pairs with `smp_store_mb()` in wait_node. Because
        // `next->locked` is already set, the node may be reused by now:
        // kicking for no reason is harmless.
        if word::xchg_u8(&next.state, RUNNING, Mo::Full) == HALTED {
            cx.p.trace(TraceEvent::KickNode, lock.addr(), 0, HALTED as u32);
            pv_kick(cx, lock, next.cpu.load(Ordering::Relaxed));
        }
    }

    /// `pv_wait_head()`: wait for the locked byte to clear; returns 0, the
    /// caller then spins for `*,0,0` with a load-acquire.
    fn wait_head_or_lock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock, node: &PvNode) -> u32 {
        let p = cx.p;
        let addr = lock.addr() as u64;
        let mut hashed = false;
        let mut waitcnt = 0u64;
        p.event(LockEvent::LockSlowpath, 1);
        loop {
            for _ in 0..cx.spin_threshold() {
                if word::read_locked(&lock.val, Ordering::Relaxed) == 0 {
                    return 0;
                }
                cx.relax();
            }

            node.state.store(HALTED, Ordering::Relaxed);
            if !hashed {
                hashed = true;
                let lp = cx.hash.insert(p, addr, node.addr());
                p.race_window(Window::HeadHashSlow);
                // The hash entry must be visible before `_Q_SLOW_VAL`:
                // fully ordered cmpxchg, *,*,1 -> *,*,3; pairs with the
                // unlocker's `smp_rmb()` before `pv_unhash()`.
                if word::cmpxchg_locked(&lock.val, word::LOCKED_VAL, SLOW_VAL, Mo::Full) == 0 {
                    // Free, and `_Q_SLOW_VAL` was never set: unhash, go.
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
            // "The unlocker should have freed the lock before kicking": if
            // not, a spurious wakeup; spin again (the loop re-checks).
            waitcnt += 1;
        }
    }

    /// `__pv_queued_spin_unlock()`.
    fn unlock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock) {
        // Fully ordered: *,*,1 -> *,*,0, or find `_Q_SLOW_VAL`. We must not
        // release a slow lock before unhashing it.
        let locked = word::cmpxchg_locked(&lock.val, word::LOCKED_VAL, 0, Mo::Full);
        if locked == word::LOCKED_VAL {
            return;
        }
        if locked != SLOW_VAL {
            super::bad_unlock(cx, lock, locked);
        }
        let node = unlock_slow_unhash_release(cx, lock);
        // At this point the lock may be reused, but the node is still
        // ours to read. This era kicks only a halted head.
        if node.state.load(Ordering::Relaxed) == HALTED {
            cx.p.event(LockEvent::PvKickUnlock, 1);
            pv_kick(cx, lock, node.cpu.load(Ordering::Relaxed));
        }
    }
}
