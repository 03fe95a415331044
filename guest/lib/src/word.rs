//! The qspinlock word and the barriers the lock code uses.
//!
//! # Layout (fewer than 16K CPUs, as in `include/asm-generic/qspinlock_types.h`)
//!
//! ```text
//!  31          18 17  16 15      9  8  7          0
//! +--------------+------+---------+---+------------+
//! | tail cpu + 1 | idx  |  unused | P |   locked   |
//! +--------------+------+---------+---+------------+
//!  \_____ tail (16 bits) _____/ \_ pending byte _/ \_ locked byte
//! ```
//!
//! Lock-word transitions are written `(tail, pending, locked)` like the
//! kernel's comments, e.g. `n,0,0 -> 0,0,1`.
//!
//! # Kernel primitives and their Rust counterparts
//!
//! | kernel | here |
//! |---|---|
//! | `READ_ONCE` / `WRITE_ONCE` | `Relaxed` load / store |
//! | `smp_load_acquire` / `smp_store_release` | `Acquire` load / `Release` store |
//! | `xchg`, `cmpxchg` (fully ordered) | [`Mo::Full`]: a `SeqCst` RMW (see below) |
//! | `cmpxchg_acquire` / `_release` / `_relaxed` | [`Mo::Acquire`] / [`Mo::Release`] / [`Mo::Relaxed`] RMW |
//! | `smp_mb()` | [`smp_mb`]: `fence(SeqCst)` |
//! | `smp_mb__before_atomic()` | [`smp_mb__before_atomic`] |
//! | `smp_rmb()` / `smp_wmb()` | `fence(Acquire)` / `fence(Release)` |
//! | `smp_store_mb(x, v)` | a fully ordered `xchg`, which is what x86 emits for it |
//!
//! A fully ordered kernel RMW is a full barrier for *all* memory (x86: every
//! `lock`-prefixed instruction is; LKMM: value-returning RMWs are as if
//! `smp_mb()` ran before and after). A `SeqCst` RMW in the C++/Rust model
//! orders only through its own location and the SC total order, so it does
//! not forbid, e.g., an earlier relaxed store to another location passing a
//! later load of a third CPU. On x86 the `SeqCst` RMW compiles to the same
//! `lock` instruction as the kernel's, so natively nothing is added; under
//! `cfg(loom)` [`Mo::Full`] brackets the RMW with `fence(SeqCst)` so the
//! model checker explores x86's (and LKMM's) semantics, not weaker ones.
//! Note: LKMM does not order a *failed* `cmpxchg()`; x86 does. We model x86.
//!
//! # Mixed-size accesses
//!
//! The kernel updates the locked byte, the pending byte and the 16-bit tail
//! with byte / halfword instructions on the one 32-bit word (`struct
//! qspinlock` is a union). Rust's memory model does not support mixed-size
//! atomics, so on x86-64 those accesses are `asm!` blocks (opaque to the
//! compiler, and exactly the instructions Linux emits); everywhere else, and
//! under loom, they are 32-bit compare-exchange loops with the same
//! ordering. A loop turns a plain byte store into a read-modify-write: it
//! cannot lose a concurrent update of another byte, which is the property
//! the byte store has on hardware, but it reads the newest value, so a
//! model under loom sees slightly fewer stale-value outcomes on the lock
//! word than x86 hardware would. x86 (TSO) shows only store->load
//! reordering, which the loom models exercise on the node state byte, not
//! on the lock word.

use crate::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Locked byte: the lock is held.
pub const LOCKED_VAL: u8 = 1;
/// `_Q_LOCKED_MASK`.
pub const LOCKED_MASK: u32 = 0xff;
/// `_Q_PENDING_OFFSET`.
pub const PENDING_OFFSET: u32 = 8;
/// `_Q_PENDING_VAL`: the pending bit in the word.
pub const PENDING_VAL: u32 = 1 << PENDING_OFFSET;
/// `_Q_PENDING_MASK` (the pending byte).
pub const PENDING_MASK: u32 = 0xff << PENDING_OFFSET;
/// `_Q_LOCKED_PENDING_MASK`.
pub const LOCKED_PENDING_MASK: u32 = LOCKED_MASK | PENDING_MASK;
/// `_Q_TAIL_IDX_OFFSET`.
pub const TAIL_IDX_OFFSET: u32 = 16;
/// `_Q_TAIL_IDX_MASK`.
pub const TAIL_IDX_MASK: u32 = 0x3 << TAIL_IDX_OFFSET;
/// `_Q_TAIL_CPU_OFFSET`.
pub const TAIL_CPU_OFFSET: u32 = 18;
/// `_Q_TAIL_CPU_MASK`.
pub const TAIL_CPU_MASK: u32 = 0x3fff << TAIL_CPU_OFFSET;
/// `_Q_TAIL_MASK`.
pub const TAIL_MASK: u32 = TAIL_IDX_MASK | TAIL_CPU_MASK;
/// `_Q_TAIL_OFFSET`: the tail is the upper halfword.
pub const TAIL_OFFSET: u32 = TAIL_IDX_OFFSET;
/// Largest CPU id the tail can encode.
pub const MAX_TAIL_CPU: u32 = (TAIL_CPU_MASK >> TAIL_CPU_OFFSET) - 1;

