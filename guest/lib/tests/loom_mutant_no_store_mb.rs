//! `mutant-no-store-mb` under loom: without the full barrier between
//! `pv_wait_node()`'s halted store and its `locked` re-check, the store
//! can be ordered after the load (store buffering): the new owner's
//! `pv_kick_node()` reads the old state and does not hash the waiter, the
//! waiter reads the old `locked` and halts, nobody kicks it. Loom reports
//! the lost wakeup as a deadlock. Needs 3 CPUs (a holder, a head that
//! becomes owner, a queued successor).
//!
//! Loom's deadlock report panics while threads are parked and its cleanup
//! then aborts the process, so the failing model runs in a child process
//! (this same test binary) and the parent checks the child's report.
#![cfg(loom)]

mod loom_support;
use pvlock_abi::Variant;

const CHILD: &str = "PVLOCK_LOOM_CHILD";

#[test]
fn no_store_mb_lost_wakeup_is_found() {
    if std::env::var_os(CHILD).is_some() {
        loom_support::model(Variant::MutantNoStoreMb, 3, 3);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "no_store_mb_lost_wakeup_is_found", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the model in a child process");
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the model checker must find the lost wakeup:\n{text}");
    assert!(text.contains("deadlock"), "failed, but not with a lost wakeup:\n{text}");
}

#[test]
fn upstream_with_the_barrier_is_clean_on_the_same_model() {
    loom_support::model(Variant::PvUpstream, 3, 3);
}
