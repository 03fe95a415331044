//! The optimistic spin queue (`kernel/locking/osq_lock.c`): an MCS lock that
//! lets one spinner at a time spin on a sleeping lock's owner, with
//! cancellation (a spinner that must stop unqueues itself). Introduced as
//! the "cancelable MCS lock" in fb0527bd5ea9 (v3.15); the waiting loop
//! broke out on a preempted predecessor from 5aff60a186 ("locking/osq:
//! Break out of spin-wait busy waiting loop for a preempted vCPU", v4.10).
//! [`OsqFlavor::V4_9`] is the loop before that, [`OsqFlavor::V4_10`] after
//! (today's `smp_cond_load_relaxed()` is the same condition).
//!
//! The OSQ protects no data: the sleeping lock is taken by its own acquire
//! cmpxchg, so the hand-over of `node->locked` is a relaxed store/load, as
//! in the kernel (`WRITE_ONCE()` / `smp_cond_load_relaxed()`).
//!
//! Nodes are per CPU (one per task here), named by `cpu + 1`; 0 is "none".

use super::task::Tasks;
use crate::sync::atomic::{fence, AtomicU32, Ordering};
use crate::Platform;

/// `OSQ_UNLOCKED_VAL`.
const UNLOCKED: u32 = 0;

/// `struct optimistic_spin_node`.
pub struct OsqNode {
    next: AtomicU32,
    prev: AtomicU32,
    locked: AtomicU32,
}

impl OsqNode {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { next: AtomicU32::new(0), prev: AtomicU32::new(0), locked: AtomicU32::new(0) }
    }
    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { next: AtomicU32::new(0), prev: AtomicU32::new(0), locked: AtomicU32::new(0) }
    }
}

#[cfg(not(loom))]
impl Default for OsqNode {
    fn default() -> Self {
        Self::new()
    }
}

/// `struct optimistic_spin_queue`: the tail (cpu + 1 of the last node).
pub struct Osq {
    tail: AtomicU32,
}

impl Osq {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { tail: AtomicU32::new(UNLOCKED) }
    }
    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { tail: AtomicU32::new(UNLOCKED) }
    }
}

#[cfg(not(loom))]
impl Default for Osq {
    fn default() -> Self {
        Self::new()
    }
}

/// Which release's waiting loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsqFlavor {
    /// Waits until locked or `need_resched()`.
    V4_9,
    /// Also gives up when the predecessor's vCPU is preempted (5aff60a186).
    V4_10,
}

fn slot<'a, P: Platform>(t: &Tasks<'a>, p: &P, enc: u32) -> &'a super::task::TaskSlot {
    if enc == UNLOCKED {
        p.bug(format_args!("osq: decode of the unlocked value"))
    }
    t.get(p, enc - 1)
}

/// `osq_wait_next()`: a stable `node->next`, or None when we were last and
/// moved the tail back to `old_cpu`.
fn wait_next<P: Platform>(t: &Tasks<'_>, p: &P, lock: &Osq, me: u32, old_cpu: u32) -> u32 {
    let curr = me + 1;
    let node = &t.get(p, me).osq;
    loop {
        // Acquire: pairs with the release half of osq_lock()'s xchg of a
        // newcomer, whose node we then read (upstream: cmpxchg_acquire).
        if lock.tail.load(Ordering::Relaxed) == curr
            && lock.tail.compare_exchange(curr, old_cpu, Ordering::Acquire, Ordering::Relaxed).is_ok()
        {
            return UNLOCKED;
        }
        // xchg(): a full-barrier RMW, so a concurrent unqueue of our next
        // (its Step-A cmpxchg on our ->next) sees NULL and waits.
        if node.next.load(Ordering::Relaxed) != UNLOCKED {
            let next = node.next.swap(UNLOCKED, Ordering::SeqCst);
            if next != UNLOCKED {
                return next;
            }
        }
        p.cpu_relax();
    }
}

/// `osq_lock()`: true when we own the queue (may spin on the owner).
pub fn lock<P: Platform>(t: &Tasks<'_>, p: &P, lock: &Osq, flavor: OsqFlavor) -> bool {
    let me = p.cpu();
    let curr = me + 1;
    let node = &t.get(p, me).osq;
    node.locked.store(0, Ordering::Relaxed);
    node.next.store(UNLOCKED, Ordering::Relaxed);

    // atomic_xchg(): ACQUIRE (pairs with osq_unlock()'s release cmpxchg
    // when uncontended) and RELEASE (publishes the node fields above to
    // the successor that decodes our cpu).
    let old = lock.tail.swap(curr, Ordering::AcqRel);
    if old == UNLOCKED {
        return true;
    }
    let mut prev = old;
    node.prev.store(prev, Ordering::Relaxed);
    // smp_wmb(): node->prev before prev->next; pairs with the MB in
    // osq_wait_next() of an unqueueing successor (unqueue-C writes our
    // ->prev, the same variable).
    fence(Ordering::Release);
    node_next_of(t, p, prev).store(curr, Ordering::Relaxed);

    // The wait: relaxed (the OSQ guards no data; see the module comment).
    loop {
        if node.locked.load(Ordering::Relaxed) != 0 {
            return true;
        }
        if t.need_resched(p) {
            break;
        }
        if flavor == OsqFlavor::V4_10 && p.vcpu_is_preempted(node.prev.load(Ordering::Relaxed) - 1) {
            break;
        }
        p.cpu_relax();
    }

    // Step A: undo prev->next = node.
    loop {
        let pn = node_next_of(t, p, prev);
        if pn.load(Ordering::Relaxed) == curr
            && pn.compare_exchange(curr, UNLOCKED, Ordering::SeqCst, Ordering::Relaxed).is_ok()
        {
            break;
        }
        // We only fail the cmpxchg racing an unlock(): we then see
        // node->locked (acquire: pairs with nothing data-wise, as upstream's
        // smp_load_acquire() keeps it).
        if node.locked.load(Ordering::Acquire) != 0 {
            return true;
        }
        p.cpu_relax();
        // Or a concurrent unqueue()'s step-B: its step-C writes us a new prev.
        prev = node.prev.load(Ordering::Relaxed);
    }

    // Step B: stabilise next (or move the tail back to prev).
    let next = wait_next(t, p, lock, me, prev);
    if next == UNLOCKED {
        return false;
    }
    // Step C: unlink. prev waits for a new ->next, next waits in step A.
    slot(t, p, next).osq.prev.store(prev, Ordering::Relaxed);
    node_next_of(t, p, prev).store(next, Ordering::Relaxed);
    false
}

fn node_next_of<'a, P: Platform>(t: &Tasks<'a>, p: &P, enc: u32) -> &'a AtomicU32 {
    &slot(t, p, enc).osq.next
}

/// `osq_unlock()`.
pub fn unlock<P: Platform>(t: &Tasks<'_>, p: &P, lock: &Osq) {
    let me = p.cpu();
    let curr = me + 1;
    // Uncontended: release, pairs with the acquire of the next osq_lock()'s xchg.
    if lock.tail.compare_exchange(curr, UNLOCKED, Ordering::Release, Ordering::Relaxed).is_ok() {
        return;
    }
    let node = &t.get(p, me).osq;
    let next = node.next.swap(UNLOCKED, Ordering::SeqCst);
    if next != UNLOCKED {
        slot(t, p, next).osq.locked.store(1, Ordering::Relaxed);
        return;
    }
    let next = wait_next(t, p, lock, me, UNLOCKED);
    if next != UNLOCKED {
        slot(t, p, next).osq.locked.store(1, Ordering::Relaxed);
    }
}
