//! The guest lock's vocabulary as a descriptor: how a qspinlock word, a PV
//! hash entry and an MCS/PV node are laid out, and what the state values
//! mean. The VMM decodes guest memory (hang dumps, the missed-wakeup
//! detector, the hash-table checks) only through a [`LockLayout`].
//!
//! [`LockLayout::for_variant`] describes pvlock's own guest (the layout of
//! `include/asm-generic/qspinlock_types.h` with fewer than 16K CPUs, as
//! `guest/lib/src/word.rs` implements it; its tests check that the two
//! agree). A kernel built from a user's tree produces the same descriptor
//! from its own headers, so the VMM reads that kernel's locks the same way.

use crate::Variant;

/// Bit fields of the 32-bit lock word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WordLayout {
    /// Mask of the locked byte (`_Q_LOCKED_MASK`).
    pub locked_mask: u32,
    /// `_Q_LOCKED_VAL`: the locked byte of a plain owner.
    pub locked_val: u8,
    /// `_Q_SLOW_VAL`: the locked byte when the unlocker must look in the
    /// PV hash table and kick.
    pub slow_val: u8,
    /// `_Q_PENDING_VAL`: the pending bit.
    pub pending_bit: u32,
    /// `_Q_TAIL_IDX_OFFSET` and the width of the index field (log2 of
    /// `MAX_NODES`).
    pub tail_idx_offset: u32,
    pub tail_idx_bits: u32,
    /// `_Q_TAIL_CPU_OFFSET` and the width of the CPU field; the field holds
    /// CPU + 1, 0 = no tail.
    pub tail_cpu_offset: u32,
    pub tail_cpu_bits: u32,
}

/// The queue tail of a lock word: the last queued CPU and its node index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    pub cpu: u32,
    pub idx: u32,
}

impl WordLayout {
    /// The locked byte.
    pub const fn locked(&self, word: u32) -> u8 {
        (word & self.locked_mask) as u8
    }
    pub const fn pending(&self, word: u32) -> bool {
        word & self.pending_bit != 0
    }
    /// `decode_tail()`, None when no CPU is queued.
    pub const fn tail(&self, word: u32) -> Option<Tail> {
        let cpu_plus_1 = (word >> self.tail_cpu_offset) & ((1 << self.tail_cpu_bits) - 1);
        if cpu_plus_1 == 0 {
            return None;
        }
        let idx = (word >> self.tail_idx_offset) & ((1 << self.tail_idx_bits) - 1);
        Some(Tail { cpu: cpu_plus_1 - 1, idx })
    }
}

/// One PV hash table slot (`struct pv_hash_entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashEntryLayout {
    /// Bytes per entry.
    pub size: u64,
    /// Offset of the lock address (0 = free slot).
    pub lock: u64,
    /// Offset of the waiter's node address.
    pub node: u64,
}

/// One MCS/PV node (`struct pv_node`) and the per-CPU node array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLayout {
    /// `MAX_NODES`: nodes per CPU, one per nesting level.
    pub max_nodes: u32,
    /// Offset of the MCS `next` pointer (u64 guest address).
    pub next: u64,
    /// Offset of the MCS `locked` flag (u32).
    pub locked: u64,
    /// Offset of the nesting count (u32; meaningful in node 0).
    pub count: u64,
    /// Offset of the owning CPU (u32).
    pub cpu: u64,
    /// Offset of the PV state byte.
    pub state: u64,
    /// `vcpu_running`: the state of a node whose CPU spins (not halted,
    /// not hashed) in every variant.
    pub state_running: u8,
}

impl NodeLayout {
    /// The CPU whose node array holds `node`, given the array's base and
    /// the bytes per node (None outside the array or past `cpus`).
    pub const fn cpu_of(&self, nodes_gpa: u64, node_stride: u64, node: u64, cpus: u32) -> Option<u32> {
        if nodes_gpa == 0 || node_stride == 0 || node < nodes_gpa {
            return None;
        }
        let cpu = (node - nodes_gpa) / node_stride / self.max_nodes as u64;
        if cpu < cpus as u64 {
            Some(cpu as u32)
        } else {
            None
        }
    }
}

/// A torture lock as the VMM reads it: the lock word, then the owner field
/// and the plain counter the torture workload keeps beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TortureLockLayout {
    /// Offset of the 32-bit lock word.
    pub word: u64,
    /// Offset of the owner field (u32): owning CPU + 1, 0 when free.
    pub owner: u64,
    /// Offset of the plain acquisition counter (u64).
    pub count: u64,
    /// Smallest stride between two torture locks.
    pub min_stride: u64,
}

/// Everything the VMM needs to read a guest's locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockLayout {
    pub word: WordLayout,
    pub hash_entry: HashEntryLayout,
    pub node: NodeLayout,
    pub torture_lock: TortureLockLayout,
}

/// Linux's qspinlock word with fewer than 16K CPUs.
const QSPINLOCK_WORD: WordLayout = WordLayout {
    locked_mask: 0xff,
    locked_val: 1,
    slow_val: 3,
    pending_bit: 1 << 8,
    tail_idx_offset: 16,
    tail_idx_bits: 2,
    tail_cpu_offset: 18,
    tail_cpu_bits: 14,
};

impl LockLayout {
    /// pvlock's guest running `variant`.
    pub const fn for_variant(variant: Variant) -> Self {
        let mut word = QSPINLOCK_WORD;
        // The 2016 `_Q_HASH_VAL` proposal moved `_Q_SLOW_VAL` to 7 (3 is
        // "hashing in progress" there).
        if matches!(variant, Variant::PvHashval2016) {
            word.slow_val = 7;
        }
        Self {
            word,
            hash_entry: HashEntryLayout {
                size: core::mem::size_of::<crate::HashEntry>() as u64,
                lock: core::mem::offset_of!(crate::HashEntry, lock) as u64,
                node: core::mem::offset_of!(crate::HashEntry, node) as u64,
            },
            node: NodeLayout {
                max_nodes: 4,
                next: crate::boot::node_layout::NEXT,
                locked: crate::boot::node_layout::LOCKED,
                count: crate::boot::node_layout::COUNT,
                cpu: crate::boot::node_layout::CPU,
                state: crate::boot::node_layout::STATE,
                state_running: 0,
            },
            torture_lock: TortureLockLayout {
                word: crate::boot::lock_layout::WORD,
                owner: crate::boot::lock_layout::OWNER,
                count: crate::boot::lock_layout::COUNT,
                min_stride: 16,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_decode_like_the_kernel() {
        let w = LockLayout::for_variant(Variant::PvUpstream).word;
        // (tail = cpu 2 idx 1, pending, slow): n,1,3
        let word = (3 << 18) | (1 << 16) | (1 << 8) | 3;
        assert_eq!(w.locked(word), w.slow_val);
        assert!(w.pending(word));
        assert_eq!(w.tail(word), Some(Tail { cpu: 2, idx: 1 }));
        assert_eq!(w.tail(w.locked_val as u32), None);
        assert_eq!(LockLayout::for_variant(Variant::PvHashval2016).word.slow_val, 7);
    }

    #[test]
    fn nodes_belong_to_their_cpu() {
        let n = LockLayout::for_variant(Variant::PvUpstream).node;
        assert_eq!(n.cpu_of(0x1000, 32, 0x1000 + 32 * 5, 4), Some(1));
        assert_eq!(n.cpu_of(0x1000, 32, 0x1000 + 32 * 16, 4), None);
        assert_eq!(n.cpu_of(0x1000, 32, 0x800, 4), None);
        assert_eq!(n.cpu_of(0, 32, 0x1000, 4), None);
    }
}
