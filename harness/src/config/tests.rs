use super::*;
use pvlock_abi::Window;
use pvlock_vmm::{HoldUntil, KickContract, WaitContract};

fn parse(s: &str) -> Result<Experiment> {
    Experiment::parse(s, "t.toml", "t")
}

fn err(s: &str) -> String {
    format!("{:#}", parse(s).unwrap_err())
}

/// The error names `key` and line `line` of t.toml.
#[track_caller]
fn fails_at(s: &str, key: &str, line: usize) -> String {
    let e = err(s);
    assert!(e.contains(&format!("`{key}`")) && e.contains(&format!("t.toml:{line}:")), "want `{key}` at :{line}: {e}");
    e
}

#[test]
fn defaults_parse_and_validate() {
    let e = parse("").unwrap();
    assert_eq!(e.runs.len(), 1);
    assert_eq!(e.runs[0], RunConfig { name: "t".into(), ..Default::default() });
}

#[test]
fn lists_expand_to_a_matrix_times_repeats() {
    let e = parse("vcpus = [2, 4, 8]\nrepeats = 2\n[lock]\nvariant = [\"pv-v4.5\", \"pv-v4.8\"]\n").unwrap();
    assert_eq!(e.runs.len(), 3 * 2 * 2);
    assert_eq!(e.varying, vec!["lock.variant".to_string(), "vcpus".to_string()]);
    // Repeats get distinct, reproducible seeds.
    assert_ne!(e.runs[0].seed, e.runs[1].seed);
    assert_eq!(e.runs[0].seed, 1);
    assert_eq!(parse("vcpus = [2, 4, 8]\nrepeats = 2\n").unwrap().runs[1].seed, e.runs[1].seed);
    // The order runs always had: keys sorted, the last varies fastest.
    assert_eq!(e.runs[0].lock.variant, Variant::PvV45);
    assert_eq!((e.runs[2].lock.variant, e.runs[2].vcpus), (Variant::PvV45, 4));
    assert_eq!(e.runs[6].lock.variant, Variant::PvV48);
}

#[test]
fn window_lists_are_values_not_axes() {
    let e = parse("[preempt]\nwindows = [\"handoff\", \"unlock-kick\"]\n").unwrap();
    assert_eq!(e.runs.len(), 1);
    assert_eq!(e.runs[0].preempt.windows, vec![Window::Handoff, Window::UnlockKick]);
    let e = parse("[preempt]\nwindows = [[\"handoff\"], [\"unlock-kick\"]]\n").unwrap();
    assert_eq!(e.runs.len(), 2);
    assert_eq!(e.runs[1].preempt.windows, vec![Window::UnlockKick]);
}

#[test]
fn every_shipped_config_parses() {
    for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let e = Experiment::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            assert!(!e.runs.is_empty());
        }
    }
    let e =
        Experiment::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/kick-semantics.toml"))).unwrap();
    assert_eq!(e.runs.len(), 7 * 2 * 2 * 3);
    // Keys sorted: hypervisor.kick, hypervisor.wait, lock.variant (fastest).
    assert_eq!(
        (e.runs[0].hypervisor.kick, e.runs[0].hypervisor.wait),
        (KickContract::Remembered, WaitContract::Checked)
    );
    assert_eq!(e.runs[7 * 3].hypervisor.wait, WaitContract::Unchecked);
    assert_eq!(e.runs[2 * 7 * 3].hypervisor.kick, KickContract::LostIfNotWaiting);
}

#[test]
fn errors_name_the_key_and_line() {
    fails_at("vcpus = 4\nbogus = 1\n", "bogus", 2);
    let e = fails_at("vcpus = 0\n", "vcpus", 1);
    assert!(e.contains("out of range"), "{e}");
    let e = fails_at("[lock]\nvariant = \"pv-v9\"\n", "lock.variant", 2);
    assert!(e.contains("pv-v9") && e.contains("pv-upstream"), "the valid names: {e}");
    fails_at("[torture]\nnest = 3\nlocks = 2\n", "torture.nest", 2);
    fails_at("[hypervisor]\nkick = \"sometimes\"\n", "hypervisor.kick", 2);
    let e = fails_at("[preempt]\nwindows = [\"nowhere\"]\n", "preempt.windows", 2);
    assert!(e.contains("nowhere"), "{e}");
    let e = fails_at("vcpus = []\n", "vcpus", 1);
    assert!(e.contains("empty"), "{e}");
    let e = err("vcpus = [\n");
    assert!(e.contains("syntax") && e.contains("t.toml:"), "{e}");
    fails_at("[lock]\nhash_bits = 1\n", "lock.hash_bits", 2);
}

