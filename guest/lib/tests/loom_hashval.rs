//! `pv-hashval-2016` under loom: mutual exclusion, no lost wakeup, no
//! stale or double hash entry, for 2 and 3 CPUs. (Its gap, a head hashed
//! while running, costs latency and is not a failure here.)
#![cfg(loom)]

mod loom_support;
use pvlock_abi::Variant;

#[test]
fn pv_hashval_2016_two_cpus() {
    loom_support::model(Variant::PvHashval2016, 2, 3);
}

#[test]
fn pv_hashval_2016_three_cpus() {
    loom_support::model(Variant::PvHashval2016, 3, 3);
}
