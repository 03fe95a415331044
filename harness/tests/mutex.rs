//! The mutex family in the real guest on KVM: 4 vCPUs on 2 host CPUs, mutex
//! torture with holder stalls, the wait_lock on two spinlock variants.
//! Every correct mutex variant must finish with exclusion and exact counts,
//! and the tasks must really have slept (pv_wait on their state byte) and
//! been woken (pv_kick) or spun.

use pvlock::config::RunConfig;
use pvlock::record::Record;
use pvlock::runner::{run_one, GUEST_ELF};
use pvlock_abi::{MutexVariant, Variant, Workload};
use pvlock_vmm::{RunStatus, StopHandle};

fn mutex_torture(mutex: MutexVariant, wait_lock: Variant) -> RunConfig {
    let mut rc = RunConfig {
        name: format!("mutex-{}", mutex.name()),
        workload: Workload::MutexTorture,
        vcpus: 4,
        host_cpus: 2,
        duration_ms: 400,
        timeout_ms: 30_000,
        ..Default::default()
    };
    rc.lock.variant = wait_lock;
    rc.lock.mutex = mutex;
    rc.lock.spin_threshold = 128;
    rc.torture.locks = 2;
    rc.torture.cs_ns = 2000;
    rc.torture.think_ns = 1000;
    rc.preempt.holder_interval_us = 2000;
    rc.preempt.holder_lock = 0;
    rc.preempt.holder_stall_us = 300;
    rc.hypervisor.stall_timeout_ms = 500;
    rc
}

fn run(rc: &RunConfig) -> Record {
    run_one(rc, "", GUEST_ELF, &StopHandle::new()).expect("machine builds")
}

#[test]
fn every_mutex_variant_keeps_exclusion_and_exact_counts_in_the_guest() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    for m in MutexVariant::ALL.iter().filter(|m| !m.is_mutant()) {
        for wait_lock in [Variant::PvUpstream, Variant::Qspinlock] {
            let r = run(&mutex_torture(*m, wait_lock));
            let what = format!("{} on {}", m.name(), wait_lock.name());
            assert_eq!(r.status, RunStatus::Ok, "{what}: {} {:?}", r.summary, r.checks);
            assert!(r.all_checks_passed(), "{what}: {:?}", r.checks);
            assert!(r.acquisitions > 0, "{what}");
            let ev = |k: &str| r.lock_events.get(k).copied().unwrap_or(0);
            let slept = ev("mutex_sleep") > 0 && ev("mutex_wake") > 0;
            assert!(slept || ev("mutex_opt_lock") > 0, "{what}: no contention: {:?}", r.lock_events);
        }
    }
}

#[test]
fn mutex_torture_refuses_nesting_and_interrupts() {
    let mut rc = mutex_torture(MutexVariant::Upstream, Variant::PvUpstream);
    rc.torture.nest = 2;
    let e = rc.validate().expect_err("nest 2 is refused");
    assert!(e.to_string().contains("torture.nest"), "{e}");
    let mut rc = mutex_torture(MutexVariant::Upstream, Variant::PvUpstream);
    rc.torture.irq_prob = 0.01;
    let e = rc.validate().expect_err("interrupts are refused");
    assert!(e.to_string().contains("torture.irq_prob"), "{e}");
    // A task time slice is a mutex-torture setting, within 0..=1 s.
    let mut rc = mutex_torture(MutexVariant::Upstream, Variant::PvUpstream);
    rc.lock.mutex_slice_us = 2_000_000;
    let e = rc.validate().expect_err("a 2 s slice is refused");
    assert!(e.to_string().contains("lock.mutex_slice_us"), "{e}");
    rc.lock.mutex_slice_us = 100;
    rc.validate().expect("a 100 us slice is fine");
    rc.workload = Workload::Torture;
    let e = rc.validate().expect_err("a slice on the spinlock torture is refused");
    assert!(e.to_string().contains("lock.mutex_slice_us"), "{e}");
}

/// With a task time slice (`lock.mutex_slice_us`) spinners that outlast it
/// sleep: a v4.9 task, which without one never sleeps in this model (its
/// owner never leaves the CPU), goes to the wait list and is woken.
#[test]
fn a_time_slice_makes_v4_9_spinners_sleep() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let mut rc = mutex_torture(MutexVariant::V4_9, Variant::PvUpstream);
    rc.torture.locks = 1;
    rc.lock.mutex_slice_us = 100;
    let r = run(&rc);
    assert_eq!(r.status, RunStatus::Ok, "{} {:?}", r.summary, r.checks);
    assert!(r.all_checks_passed(), "{:?}", r.checks);
    let ev = |n: &str| r.lock_events.get(n).copied().unwrap_or(0);
    assert!(ev("mutex_sleep") > 0 && ev("mutex_wake") > 0, "{:?}", r.lock_events);
}

/// One directed seed of the mutex reproducer `name` on mutex variant `m`
/// (wait_lock pv-upstream).
fn directed_once(name: &str, m: MutexVariant, budget_ms: u64) -> pvlock::repro::SeedOutcome {
    let repro = pvlock::repro::find(name).expect("in the catalog");
    let r = pvlock::repro::Repro { mutex: Some(m), ..repro };
    let mut res = pvlock::repro::run_repro(
        &r,
        Variant::PvUpstream,
        pvlock::repro::Mode::Directed,
        1,
        1,
        budget_ms,
        GUEST_ELF,
        &StopHandle::new(),
        |_| {},
    )
    .expect("runs");
    res.runs.remove(0)
}

/// The `mutex-recursive-handoff` reproducer (e274795ea7b7) on KVM,
/// directed (every wait ends spuriously): v4.10 takes its own hand-off and
/// the guest BUGs; v5.12 stays blocked until the fatal signal and the run is
/// ok; upstream takes it again (results/findings/20261201-upstream-recursive-handoff.md).
#[test]
fn recursive_lock_reproducer_catches_v4_10_and_upstream_not_v5_12() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    for (m, caught) in [(MutexVariant::V4_10, true), (MutexVariant::V5_12, false), (MutexVariant::Upstream, true)] {
        let o = directed_once("mutex-recursive-handoff", m, 300);
        assert_eq!(o.detected, caught, "{}: {:?} {}", m.name(), o.status, o.summary);
        if !caught {
            assert_eq!(o.status, RunStatus::Ok, "{}: {}", m.name(), o.summary);
        }
    }
}

/// The `mutex-handoff-lost` reproducer (048661a1f963) on KVM, directed (the
/// first waiter held after setting HANDOFF on an unlocked mutex until a
/// stealer takes it, the stealer held until the waiter sleeps): v5.12
/// wakes with no request standing; v5.13 (048661a1f963 alone) loses the
/// request to the steal too but asks again, so only its stolen-request
/// count shows; upstream (ad90880dc962) never sets HANDOFF on an unlocked
/// mutex. Outcomes, not timings: the holds end on the other vCPU's steps.
#[test]
fn handoff_lost_reproducer_catches_v5_12_not_v5_13_or_upstream() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    for (m, caught) in [(MutexVariant::V5_12, true), (MutexVariant::V5_13, false), (MutexVariant::Upstream, false)] {
        let o = directed_once("mutex-handoff-lost", m, 500);
        assert_eq!(o.detected, caught, "{}: {:?} {} {:?}", m.name(), o.status, o.summary, o.evidence);
        assert_eq!(o.status, RunStatus::Ok, "{}: {}", m.name(), o.summary);
    }
}