#[test]
fn type_errors_name_key_and_line() {
    // Issue 15: `vcpus = "four"` said `(config)`.
    let e = fails_at("name = \"x\"\nvcpus = \"four\"\n", "vcpus", 2);
    assert!(e.contains("four") || e.contains("string"), "{e}");
    fails_at("[torture]\nlocks = 1.5\n", "torture.locks", 2);
    fails_at("[hypervisor]\nrescue = \"yes\"\n", "hypervisor.rescue", 2);
    fails_at("seed = -1\n", "seed", 1);
    fails_at("\n\nvcpus = [2, \"four\"]\n", "vcpus", 3);
    fails_at("[preempt]\nwindow_prob = \"often\"\n", "preempt.window_prob", 2);
}

#[test]
fn dotted_quoted_keys_and_sub_tables_have_lines() {
    fails_at("\n\"vcpus\" = 0\n", "vcpus", 2);
    fails_at("\nlock.variant = \"nope\"\n", "lock.variant", 2);
    fails_at("[lock]\n\"spin_threshold\" = 0\n", "lock.spin_threshold", 2);
    fails_at("[lock]\nvariant = \"pv-v4.8\"\n[lock.sub]\na = 1\n", "lock.sub", 3);
    fails_at("torture = { locks = 0 }\n", "torture.locks", 1);
}

#[test]
fn schedule_errors_name_their_own_rule() {
    let two = "[[preempt.schedule]]\nat = \"handoff\"\n\n[[preempt.schedule]]\nat = \"unlock-kick\"\n";
    fails_at(&format!("{two}bogus = 1\n"), "bogus", 6);
    fails_at(&format!("{two}until = \"later\"\n"), "preempt.schedule[1].until", 6);
    fails_at(&format!("{two}cpu = 9\n"), "preempt.schedule[1].cpu", 6);
    fails_at(&format!("{two}timeout_us = 0\n"), "preempt.schedule[1].timeout_us", 6);
    // A rule without `at` said "unknown window ``".
    let e = fails_at("[[preempt.schedule]]\nuntil = \"blocked\"\n", "preempt.schedule[0]", 1);
    assert!(e.contains("missing field `at`"), "{e}");
    fails_at("[[preempt.schedule]]\nat = \"later\"\n", "preempt.schedule[0].at", 2);
}

#[test]
fn floats_must_be_finite_and_in_range() {
    // Issue 15: `irq_prob = nan` was accepted and dropped the run from reports.
    for v in ["nan", "+nan", "inf", "-inf", "1.5", "-0.1"] {
        fails_at(&format!("[torture]\nirq_prob = {v}\n"), "torture.irq_prob", 2);
        fails_at(&format!("[preempt]\nwindow_prob = {v}\n"), "preempt.window_prob", 2);
        fails_at(&format!("[hypervisor]\nspurious_wakeup_prob = {v}\n"), "hypervisor.spurious_wakeup_prob", 2);
    }
    fails_at("[torture]\nirq_prob = [0.1, nan]\n", "torture.irq_prob", 2);
}

#[test]
fn lengths_have_upper_bounds() {
    fails_at("[preempt]\nholder_stall_us = 9223372036854775807\n", "preempt.holder_stall_us", 2);
    fails_at("[preempt]\nholder_interval_us = 9223372036854775807\n", "preempt.holder_interval_us", 2);
    fails_at("[preempt]\nrandom_mean_interval_us = 9223372036854775807\n", "preempt.random_mean_interval_us", 2);
    fails_at(
        "[preempt]\nrandom_mean_interval_us = 10\nrandom_stall_us = 9223372036854775807\n",
        "preempt.random_stall_us",
        3,
    );
    fails_at("[preempt]\nwindow_stall_us = 9223372036854775807\n", "preempt.window_stall_us", 2);
    fails_at("[hypervisor]\nkick_delay_us = 9223372036854775807\n", "hypervisor.kick_delay_us", 2);
    fails_at("[torture]\nmax_acquisitions = 9223372036854775807\n", "torture.max_acquisitions", 2);
    fails_at("iterations = 9223372036854775807\n", "iterations", 1);
    fails_at("vcpus = 4294967296\n", "vcpus", 1);
}

