//! The PV hash table: lock address -> queue-head node, so that the unlocker
//! can find whom to kick (`pv_hash()` / `pv_unhash()` in
//! `kernel/locking/qspinlock_paravirt.h`).
//!
//! Open addressing, keyed by the lock's address hashed with `hash_ptr()`
//! (multiply, top bits; the multiplier of the variant's era, see
//! [`HashFn`]), starting at the beginning of the entry's cache line (four
//! 16-byte entries per 64-byte line) and walking the *whole* table,
//! wrapping around. Every release sizes the table to `max(4 * possible
//! CPUs rounded up to a cache line of entries, one page of entries)` and
//! passes that as both limits of `alloc_large_system_hash()`, which
//! rounds it up to a power of two, clamps it to the high limit and takes
//! `ilog2()`: the table ends up the largest power of two *not above* the
//! requested size ([`default_hash_bits`]). We also allow tables down to 4
//! entries (`hash_bits = 2`) so that the "table full" BUG() is reachable.
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
/// `GOLDEN_RATIO_64` of `include/linux/hash.h` (v4.6 on, 64-bit).
const GOLDEN_RATIO_64: u64 = 0x61c8_8646_80b5_83eb;
/// `GOLDEN_RATIO_PRIME_64` (up to v4.5): the bit-sparse
/// `2^63 + 2^61 - 2^57 + 2^54 - 2^51 - 2^18 + 1`.
const GOLDEN_RATIO_PRIME_64: u64 = 0x9e37_ffff_fffc_0001;

/// Which `hash_64()` a release's `hash_ptr()` is (x86-64: `hash_ptr()` is
/// `hash_long()` is `hash_64()`; the result is always the top `bits` of a
/// 64-bit product, only the multiplier changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashFn {
    /// Up to v4.5: multiply by [`GOLDEN_RATIO_PRIME_64`] (spelled as
    /// shifts and adds without `CONFIG_ARCH_HAS_FAST_MULTIPLIER`: the same
    /// product mod 2^64).
    GoldenRatioPrime64,
    /// 689de1d6ca95 "Minimal fix-up of bad hashing behavior of hash_64()"
    /// (Linus, 2016-05-02, "a minimal fix for 4.6 (and back-porting)",
    /// Cc: stable) switched 64-bit `hash_64()` to [`GOLDEN_RATIO_64`];
    /// ef703f49a6c5 (v4.7) reworked the file around it without changing
    /// the 64-bit result. Note that 4.4.y/4.5.y stable trees got the
    /// backport: our v4.2-v4.5 variants hash as their *release tags* did.
    GoldenRatio64,
}

impl HashFn {
    /// The `hash_ptr()` of `v`'s source tree. No default arm: a new
    /// variant says which hash its tree has.
    pub fn for_variant(v: Variant) -> Self {
        match v {
            Variant::PvV42 | Variant::PvV43 | Variant::PvV45 => HashFn::GoldenRatioPrime64,
            // v4.8 and the 2016 proposals on top of v4.7/v4.8 trees.
            Variant::PvV48 | Variant::PvRehash2016 | Variant::PvHashval2016 => HashFn::GoldenRatio64,
            // Today's tree, and the mutants of it.
            Variant::PvUpstream
            | Variant::MutantNoStoreMb
            | Variant::MutantSlowBeforeHash
            | Variant::MutantHaltedHead => HashFn::GoldenRatio64,
            // No PV hash table of ours: the native locks never hash, and a
            // kernel build hashes in the tree's own code (its hash.h). The
            // table a LockSystem is given is still sized and keyed as
            // today's, so the value is today's.
            Variant::Ticket | Variant::Tas | Variant::Qspinlock | Variant::KernelPv | Variant::KernelNative => {
                HashFn::GoldenRatio64
            }
        }
    }

    fn multiplier(self) -> u64 {
        match self {
            HashFn::GoldenRatioPrime64 => GOLDEN_RATIO_PRIME_64,
            HashFn::GoldenRatio64 => GOLDEN_RATIO_64,
        }
    }
}

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

