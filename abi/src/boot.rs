//! The boot block: parameters the VMM writes before any vCPU starts, and the
//! few fields the guest publishes back (where its lock tables live) or
//! updates while it runs (start barrier, smoke counters).

pub use crate::names::Workload;

/// Lock algorithm parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockParams {
    /// [`crate::Variant`] id.
    pub variant: u32,
    /// `SPIN_THRESHOLD`: pause iterations before a waiter halts (kernel: 1 << 15).
    pub spin_threshold: u32,
    /// log2 of the PV hash table's entries; 0 = upstream's sizing (the
    /// guest computes it from the vCPU count).
    pub hash_bits: u32,
    /// `LOCK_FLAG_*` bits.
    pub flags: u32,
    /// [`crate::MutexVariant`] id of the mutex torture (0: none).
    pub mutex: u32,
    /// [`crate::PageWakeVariant`] id of the page-wake workload (0: none).
    pub page_wake: u32,
}

/// Stop the run with a BUG report at the first `pv_hash()` insert for a
/// lock that is already in the table (reproducers: time to detect).
pub const LOCK_FLAG_STOP_ON_DOUBLE_HASH: u32 = 1;

/// Mutex torture: task 0 locks mutex 0 and then, wrongly, locks it again
/// with `mutex_lock_killable()` (e274795ea7b7's case); a return of 0 is a
/// guest BUG, the fatal signal sent by vCPU 1 at the end of the run is the
/// clean way out (`lock.mutex_recursive`).
pub const LOCK_FLAG_MUTEX_RECURSIVE: u32 = 2;

/// Lock-torture parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TortureParams {
    /// Number of locks (1..=1024).
    pub nr_locks: u32,
    /// Locks held at once, taken in a global order (1..=4).
    pub nest: u32,
    /// Critical section length, nanoseconds (TSC-timed).
    pub cs_ns: u32,
    /// Think time between acquisitions, nanoseconds.
    pub think_ns: u32,
    /// Simulated interrupts: probability per slow-path spin check that a
    /// handler runs, in parts per 2^32 (0 = off).
    pub irq_prob: u32,
    /// Deepest simulated interrupt nesting (0..=3).
    pub irq_max_depth: u32,
    /// Stop after this many acquisitions per vCPU (0 = by duration only).
    pub max_acquisitions: u64,
}

/// Race-window stalls decided by the guest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowParams {
    /// Bit `i` set: window `i` may stall.
    pub enabled_mask: u64,
    /// Probability of stalling at an enabled window, parts per 2^32.
    pub prob: u32,
    /// Non-zero: every enabled window stalls (directed schedules).
    pub always: u32,
}

/// Hypervisor parameters the guest needs to know (most stay in the VMM).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypervisorParams {
    /// Non-zero: the VMM maintains `VcpuBlock::preempted`.
    pub preempted_flags: u32,
    /// Guest-side poll before the exiting wait, ns (0 = off): the VMM
    /// writes 0 here under overcommit unless told otherwise.
    pub guest_poll_ns: u32,
    /// Non-zero: while the VMM halt-polls a vCPU it marks that vCPU's
    /// poll state (at [`BootBlock::poll_state_gpa`]) polling, and a kicker
    /// that sees the mark sets it to kicked instead of storing to the kick
    /// doorbell (`hypervisor.halt_poll_flag`).
    pub vmm_poll_flag: u32,
    pub _pad: u32,
}

