//! The race catalog on a kernel tree's own code (Debian's linux-source
//! 6.1 / 6.12, extracted by `.ci/kernel-trees`), on KVM: a bug patch of
//! configs/kernel-bugs/ caught by its reproducer, the unpatched tree clean,
//! the outcome written with the tree's release and the patch's sha256, and
//! a kernel WARN() recorded without ending the run.

use pvlock::config::RunConfig;
use pvlock::kernel;
use pvlock::repro::{find, run_repro_on, KernelTarget, Mode, Target};
use pvlock::runner::{run_one, GUEST_ELF};
use pvlock_abi::{Variant, Workload};
use pvlock_vmm::{RunStatus, StopHandle};
use std::path::{Path, PathBuf};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn bug_patch(name: &str) -> PathBuf {
    Path::new(ROOT).join("configs/kernel-bugs").join(name)
}

fn tree_612(trees: &[PathBuf]) -> PathBuf {
    trees.iter().find(|t| t.ends_with("linux-source-6.12")).expect("6.12 tree").clone()
}

fn on(tree: &Path, patches: &[PathBuf]) -> Target {
    Target {
        variant: Variant::KernelPv,
        kernel: Some(KernelTarget { tree: tree.to_path_buf(), patches: patches.to_vec() }),
    }
}

fn outcome(repro: &str, target: &Target, mode: Mode, seeds: u64, budget_ms: u64) -> pvlock::repro::ReproResult {
    let r = find(repro).unwrap();
    run_repro_on(&r, target, mode, seeds, 1, budget_ms, GUEST_ELF, &StopHandle::new(), None, |_| {}).unwrap()
}

/// `repro` in random mode, 2 seeds of 1 s, on each unpatched tree: no
/// evidence and every run ok.
fn clean_on_every_tree(repro: &str, trees: &[PathBuf]) {
    for tree in trees {
        let res = outcome(repro, &on(tree, &[]), Mode::Random, 2, 1_000);
        assert_eq!(res.detected(), 0, "{}: {:?}", tree.display(), lines(&res));
        assert!(res.runs.iter().all(|o| o.status == RunStatus::Ok), "{:?}", lines(&res));
    }
}

fn lines(res: &pvlock::repro::ReproResult) -> Vec<String> {
    res.runs.iter().map(|o| format!("seed {}: {} {}", o.seed, o.status, o.summary)).collect()
}

#[test]
fn every_bug_patch_applies_to_both_trees_and_names_its_history() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    let cache = tempfile::tempdir().unwrap();
    let opts = kernel::BuildOptions { cache_dir: cache.path().to_path_buf(), rebuild: false };
    let dir = Path::new(ROOT).join("configs/kernel-bugs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "patch") {
            continue;
        }
        n += 1;
        let text = std::fs::read_to_string(&p).unwrap();
        let header = &text[..text.find("--- a/").expect("a unified diff")];
        assert!(header.contains("Reproducer: `pvlock repro"), "{}: header names its reproducer", p.display());
        for tree in &trees {
            let spec = kernel::KernelSpec {
                tree: tree.clone(),
                patches: vec![p.clone()],
                flavour: kernel::Flavour::X86,
                nr_cpus: 64,
                lock_event_counts: true,
                spin_threshold: 256,
                sites: true,
            };
            kernel::build(&spec, &opts).unwrap_or_else(|e| panic!("{} on {}: {e}", p.display(), tree.display()));
        }
    }
    assert!(n >= 4, "the four bug patches are there");
    // Every reproducer's kernel form that names a bug patch finds it.
    for r in pvlock::repro::catalog() {
        pvlock::repro::bug_patch_path(Path::new(ROOT), &r).unwrap();
    }
}

