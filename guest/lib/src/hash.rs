//! The PV hash table: lock address -> queue-head node, so that the unlocker
//! can find whom to kick (`pv_hash()` / `pv_unhash()` in
//! `kernel/locking/qspinlock_paravirt.h`).
//!
//! Open addressing, keyed by the lock's address hashed with `hash_ptr()`
//! (golden-ratio multiply, top bits), starting at the beginning of the
//! entry's cache line (four 16-byte entries per 64-byte line) and walking
//! the *whole* table, wrapping around. Upstream sizes the table to
//! `max(4 * possible CPUs rounded to a cache line of entries, one page of
//! entries)`, rounded up to a power of two by `alloc_large_system_hash()`
//! ([`default_hash_bits`]); we also allow tables down to 4 entries
//! (`hash_bits = 2`) so that the "table full" BUG() is reachable.
//!
//! Ordering follows the kernel: the insert claims a slot with a fully
//! ordered `cmpxchg(&he->lock, NULL, lock)` and then writes `he->node` with
//! `WRITE_ONCE`; the removal reads with `READ_ONCE` and frees the slot with
//! `WRITE_ONCE(he->lock, NULL)`. Publication of `he->node` to the unlocker
//! rides on the `_Q_SLOW_VAL` store that follows every insert and the
//! `smp_rmb()` in the unlock slow path that precedes every removal.
//!
//! Ours, instrumentation only: before inserting, the whole table is scanned
//! with relaxed loads for an entry of the same lock (`double_hash`). Those
//! loads add no ordering to the algorithm; they can race with a concurrent
//! removal, so the count is exact only when the double insert is not racing
//! with the unlock of the same lock (R1's double hash is not: both entries
//! are made while the lock is held).

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::word::Mo;
use crate::Platform;
use pvlock_abi::{LockEvent, TraceEvent, Variant};

/// Largest table: 4096 entries (1024 CPUs at upstream's 4 entries each).
pub const MAX_HASH_BITS: u32 = 12;
/// Smallest table we allow: 4 entries, one cache line.
pub const MIN_HASH_BITS: u32 = 2;
/// `PV_HE_PER_LINE`: 64-byte cache line / 16-byte entry.
const PER_LINE: usize = 4;
/// `PV_HE_MIN`: a 4 KiB page of 16-byte entries.
const PV_HE_MIN: u32 = 4096 / 16;
/// `GOLDEN_RATIO_64` of `include/linux/hash.h`.
const GOLDEN_RATIO_64: u64 = 0x61c8_8646_80b5_83eb;

/// One slot (`struct pv_hash_entry`), readable by the VMM as
/// [`pvlock_abi::boot::HashEntry`].
#[repr(C)]
pub struct HashSlot {
    /// Guest address of the lock, 0 when the slot is free.
    pub(crate) lock: AtomicU64,
    /// Guest address of the queue head's node.
    pub(crate) node: AtomicU64,
}

impl HashSlot {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { lock: AtomicU64::new(0), node: AtomicU64::new(0) }
    }

    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { lock: AtomicU64::new(0), node: AtomicU64::new(0) }
    }

    /// The lock address in this slot (0 = free), for statistics.
    pub fn lock_addr(&self) -> u64 {
        self.lock.load(Ordering::Relaxed)
    }

    /// The node address in this slot, for statistics.
    pub fn node_addr(&self) -> u64 {
        self.node.load(Ordering::Relaxed)
    }
}

#[cfg(not(loom))]
impl Default for HashSlot {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    use pvlock_abi::boot::HashEntry;
    assert!(size_of::<HashSlot>() == size_of::<HashEntry>());
    assert!(align_of::<HashSlot>() == align_of::<HashEntry>());
    assert!(offset_of!(HashSlot, lock) == offset_of!(HashEntry, lock));
    assert!(offset_of!(HashSlot, node) == offset_of!(HashEntry, node));
};

/// Upstream's table size for `nr_cpus` possible CPUs, as log2 entries
/// (`__pv_init_lock_hash()`: `ALIGN(4 * num_possible_cpus(),
/// PV_HE_PER_LINE)`, at least `PV_HE_MIN`, then rounded up to a power of two
/// by `alloc_large_system_hash()`), capped at [`MAX_HASH_BITS`].
pub fn default_hash_bits(nr_cpus: u32) -> u32 {
    let per_line = PER_LINE as u32;
    let size = (4 * nr_cpus.max(1)).div_ceil(per_line) * per_line;
    let size = size.max(PV_HE_MIN);
    let bits = 32 - (size - 1).leading_zeros();
    bits.min(MAX_HASH_BITS)
}

