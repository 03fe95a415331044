//! Per-vCPU blocks: the guest's state and statistics, readable by the VMM at
//! any time, and the assertion record of a guest panic.

use crate::events::NR_LOCK_EVENTS;
use crate::names::NR_WINDOWS;

/// What the vCPU is doing right now, written by the guest's lock code.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestPhase {
    Booting = 0,
    /// Outside any lock (think time, workload bookkeeping).
    Running = 1,
    /// In the lock's fast path or spinning outside the queue.
    Spinning = 2,
    /// Queued in the MCS queue behind another waiter.
    Queued = 3,
    /// Queue head spinning on the lock word.
    Head = 4,
    /// Inside `pv_wait()` (blocked in the VMM, or about to be).
    Waiting = 5,
    /// Holding the lock (critical section).
    Holding = 6,
    /// In the unlock path.
    Unlocking = 7,
    /// Workload finished.
    Done = 8,
}

impl GuestPhase {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Booting,
            1 => Self::Running,
            2 => Self::Spinning,
            3 => Self::Queued,
            4 => Self::Head,
            5 => Self::Waiting,
            6 => Self::Holding,
            7 => Self::Unlocking,
            8 => Self::Done,
            _ => return None,
        })
    }
    pub const fn name(self) -> &'static str {
        match self {
            Self::Booting => "booting",
            Self::Running => "running",
            Self::Spinning => "spinning",
            Self::Queued => "queued",
            Self::Head => "head",
            Self::Waiting => "waiting",
            Self::Holding => "holding",
            Self::Unlocking => "unlocking",
            Self::Done => "done",
        }
    }
}

/// Log-linear histogram of nanoseconds: bucket `4 * msb + next two bits`,
/// so each power of two is split in four (<= 25% relative error).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub buckets: [u64; LatencyHistogram::BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { buckets: [0; Self::BUCKETS] }
    }
}

impl LatencyHistogram {
    pub const BUCKETS: usize = 256;

    /// Bucket of a value.
    pub const fn bucket(v: u64) -> usize {
        if v < 4 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros() as u64;
        let sub = (v >> (msb - 2)) & 3;
        (msb * 4 + sub) as usize
    }

    /// Smallest value that falls in bucket `b` (its lower bound).
    pub const fn bucket_low(b: usize) -> u64 {
        if b < 8 {
            // Buckets 4..8 are never used (values 4..8 land in 8..12).
            return if b < 4 { b as u64 } else { 4 };
        }
        let msb = (b / 4) as u64;
        let sub = (b % 4) as u64;
        (1 << msb) | (sub << (msb - 2))
    }

    pub fn record(&mut self, v: u64) {
        self.buckets[Self::bucket(v)] += 1;
    }
}

/// One trace ring entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEntry {
    /// TSC when it happened.
    pub tsc: u64,
    /// Lock address involved (0 if none).
    pub lock: u64,
    /// [`TraceEvent`] id.
    pub event: u16,
    /// Window id for window events, MCS node index otherwise.
    pub arg: u16,
    /// Node state or lock byte observed.
    pub value: u32,
}

/// Events in the per-vCPU trace ring.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    LockEnter = 1,
    Acquired = 2,
    Released = 3,
    Queued = 4,
    BecameHead = 5,
    WaitNode = 6,
    WaitHead = 7,
    WokeUp = 8,
    KickNode = 9,
    Hash = 10,
    Unhash = 11,
    Kick = 12,
    Window = 13,
    Stolen = 14,
    IrqEnter = 15,
    IrqExit = 16,
    /// The VMM let a vCPU go on after a window stall ([`Self::Window`]).
    WindowResume = 17,
}

impl TraceEvent {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::LockEnter,
            2 => Self::Acquired,
            3 => Self::Released,
            4 => Self::Queued,
            5 => Self::BecameHead,
            6 => Self::WaitNode,
            7 => Self::WaitHead,
            8 => Self::WokeUp,
            9 => Self::KickNode,
            10 => Self::Hash,
            11 => Self::Unhash,
            12 => Self::Kick,
            13 => Self::Window,
            14 => Self::Stolen,
            15 => Self::IrqEnter,
            16 => Self::IrqExit,
            17 => Self::WindowResume,
            _ => return None,
        })
    }
    pub const fn name(self) -> &'static str {
        match self {
            Self::LockEnter => "lock-enter",
            Self::Acquired => "acquired",
            Self::Released => "released",
            Self::Queued => "queued",
            Self::BecameHead => "became-head",
            Self::WaitNode => "wait-node",
            Self::WaitHead => "wait-head",
            Self::WokeUp => "woke-up",
            Self::KickNode => "kick-node",
            Self::Hash => "hash",
            Self::Unhash => "unhash",
            Self::Kick => "kick",
            Self::Window => "window",
            Self::Stolen => "stolen",
            Self::IrqEnter => "irq-enter",
            Self::IrqExit => "irq-exit",
            Self::WindowResume => "window-resume",
        }
    }
}

