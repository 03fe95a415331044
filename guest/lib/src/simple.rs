//! The two baselines: a ticket lock and the test-and-set fallback.
//!
//! * `ticket`: the x86 ticket spinlock Linux used before qspinlock (v4.2
//!   switched x86 to qspinlock): a `next` ticket and an `owner` ticket, FIFO,
//!   no PV slow path (the paravirt ticketlock's slow-path flag is not
//!   modelled). The kernel's `struct __raw_tickets` is two `u16`s in one
//!   word (`head` low, `tail` high); we keep that layout in the 32-bit lock
//!   word: bits 0-15 now serving, bits 16-31 next ticket.
//! * `tas`: `virt_spin_lock()` of `arch/x86/include/asm/qspinlock.h`, the
//!   test-and-test-and-set lock a guest falls back to when the hypervisor
//!   offers no PV spinlocks: unfair, but immune to lock-*waiter* preemption.

use crate::sync::atomic::Ordering;
use crate::system::{LockAlgorithm, LockSystem, RawLock};
use crate::word;
use crate::Platform;
use pvlock_abi::GuestPhase;

const TICKET_SHIFT: u32 = 16;
const TICKET_MASK: u32 = 0xffff;

/// `arch_spin_lock()` (ticket): take a ticket with `xadd`, spin until served.
pub(crate) fn ticket_lock<P: Platform>(p: &P, lock: &RawLock) {
    // Fully ordered on x86 (`lock xadd`); acquire is what the lock needs.
    let v = lock.val.fetch_add(1 << TICKET_SHIFT, Ordering::Acquire);
    let me = v >> TICKET_SHIFT;
    if v & TICKET_MASK == me {
        return;
    }
    p.set_phase(GuestPhase::Spinning, lock.addr(), 0);
    // Pairs with the release in `ticket_unlock()`.
    while lock.val.load(Ordering::Acquire) & TICKET_MASK != me {
        p.cpu_relax();
        p.maybe_interrupt();
    }
}

/// `arch_spin_unlock()` (ticket): serve the next ticket. The kernel adds 1
/// to the `head` halfword; only the owner writes it, but other CPUs take
/// tickets in the upper half concurrently, so without a halfword add we
/// update the low half with a compare-exchange loop (release).
pub(crate) fn ticket_unlock(lock: &RawLock) {
    let mut cur = lock.val.load(Ordering::Relaxed);
    loop {
        let new = (cur & !TICKET_MASK) | (cur.wrapping_add(1) & TICKET_MASK);
        match lock.val.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(v) => cur = v,
        }
    }
}

/// `virt_spin_lock()`: read, and only when the word is 0 try
/// `cmpxchg(0 -> _Q_LOCKED_VAL)` (acquire); otherwise relax and retry.
pub(crate) fn tas_lock<P: Platform>(p: &P, lock: &RawLock) {
    let mut spun = false;
    loop {
        let val = lock.val.load(Ordering::Relaxed);
        if val == 0
            && lock.val.compare_exchange(0, word::LOCKED_VAL as u32, Ordering::Acquire, Ordering::Relaxed).is_ok()
        {
            return;
        }
        if !spun {
            spun = true;
            p.set_phase(GuestPhase::Spinning, lock.addr(), 0);
        }
        p.cpu_relax();
        p.maybe_interrupt();
    }
}

/// `queued_spin_unlock()`: `smp_store_release(&lock->locked, 0)`.
pub(crate) fn tas_unlock(lock: &RawLock) {
    word::store_locked(&lock.val, 0, Ordering::Release);
}

/// The ticket lock, as the variant table names it.
pub(crate) struct Ticket;

impl LockAlgorithm for Ticket {
    #[inline]
    fn lock<P: Platform>(&self, _sys: &LockSystem<'_>, p: &P, lock: &RawLock) {
        ticket_lock(p, lock);
    }
    #[inline]
    fn unlock<P: Platform>(&self, _sys: &LockSystem<'_>, _p: &P, lock: &RawLock) {
        ticket_unlock(lock);
    }
}

/// The test-and-set fallback, as the variant table names it.
pub(crate) struct Tas;

impl LockAlgorithm for Tas {
    #[inline]
    fn lock<P: Platform>(&self, _sys: &LockSystem<'_>, p: &P, lock: &RawLock) {
        tas_lock(p, lock);
    }
    #[inline]
    fn unlock<P: Platform>(&self, _sys: &LockSystem<'_>, _p: &P, lock: &RawLock) {
        tas_unlock(lock);
    }
}