#[test]
fn absurd_matrices_are_refused_with_their_size() {
    let list = format!("[{}]", (1..=64).map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
    let text = format!(
        "vcpus = {list}\nram_mib = {list}\nseed = {list}\niterations = {list}\n[torture]\ncs_ns = {list}\nthink_ns = {list}\n"
    );
    let t = std::time::Instant::now();
    let e = err(&text);
    assert!(e.contains("68719476736 matrix points") && e.contains("64 vcpus"), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "counted, not built");
    let e = err("vcpus = [1, 2]\nrepeats = 10000\n[torture]\ncs_ns = [1, 2, 3, 4, 5, 6]\n");
    assert!(e.contains("`repeats`") && e.contains("100000 runs"), "{e}");
}

#[test]
fn overrides_apply_before_the_matrix() {
    let text = "vcpus = [2, 4, 8]\nrepeats = 3\nseed = 5\n[lock]\nvariant = [\"pv-v4.5\", \"pv-v4.8\"]\n";
    let ov = Overrides { seed: Some(9), vcpus: Some(2), ..Default::default() };
    let e = Experiment::parse_with(text, "t.toml", "t", &ov).unwrap();
    // The vcpus axis is gone (not three copies of each run), and said so.
    assert_eq!(e.runs.len(), 2 * 3);
    assert_eq!(e.varying, vec!["lock.variant".to_string()]);
    assert!(
        e.notes.iter().any(|n| n.contains("--vcpus 2") && n.contains("`vcpus`") && n.contains("3 values")),
        "{:?}",
        e.notes
    );
    // --seed is the base of the repeats' derived seeds.
    let seeds: Vec<u64> = e.runs[..3].iter().map(|r| r.seed).collect();
    assert_eq!(seeds, vec![9, derive_seed(9, 1), derive_seed(9, 2)]);
    assert!(seeds[0] != seeds[1] && seeds[1] != seeds[2]);
    let ov = Overrides { variant: Some(Variant::Ticket), ..Default::default() };
    let e = Experiment::parse_with(text, "t.toml", "t", &ov).unwrap();
    assert_eq!(e.runs.len(), 3 * 3);
    assert!(e.runs.iter().all(|r| r.lock.variant == Variant::Ticket));
    let ov = Overrides { vcpus: Some(0), ..Default::default() };
    let e = format!("{:#}", Experiment::parse_with(text, "t.toml", "t", &ov).unwrap_err());
    assert!(e.contains("--vcpus") && e.contains("out of range"), "{e}");
}

#[test]
fn host_cpus_beyond_the_machine_are_found_before_a_run() {
    let e = parse("vcpus = 4\nhost_cpus = [1, 64]\n").unwrap();
    let err = e.check_host(2).unwrap_err().to_string();
    assert!(err.contains("t.toml:2") && err.contains("`host_cpus`") && err.contains("64"), "{err}");
    assert!(e.check_host(64).is_ok());
}

#[test]
fn schedule_rules_are_typed() {
    let e = parse("[[preempt.schedule]]\nat = \"handoff\"\nuntil = \"blocked\"\n[[preempt.schedule]]\nat = \"unlock-kick\"\nuntil = \"window:head-trylock\"\n").unwrap();
    let m = e.runs[0].machine();
    assert_eq!(m.preempt.schedule.len(), 2);
    assert_eq!(m.preempt.schedule[1].until, HoldUntil::Window(Window::HeadTrylock));
    assert_eq!(m.preempt.window_params().always, 1);
}

#[test]
fn records_round_trip_their_config() {
    let e = parse("[[preempt.schedule]]\nat = \"handoff\"\nuntil = \"window:head-trylock\"\nwhen = \"successor-running\"\n[hypervisor]\nwait = \"unchecked\"\n").unwrap();
    let json = serde_json::to_string(&e.runs[0]).unwrap();
    assert!(json.contains("\"until\":\"window:head-trylock\"") && json.contains("\"wait\":\"unchecked\""), "{json}");
    let back: RunConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, e.runs[0]);
}

#[test]
fn pct_and_preemption_bound_keys_are_checked_at_their_lines() {
    let base = "[lock]\nvariant = \"kernel-pv\"\nkernel_tree = \"t\"\n[preempt]\nsites = [\"pv_kick_node\"]\n";
    let ok = parse(&format!("{base}site_mode = \"pct\"\npct_depth = 4\npct_steps = 500\nmax_stalls = 9\n")).unwrap();
    let p = &ok.runs[0].preempt;
    assert_eq!((p.site_mode, p.pct_depth, p.pct_steps, p.max_stalls), (pvlock_vmm::SiteMode::Pct, 4, 500, 9));
    let s = p.site_schedule();
    assert_eq!((s.mode, s.pct_depth, s.steps, s.max_stalls), (pvlock_abi::sites::SITE_MODE_PCT, 4, 500, 9));
    fails_at(&format!("{base}site_mode = \"pct\"\npct_depth = 9\npct_steps = 5\n"), "preempt.pct_depth", 7);
    fails_at(&format!("{base}site_mode = \"pct\"\n"), "preempt.pct_steps", 4);
    fails_at(&format!("{base}site_mode = \"pct\"\npct_steps = 5\nsite_prob = 0.5\n"), "preempt.site_prob", 8);
    fails_at(&format!("{base}site_mode = \"fifo\"\n"), "preempt.site_mode", 6);
    let e = fails_at("[preempt]\nsite_mode = \"pct\"\npct_steps = 5\n", "preempt.site_mode", 2);
    assert!(e.contains("preempt.sites"), "{e}");
    // Defaults leave records as they were: no new keys serialized.
    let d = toml::to_string(&pvlock_vmm::PreemptConfig::default()).unwrap();
    assert!(!d.contains("site_mode") && !d.contains("pct_") && !d.contains("max_stalls"), "{d}");
}

