//! How the guest chooses site stalls in kernel code (`preempt.site_mode`,
//! `pct_*`, `max_stalls`), on the unpatched 6.12 tree: every PCT stall is
//! at one of the change points the seed drew for its trial, and the
//! preemption bound caps the stalls of a run. Counts only: no timing.

use pvlock::config::RunConfig;
use pvlock::kernel;
use pvlock::record::Record;
use pvlock::runner::{run_one, GUEST_ELF};
use pvlock_abi::seed::{stream_seed, Stream};
use pvlock_abi::sites::pct_change_point;
use pvlock_abi::{Variant, Workload};
use pvlock_vmm::{SiteMode, StopHandle};
use std::path::PathBuf;

fn tree_6_12() -> Option<PathBuf> {
    kernel::ci_trees_for_tests()?.into_iter().find(|t| t.ends_with("linux-source-6.12"))
}

/// 300 ms of contended kernel-pv on 4 vCPUs / 2 host CPUs, stalls at
/// every site of the PV file.
fn contended(tree: PathBuf, seed: u64) -> RunConfig {
    let mut rc = RunConfig {
        name: "site-schedule".into(),
        workload: Workload::Torture,
        vcpus: 4,
        host_cpus: 2,
        seed,
        duration_ms: 300,
        timeout_ms: 30_000,
        ..Default::default()
    };
    rc.lock.variant = Variant::KernelPv;
    rc.lock.kernel_tree = Some(tree);
    rc.lock.spin_threshold = 256;
    rc.torture.locks = 1;
    rc.torture.cs_ns = 300;
    rc.torture.think_ns = 300;
    rc.preempt.sites = vec!["qspinlock_paravirt.h:*".into()];
    rc.preempt.site_stall_us = 100;
    rc
}

fn run(rc: &RunConfig) -> Record {
    rc.validate().expect("valid config");
    run_one(rc, "", GUEST_ELF, &StopHandle::new()).expect("machine and kernel build")
}

#[test]
fn pct_stalls_only_at_the_seeds_change_points() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let Some(tree) = tree_6_12() else { return };
    let mut rc = contended(tree, 7);
    rc.preempt.site_mode = SiteMode::Pct;
    rc.preempt.pct_depth = 3;
    rc.preempt.pct_steps = 40;
    let rec = run(&rc);
    assert!(rec.status.is_ok(), "unpatched tree: {}", rec.summary);
    let ks = rec.kernel_sites.as_ref().expect("site stats");
    let sc = ks.schedule.as_ref().expect("PCT stalled somewhere in 300 ms of contention");
    assert!(!sc.first.is_empty() && !ks.chosen.is_empty());
    // Each stall's vCPU is one of its trial's d - 1 = 2 change points', as
    // the guest computed them from the seed.
    let pct_seed = stream_seed(rc.seed, Stream::SitePct);
    for c in &sc.first {
        let cpus: Vec<u32> =
            (0..2).map(|i| pct_change_point(pct_seed, c.trial as u64, i, rc.vcpus, rc.preempt.pct_steps).0).collect();
        assert!(cpus.contains(&c.cpu), "stall {c:?} is not at a change point of trial {} ({cpus:?})", c.trial);
    }
    // At most d - 1 stalls per trial and vCPU pair of points.
    let mut per_trial = std::collections::BTreeMap::new();
    for c in &sc.first {
        *per_trial.entry(c.trial).or_insert(0u32) += 1;
    }
    assert!(per_trial.values().all(|&n| n <= 2), "{per_trial:?}");
}

#[test]
fn max_stalls_bounds_the_stalls_of_a_run() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let Some(tree) = tree_6_12() else { return };
    let mut rc = contended(tree, 3);
    rc.preempt.site_prob = 0.2;
    rc.preempt.max_stalls = 5;
    let rec = run(&rc);
    assert!(rec.status.is_ok(), "unpatched tree: {}", rec.summary);
    let stalls: u64 = rec.kernel_sites.as_ref().map_or(0, |k| k.stalls.iter().map(|s| s.count).sum());
    // p = 0.2 over thousands of site executions would stall hundreds of
    // times; the bound stops it at exactly 5.
    assert_eq!(stalls, 5, "{:?}", rec.kernel_sites);
}