/// A guest assertion / panic / BUG, copied as bytes (the VMM cannot follow
/// the guest's string pointers into a separate binary's rodata).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssertRecord {
    /// Source line.
    pub line: u32,
    /// Valid bytes of `file`.
    pub file_len: u32,
    /// Valid bytes of `msg`.
    pub msg_len: u32,
    pub _pad: u32,
    pub file: [u8; 96],
    pub msg: [u8; 400],
}

impl Default for AssertRecord {
    fn default() -> Self {
        Self { line: 0, file_len: 0, msg_len: 0, _pad: 0, file: [0; 96], msg: [0; 400] }
    }
}

/// Largest per-vCPU trace ring, entries (`BootBlock::trace_len`).
pub const MAX_TRACE_LEN: u64 = 1 << 22;

/// Guest address of vCPU `cpu`'s trace ring, given the rings' base and the
/// entries per ring (`BootBlock::trace_gpa`, `BootBlock::trace_len`).
pub const fn trace_ring_gpa(base: u64, len: u64, cpu: u32) -> u64 {
    base + cpu as u64 * len * core::mem::size_of::<TraceEntry>() as u64
}

/// The per-vCPU block at [`crate::vcpu_block_gpa`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuBlock {
    /// [`GuestPhase`], written by the guest.
    pub phase: u32,
    /// Written by the VMM: 1 while it holds this vCPU stalled
    /// (steal-time style `vcpu_is_preempted()`).
    pub preempted: u32,
    /// Lock the vCPU is acquiring or holding (guest address), 0 if none.
    pub cur_lock: u64,
    /// MCS node the vCPU is queued on (guest address), 0 if none.
    pub cur_node: u64,
    /// Simulated interrupt nesting depth now.
    pub irq_depth: u32,
    /// Non-zero after the guest has initialised this block.
    pub alive: u32,
    /// Completed lock acquisitions (outermost torture acquisitions).
    pub acquisitions: u64,
    /// TSC of the last completed acquisition (progress heartbeat).
    pub heartbeat_tsc: u64,
    /// Longest single acquisition wait, nanoseconds (fairness).
    pub max_wait_ns: u64,
    /// Guest-measured results for the timing workloads (ns sums / counts).
    pub timing: [u64; 8],
    /// Lock events, indexed by [`crate::LockEvent`].
    pub events: [u64; NR_LOCK_EVENTS],
    /// Times each window was reached while enabled.
    pub window_hits: [u64; NR_WINDOWS],
    /// Acquisition latency, nanoseconds.
    pub latency: LatencyHistogram,
    /// Trace entries written so far (monotonic): the next one goes to slot
    /// `trace_head % BootBlock::trace_len` of this vCPU's ring (the rings
    /// live outside the block: see `BootBlock::trace_gpa`).
    pub trace_head: u64,
    /// Filled before a [`crate::doorbell::PANIC`] doorbell.
    pub assert: AssertRecord,
}

impl Default for VcpuBlock {
    fn default() -> Self {
        Self {
            phase: 0,
            preempted: 0,
            cur_lock: 0,
            cur_node: 0,
            irq_depth: 0,
            alive: 0,
            acquisitions: 0,
            heartbeat_tsc: 0,
            max_wait_ns: 0,
            timing: [0; 8],
            events: [0; NR_LOCK_EVENTS],
            window_hits: [0; NR_WINDOWS],
            latency: LatencyHistogram::default(),
            trace_head: 0,
            assert: AssertRecord::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn histogram_buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for v in [0u64, 1, 3, 4, 5, 7, 8, 100, 1000, 1 << 20, u64::MAX] {
            let b = LatencyHistogram::bucket(v);
            assert!(b >= last && b < LatencyHistogram::BUCKETS, "v={v} b={b}");
            assert!(LatencyHistogram::bucket_low(b) <= v);
            last = b;
        }
        for b in (0..4).chain(8..LatencyHistogram::BUCKETS) {
            assert_eq!(LatencyHistogram::bucket(LatencyHistogram::bucket_low(b)), b);
        }
    }

    #[test]
    fn layout_is_stable() {
        // The VMM reads these by offset; a change here is an ABI change.
        assert_eq!(offset_of!(VcpuBlock, phase), 0);
        assert_eq!(offset_of!(VcpuBlock, preempted), 4);
        assert_eq!(offset_of!(VcpuBlock, cur_lock), 8);
        assert_eq!(size_of::<TraceEntry>(), 24);
        assert_eq!(size_of::<AssertRecord>(), 512);
        assert_eq!(offset_of!(crate::BootBlock, magic), 0);
        assert_eq!(offset_of!(crate::BootBlock, abi_version), 8);
        assert_eq!(size_of::<crate::boot::HashEntry>(), 16);
        assert!(size_of::<VcpuBlock>() <= crate::VCPU_BLOCK_SIZE as usize);
    }
}
