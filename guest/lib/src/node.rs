//! MCS + PV queue nodes: `struct pv_node` (an `mcs_spinlock` followed by
//! the CPU and the PV state byte), four per CPU (`qnodes[MAX_NODES]`), one
//! per nesting level (task, softirq, hardirq, NMI in the kernel; simulated
//! interrupts here). Node 0 carries the per-CPU nesting count.
//!
//! The VMM reads nodes from guest memory at the offsets of
//! [`pvlock_abi::boot::node_layout`] (`nodes_gpa + (cpu * 4 + idx) *
//! node_stride`); the layout is asserted at compile time below.
//!
//! The MCS `next` pointer is kept as a guest address (`u64`, 0 = NULL) as
//! the ABI says; the lock code turns an address back into a node by
//! bounds-checked index arithmetic over the node array
//! ([`NodeArray::at_addr`]), so no raw pointer is dereferenced.

use crate::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// `MAX_NODES`: nesting levels per CPU.
pub const MAX_NODES: usize = 4;

/// One queue node (`struct pv_node`; the native lock uses only the MCS part).
#[repr(C)]
pub struct PvNode {
    /// `mcs.next`: guest address of the successor's node, 0 when none.
    pub(crate) next: AtomicU64,
    /// `mcs.locked`: set to 1 by the predecessor when this node becomes head.
    pub(crate) locked: AtomicU32,
    /// `mcs.count`: nesting count, meaningful in node 0 only. Touched only
    /// by the owning CPU (the kernel's is a plain per-CPU `int`), so it is a
    /// `core` atomic even under loom: it is not shared state to model.
    pub(crate) count: core::sync::atomic::AtomicU32,
    /// `pn->cpu`: the owning CPU, read by whoever kicks this node.
    pub(crate) cpu: AtomicU32,
    /// `pn->state`: the PV state byte (values per variant, see `pv`).
    pub(crate) state: AtomicU8,
    _pad: [u8; 3],
    /// Ours, node 0 only: cycle count of the last `pv_kick()` aimed at this
    /// CPU (the kernel's per-CPU `pv_kick_time` for `pv_latency_wake`).
    /// Instrumentation, so a `core` atomic even under loom.
    pub(crate) kick_tsc: core::sync::atomic::AtomicU64,
}

impl PvNode {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            next: AtomicU64::new(0),
            locked: AtomicU32::new(0),
            count: core::sync::atomic::AtomicU32::new(0),
            cpu: AtomicU32::new(0),
            state: AtomicU8::new(0),
            _pad: [0; 3],
            kick_tsc: core::sync::atomic::AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Self {
            next: AtomicU64::new(0),
            locked: AtomicU32::new(0),
            count: core::sync::atomic::AtomicU32::new(0),
            cpu: AtomicU32::new(0),
            state: AtomicU8::new(0),
            _pad: [0; 3],
            kick_tsc: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// This node's address (what `next`, the hash table and the VMM use).
    #[inline]
    pub fn addr(&self) -> u64 {
        self as *const PvNode as usize as u64
    }

    /// The PV state byte (for tests and diagnostics).
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }
}

/// One CPU's four nodes (`qnodes[]`).
#[repr(C)]
pub struct PerCpuNodes {
    pub(crate) nodes: [PvNode; MAX_NODES],
}

impl PerCpuNodes {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { nodes: [PvNode::new(), PvNode::new(), PvNode::new(), PvNode::new()] }
    }

    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { nodes: [PvNode::new(), PvNode::new(), PvNode::new(), PvNode::new()] }
    }

    /// Node `idx` (0..4).
    pub fn node(&self, idx: usize) -> &PvNode {
        &self.nodes[idx]
    }

    /// Current nesting count (node 0's `count`).
    pub fn nesting(&self) -> u32 {
        self.nodes[0].count.load(Ordering::Relaxed)
    }
}

#[cfg(not(loom))]
impl Default for PerCpuNodes {
    fn default() -> Self {
        Self::new()
    }
}

/// The node array of all CPUs, as the lock code sees it.
#[derive(Clone, Copy)]
pub(crate) struct NodeArray<'a> {
    pub(crate) cpus: &'a [PerCpuNodes],
}

impl<'a> NodeArray<'a> {
    /// `decode_tail()` / `grab_mcs_node()`: the node of `(cpu, idx)`.
    /// `None` if the CPU is outside the array (a corrupted tail).
    #[inline]
    pub(crate) fn get(&self, cpu: u32, idx: u32) -> Option<&'a PvNode> {
        self.cpus.get(cpu as usize).and_then(|c| c.nodes.get(idx as usize))
    }

    /// The node at guest address `addr` (a `next` pointer or a hash entry),
    /// or `None` if `addr` is not the start of one of our nodes.
    pub(crate) fn at_addr(&self, addr: u64) -> Option<&'a PvNode> {
        let size = core::mem::size_of::<PvNode>();
        let base = self.cpus.as_ptr() as usize;
        let off = (addr as usize).checked_sub(base)?;
        if off % size != 0 {
            return None;
        }
        let i = off / size;
        self.get((i / MAX_NODES) as u32, (i % MAX_NODES) as u32)
    }
}

#[cfg(not(loom))]
mod layout {
    use super::{PerCpuNodes, PvNode, MAX_NODES};
    use core::mem::{offset_of, size_of};
    use pvlock_abi::boot::node_layout as l;

    const _: () = assert!(offset_of!(PvNode, next) as u64 == l::NEXT);
    const _: () = assert!(offset_of!(PvNode, locked) as u64 == l::LOCKED);
    const _: () = assert!(offset_of!(PvNode, count) as u64 == l::COUNT);
    const _: () = assert!(offset_of!(PvNode, cpu) as u64 == l::CPU);
    const _: () = assert!(offset_of!(PvNode, state) as u64 == l::STATE);
    const _: () = assert!(size_of::<PvNode>() == 32);
    // `nodes_gpa + (cpu * 4 + idx) * node_stride` must hold.
    const _: () = assert!(size_of::<PerCpuNodes>() == MAX_NODES * size_of::<PvNode>());
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        let cpus = [PerCpuNodes::new(), PerCpuNodes::new(), PerCpuNodes::new()];
        let a = NodeArray { cpus: &cpus };
        for cpu in 0..3 {
            for idx in 0..4 {
                let n = a.get(cpu, idx).unwrap();
                assert!(core::ptr::eq(a.at_addr(n.addr()).unwrap(), n));
            }
        }
        assert!(a.get(3, 0).is_none());
        let n = a.get(0, 1).unwrap();
        assert!(a.at_addr(n.addr() + 8).is_none(), "inside a node");
        assert!(a.at_addr(0).is_none());
        assert!(a.at_addr(a.get(2, 3).unwrap().addr() + 32).is_none(), "one past the end");
    }
}