/// `encode_tail()`: CPU + 1 so that tail 0 means "no tail".
#[inline]
pub const fn encode_tail(cpu: u32, idx: u32) -> u32 {
    ((cpu + 1) << TAIL_CPU_OFFSET) | ((idx << TAIL_IDX_OFFSET) & TAIL_IDX_MASK)
}

/// `decode_tail()`: `(cpu, idx)` of a non-zero tail.
#[inline]
pub const fn decode_tail(tail: u32) -> (u32, u32) {
    let cpu = (tail >> TAIL_CPU_OFFSET) - 1;
    let idx = (tail & TAIL_IDX_MASK) >> TAIL_IDX_OFFSET;
    (cpu, idx)
}

/// Memory ordering of a read-modify-write, in the kernel's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mo {
    Relaxed,
    Acquire,
    Release,
    /// Fully ordered (`xchg()`, `cmpxchg()`): see the module doc.
    Full,
}

impl Mo {
    #[inline]
    fn success(self) -> Ordering {
        match self {
            Mo::Relaxed => Ordering::Relaxed,
            Mo::Acquire => Ordering::Acquire,
            Mo::Release => Ordering::Release,
            Mo::Full => Ordering::SeqCst,
        }
    }
    #[inline]
    fn failure(self) -> Ordering {
        match self {
            Mo::Acquire | Mo::Full => Ordering::Acquire,
            Mo::Relaxed | Mo::Release => Ordering::Relaxed,
        }
    }
    #[inline]
    fn before(self) {
        #[cfg(loom)]
        if self == Mo::Full {
            fence(Ordering::SeqCst);
        }
    }
    #[inline]
    fn after(self) {
        #[cfg(loom)]
        if self == Mo::Full {
            fence(Ordering::SeqCst);
        }
    }
}

/// `smp_mb()`.
#[inline]
pub fn smp_mb() {
    fence(Ordering::SeqCst);
}

/// `smp_rmb()` (a compiler barrier on x86).
#[inline]
pub fn smp_rmb() {
    fence(Ordering::Acquire);
}

/// `smp_wmb()` (a compiler barrier on x86).
#[inline]
pub fn smp_wmb() {
    fence(Ordering::Release);
}

/// `smp_mb__before_atomic()`: on x86 a compiler barrier, because the
/// following atomic RMW is a `lock`-prefixed instruction (a full barrier in
/// hardware whatever Rust ordering it carries). Elsewhere and under loom a
/// real `SeqCst` fence, which is what the kernel's definition promises.
#[inline]
#[allow(non_snake_case)]
pub fn smp_mb__before_atomic() {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    fence(Ordering::SeqCst);
}

/// `cmpxchg()` on a byte (PV node state): returns the value found.
#[inline]
pub fn cmpxchg_u8(b: &AtomicU8, old: u8, new: u8, mo: Mo) -> u8 {
    mo.before();
    let r = match b.compare_exchange(old, new, mo.success(), mo.failure()) {
        Ok(v) | Err(v) => v,
    };
    mo.after();
    r
}

/// `xchg()` on a byte (PV node state): returns the previous value.
#[inline]
pub fn xchg_u8(b: &AtomicU8, new: u8, mo: Mo) -> u8 {
    mo.before();
    let r = b.swap(new, mo.success());
    mo.after();
    r
}

/// `cmpxchg()` on a pointer-sized value (PV hash slot): returns the value found.
#[inline]
pub fn cmpxchg_u64(v: &AtomicU64, old: u64, new: u64, mo: Mo) -> u64 {
    mo.before();
    let r = match v.compare_exchange(old, new, mo.success(), mo.failure()) {
        Ok(x) | Err(x) => x,
    };
    mo.after();
    r
}

