//! Sleeping locks on the testbed: a task model (one task per vCPU; sleeping
//! is pv_wait on the task's state byte, waking is the state store plus
//! pv_kick), the OSQ, the kernel mutex in its releases, and an rtmutex model
//! of the seed fix. Generic over [`crate::Platform`], so the same code runs
//! in the guest, on host threads and under loom.

pub mod mutex;
pub mod osq;
pub mod page;
pub mod rtmutex;
pub mod task;
pub mod torture;
pub mod waitqueue;

pub use mutex::{AcquirePath, Interrupted, Mutex, MutexFlavor, MutexSystem};
pub use task::{TaskSlot, Tasks, TASK_RUNNING, TASK_UNINTERRUPTIBLE};

use pvlock_abi::MutexVariant;

/// What `pvlock list variants` says about a mutex variant.
pub struct MutexInfo {
    pub variant: MutexVariant,
    pub summary: &'static str,
    /// Commits / threads the code follows.
    pub source: &'static str,
    pub releases: &'static str,
    pub spinning: &'static str,
    pub handoff: &'static str,
    /// How the code was checked against the kernel's.
    pub verified: &'static str,
}

pub const MUTEX_VARIANTS: &[MutexInfo] = &[
    MutexInfo {
        variant: MutexVariant::V2_6_28,
        summary: "the counting mutex (count 1/0/-1), sleep only: no owner spinning",
        source: "kernel/locking/mutex.c before 0d66bf6d3514 (adaptive spinning)",
        releases: "v2.6.16..v2.6.28",
        spinning: "none",
        handoff: "none (FIFO wakeup, stealing allowed)",
        verified:
            "written from the v4.9 count protocol with spinning compiled out; 2.6.28's unconditional xchg(-1) kept",
    },
    MutexInfo {
        variant: MutexVariant::V4_9,
        summary: "counting mutex with OSQ + owner spinning on owner->on_cpu, no vcpu_is_preempted()",
        source: "kernel/locking/mutex.c, osq_lock.c of v4.9",
        releases: "v3.15..v4.9",
        spinning: "OSQ head spins while owner->on_cpu (a preempted owner's vCPU still counts as on CPU)",
        handoff: "none",
        verified: "from the v4.9 text as remembered and the 3.13 text read with the search tool (mspin era)",
    },
    MutexInfo {
        variant: MutexVariant::V4_10,
        summary: "owner word (task | WAITERS | HANDOFF), waiter spinning, vcpu_is_preempted() in the spin checks",
        source:
            "3ca0ff571b09, 9d659ae14b54 (hand-off; patch text read), b341afb325eb, 5bbd7e644d, 05ffc9517, 5aff60a186",
        releases: "v4.10",
        spinning: "OSQ + waiter-spinner; stops on a preempted owner",
        handoff:
            "accepted when owner == current (smp_mb() as ACQUIRE): a recursive lock 'succeeds' after a spurious wakeup",
        verified: "9d659ae14b54's patch text read; the rest from the v4.10 structure",
    },
    MutexInfo {
        variant: MutexVariant::V5_12,
        summary: "as v4.10 with MUTEX_FLAG_PICKUP; HANDOFF requested only on becoming first",
        source: "e274795ea7b7 (Fix mutex handoff)",
        releases: "v4.11..v5.14 (mainline; the name predates checking when the fixes landed)",
        spinning: "as v4.10",
        handoff: "PICKUP; a HANDOFF cleared by a stealer is never requested again (starvation)",
        verified: "__mutex_trylock_or_owner() text from the v4.11..v5.12 era",
    },
    MutexInfo {
        variant: MutexVariant::V5_13,
        summary: "as v5.12, HANDOFF re-requested on every wakeup as first",
        source: "048661a1f963 (locking/mutex: Fix HANDOFF condition)",
        releases: "no mainline release: tip between 048661a1f963 and ad90880dc962 (both merged for v5.15); \
                   stable kernels that took the first alone (5.10.64, 5.14.3 shortlogs)",
        spinning: "as v4.10",
        handoff: "PICKUP; HANDOFF set with __mutex_set_flag() on each wakeup",
        verified: "wait loop compared with the pre-image of ad90880dc962's diff (the tree with 048661a1f963 applied): first recomputed on each wakeup, __mutex_set_flag(HANDOFF) if first, __mutex_trylock() || (first && spin)",
    },
    MutexInfo {
        variant: MutexVariant::Upstream,
        summary: "today's mutex: HANDOFF requested inside the trylock's cmpxchg (__mutex_trylock_or_handoff())",
        source: "kernel/locking/mutex.c, osq_lock.c (v6.17 text); ad90880dc962 (__mutex_trylock_or_handoff())",
        releases: "v5.15..",
        spinning: "OSQ + waiter-spinner; owner_on_cpu() = on_cpu && !vcpu_is_preempted()",
        handoff: "PICKUP; HANDOFF only on an owned mutex",
        verified: "read against the v6.17 text (a fork with local additions, ignored)",
    },
    MutexInfo {
        variant: MutexVariant::MutantRelaxedFastpath,
        summary: "upstream with a relaxed fast-path cmpxchg: the acquire audit's self-test",
        source: "none (mutant)",
        releases: "none",
        spinning: "as upstream",
        handoff: "as upstream",
        verified: "must fail the loom acquire audit",
    },
];
