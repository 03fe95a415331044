//! Per-vCPU blocks: the guest's state and statistics, readable by the VMM at
//! any time, and the assertion record of a guest panic.

use crate::events::NR_LOCK_EVENTS;
use crate::names::NR_WINDOWS;

pub use crate::names::GuestPhase;

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

/// Slots of [`VcpuBlock::timing`].
pub const TIMING_SLOTS: usize = 8;
/// The slot that holds the TSC at the vCPU's first guest instruction (all
/// workloads; the VMM's boot time).
pub const ENTRY_TSC_SLOT: usize = 7;

/// What the torture workload leaves in [`VcpuBlock::timing`]: the VMM
/// compares the first two with the locks' plain counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TortureTiming {
    /// Torture-lock increments (every critical section, nested ones too).
    pub lock_acquisitions: u64,
    /// Increments under the simulated interrupts' locks.
    pub irq_acquisitions: u64,
    /// Simulated interrupt handlers run.
    pub sim_irqs: u64,
    /// Deepest simulated interrupt nesting reached.
    pub max_irq_depth: u64,
}

impl TortureTiming {
    pub const fn from_slots(t: &[u64; TIMING_SLOTS]) -> Self {
        Self { lock_acquisitions: t[0], irq_acquisitions: t[1], sim_irqs: t[2], max_irq_depth: t[3] }
    }
    pub fn store(&self, t: &mut [u64; TIMING_SLOTS]) {
        t[0] = self.lock_acquisitions;
        t[1] = self.irq_acquisitions;
        t[2] = self.sim_irqs;
        t[3] = self.max_irq_depth;
    }
}

/// What the doorbells workload (vCPU 0) leaves in [`VcpuBlock::timing`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorbellsTiming {
    /// Total ns of `iterations` exiting doorbells.
    pub exits_ns: u64,
    /// Total ns of `iterations` kick stores (ioeventfd, no exit).
    pub kick_stores_ns: u64,
    /// Doorbells and kick stores timed, each.
    pub iterations: u64,
    /// ns of the loop that calls a disabled race window.
    pub window_loop_ns: u64,
    /// ns of the identical loop without the call.
    pub empty_loop_ns: u64,
    /// Iterations of each of those two loops.
    pub window_loops: u64,
}

impl DoorbellsTiming {
    pub const fn from_slots(t: &[u64; TIMING_SLOTS]) -> Self {
        Self {
            exits_ns: t[0],
            kick_stores_ns: t[1],
            iterations: t[2],
            window_loop_ns: t[3],
            empty_loop_ns: t[4],
            window_loops: t[5],
        }
    }
    pub fn store(&self, t: &mut [u64; TIMING_SLOTS]) {
        t[0] = self.exits_ns;
        t[1] = self.kick_stores_ns;
        t[2] = self.iterations;
        t[3] = self.window_loop_ns;
        t[4] = self.empty_loop_ns;
        t[5] = self.window_loops;
    }
}

/// What each watcher of the preempt-probe workload leaves in
/// [`VcpuBlock::timing`]: polls that saw vCPU `c` preempted, for the first
/// [`PreemptProbeTiming::WATCHED`] vCPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreemptProbeTiming {
    pub seen_preempted: [u64; PreemptProbeTiming::WATCHED],
}

impl PreemptProbeTiming {
    /// vCPUs watched: every slot below [`ENTRY_TSC_SLOT`].
    pub const WATCHED: usize = ENTRY_TSC_SLOT;
    pub fn from_slots(t: &[u64; TIMING_SLOTS]) -> Self {
        let mut seen_preempted = [0; Self::WATCHED];
        seen_preempted.copy_from_slice(&t[..Self::WATCHED]);
        Self { seen_preempted }
    }
    /// Counts one poll that saw vCPU `cpu` preempted (ignored past
    /// [`Self::WATCHED`]).
    pub fn count_in(t: &mut [u64; TIMING_SLOTS], cpu: usize) {
        if cpu < Self::WATCHED {
            t[cpu] += 1;
        }
    }
}