/// `cmpxchg()` on the whole word: returns the value found.
#[inline]
pub fn cmpxchg_word(w: &AtomicU32, old: u32, new: u32, mo: Mo) -> u32 {
    mo.before();
    let r = match w.compare_exchange(old, new, mo.success(), mo.failure()) {
        Ok(v) | Err(v) => v,
    };
    mo.after();
    r
}

/// `READ_ONCE(lock->locked)`.
#[inline]
pub fn read_locked(w: &AtomicU32, order: Ordering) -> u8 {
    (w.load(order) & LOCKED_MASK) as u8
}

/// x86's `queued_fetch_set_pending_acquire()` (7aa54be29765
/// "locking/qspinlock, x86: Provide liveness guarantee", v4.20;
/// `arch/x86/include/asm/qspinlock.h`): `lock btsl` sets the pending bit
/// and yields only its old value (carry flag), then a *separate*
/// `atomic_read()` supplies the other bits. Not one atomic fetch-or (the
/// generic `atomic_fetch_or_acquire()`): between the two, the owner may
/// release (the read sees locked 0) or a third locker may queue (the read
/// sees a tail; our caller then undoes its pending bit and queues, where a
/// fetch-or would have made it the pending waiter). Both are correct
/// interleavings of the kernel's; this is the one x86 runs.
///
/// Ordering: the `lock bts` is a full barrier; the read is a plain load
/// after it (acquire on x86, and ordered after the locked RMW). Pairs with
/// the owner's release of the locked byte and with `xchg_tail()`.
#[inline]
pub fn fetch_set_pending_acquire(w: &AtomicU32) -> u32 {
    let pending = bts_pending(w);
    pending | (w.load(Ordering::Acquire) & !PENDING_MASK)
}

/// `lock btsl $_Q_PENDING_OFFSET, lock->val`: the old pending bit, in word
/// position.
#[cfg(all(target_arch = "x86_64", not(loom)))]
#[inline]
fn bts_pending(w: &AtomicU32) -> u32 {
    let carry: u8;
    // SAFETY: `lock bts` on the aligned 32-bit word we hold a reference
    // to, which every other access treats atomically; it writes only the
    // pending bit and the flags, which are declared clobbered (no
    // `preserves_flags`), and the result comes out through `setc`.
    unsafe {
        core::arch::asm!("lock bts dword ptr [{p}], {bit}", "setc {c}",
                         p = in(reg) w.as_ptr(), bit = const PENDING_OFFSET, c = out(reg_byte) carry,
                         options(nostack));
    }
    (carry as u32) << PENDING_OFFSET
}

/// The same RMW elsewhere and under loom: a fully ordered fetch-or of
/// which only the pending bit is kept (the rest comes from the later load,
/// as on x86).
#[cfg(not(all(target_arch = "x86_64", not(loom))))]
#[inline]
fn bts_pending(w: &AtomicU32) -> u32 {
    Mo::Full.before();
    let old = w.fetch_or(PENDING_VAL, Mo::Full.success());
    Mo::Full.after();
    old & PENDING_VAL
}

pub use imp::*;

/// The sub-word accesses, x86-64 (not under loom): single instructions.
#[cfg(all(target_arch = "x86_64", not(loom)))]
mod imp {
    use super::{Mo, TAIL_OFFSET};
    use core::arch::asm;
    use core::sync::atomic::{AtomicU32, Ordering};

    // Byte 0 is the locked byte, byte 1 the pending byte, halfword 0
    // `locked_pending`, halfword 1 the tail (x86 is little endian). The
    // word is 4-byte aligned, so every sub-word access below is naturally
    // aligned and therefore single-copy atomic on x86.

    #[inline]
    fn byte_ptr(w: &AtomicU32, byte: usize) -> *mut u8 {
        // `as_ptr` gives the word's address; the offset stays inside it.
        w.as_ptr().cast::<u8>().wrapping_add(byte)
    }

    #[inline]
    fn half_ptr(w: &AtomicU32, half: usize) -> *mut u16 {
        w.as_ptr().cast::<u16>().wrapping_add(half)
    }

    /// `WRITE_ONCE(lock->locked, v)` or `smp_store_release(&lock->locked, v)`:
    /// a `mov` byte store (a release store on x86). `order` documents which
    /// of the two the caller means; the instruction is the same.
    #[inline]
    pub fn store_locked(w: &AtomicU32, v: u8, order: Ordering) {
        debug_assert!(matches!(order, Ordering::Relaxed | Ordering::Release));
        // SAFETY: the pointer is the first byte of a live, aligned
        // AtomicU32 we hold a reference to; every other access to the word
        // is atomic (Rust atomics or lock-prefixed / aligned asm accesses),
        // and an aligned byte store is single-copy atomic on x86. The asm
        // block may touch memory, so it is also a compiler barrier.
        unsafe {
            asm!("mov byte ptr [{p}], {v}", p = in(reg) byte_ptr(w, 0), v = in(reg_byte) v,
                 options(nostack, preserves_flags));
        }
    }

