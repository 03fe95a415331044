//! The queued spinlock slow path (`kernel/locking/qspinlock.c`), written
//! once over a [`PvHooks`] trait, as the kernel writes it once and
//! generates the PV slow path by re-including the file with the `pv_*`
//! hooks defined (`_GEN_PV_LOCK_SLOWPATH`). [`Native`] is the zero-sized,
//! no-op set of hooks; the PV variants live in [`crate::pv`].
//!
//! The structure follows today's upstream `queued_spin_lock_slowpath()`
//! (v6.x); where older releases differ in a way the PV variants depend on,
//! the difference is a hook:
//! * `queued_spin_trylock()` is a hook ([`PvHooks::trylock`]): v4.5 made the
//!   PV build replace it with a one-shot steal, upstream with the hybrid
//!   unfair loop; native and v4.2-v4.4 use the plain whole-word trylock;
//! * `pv_wait_head_or_lock()` returns the lock value when it acquired the
//!   lock itself (v4.5+); the v4.2-v4.4 `pv_wait_head()` only waits for the
//!   locked byte to clear and returns 0, so the caller's load-acquire spin
//!   runs, exactly as it did then.
//! * the `idx >= MAX_NODES` fallback (d682b596d993, early 2019 with the
//!   `lockevent_*()` counters it uses: v5.1, not v4.19) is used by every
//!   variant: before it, a fifth nesting level overran the node array (our
//!   torture nests at most four: task + three interrupt levels).
//!
//! ```text
//! fast path:  0,0,0 -> 0,0,1                               (cmpxchg, acquire)
//!
//! native:     0,0,1 -> 0,1,1 ; 0,1,1 -> 0,1,0 ; 0,1,0 -> 0,0,1   (pending)
//!             p,*,* -> n,*,*                                (queue: xchg_tail)
//! PV:         straight to the queue (never the pending bit as a waiter)
//! queue head: *,x,y -> *,0,0 (wait) ; n,0,0 -> 0,0,1 (alone) | *,*,0 -> *,*,1
//! ```

use crate::hash::PvHash;
use crate::node::{NodeArray, PvNode, MAX_NODES};
use crate::sync::atomic::Ordering;
use crate::system::{LockConfig, RawLock};
use crate::word::{self, Mo};
use crate::Platform;
use pvlock_abi::{GuestPhase, LockEvent, TraceEvent, Window};

/// `_Q_PENDING_LOOPS` on x86 (`arch/x86/include/asm/qspinlock.h`).
const PENDING_LOOPS: u32 = 1 << 9;

/// What a slow path needs besides the lock: the CPU's platform, the node
/// array and the PV hash table.
pub(crate) struct Cx<'s, 'a, P> {
    pub(crate) p: &'s P,
    pub(crate) nodes: NodeArray<'a>,
    pub(crate) hash: PvHash<'a>,
    pub(crate) cfg: LockConfig,
}

impl<'a, P: Platform> Cx<'_, 'a, P> {
    /// One iteration of a slow-path spin: `cpu_relax()`, and the point
    /// where a (simulated) interrupt may arrive.
    #[inline]
    pub(crate) fn relax(&self) {
        self.p.cpu_relax();
        self.p.maybe_interrupt();
    }

    /// `SPIN_THRESHOLD`, from the configuration.
    #[inline]
    pub(crate) fn spin_threshold(&self) -> u32 {
        self.cfg.spin_threshold.max(1)
    }

    /// The node of `(cpu, idx)`; BUG() on a corrupted tail.
    pub(crate) fn node(&self, cpu: u32, idx: u32) -> &'a PvNode {
        match self.nodes.get(cpu, idx) {
            Some(n) => n,
            None => self.p.bug(format_args!(
                "qspinlock: tail names cpu {cpu} idx {idx}, outside the node array ({} cpus)",
                self.nodes.cpus.len()
            )),
        }
    }

    /// The node at `addr` (a `next` pointer or a hash entry); BUG() if it is
    /// not one of ours.
    pub(crate) fn node_at(&self, addr: u64, what: &str) -> &'a PvNode {
        match self.nodes.at_addr(addr) {
            Some(n) => n,
            None => self.p.bug(format_args!(
                "qspinlock: {what} {addr:#x} is not a queue node (variant {})",
                self.cfg.variant.name()
            )),
        }
    }
}