/// The legs of a wake, each timed on the side that sees both of its ends.
/// The TSC is one clock for the guest and the VMM's threads under PVM (the
/// guest's `rdtsc` runs natively at CPL3); the doorbells workload checks
/// that ([`LegTiming::offset_lo`]) rather than assuming it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    /// Guest TSC before an exiting store -> the VMM's thread sees the exit
    /// (doorbells: the PING exit).
    ExitEntry = 0,
    /// The kicker's TSC before its kick -> the kicker's TSC after it (the
    /// ioeventfd store, or the CAS on a polling target's flag).
    KickStore = 1,
    /// The kicker's TSC before its kick -> the waiter's VMM thread sees the
    /// kick (eventfd read or polling flag).
    KickSeen = 2,
    /// The VMM saw the exit or kick -> its `KVM_RUN` that resumes the vCPU.
    VmmTurnaround = 3,
    /// That `KVM_RUN` -> the vCPU's first guest instruction after the exit.
    Resume = 4,
}

/// Number of [`Leg`]s.
pub const NR_LEGS: usize = 5;

impl Leg {
    pub const ALL: [Leg; NR_LEGS] = [Leg::ExitEntry, Leg::KickStore, Leg::KickSeen, Leg::VmmTurnaround, Leg::Resume];
    pub const fn name(self) -> &'static str {
        match self {
            Leg::ExitEntry => "exit_entry",
            Leg::KickStore => "kick_store",
            Leg::KickSeen => "kick_seen",
            Leg::VmmTurnaround => "vmm_turnaround",
            Leg::Resume => "resume",
        }
    }
}

/// [`VcpuBlock::legs`]: the VMM's two stamps for the exit it is serving and
/// the guest's histograms of the legs computed from them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegTiming {
    /// Written by the VMM while the vCPU is in an exit (never while it runs
    /// guest code): host TSC when it saw a PING exit or the kick that ended
    /// a wait without blocking (a won halt poll, a pending kick); the guest
    /// zeroes it before the exit it wants timed.
    pub vmm_saw_tsc: u64,
    /// Written by the VMM: host TSC just before the `KVM_RUN` that follows
    /// the exit stamped in `vmm_saw_tsc`.
    pub vmm_resume_tsc: u64,
    /// Doorbells workload: bounds on host TSC minus guest TSC, cycles, over
    /// every timed PING exit: `max(saw - after)` and `min(saw - before)`.
    /// One clock: `offset_lo <= 0 <= offset_hi`.
    pub offset_lo: i64,
    pub offset_hi: i64,
    /// PING exits that gave the bounds.
    pub offset_samples: u64,
    /// Per [`Leg`], ns (bucketed: a quarter of a power of two).
    pub hist: [LatencyHistogram; NR_LEGS],
    /// Per [`Leg`], the sum of the recorded values, ns (exact means).
    pub sum_ns: [u64; NR_LEGS],
}

impl Default for LegTiming {
    fn default() -> Self {
        Self {
            vmm_saw_tsc: 0,
            vmm_resume_tsc: 0,
            offset_lo: 0,
            offset_hi: 0,
            offset_samples: 0,
            hist: [LatencyHistogram::default(); NR_LEGS],
            sum_ns: [0; NR_LEGS],
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

/// A use-after-free seen by the guest ([`crate::PanicKind::UseAfterFree`]):
/// vCPU `waker` touched `object` of vCPU `owner` at `step` after the owner
/// had let it go. Filled before the PANIC doorbell.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UafRecord {
    /// The vCPU that made the access.
    pub waker: u32,
    /// The vCPU whose stack frame / task it was.
    pub owner: u32,
    /// [`crate::FreedObject`] id.
    pub object: u32,
    /// [`crate::WakeStep`] id.
    pub step: u32,
    /// Lifetime tag the waker saw when it took the reference.
    pub tag_then: u32,
    /// Tag at the access (poisoned, or a later reuse).
    pub tag_now: u32,
    /// Guest address of the object.
    pub addr: u64,
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
    /// Workload results, one meaning per workload: read and write them
    /// through [`TortureTiming`], [`DoorbellsTiming`] or
    /// [`PreemptProbeTiming`]; slot [`ENTRY_TSC_SLOT`] is every workload's.
    pub timing: [u64; TIMING_SLOTS],
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
    /// Filled before a PANIC doorbell of kind use-after-free.
    pub uaf: UafRecord,
    /// Wake legs (doorbells and ping-pong workloads).
    pub legs: LegTiming,
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
            timing: [0; TIMING_SLOTS],
            events: [0; NR_LOCK_EVENTS],
            window_hits: [0; NR_WINDOWS],
            latency: LatencyHistogram::default(),
            trace_head: 0,
            assert: AssertRecord::default(),
            uaf: UafRecord::default(),
            legs: LegTiming::default(),
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
