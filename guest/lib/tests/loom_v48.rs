//! `pv-v4.8` under loom: mutual exclusion, no lost wakeup, no stale or
//! double hash entry, for 2 and 3 CPUs.
#![cfg(loom)]

mod loom_support;
use pvlock_abi::Variant;

#[test]
fn pv_v4_8_two_cpus() {
    loom_support::model(Variant::PvV48, 2, 3);
}

#[test]
fn pv_v4_8_three_cpus() {
    loom_support::model(Variant::PvV48, 3, 3);
}

/// Control: the same model finds R1 when the head writes `vcpu_halted`
/// (v4.5's line in an otherwise upstream lock), so a clean `pv-v4.8` run
/// means something.
#[test]
fn halted_head_mutant_fails_the_same_model() {
    let msg = loom_support::model_fails(Variant::MutantHaltedHead, 3, 3);
    assert!(msg.contains("double hash"), "{msg}");
}
