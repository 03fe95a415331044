//! Kernel builds: a kernel tree's own qspinlock.c (Debian's linux-source
//! 6.1 and 6.12, extracted by `.ci/kernel-trees`) built, cached and run in
//! the guest on KVM; its errors; and small fixture patches that break the
//! tree's lock, shown failing.

use pvlock::config::RunConfig;
use pvlock::kernel::{self, build, BuildOptions, Flavour, KernelError, KernelSpec};
use pvlock::record::Record;
use pvlock::runner::{run_one, GUEST_ELF};
use pvlock_abi::{Variant, Workload};
use pvlock_vmm::{RunStatus, StopHandle};
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kernel");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn spec(tree: &Path, patches: &[PathBuf]) -> KernelSpec {
    KernelSpec {
        tree: tree.to_path_buf(),
        patches: patches.to_vec(),
        flavour: Flavour::X86,
        nr_cpus: 64,
        lock_event_counts: true,
        spin_threshold: 1 << 15,
        sites: true,
    }
}

/// Torture with simulated interrupts and random stalls, 4 vCPUs on 2 host CPUs.
fn torture(variant: Variant, tree: &Path, vcpus: u32, patches: &[PathBuf]) -> RunConfig {
    let mut rc = RunConfig {
        name: format!("{variant}"),
        workload: Workload::Torture,
        vcpus,
        host_cpus: 2,
        duration_ms: 600,
        timeout_ms: 30_000,
        ..Default::default()
    };
    rc.lock.variant = variant;
    rc.lock.kernel_tree = Some(tree.to_path_buf());
    rc.lock.kernel_patches = patches.to_vec();
    rc.torture.locks = 8;
    rc.torture.nest = 2;
    rc.torture.cs_ns = 500;
    rc.torture.think_ns = 500;
    rc.torture.irq_prob = 0.001;
    rc.preempt.random_mean_interval_us = 5000;
    rc.preempt.random_stall_us = 300;
    rc.hypervisor.detect_ms = 500;
    rc
}

fn run(rc: &RunConfig) -> Record {
    run_one(rc, "", GUEST_ELF, &StopHandle::new()).expect("machine and kernel build")
}

fn ev(r: &Record, k: &str) -> u64 {
    r.lock_events.get(k).copied().unwrap_or(0)
}

#[test]
fn both_trees_run_pv_and_native_under_torture_with_the_pv_paths_taken() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    for tree in &trees {
        for (variant, vcpus) in [(Variant::KernelPv, 4), (Variant::KernelNative, 4), (Variant::KernelPv, 8)] {
            let r = run(&torture(variant, tree, vcpus, &[]));
            let what = format!("{variant} {vcpus} vCPUs, {}", tree.display());
            assert_eq!(r.status, RunStatus::Ok, "{what}: {} {:?}", r.summary, r.checks);
            assert!(r.all_checks_passed(), "{what}: {:?}", r.checks);
            for c in ["mutual_exclusion", "lock_counts_match_acquisitions", "hash_table_empty"] {
                assert!(r.checks.iter().any(|k| k.name == c && k.passed), "{what}: no passed {c} check");
            }
            let k = r.kernel.as_ref().expect("the record names the kernel build");
            assert!(k.version.starts_with("6.1"), "{what}: version {}", k.version);
            assert!(ev(&r, "sim_irqs") > 0, "{what}: simulated interrupts ran");
            if variant == Variant::KernelPv {
                // The tree's PV paths really ran, counted by the tree itself.
                for c in ["pv_wait_head", "pv_wait_node", "pv_kick_unlock", "pv_lock_stealing", "lock_slowpath"] {
                    assert!(ev(&r, c) > 0, "{what}: kernel counter {c} is 0: {:?}", r.lock_events);
                }
                assert_eq!(ev(&r, "lock_pending"), 0, "{what}: PV waiters skip the pending path");
                // Every hash entry is consumed by exactly one slow unlock
                // (pv_kick_unlock). A head hashes itself at most once per
                // slow path, before its first wait (pv_wait_head minus
                // pv_wait_again), so the rest were hashed for a halted
                // waiter by pv_kick_node().
                let own = ev(&r, "pv_wait_head") - ev(&r, "pv_wait_again");
                assert!(
                    ev(&r, "pv_kick_unlock") > own,
                    "{what}: no sign of pv_kick_node hashing a halted waiter: {:?}",
                    r.lock_events
                );
            } else {
                assert!(ev(&r, "lock_pending") > 0, "{what}: native pending path");
                assert_eq!(ev(&r, "pv_wait_head") + ev(&r, "pv_kick_unlock"), 0, "{what}: native has no PV waits");
            }
        }
    }
}

