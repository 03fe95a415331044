//! `pv-rehash-2016` under loom: with the reconstructed re-hash rule, a head
//! whose owner is between its `halted -> hashed` cmpxchg and its hash
//! insert sees the locked byte at 1, hashes itself, and the owner hashes it
//! too: two `pv_hash()` in flight for one lock (R3). Loom finds it.
#![cfg(loom)]

mod loom_support;
use pvlock_abi::Variant;

#[test]
fn rehash_2016_two_hashes_in_flight_is_found() {
    let msg = loom_support::model_fails(Variant::PvRehash2016, 3, 4);
    assert!(msg.contains("double hash"), "failed, but not with the double hash: {msg}");
}