/// `hash_ptr(lock, bits)` (`hash_64()`: multiply, keep the top bits).
#[inline]
pub(crate) fn hash_ptr(addr: u64, bits: u32) -> usize {
    (addr.wrapping_mul(GOLDEN_RATIO_64) >> (64 - bits)) as usize
}

/// The table as the lock code uses it: the first `1 << bits` slots.
#[derive(Clone, Copy)]
pub(crate) struct PvHash<'a> {
    pub(crate) slots: &'a [HashSlot],
    pub(crate) bits: u32,
    pub(crate) variant: Variant,
}

impl<'a> PvHash<'a> {
    /// `slots.len()` must be at least `1 << bits` (checked by the caller).
    pub(crate) fn new(slots: &'a [HashSlot], bits: u32, variant: Variant) -> Self {
        Self { slots: &slots[..1usize << bits], bits, variant }
    }

    #[inline]
    fn len(&self) -> usize {
        1 << self.bits
    }

    /// `for_each_hash_entry()`: slot indices in probe order, starting at
    /// the first entry of the hash's cache line, covering the whole table.
    #[inline]
    fn probe(&self, lock: u64) -> impl Iterator<Item = usize> {
        let start = hash_ptr(lock, self.bits) & !(PER_LINE - 1);
        let mask = self.len() - 1;
        (0..self.len()).map(move |off| (start + off) & mask)
    }

    /// Entries in use now (relaxed snapshot).
    pub(crate) fn in_use(&self) -> usize {
        self.slots.iter().filter(|s| s.lock.load(Ordering::Relaxed) != 0).count()
    }