/// The boot block at [`crate::BOOT_BLOCK_GPA`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootBlock {
    // ---- written by the VMM before start, read-only for the guest ----
    /// [`crate::BOOT_MAGIC`].
    pub magic: u64,
    /// [`crate::ABI_VERSION`].
    pub abi_version: u32,
    /// Number of vCPUs running the guest.
    pub nr_vcpus: u32,
    /// Base seed; vCPU `n` derives its own stream from it.
    pub seed: u64,
    /// TSC frequency in kHz (guest time base).
    pub tsc_khz: u64,
    /// Run length in milliseconds (guest-timed from the start barrier).
    pub duration_ms: u64,
    /// [`Workload`] id.
    pub workload: u32,
    /// Bytes of guest RAM.
    pub ram_mib: u32,
    pub lock: LockParams,
    pub torture: TortureParams,
    pub windows: WindowParams,
    pub hypervisor: HypervisorParams,
    /// Iterations for counting workloads (smoke, ping-pong, doorbells).
    pub iterations: u64,
    /// Guest address of the per-vCPU trace rings ([`crate::TraceEntry`]
    /// arrays, [`crate::vcpu::trace_ring_gpa`]); placed by the VMM in RAM
    /// below the stacks.
    pub trace_gpa: u64,
    /// Entries per trace ring, a power of two; 0 = tracing off (each trace
    /// point then costs the guest one load and a branch).
    pub trace_len: u64,

    // ---- written by the guest, read by the VMM ----
    /// vCPUs that reached the start barrier.
    pub started: u64,
    /// TSC when the last vCPU passed the start barrier.
    pub start_tsc: u64,
    /// Set to 1 by the VMM to ask every vCPU to finish its workload early
    /// (Ctrl-C, a run-level timeout); the guest polls it between acquisitions.
    pub stop_request: u64,
    /// Smoke: shared counter incremented with `lock xadd`.
    pub atomic_counter: u64,
    /// Smoke: counter incremented with plain loads and stores under the lock.
    pub plain_counter: u64,
    /// Guest address of the torture lock array (0 until published).
    pub locks_gpa: u64,
    /// Bytes between two torture locks.
    pub lock_stride: u64,
    /// Number of torture locks published.
    pub nr_locks: u64,
    /// Guest address of the PV hash table ([`HashEntry`] array).
    pub hash_gpa: u64,
    /// Entries in the PV hash table.
    pub hash_entries: u64,
    /// Guest address of the per-CPU MCS/PV node array.
    pub nodes_gpa: u64,
    /// Bytes of one node (`nodes_gpa + (cpu * 4 + idx) * node_stride`).
    pub node_stride: u64,
    /// Guest address of the per-vCPU poll states (u32 each,
    /// [`POLL_STATE_STRIDE`] apart; 0 until published): [`POLL_IDLE`],
    /// [`POLL_POLLING`] while the guest's or the VMM's poll of that vCPU
    /// runs, [`POLL_KICKED`] once a kicker took that way.
    pub poll_state_gpa: u64,
}

/// Bytes between two vCPUs' poll states (a cache line each).
pub const POLL_STATE_STRIDE: u64 = 64;
/// Not polling: a kick must go through the kick doorbell.
pub const POLL_IDLE: u32 = 0;
/// The guest's poll or the VMM's halt poll of the vCPU is running: a kick
/// may set [`POLL_KICKED`] instead of storing to the kick doorbell.
pub const POLL_POLLING: u32 = 1;
/// Kicked while polling; the poller consumes it.
pub const POLL_KICKED: u32 = 2;

/// One PV hash table slot: `struct pv_hash_entry { lock; node; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashEntry {
    /// Guest address of the lock word, 0 when free.
    pub lock: u64,
    /// Guest address of the waiter's node.
    pub node: u64,
}

/// Layout of a torture lock as the VMM reads it (the guest's type asserts it
/// matches): the lock word first.
pub mod lock_layout {
    /// Offset of the 32-bit lock word.
    pub const WORD: u64 = 0;
    /// Offset of the owner field: owning CPU + 1, 0 when free.
    pub const OWNER: u64 = 4;
    /// Offset of the plain acquisition counter (u64).
    pub const COUNT: u64 = 8;
}

/// Layout of a PV node (`struct pv_node`) as the VMM reads it.
pub mod node_layout {
    /// Offset of the MCS `next` pointer (u64 guest address).
    pub const NEXT: u64 = 0;
    /// Offset of the MCS `locked` flag (u32).
    pub const LOCKED: u64 = 8;
    /// Offset of the nesting count (u32; meaningful in node 0).
    pub const COUNT: u64 = 12;
    /// Offset of the owning CPU (u32).
    pub const CPU: u64 = 16;
    /// Offset of the PV state byte (`vcpu_running` ...).
    pub const STATE: u64 = 20;
}