/// The paravirt hooks of the slow path (`pv_init_node()`, `pv_wait_node()`,
/// `pv_kick_node()`, `pv_wait_head_or_lock()`), plus the two functions a PV
/// build replaces: `queued_spin_trylock()` and `queued_spin_unlock()`.
pub(crate) trait PvHooks {
    /// The PV build: skips the pending bit (`goto pv_queue`).
    const PV: bool;

    /// `queued_spin_trylock()` as the slow path calls it.
    fn trylock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock) -> bool;

    /// `pv_init_node()`.
    fn init_node<P: Platform>(&self, _cx: &Cx<'_, '_, P>, _node: &PvNode) {}

    /// `pv_wait_node()`: called once queued behind `prev`; returns when
    /// `node.locked` is set (or may return early: the caller spins).
    fn wait_node<P: Platform>(&self, _cx: &Cx<'_, '_, P>, _lock: &RawLock, _node: &PvNode, _prev: &PvNode) {}

    /// `pv_kick_node()`: called by the new owner right after handing the
    /// MCS lock to `next`.
    fn kick_node<P: Platform>(&self, _cx: &Cx<'_, '_, P>, _lock: &RawLock, _next: &PvNode) {}

    /// `pv_wait_head_or_lock()`: as queue head, wait for the lock. Returns
    /// the lock word (with the locked byte set) if it took the lock, 0 if
    /// the caller must wait for `*,0,0` itself.
    fn wait_head_or_lock<P: Platform>(&self, _cx: &Cx<'_, '_, P>, _lock: &RawLock, _node: &PvNode) -> u32 {
        0
    }

    /// `queued_spin_unlock()` / `__pv_queued_spin_unlock()`.
    fn unlock<P: Platform>(&self, cx: &Cx<'_, '_, P>, lock: &RawLock);
}

/// The native hooks: no PV, the pending bit, a plain byte-store unlock.
pub(crate) struct Native;

/// `queued_spin_trylock()`: only an entirely free word (`0,0,0`) is taken;
/// with a queue or a pending waiter it fails, so it never steals.
#[inline]
pub(crate) fn plain_trylock(lock: &RawLock) -> bool {
    let val = lock.val.load(Ordering::Relaxed);
    val == 0 && lock.val.compare_exchange(0, word::LOCKED_VAL as u32, Ordering::Acquire, Ordering::Relaxed).is_ok()
}

impl PvHooks for Native {
    const PV: bool = false;

    fn trylock<P: Platform>(&self, _cx: &Cx<'_, '_, P>, lock: &RawLock) -> bool {
        plain_trylock(lock)
    }

    fn unlock<P: Platform>(&self, _cx: &Cx<'_, '_, P>, lock: &RawLock) {
        // `smp_store_release(&lock->locked, 0)`: *,*,1 -> *,*,0. Pairs with
        // the acquire loads of the waiters and the fast path's cmpxchg.
        word::store_locked(&lock.val, 0, Ordering::Release);
    }
}

/// `queued_spin_lock()`: the fast path, then the slow path.
#[inline]
pub(crate) fn lock<P: Platform, H: PvHooks>(cx: &Cx<'_, '_, P>, h: &H, lock: &RawLock) {
    // 0,0,0 -> 0,0,1 ; acquire, pairs with the unlock's release.
    match lock.val.compare_exchange(0, word::LOCKED_VAL as u32, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => {}
        Err(val) => slowpath(cx, h, lock, val),
    }
}