#[test]
fn keys_no_run_reads_are_refused_naming_key_and_line() {
    // Issue 15: a kernel patch given for a Rust variant was ignored without a word.
    fails_at("workload = \"smoke\"\n[lock]\nkernel_patches = [\"x.patch\"]\n", "lock.kernel_patches", 3);
    fails_at("[lock]\nvariant = \"pv-v4.8\"\nkernel_tree = \".\"\n", "lock.kernel_tree", 3);
    fails_at("[lock]\nkernel_nr_cpus = 8\n", "lock.kernel_nr_cpus", 2);
    fails_at("[lock]\nkernel_flavour = \"generic\"\n", "lock.kernel_flavour", 2);
    fails_at("[lock]\nkernel_sites = false\n", "lock.kernel_sites", 2);
    fails_at("workload = \"torture\"\n[lock]\nmutex = \"mutex-v4.10\"\n", "lock.mutex", 3);
    fails_at("workload = \"torture\"\n[lock]\nmutex_recursive = true\n", "lock.mutex_recursive", 3);
    let e = fails_at("workload = \"mutex-torture\"\n[lock]\npage_wake = \"page-wake-v5.7\"\n", "lock.page_wake", 3);
    assert!(e.contains("page-wake") && e.contains("ignored"), "{e}");
    // The flag is named when the command line gave the value.
    let ov = Overrides { kernel_patches: Some(vec!["x.patch".into()]), ..Default::default() };
    let e = format!("{:#}", Experiment::parse_with("workload = \"smoke\"\n", "t.toml", "t", &ov).unwrap_err());
    assert!(e.contains("command line: `--kernel-patch`") && e.contains("x.patch"), "{e}");
    // A key that some run of the matrix reads is shared by all.
    let mixed = "workload = \"torture\"\n[lock]\nvariant = [\"pv-upstream\", \"kernel-pv\"]\nkernel_tree = \".\"\n";
    assert_eq!(parse(mixed).unwrap().runs.len(), 2);
    parse("workload = [\"torture\", \"mutex-torture\"]\n[lock]\nmutex = \"mutex-v4.10\"\n").unwrap();
}

#[test]
fn one_seed_rule_for_config_and_command_line() {
    // TOML stops at i64::MAX; so do seeds given another way.
    parse(&format!("seed = {MAX_SEED}\n")).unwrap();
    fails_at("seed = 9223372036854775808\n", "seed", 1);
    let ok = Overrides { seed: Some(MAX_SEED), ..Default::default() };
    assert_eq!(Experiment::parse_with("", "t.toml", "t", &ok).unwrap().runs[0].seed, MAX_SEED);
    let ov = Overrides { seed: Some(u64::MAX), ..Default::default() };
    let e = format!("{:#}", Experiment::parse_with("", "t.toml", "t", &ov).unwrap_err());
    assert!(e.contains("command line: `--seed`") && e.contains("out of range"), "{e}");
    // Repeats of the largest seed stay in range.
    let e = parse(&format!("seed = {MAX_SEED}\nrepeats = 50\n")).unwrap();
    assert!(e.runs.iter().all(|r| r.seed <= MAX_SEED));
}

#[test]
fn kernel_patches_must_be_unified_diffs_of_sane_size() {
    use super::schema::patch_problem;
    let d = tempfile::tempdir().unwrap();
    let put = |name: &str, body: &[u8]| {
        let p = d.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let good = put("good.patch", b"--- a/k/q.c\n+++ b/k/q.c\n@@ -1 +1 @@\n-a\n+b\n");
    assert_eq!(patch_problem(&good), None);
    assert!(patch_problem(&put("e.patch", b"")).unwrap().contains("empty"));
    assert!(patch_problem(&put("b.patch", b"+++ b/x\n@@ -1 +1 @@\n\0")).unwrap().contains("binary"));
    assert!(patch_problem(&put("t.patch", b"just some text\n")).unwrap().contains("hunk"));
    assert!(patch_problem(d.path()).unwrap().contains("not a regular file"));
    assert!(patch_problem(&d.path().join("missing")).unwrap().contains("no such file"));
    let huge = put("h.patch", b"");
    std::fs::File::options().write(true).open(&huge).unwrap().set_len(17 << 20).unwrap();
    assert!(patch_problem(&huge).unwrap().contains("larger than 16 MiB"));
}
