//! `pv-v4.5` under loom: the model checker finds R1, the double hash (the
//! platform panics on the `double_hash` event, raised when `pv_hash()`
//! inserts a lock that is already in the table). Needs 3 CPUs: a holder,
//! a queue head that becomes owner and hands off, and its successor.
#![cfg(loom)]

mod loom_support;
use pvlock_abi::Variant;

#[test]
fn pv_v4_5_double_hash_is_found() {
    let msg = loom_support::model_fails(Variant::PvV45, 3, 3);
    assert!(msg.contains("double hash"), "failed, but not with the double hash: {msg}");
}