#[test]
fn slow_before_hash_patch_is_caught_and_the_tree_without_it_is_clean() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let tree = tree_612(&trees);
    // The pv_unhash() BUG ends a seed at once; three seeds bound the worst case.
    let res = outcome("slow-before-hash", &on(&tree, &[bug_patch("slow-before-hash.patch")]), Mode::Random, 3, 5_000);
    assert!(res.detected() >= 1, "{:?}", lines(&res));
    let hit = res.runs.iter().find(|o| o.detected).unwrap();
    assert!(hit.summary.contains("BUG at kernel/locking/qspinlock_paravirt.h:"), "{}", hit.summary);
    let k = res.kernel.as_ref().expect("the result names the kernel build");
    assert!(k.version.starts_with("6.12"), "{}", k.version);
    assert_eq!(k.patches.len(), 1);
    assert!(k.patches[0][0].ends_with("slow-before-hash.patch") && k.patches[0][1].len() == 64);
    assert!(res.column.contains("6.12") && res.column.contains("+slow-before-hash.patch"), "{}", res.column);

    // The same reproducer on the unpatched trees: clean.
    clean_on_every_tree("slow-before-hash", &trees);
}

#[test]
fn r1_bug_patch_is_caught_directed_at_the_first_try_and_not_without_it() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let tree = tree_612(&trees);
    // The owner is held at pv_kick_node()'s cmpxchg until the successor,
    // head now, has hashed itself and blocked: the halted head write lets
    // the owner's cmpxchg succeed and hash the lock a second time.
    let res = outcome("double-hash", &on(&tree, &[bug_patch("halted-head.patch")]), Mode::Directed, 1, 5_000);
    assert_eq!(res.detected(), 1, "{:?}", lines(&res));
    let s = &res.runs[0].summary;
    assert!(s.contains("double hash") && s.contains("kernel/locking/qspinlock_paravirt.h:"), "{s}");
    // The same schedule on the tree as shipped: nothing.
    let res = outcome("double-hash", &on(&tree, &[]), Mode::Directed, 1, 1_500);
    assert_eq!(res.detected(), 0, "{:?}", lines(&res));
}

#[test]
fn the_double_hash_kernel_form_is_clean_on_unpatched_trees() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    clean_on_every_tree("double-hash", &trees);
}

#[test]
fn a_kernel_warn_is_a_warning_record_and_the_run_goes_on() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let tree = tree_612(&trees);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernel/warn-when-head-waits-again.patch");
    // Heads that give up spinning early and stalls that keep the lock held
    // make a head wait twice, which the fixture WARN()s about.
    let mut rc = RunConfig {
        name: "warn".into(),
        workload: Workload::Torture,
        vcpus: 4,
        host_cpus: 2,
        duration_ms: 1_000,
        timeout_ms: 30_000,
        ..Default::default()
    };
    rc.lock.variant = Variant::KernelPv;
    rc.lock.kernel_tree = Some(tree);
    rc.lock.kernel_patches = vec![fixture];
    rc.lock.spin_threshold = 64;
    rc.torture.locks = 1;
    rc.preempt.random_mean_interval_us = 500;
    rc.preempt.random_stall_us = 2000;
    let r = run_one(&rc, "", GUEST_ELF, &StopHandle::new()).unwrap();
    let w = &r.diagnosis.kernel_warnings;
    assert!(!w.is_empty(), "no warning recorded: {} {:?}", r.summary, r.lock_events.get("pv_wait_again"));
    assert_eq!(w[0].file, "kernel/locking/qspinlock_paravirt.h");
    assert!(w[0].message.contains("fixture: the queue head waits again"), "{:?}", w[0]);
    // The run went on to its end: every vCPU finished and the other
    // checks ran and passed; only the warning check fails the verdict.
    assert_eq!(r.status, RunStatus::Failed, "{}", r.summary);
    for c in &r.checks {
        assert_eq!(c.passed, c.name != "no_kernel_warnings", "{c:?}");
    }
}