/// `queued_spin_lock_slowpath()`.
pub(crate) fn slowpath<P: Platform, H: PvHooks>(cx: &Cx<'_, '_, P>, h: &H, lock: &RawLock, val: u32) {
    let p = cx.p;
    p.set_phase(GuestPhase::Spinning, lock.addr(), 0);

    if !H::PV && native_pending(cx, lock, val) {
        return;
    }

    // pv_queue: (the PV build jumps here directly)
    let cpu = p.cpu();
    let node0 = cx.node(cpu, 0);
    // `idx = node->count++`: per-CPU, and a nested slow path (interrupt)
    // runs to completion before we continue, so a plain increment.
    let idx = node0.count.load(Ordering::Relaxed);
    node0.count.store(idx + 1, Ordering::Relaxed);

    acquire_queued(cx, h, lock, cpu, idx);

    // release: `__this_cpu_dec(qnodes[0].mcs.count)`.
    node0.count.store(idx, Ordering::Relaxed);
}

/// The native pending-bit path (upstream). Returns true if it took the
/// lock; false: go queue (`lock_slowpath` already counted).
fn native_pending<P: Platform>(cx: &Cx<'_, '_, P>, lock: &RawLock, mut val: u32) -> bool {
    // Wait for an in-progress pending -> locked hand-over (0,1,0 -> 0,0,1),
    // a bounded number of spins.
    if val == word::PENDING_VAL {
        let mut cnt = PENDING_LOOPS;
        loop {
            val = lock.val.load(Ordering::Relaxed);
            if val != word::PENDING_VAL || cnt == 0 {
                break;
            }
            cnt -= 1;
            cx.p.cpu_relax();
        }
    }

    // Any contention (tail or pending): queue.
    if val & !word::LOCKED_MASK == 0 {
        // trylock || pending: 0,0,* -> 0,1,*
        val = word::fetch_set_pending_acquire(&lock.val);

        if val & !word::LOCKED_MASK == 0 {
            // We are pending. Wait for the owner to go: 0,1,1 -> 0,1,0.
            // Acquire, pairs with the owner's release of the locked byte.
            if val & word::LOCKED_MASK != 0 {
                while word::read_locked(&lock.val, Ordering::Acquire) != 0 {
                    cx.p.cpu_relax();
                }
            }
            // Take ownership, clear pending: 0,1,0 -> 0,0,1.
            word::store_locked_pending(&lock.val, word::LOCKED_VAL as u16);
            cx.p.event(LockEvent::LockPending, 1);
            return true;
        }

        // A concurrent locker: undo pending if we set it, and queue.
        if val & word::PENDING_MASK == 0 {
            word::store_pending(&lock.val, 0);
        }
    }
    // queue:
    cx.p.event(LockEvent::LockSlowpath, 1);
    false
}