/// The kernel's table size for `nr_cpus` possible CPUs, as log2 entries,
/// capped at [`MAX_HASH_BITS`]. `__pv_init_lock_hash()` asks for
/// `ALIGN(4 * num_possible_cpus(), PV_HE_PER_LINE)`, at least `PV_HE_MIN`,
/// as `numentries` *and* as `low_limit = high_limit`;
/// `alloc_large_system_hash()` then does `roundup_pow_of_two()`, clamps to
/// `high_limit` (the unrounded size) and keeps `ilog2()` of that: the
/// largest power of two not above the size (65 CPUs: 260 -> 256 entries).
pub fn default_hash_bits(nr_cpus: u32) -> u32 {
    let per_line = PER_LINE as u32;
    let size = (4 * nr_cpus.max(1)).div_ceil(per_line) * per_line;
    let size = size.max(PV_HE_MIN);
    let bits = 31 - size.leading_zeros();
    bits.min(MAX_HASH_BITS)
}

/// `hash_ptr(lock, bits)` of era `f` (`hash_64()`: multiply, keep the top
/// bits).
#[inline]
pub(crate) fn hash_ptr(f: HashFn, addr: u64, bits: u32) -> usize {
    (addr.wrapping_mul(f.multiplier()) >> (64 - bits)) as usize
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
        let start = hash_ptr(HashFn::for_variant(self.variant), lock, self.bits) & !(PER_LINE - 1);
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
    fn default_sizing_rounds_down_like_alloc_large_system_hash() {
        // One page of 16-byte entries until 4 * CPUs exceeds it; above
        // that the largest power of two not above 4 * CPUs.
        assert_eq!(default_hash_bits(1), 8);
        assert_eq!(default_hash_bits(64), 8);
        assert_eq!(default_hash_bits(65), 8, "260 requested: 256");
        assert_eq!(default_hash_bits(96), 8, "384 requested: 256");
        assert_eq!(default_hash_bits(128), 9);
        assert_eq!(default_hash_bits(129), 9, "516 requested: 512");
        assert_eq!(default_hash_bits(256), 10);
        assert_eq!(default_hash_bits(100_000), MAX_HASH_BITS);
    }

    /// The pre-v4.6 `hash_64()` without a fast multiplier, step by step.
    fn hash_64_shift_add(val: u64, bits: u32) -> u64 {
        let mut hash = val;
        let mut n = hash;
        n <<= 18;
        hash = hash.wrapping_sub(n);
        n <<= 33;
        hash = hash.wrapping_sub(n);
        n <<= 3;
        hash = hash.wrapping_add(n);
        n <<= 3;
        hash = hash.wrapping_sub(n);
        n <<= 4;
        hash = hash.wrapping_add(n);
        n <<= 2;
        hash = hash.wrapping_add(n);
        hash >> (64 - bits)
    }

    #[test]
    fn each_era_hashes_with_its_multiplier() {
        for addr in [0x41b000u64, 0x41b010, 0x41b030, 0xdead_beef_0000, u64::MAX] {
            assert_eq!(
                hash_ptr(HashFn::GoldenRatioPrime64, addr, 8) as u64,
                hash_64_shift_add(addr, 8),
                "the shift/add spelling is the same product"
            );
        }
        assert_eq!(HashFn::for_variant(Variant::PvV42), HashFn::GoldenRatioPrime64);
        assert_eq!(HashFn::for_variant(Variant::PvV45), HashFn::GoldenRatioPrime64);
        assert_eq!(HashFn::for_variant(Variant::PvV48), HashFn::GoldenRatio64);
        assert_eq!(HashFn::for_variant(Variant::PvUpstream), HashFn::GoldenRatio64);
        // The two eras put the torture locks (16 bytes apart) in different
        // cache lines of entries: the change is visible in the probes.
        let lines = |f| (0..4u64).map(|i| hash_ptr(f, 0x41b000 + 16 * i, 8) / PER_LINE).collect::<Vec<_>>();
        assert_ne!(lines(HashFn::GoldenRatioPrime64), lines(HashFn::GoldenRatio64));
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
