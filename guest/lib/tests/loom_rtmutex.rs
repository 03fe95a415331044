//! The seed's rtmutex bug under loom: 700318d1d7b3 (v4.4) let a slow-path
//! locker take the rtmutex with no acquire ordering when the owner had just
//! released it through the fast path (relaxed `mark_rt_mutex_waiters()`,
//! plain `rt_mutex_set_owner()`). The critical section's data is a loom
//! `UnsafeCell`: the buggy form must be reported as a causality violation,
//! the seed's fix (xchg_acquire owner update) and the pre-v4.4 full-barrier
//! form must be clean. x86 (TSO) cannot show this; see docs/LIMITS.md.
#![cfg(loom)]

mod loom_sleeping_support;
use loom_sleeping_support::{model, panics, Data};
use pvlock_abi::Variant;
use pvlock_guest_lib::sleeping::rtmutex::{RtFlavor, RtMutex, RtMutexSystem};
use pvlock_guest_lib::sleeping::{TaskSlot, Tasks};
use pvlock_guest_lib::{HashSlot, LockConfig, LockSystem, PerCpuNodes};

struct World {
    nodes: Vec<PerCpuNodes>,
    hash: Vec<HashSlot>,
    tasks: Vec<TaskSlot>,
    m: RtMutex,
    data: Data,
}

fn rt_model(flavor: RtFlavor) {
    model(
        2,
        3,
        false,
        || World {
            nodes: (0..2).map(|_| PerCpuNodes::new()).collect(),
            hash: (0..4).map(|_| HashSlot::new()).collect(),
            tasks: (0..2).map(|_| TaskSlot::new()).collect(),
            m: RtMutex::new(),
            data: Data::new(),
        },
        move |w, p| {
            // wait_lock: the test-and-set spinlock keeps the model small;
            // its own ordering is audited in loom_acquire_audit.
            let spin = LockSystem::new(
                LockConfig { variant: Variant::Tas, spin_threshold: 1, hash_bits: 2 },
                &w.nodes,
                &w.hash,
            );
            let sys = RtMutexSystem::new(flavor, &spin, Tasks::new(&w.tasks));
            sys.lock(p, &w.m);
            w.data.bump();
            sys.unlock(p, &w.m);
        },
    );
}

#[test]
fn v4_4_relaxed_owner_update_is_a_causality_violation() {
    let msg = panics(|| rt_model(RtFlavor::V4_4));
    assert!(msg.contains("Causality violation"), "{msg}");
}

#[test]
fn seed_fix_acquire_owner_update_is_clean() {
    rt_model(RtFlavor::Fixed);
}

#[test]
fn v4_3_full_barrier_cmpxchg_is_clean() {
    rt_model(RtFlavor::V4_3);
}
