//! Every lock variant in the real guest on KVM: 4 vCPUs on 2 host CPUs,
//! lock torture with simulated interrupts. Correct variants must finish
//! with every check passing and, for PV variants, really use the slow path
//! (pv_wait > 0) and leave no hash entry behind. Mutants must end with a
//! record (any status), never a VMM crash or a hung test.

use pvlock::config::RunConfig;
use pvlock::record::Record;
use pvlock::runner::{run_one, GUEST_ELF};
use pvlock_abi::Variant;
use pvlock_vmm::{RunStatus, StopHandle};

fn torture(variant: Variant) -> RunConfig {
    let mut rc = RunConfig {
        name: format!("variant-{}", variant.name()),
        workload: pvlock_abi::Workload::Torture,
        vcpus: 4,
        host_cpus: 2,
        duration_ms: 700,
        timeout_ms: 30_000,
        ..Default::default()
    };
    rc.lock.variant = variant;
    // A short spin threshold makes waiters halt, so the PV paths run; 256
    // is the shortest that keeps `pv_wait_early()` (v4.5 on) in play.
    rc.lock.spin_threshold = 256;
    rc.torture.locks = 4;
    rc.torture.nest = 2;
    rc.torture.cs_ns = 300;
    rc.torture.think_ns = 300;
    rc.torture.irq_prob = 0.01;
    rc.hypervisor.stall_timeout_ms = 500;
    rc
}

fn run(rc: &RunConfig) -> Record {
    run_one(rc, "", GUEST_ELF, &StopHandle::new()).expect("machine builds")
}

#[test]
fn every_correct_variant_keeps_exclusion_and_exact_counts_in_the_guest() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let mut nested = Vec::new();
    for v in Variant::ALL.iter().filter(|v| !v.is_mutant()) {
        let r = run(&torture(*v));
        assert_eq!(r.status, RunStatus::Ok, "{}: {} {:?}", v.name(), r.summary, r.checks);
        assert!(r.all_checks_passed(), "{}: {:?}", v.name(), r.checks);
        assert!(r.acquisitions > 0, "{}", v.name());
        let ev = |k: &str| r.lock_events.get(k).copied().unwrap_or(0);
        if v.is_pv() {
            assert!(
                ev("pv_wait_node") + ev("pv_wait_head") > 0,
                "{}: PV slow path never waited: {:?}",
                v.name(),
                r.lock_events
            );
            assert_eq!(r.hash.stale_entries, 0, "{}", v.name());
            assert!(r.hash.inserts > 0 && r.hash.inserts == r.hash.removes, "{}: {:?}", v.name(), r.hash);
        }
        if matches!(v, Variant::Qspinlock) || v.is_pv() {
            assert!(ev("sim_irqs") > 0, "{}: no simulated interrupts", v.name());
            nested.push((v.name(), ev("lock_use_node2")));
        }
    }
    // A nested slow path needs two handlers contending for one irq lock;
    // variants whose waiters spend the run halted (no spin points, so no
    // interrupts) may see none in a short run, so this is asserted for the
    // spinning-heavy native lock and upstream, and reported for the rest.
    eprintln!("lock_use_node2 by variant: {nested:?}");
    for must in ["qspinlock", "pv-upstream"] {
        assert!(
            nested.iter().any(|(n, c)| *n == must && *c > 0),
            "{must}: nested slow paths never used MCS node 1: {nested:?}"
        );
    }
}

#[test]
fn mutants_end_with_a_record() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    for v in Variant::ALL.iter().filter(|v| v.is_mutant()) {
        let r = run(&torture(*v));
        assert!(r.status != RunStatus::Aborted, "{}: {}", v.name(), r.status);
        if !r.status.is_ok() {
            assert!(r.failure.is_some() || !r.all_checks_passed(), "{}: a non-ok run explains itself", v.name());
        }
    }
}