    /// Entries for `lock` now (relaxed snapshot). Under loom each slot is
    /// read with a no-op RMW, which returns the newest value in modification
    /// order: a relaxed load may legally return a slot's value from before
    /// its removal, which would make the check report an entry that is
    /// already gone. (Natively a relaxed load; on x86 a removal is visible
    /// as soon as it leaves the remover's store buffer.)
    fn entries_for(&self, lock: u64) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                #[cfg(loom)]
                let v = s.lock.fetch_or(0, Ordering::Relaxed);
                #[cfg(not(loom))]
                let v = s.lock.load(Ordering::Relaxed);
                v == lock
            })
            .count()
    }

    /// `pv_hash()`: insert `lock -> node`, return the slot index (the
    /// kernel's `lp`). BUG()s if the table is full.
    pub(crate) fn insert<P: Platform>(&self, p: &P, lock: u64, node: u64) -> usize {
        // Instrumentation, not part of the algorithm: see the module doc.
        let dup = self.entries_for(lock);
        if dup != 0 {
            p.event(LockEvent::DoubleHash, 1);
            p.trace(TraceEvent::Hash, lock as usize, u16::MAX, dup as u32);
        }
        let mut hops = 0u64;
        for i in self.probe(lock) {
            hops += 1;
            let he = &self.slots[i];
            // Fully ordered: claims the slot; the lock word's `_Q_SLOW_VAL`
            // store after us publishes it to the unlocker.
            if crate::word::cmpxchg_u64(&he.lock, 0, lock, Mo::Full) == 0 {
                he.node.store(node, Ordering::Relaxed);
                // `lockevent_pv_hop(hopcnt)`: Linux sums the probes,
                // first slot included.
                p.event(LockEvent::PvHashHops, hops);
                p.event(LockEvent::HashInserts, 1);
                p.event_max(LockEvent::HashMaxProbe, hops);
                p.trace(TraceEvent::Hash, lock as usize, i as u16, hops as u32);
                return i;
            }
        }
        // "Hard assume there is a free entry for us": a full table.
        p.bug(format_args!(
            "pv_hash: no free slot for lock {:#x} (variant {}, cpu {}, node {:#x}): \
             table of {} entries, {} in use, {} already for this lock",
            lock,
            self.variant.name(),
            p.cpu(),
            node,
            self.len(),
            self.in_use(),
            self.entries_for(lock),
        ))
    }

    /// `WRITE_ONCE(*lp, NULL)`: free the slot returned by [`Self::insert`]
    /// (the head that hashed itself found the lock free after all).
    pub(crate) fn clear<P: Platform>(&self, p: &P, slot: usize, lock: u64) {
        self.slots[slot].lock.store(0, Ordering::Relaxed);
        p.event(LockEvent::HashRemoves, 1);
        p.trace(TraceEvent::Unhash, lock as usize, slot as u16, 0);
    }

    /// `pv_unhash()`: remove the first entry of `lock` in probe order and
    /// return its node address. BUG()s if there is none.
    pub(crate) fn remove<P: Platform>(&self, p: &P, lock: u64) -> u64 {
        for i in self.probe(lock) {
            let he = &self.slots[i];
            if he.lock.load(Ordering::Relaxed) == lock {
                let node = he.node.load(Ordering::Relaxed);
                he.lock.store(0, Ordering::Relaxed);
                p.event(LockEvent::HashRemoves, 1);
                p.trace(TraceEvent::Unhash, lock as usize, i as u16, 0);
                return node;
            }
        }
        // "IFF the unlock sees the SLOW flag, there MUST be a hash entry."
        p.bug(format_args!(
            "pv_unhash: lock {:#x} not in the table (variant {}, cpu {}): \
             table of {} entries, {} in use",
            lock,
            self.variant.name(),
            p.cpu(),
            self.len(),
            self.in_use(),
        ))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::testing::TestPlatform;

    fn table(n: usize) -> Vec<HashSlot> {
        (0..n).map(|_| HashSlot::new()).collect()
    }

    #[test]
    fn default_sizing_matches_upstream() {
        // One page of 16-byte entries until 4 * CPUs exceeds it.
        assert_eq!(default_hash_bits(1), 8);
        assert_eq!(default_hash_bits(64), 8);
        assert_eq!(default_hash_bits(65), 9);
        assert_eq!(default_hash_bits(128), 9);
        assert_eq!(default_hash_bits(129), 10);
        assert_eq!(default_hash_bits(100_000), MAX_HASH_BITS);
    }

    #[test]
    fn probe_starts_at_the_cache_line_and_covers_everything() {
        let slots = table(16);
        let h = PvHash::new(&slots, 4, Variant::PvUpstream);
        for lock in [0x1000u64, 0x40_1234, 0xdead_bee0] {
            let order: Vec<usize> = h.probe(lock).collect();
            assert_eq!(order[0] % PER_LINE, 0);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..16).collect::<Vec<_>>());
        }
    }

    #[test]
    fn insert_probe_unhash() {
        let slots = table(4);
        let p = TestPlatform::new(0);
        let h = PvHash::new(&slots, 2, Variant::PvUpstream);
        let a = h.insert(&p, 0x1000, 0xa0);
        let b = h.insert(&p, 0x2000, 0xb0);
        assert_ne!(a, b);
        assert_eq!(h.in_use(), 2);
        assert_eq!(h.remove(&p, 0x2000), 0xb0);
        assert_eq!(h.remove(&p, 0x1000), 0xa0);
        assert_eq!(h.in_use(), 0);
        assert_eq!(p.count(LockEvent::HashInserts), 2);
        assert_eq!(p.count(LockEvent::HashRemoves), 2);
        assert!(p.count(LockEvent::PvHashHops) >= 2, "first slot counts as a hop");
        assert_eq!(p.count(LockEvent::DoubleHash), 0);
    }

    #[test]
    fn double_insert_is_counted_and_first_match_wins() {
        let slots = table(4);
        let p = TestPlatform::new(0);
        let h = PvHash::new(&slots, 2, Variant::PvV45);
        let first = h.insert(&p, 0x1000, 0xa0);
        let second = h.insert(&p, 0x1000, 0xa0);
        assert_eq!(p.count(LockEvent::DoubleHash), 1);
        assert_ne!(first, second);
        h.remove(&p, 0x1000);
        assert_eq!(h.in_use(), 1, "one stale entry left");
    }

    #[test]
    #[should_panic(expected = "pv_hash: no free slot")]
    fn full_table_bugs() {
        let slots = table(4);
        let p = TestPlatform::new(0);
        let h = PvHash::new(&slots, 2, Variant::PvUpstream);
        for i in 1..=5u64 {
            h.insert(&p, i * 0x40, 0x10);
        }
    }

    #[test]
    #[should_panic(expected = "pv_unhash: lock 0x3000 not in the table")]
    fn missing_entry_bugs() {
        let slots = table(4);
        let p = TestPlatform::new(0);
        let h = PvHash::new(&slots, 2, Variant::MutantSlowBeforeHash);
        h.insert(&p, 0x1000, 0xa0);
        h.remove(&p, 0x3000);
    }
}