#[test]
fn a_dump_names_the_kernel_function_and_line_the_vcpu_was_at() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    // pv_unhash() never finds the lock: the unlocking vCPU BUG()s inside
    // the tree's code, and its dump is symbolized from the module's DWARF.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernel/unhash-misses.patch");
    let mut rc = RunConfig {
        name: "symbolize".into(),
        workload: Workload::Torture,
        vcpus: 4,
        host_cpus: 2,
        duration_ms: 2_000,
        timeout_ms: 30_000,
        ..Default::default()
    };
    rc.lock.variant = Variant::KernelPv;
    rc.lock.kernel_tree = Some(tree_612(&trees));
    rc.lock.kernel_patches = vec![fixture];
    rc.lock.spin_threshold = 64;
    rc.torture.locks = 1;
    rc.preempt.random_mean_interval_us = 500;
    rc.preempt.random_stall_us = 2000;
    let r = run_one(&rc, "", GUEST_ELF, &StopHandle::new()).unwrap();
    assert_eq!(r.status, RunStatus::GuestCrash, "{}", r.summary);
    let text = r.diagnosis.vcpus_text.as_deref().unwrap_or("");
    assert!(text.contains("at pv_unhash (kernel/locking/qspinlock_paravirt.h:"), "{text}");
    assert!(text.contains("__pv_queued_spin_unlock_slowpath (kernel/locking/qspinlock_paravirt.h:"), "{text}");
}

#[test]
fn repro_cli_writes_the_outcome_with_release_and_patch_sha256() {
    let Some(trees) = kernel::ci_trees_for_tests() else { return };
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let tree = tree_612(&trees);
    let out = tempfile::tempdir().unwrap();
    let patch = bug_patch("slow-before-hash.patch");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_pvlock"))
        .args(["repro", "slow-before-hash", "--seeds", "1", "--budget-s", "0.5", "--kernel-tree"])
        .arg(&tree)
        .arg("--kernel-patch")
        .arg(&patch)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{err}");
    let dir = out.path().join("latest");
    assert!(!dir.join("partial").exists(), "finished: no partial mark");
    let matrix = std::fs::read_to_string(dir.join("matrix.md")).unwrap();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&patch).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert!(matrix.contains("Linux 6.12") && matrix.contains(&sha), "{matrix}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json[0]["repro"], "slow-before-hash");
    assert_eq!(json[0]["kernel"]["patches"][0][1], sha.as_str());

    // Clear errors: a directed form that needs what the build lacks, a
    // tree given to a Rust variant, a patch without a tree.
    let bad = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pvlock")).args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let t = tree.to_str().unwrap();
    let e = bad(&["repro", "double-hash", "--variant", "pv-v4.5", "--kernel-tree", t]);
    assert!(e.contains("--kernel-tree applies to the kernel variants only"), "{e}");
    let e = bad(&["repro", "double-hash", "--kernel-patch", "x.patch"]);
    assert!(e.contains("--kernel-patch needs --kernel-tree"), "{e}");
    let e = bad(&["repro", "double-hash", "--variant", "kernel-pv"]);
    assert!(e.contains("name the kernel tree"), "{e}");
}

/// The reproducers that break the hypervisor contract on purpose (an
/// unchecked wait, dropped kicks) keep it in their kernel form: there the
/// tree is the negative control, and the matrix says so.
#[test]
fn contract_breaking_reproducers_keep_the_contract_on_kernel_code() {
    use pvlock_vmm::{KickContract, WaitContract};
    let kernel = on(Path::new("no-tree-needed-for-the-config"), &[]);
    for (name, rust_breaks) in [("stolen-wakeup", "wait"), ("lost-kick", "kick")] {
        let r = find(name).unwrap();
        let rust = pvlock::repro::config_for(&r, &Target::variant(r.default_variant), Mode::Random, 1, 1000).unwrap();
        match rust_breaks {
            "wait" => assert_eq!(rust.hypervisor.wait, WaitContract::Unchecked),
            _ => assert_eq!(rust.hypervisor.kick, KickContract::LostIfNotWaiting),
        }
        let k = pvlock::repro::config_for(&r, &kernel, Mode::Random, 1, 1000).unwrap();
        assert_eq!((k.hypervisor.wait, k.hypervisor.kick), (WaitContract::Checked, KickContract::Remembered), "{name}");
        assert_eq!(k.preempt.sites, vec!["*:pv_kick".to_string()], "{name}: stalled between release and kick");
        let note = pvlock::repro::kernel_form(name).and_then(|f| f.note).expect("a note for the matrix");
        assert!(note.contains("keeps the hypervisor contract"), "{note}");
    }
}