    /// `cmpxchg(&lock->locked, old, new)` (any ordering: `lock cmpxchg` is
    /// fully ordered on x86). Returns the value found.
    #[inline]
    pub fn cmpxchg_locked(w: &AtomicU32, old: u8, new: u8, _mo: Mo) -> u8 {
        let mut found = old;
        // SAFETY: as in `store_locked`; `lock cmpxchg` on an aligned byte.
        unsafe {
            asm!("lock cmpxchg byte ptr [{p}], {n}", p = in(reg) byte_ptr(w, 0), n = in(reg_byte) new,
                 inout("al") found, options(nostack));
        }
        found
    }

    /// `xchg(&lock->locked, new)`: fully ordered. Returns the old byte.
    #[inline]
    pub fn xchg_locked(w: &AtomicU32, new: u8, _mo: Mo) -> u8 {
        let mut v = new;
        // SAFETY: as in `store_locked`; `xchg` with memory is implicitly locked.
        unsafe {
            asm!("xchg byte ptr [{p}], {v}", p = in(reg) byte_ptr(w, 0), v = inout(reg_byte) v,
                 options(nostack, preserves_flags));
        }
        v
    }

    /// `WRITE_ONCE(lock->pending, v)` (`set_pending()` / `clear_pending()`
    /// with `_Q_PENDING_BITS == 8`).
    #[inline]
    pub fn store_pending(w: &AtomicU32, v: u8) {
        // SAFETY: as in `store_locked`, byte 1 of the word.
        unsafe {
            asm!("mov byte ptr [{p}], {v}", p = in(reg) byte_ptr(w, 1), v = in(reg_byte) v,
                 options(nostack, preserves_flags));
        }
    }

    /// `WRITE_ONCE(lock->locked_pending, v)` (`clear_pending_set_locked()`).
    #[inline]
    pub fn store_locked_pending(w: &AtomicU32, v: u16) {
        // SAFETY: as in `store_locked`, the aligned low halfword.
        unsafe {
            asm!("mov word ptr [{p}], {v:x}", p = in(reg) half_ptr(w, 0), v = in(reg) v,
                 options(nostack, preserves_flags));
        }
    }

    /// `cmpxchg(&lock->locked_pending, old, new)`. Returns the value found.
    #[inline]
    pub fn cmpxchg_locked_pending(w: &AtomicU32, old: u16, new: u16, _mo: Mo) -> u16 {
        let mut found = old;
        // SAFETY: as in `store_locked`; `lock cmpxchg` on the aligned low halfword.
        unsafe {
            asm!("lock cmpxchg word ptr [{p}], {n:x}", p = in(reg) half_ptr(w, 0), n = in(reg) new,
                 inout("ax") found, options(nostack));
        }
        found
    }

    /// `xchg_tail()`: swap the tail halfword, returning the old tail bits
    /// (in word position). Upstream uses `xchg_relaxed` after `smp_wmb()`;
    /// on x86 any `xchg` is fully ordered.
    #[inline]
    pub fn xchg_tail(w: &AtomicU32, tail: u32, _mo: Mo) -> u32 {
        let mut v = (tail >> TAIL_OFFSET) as u16;
        // SAFETY: as in `store_locked`; `xchg` on the aligned high halfword.
        unsafe {
            asm!("xchg word ptr [{p}], {v:x}", p = in(reg) half_ptr(w, 1), v = inout(reg) v,
                 options(nostack, preserves_flags));
        }
        (v as u32) << TAIL_OFFSET
    }
}

/// The sub-word accesses as 32-bit compare-exchange loops (loom, non-x86).
#[cfg(not(all(target_arch = "x86_64", not(loom))))]
mod imp {
    use super::{Mo, LOCKED_MASK, PENDING_MASK, PENDING_OFFSET, TAIL_MASK};
    use crate::sync::atomic::{AtomicU32, Ordering};