#[test]
fn fixture_patches_that_break_the_lock_are_caught() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let new = trees.iter().find(|t| t.ends_with("linux-source-6.12")).expect("6.12 tree");
    for tree in &trees {
        // pv_unhash never finds the lock: the tree's own BUG(), reported
        // with the kernel's file:line.
        let r = run(&torture(Variant::KernelPv, tree, 4, &[fixture("unhash-misses.patch")]));
        assert_eq!(r.status, RunStatus::GuestCrash, "{}: {}", tree.display(), r.summary);
        assert!(r.summary.contains("BUG at kernel/locking/qspinlock_paravirt.h:"), "{}", r.summary);
        // pv_unhash leaves its entry behind: stale entries, a lost kick.
        // The hang names the unlock that left it by the kernel's
        // file:line: pv_unhash()'s READ_ONCE(he->node), the last access to
        // the stale entry's node.
        let r = run(&torture(Variant::KernelPv, tree, 4, &[fixture("stale-hash-entry.patch")]));
        assert_eq!(
            r.status,
            RunStatus::Hang,
            "{}: the stale-entry patch went unnoticed: {}",
            tree.display(),
            r.summary
        );
        let text = r.diagnosis.hang_text.as_deref().unwrap_or("");
        assert!(text.contains("hash entries"), "{}: {text}", tree.display());
        assert!(
            text.contains("last read by vCPU")
                && text.contains("at pv_unhash() kernel/locking/qspinlock_paravirt.h:")
                && text.contains("which left the entry in the table"),
            "{}: the stale entry's unlock is not named: {text}",
            tree.display()
        );
    }
    // The pending waiter takes the lock without waiting for its owner: the
    // violation names where each owner took it, the second one at the
    // patched pending path (clear_pending_set_locked()).
    let r = run(&torture(Variant::KernelNative, new, 4, &[fixture("pending-ignores-owner.patch")]));
    assert_eq!(r.status, RunStatus::GuestCrash, "{}", r.summary);
    assert!(r.summary.contains("mutual exclusion violated"), "{}", r.summary);
    assert!(
        r.summary.contains("where each took it:")
            && r.summary.contains("at clear_pending_set_locked() kernel/locking/qspinlock.c:"),
        "the second owner's kernel file:line is not named: {}",
        r.summary
    );
    let k = r.kernel.as_ref().expect("kernel build recorded");
    assert_eq!(k.patches.len(), 1);
    assert_eq!(k.patches[0][1].len(), 64, "sha256 of the patch");
}

#[test]
fn builds_are_cached_by_content_and_rebuilt_on_request() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    let cache = tempfile::tempdir().unwrap();
    let opts = BuildOptions { cache_dir: cache.path().to_path_buf(), rebuild: false };
    let s = spec(&trees[1], &[]);
    let a = build(&s, &opts).unwrap();
    assert!(!a.cached);
    let b = build(&s, &opts).unwrap();
    assert!(b.cached, "the same inputs are served from the cache");
    assert_eq!(a.image, b.image);
    assert_eq!(a.info.key, b.info.key);
    let c = build(&s, &BuildOptions { rebuild: true, ..opts.clone() }).unwrap();
    assert!(!c.cached, "--rebuild compiles again");
    let d = build(&spec(&trees[1], &[fixture("unhash-misses.patch")]), &opts).unwrap();
    assert_ne!(d.info.key, a.info.key, "a patch changes the key");
    let e = build(&KernelSpec { flavour: Flavour::Generic, ..s.clone() }, &opts).unwrap();
    assert_ne!(e.info.key, a.info.key, "the flavour changes the key");
    assert_eq!(e.info.descriptor.hash_entry_size, 16);
    assert_eq!(a.info.descriptor.vcpu_states, [0, 1, 2]);
    assert_eq!(a.info.descriptor.q_slow_val, 3);
    // 6.1 builds in both flavours too.
    build(&spec(&trees[0], &[]), &opts).unwrap();
    build(&KernelSpec { flavour: Flavour::Generic, ..spec(&trees[0], &[]) }, &opts).unwrap();
}

#[test]
fn build_errors_name_the_thing_at_fault() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    let cache = tempfile::tempdir().unwrap();
    let opts = BuildOptions { cache_dir: cache.path().to_path_buf(), rebuild: true };
    let tree = &trees[1];

    // A patch whose context is not in the tree: the patch, file and hunk.
    let e = build(&spec(tree, &[fixture("does-not-apply.patch")]), &opts).unwrap_err();
    assert!(matches!(e, KernelError::Patch { .. }), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("does-not-apply.patch") && m.contains("kernel/locking/qspinlock.c") && m.contains("Hunk #1 FAILED"),
        "{m}"
    );

    // A patch that does not compile: the compiler's error at the tree's file:line.
    let e = build(&spec(tree, &[fixture("compile-error.patch")]), &opts).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, KernelError::Compile { .. }), "{m}");
    assert!(m.contains(&format!("{}/kernel/locking/qspinlock_paravirt.h:", tree.display())), "{m}");
    assert!(m.contains("error:") && m.contains("6.12"), "{m}");

    // A tree missing a file the build reads.
    let partial = tempfile::tempdir().unwrap();
    for f in ["Makefile", "kernel/locking/qspinlock.c", "kernel/locking/lock_events.h"] {
        let to = partial.path().join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(tree.join(f), to).unwrap();
    }
    let m = build(&spec(partial.path(), &[]), &opts).unwrap_err().to_string();
    assert!(m.contains("is missing") && m.contains("kernel/locking/qspinlock_paravirt.h"), "{m}");

    // No such patch file.
    let m = build(&spec(tree, &[PathBuf::from("/nonexistent/fix.patch")]), &opts).unwrap_err().to_string();
    assert!(m.contains("/nonexistent/fix.patch"), "{m}");
}

#[test]
fn no_compiler_names_the_package() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    let cache = tempfile::tempdir().unwrap();
    let opts = BuildOptions { cache_dir: cache.path().to_path_buf(), rebuild: true };
    // The compiler comes from $CC; this test process's own children only.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pvlock"))
        .env("CC", "/nonexistent/cc")
        .env("PVLOCK_CACHE_DIR", cache.path())
        .args(["run", concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/torture.toml"), "--variant", "kernel-pv"])
        .arg("--kernel-tree")
        .arg(&trees[1])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no C compiler") && err.contains("gcc"), "{err}");
    drop(opts);
}
