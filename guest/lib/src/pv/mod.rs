//! The paravirt hooks of every PV variant (`kernel/locking/qspinlock_paravirt.h`
//! at several points of its history), and what they share.
//!
//! | module | variants | source |
//! |---|---|---|
//! | [`v4_2`] | `pv-v4.2` | a23db284fe0d as it stood before 75d2270280686 |
//! | [`v4_3`] | `pv-v4.3` | 75d2270280686 (the v4.3 and v4.4 file) |
//! | [`lineage`] | `pv-v4.5`, `pv-v4.8`, `pv-rehash-2016`, `pv-upstream`, the three mutants | v4.5 .. today |
//! | [`hashval`] | `pv-hashval-2016` | PeterZ's 2016-07-15 `_Q_HASH_VAL` proposal (reconstructed) |
//!
//! What our code must do differently from the kernel, everywhere:
//! * no real interrupts or NMIs: nesting comes from
//!   [`Platform::maybe_interrupt`] at the spin points;
//! * no per-CPU segment: per-CPU data (the kick timestamp of the
//!   `pv_latency_*` statistics) lives in the CPU's node 0;
//! * the locked byte handed to `pv_wait()` is named through the lock word
//!   ([`WaitOn::LockedByte`]), see `platform.rs`;
//! * sub-word atomics: see [`crate::word`];
//! * the kernel's `WARN()` on a corrupted locked byte in the unlock slow
//!   path becomes a [`Platform::bug`]: the testbed wants to stop there.

pub(crate) mod hashval;
pub(crate) mod lineage;
pub(crate) mod v4_2;
pub(crate) mod v4_3;

use crate::node::PvNode;
use crate::qspinlock::Cx;
use crate::sync::atomic::Ordering;
use crate::system::RawLock;
use crate::word;
use crate::{Platform, WaitOn};
use core::sync::atomic::Ordering as CoreOrdering;
use pvlock_abi::{GuestPhase, LockEvent, TraceEvent, Window};

/// `_Q_SLOW_VAL` of every variant but `pv-hashval-2016`.
pub(crate) const SLOW_VAL: u8 = 3;

/// `PV_PREV_CHECK_MASK` of `pv_wait_early()` (cd0272fab785).
pub(crate) const PV_PREV_CHECK_MASK: u32 = 0xff;

/// `pv_init_node()`: `pn->cpu = smp_processor_id(); pn->state = running`
/// (every variant's running state is 0). Plain stores: the node is
/// published by the `smp_wmb()` before `xchg_tail()`.
pub(crate) fn init_node<P: Platform>(cx: &Cx<'_, '_, P>, node: &PvNode) {
    node.cpu.store(cx.p.cpu(), Ordering::Relaxed);
    node.state.store(0, Ordering::Relaxed);
}

/// `pv_wait()` with the statistics wrapper of `qspinlock_stat.h`
/// (`__pv_wait()`): clear this CPU's kick time, wait, and if a kick arrived
/// meanwhile, count `pv_kick_wake` and add the kick -> wake latency.
pub(crate) fn pv_wait<P: Platform>(cx: &Cx<'_, '_, P>, lock: &RawLock, on: WaitOn<'_>, val: u8) {
    let p = cx.p;
    let me = cx.node(p.cpu(), 0);
    me.kick_tsc.store(0, CoreOrdering::Relaxed);
    p.set_phase(GuestPhase::Waiting, lock.addr(), on.addr());
    p.pv_wait(on, val);
    let t = me.kick_tsc.swap(0, CoreOrdering::Relaxed);
    if t != 0 {
        p.event(LockEvent::PvKickWake, 1);
        p.event(LockEvent::PvLatencyWake, p.cycles().saturating_sub(t));
    }
    p.trace(TraceEvent::WokeUp, lock.addr(), 0, on.load() as u32);
}

/// `pv_kick()` with the statistics wrapper (`__pv_kick()`): stamp the
/// target's kick time, kick, add our own cost to `pv_latency_kick`.
pub(crate) fn pv_kick<P: Platform>(cx: &Cx<'_, '_, P>, lock: &RawLock, cpu: u32) {
    let p = cx.p;
    let start = p.cycles().max(1);
    if let Some(n) = cx.nodes.get(cpu, 0) {
        n.kick_tsc.store(start, CoreOrdering::Relaxed);
    }
    p.trace(TraceEvent::Kick, lock.addr(), cpu as u16, 0);
    p.pv_kick(cpu);
    p.event(LockEvent::PvLatencyKick, p.cycles().saturating_sub(start));
}

/// Ours: a queue head that waited hashed (the locked byte was the slow
/// value when it went to sleep) and woke to find the locked byte at
/// `_Q_LOCKED_VAL`. Only the unlock slow path moves the slow value away
/// (unhash, release to 0, kick), and the head is the only queued CPU that
/// may take the lock, so a 1 here means a CPU outside the queue took the
/// lock between the unlocker's release and our look: kicked, then stolen.
/// Counted once per wakeup. Returns whether it happened.
pub(crate) fn check_kicked_but_stolen<P: Platform>(cx: &Cx<'_, '_, P>, lock: &RawLock) -> bool {
    let locked = word::read_locked(&lock.val, Ordering::Relaxed);
    if locked == word::LOCKED_VAL {
        cx.p.event(LockEvent::KickedButStolen, 1);
        cx.p.trace(TraceEvent::Stolen, lock.addr(), 0, locked as u32);
        true
    } else {
        false
    }
}

/// The part of `__pv_queued_spin_unlock_slowpath()` every variant but
/// hashval shares once it has seen `_Q_SLOW_VAL`: read barrier, unhash,
/// release, kick. Returns the node that was unhashed (v4.2 decides on its
/// state whether to kick; the others always kick).
pub(crate) fn unlock_slow_unhash_release<'a, P: Platform>(cx: &Cx<'_, 'a, P>, lock: &RawLock) -> &'a PvNode {
    // A failed cmpxchg does not order the unhash's reads after it:
    // `smp_rmb()`, pairs with the fully ordered `xchg`/`cmpxchg` (or, for
    // `pv_kick_node()`, program order on this CPU) that set `_Q_SLOW_VAL`
    // after the hash insert.
    word::smp_rmb();
    let node = cx.hash.remove(cx.p, lock.addr() as u64);
    let node = cx.node_at(node, "hashed node");
    cx.p.race_window(Window::UnlockUnhash);
    // Now that we have the node, release: *,*,3 -> *,*,0. Pairs with the
    // waiters' acquire (the head's trylock RMW or load-acquire spin).
    word::store_locked(&lock.val, 0, Ordering::Release);
    cx.p.race_window(Window::UnlockKick);
    node
}

/// The corrupted-value `WARN()` of the unlock slow path.
pub(crate) fn bad_unlock<P: Platform>(cx: &Cx<'_, '_, P>, lock: &RawLock, locked: u8) -> ! {
    cx.p.bug(format_args!(
        "pvqspinlock: lock {:#x} has corrupted value {:#x} (locked byte {:#x}) at unlock (variant {}, cpu {})",
        lock.addr(),
        lock.val.load(Ordering::Relaxed),
        locked,
        cx.cfg.variant.name(),
        cx.p.cpu()
    ))
}