    /// Replace the bits `mask` of the word with `bits` if `cond(old)`;
    /// returns the old word. The whole loop is one RMW with ordering `mo`.
    #[inline]
    fn update(w: &AtomicU32, mo: Mo, mut f: impl FnMut(u32) -> Option<u32>) -> u32 {
        mo.before();
        let r = match w.fetch_update(mo.success(), mo.failure(), &mut f) {
            Ok(v) | Err(v) => v,
        };
        mo.after();
        r
    }

    fn store_mo(order: Ordering) -> Mo {
        match order {
            Ordering::Release => Mo::Release,
            _ => Mo::Relaxed,
        }
    }

    pub fn store_locked(w: &AtomicU32, v: u8, order: Ordering) {
        update(w, store_mo(order), |o| Some((o & !LOCKED_MASK) | v as u32));
    }

    pub fn cmpxchg_locked(w: &AtomicU32, old: u8, new: u8, mo: Mo) -> u8 {
        let o = update(w, mo, |o| ((o & LOCKED_MASK) as u8 == old).then_some((o & !LOCKED_MASK) | new as u32));
        (o & LOCKED_MASK) as u8
    }

    pub fn xchg_locked(w: &AtomicU32, new: u8, mo: Mo) -> u8 {
        (update(w, mo, |o| Some((o & !LOCKED_MASK) | new as u32)) & LOCKED_MASK) as u8
    }

    pub fn store_pending(w: &AtomicU32, v: u8) {
        update(w, Mo::Relaxed, |o| Some((o & !PENDING_MASK) | ((v as u32) << PENDING_OFFSET)));
    }

    pub fn store_locked_pending(w: &AtomicU32, v: u16) {
        update(w, Mo::Relaxed, |o| Some((o & TAIL_MASK) | v as u32));
    }

    pub fn cmpxchg_locked_pending(w: &AtomicU32, old: u16, new: u16, mo: Mo) -> u16 {
        let o = update(w, mo, |o| ((o & !TAIL_MASK) as u16 == old).then_some((o & TAIL_MASK) | new as u32));
        o as u16
    }

    pub fn xchg_tail(w: &AtomicU32, tail: u32, mo: Mo) -> u32 {
        update(w, mo, |o| Some((o & !TAIL_MASK) | tail)) & TAIL_MASK
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn tail_round_trip() {
        for cpu in [0, 1, 63, MAX_TAIL_CPU] {
            for idx in 0..4 {
                let t = encode_tail(cpu, idx);
                assert_eq!(t & !TAIL_MASK, 0, "tail must not touch locked/pending");
                assert_ne!(t, 0, "tail 0 means no tail");
                assert_eq!(decode_tail(t), (cpu, idx));
            }
        }
        assert_eq!(encode_tail(0, 0), 1 << 18);
        assert_eq!(encode_tail(2, 3), (3 << 18) | (3 << 16));
    }

    #[test]
    fn sub_word_accesses_touch_only_their_field() {
        let w = AtomicU32::new(0xabcd_0000);
        store_locked(&w, 3, Ordering::Relaxed);
        assert_eq!(w.load(Ordering::Relaxed), 0xabcd_0003);
        store_pending(&w, 1);
        assert_eq!(w.load(Ordering::Relaxed), 0xabcd_0103);
        assert_eq!(cmpxchg_locked(&w, 1, 0, Mo::Full), 3, "fails, returns found");
        assert_eq!(cmpxchg_locked(&w, 3, 7, Mo::Full), 3);
        assert_eq!(w.load(Ordering::Relaxed), 0xabcd_0107);
        assert_eq!(xchg_locked(&w, 0, Mo::Full), 7);
        assert_eq!(cmpxchg_locked_pending(&w, 0x0100, 0x0001, Mo::Acquire), 0x0100);
        assert_eq!(w.load(Ordering::Relaxed), 0xabcd_0001);
        store_pending(&w, 1);
        store_locked_pending(&w, 0x0001);
        assert_eq!(w.load(Ordering::Relaxed), 0xabcd_0001);
        let old = xchg_tail(&w, encode_tail(1, 2), Mo::Relaxed);
        assert_eq!(old, 0xabcd_0000);
        assert_eq!(w.load(Ordering::Relaxed), encode_tail(1, 2) | 1);
        assert_eq!(read_locked(&w, Ordering::Relaxed), 1);
        assert_eq!(fetch_set_pending_acquire(&w) & PENDING_VAL, 0);
        assert_eq!(w.load(Ordering::Relaxed) & PENDING_VAL, PENDING_VAL);
        assert_eq!(fetch_set_pending_acquire(&w), encode_tail(1, 2) | PENDING_VAL | 1, "old pending, rest read after");
    }
}