/// From `pv_queue:` to the release of the node.
fn acquire_queued<P: Platform, H: PvHooks>(cx: &Cx<'_, '_, P>, h: &H, lock: &RawLock, cpu: u32, idx: u32) {
    let p = cx.p;
    let addr = lock.addr();

    // Four nodes per CPU cover task, softirq, hardirq and NMI; a deeper
    // nesting spins on trylock without queueing (upstream since v5.1).
    if idx as usize >= MAX_NODES {
        p.event(LockEvent::LockNoNode, 1);
        while !h.trylock(cx, lock) {
            cx.relax();
        }
        return;
    }

    let node = cx.node(cpu, idx);
    match idx {
        1 => p.event(LockEvent::LockUseNode2, 1),
        2 => p.event(LockEvent::LockUseNode3, 1),
        3 => p.event(LockEvent::LockUseNode4, 1),
        _ => {}
    }
    let tail = word::encode_tail(cpu, idx);

    node.locked.store(0, Ordering::Relaxed);
    node.next.store(0, Ordering::Relaxed);
    h.init_node(cx, node);

    // We touched a (possibly) cold node: try once more before queueing. In
    // the PV build from v4.5 on this is the lock-stealing attempt.
    if h.trylock(cx, lock) {
        return;
    }

    // `smp_wmb()`: the node's initialisation is visible before the tail
    // that names it (pairs with the address dependency through
    // `decode_tail()` in our successor) and before `prev->next`.
    word::smp_wmb();

    // Publish the tail: p,*,* -> n,*,*
    // Upstream: `xchg_relaxed`, and the predecessor's node is then reached
    // through an address dependency (`decode_tail(old)`), which orders our
    // later stores to it after its initialisation. Rust has no "consume":
    // acquire stands in for the dependency (free on x86, where every xchg
    // is fully ordered). Release comes from the `smp_wmb()` above.
    let old = word::xchg_tail(&lock.val, tail, Mo::Acquire);
    let mut next: u64 = 0;

    if old & word::TAIL_MASK != 0 {
        let (pcpu, pidx) = word::decode_tail(old);
        let prev = cx.node(pcpu, pidx);
        // Link in: `WRITE_ONCE(prev->next, node)`.
        prev.next.store(node.addr(), Ordering::Relaxed);
        p.set_phase(GuestPhase::Queued, addr, node.addr() as usize);
        p.trace(TraceEvent::Queued, addr, idx as u16, old >> word::TAIL_OFFSET);

        h.wait_node(cx, lock, node, prev);
        // `arch_mcs_spin_lock_contended()`: `smp_cond_load_acquire(&node->locked, VAL)`;
        // pairs with the predecessor's `smp_store_release(&next->locked, 1)`.
        while node.locked.load(Ordering::Acquire) == 0 {
            cx.relax();
        }
        // Optimistically pick up our successor (upstream's prefetchw).
        // Acquire for the address dependency, as for `xchg_tail()`.
        next = node.next.load(Ordering::Acquire);
    }

    // We are the head. *,x,y -> *,0,0
    p.set_phase(GuestPhase::Head, addr, node.addr() as usize);
    p.trace(TraceEvent::BecameHead, addr, idx as u16, lock.val.load(Ordering::Relaxed));
    let mut val = h.wait_head_or_lock(cx, lock, node);
    if val == 0 {
        // `atomic_cond_read_acquire(&lock->val, !(VAL & _Q_LOCKED_PENDING_MASK))`:
        // acquire, pairs with the owner's release of the locked byte.
        loop {
            val = lock.val.load(Ordering::Acquire);
            if val & word::LOCKED_PENDING_MASK == 0 {
                break;
            }
            cx.relax();
        }
    }

    // locked: claim the lock.
    //   n,0,0 -> 0,0,1 : alone in the queue, nobody pending
    //   *,*,0 -> *,*,1 : contended
    // In the PV case the locked byte may already be set by
    // `pv_wait_head_or_lock()` (n,0,1 -> 0,0,1 is then the uncontended case).
    if val & word::TAIL_MASK == tail {
        // Relaxed: the acquire above (or the PV hook's RMW) ordered us.
        if lock.val.compare_exchange(val, word::LOCKED_VAL as u32, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return;
        }
    }

    // Somebody queued behind us, or set pending and will queue behind us:
    // `set_locked()`, *,*,0 -> *,*,1 (WRITE_ONCE of the locked byte).
    word::store_locked(&lock.val, word::LOCKED_VAL, Ordering::Relaxed);

    // Wait for our successor to link itself in, if we have not seen it yet.
    // (`smp_cond_load_relaxed(&node->next, VAL)`; acquire for the address
    // dependency through which we then write the successor's node.)
    while next == 0 {
        next = node.next.load(Ordering::Acquire);
        if next == 0 {
            p.cpu_relax();
        }
    }
    let next = cx.node_at(next, "mcs next");

    // `arch_mcs_spin_unlock_contended(&next->locked)`: hand the MCS lock on.
    // Release, pairs with the successor's acquire spin on its `locked`.
    next.locked.store(1, Ordering::Release);
    if H::PV {
        p.race_window(Window::Handoff);
    }
    h.kick_node(cx, lock, next);
}
