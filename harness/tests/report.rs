//! The report layer against a fixed `runs.jsonl` fixture: markdown and CSV
//! are compared byte for byte with files under `tests/golden/`; plots must
//! be well-formed SVG with one series per variant; the diff must flag a
//! real change and not noise; a truncated last line is skipped and said.
//!
//! `UPDATE_GOLDEN=1 cargo test -p pvlock --test report` rewrites the
//! fixture (from [`fixture_records`]) and the golden files; review the
//! change with `git diff` before committing it.

use pvlock::config::RunConfig;
use pvlock::record::{Check, HashStats, Params, PerVcpu, Record, Timing, SCHEMA_VERSION};
use pvlock::report::diff::Verdict;
use pvlock::report::load::{parse_jsonl, GroupKey, Loaded};
use pvlock::report::{diff, render_loaded, EnvInfo};
use pvlock::stats::Percentiles;
use pvlock_abi::Variant;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn update() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}

const VARIANTS: &[&str] = &["ticket", "pv-v4.5", "pv-upstream"];

/// One record of the fixture matrix: 3 variants x vCPUs {4, 8} on 2 host
/// CPUs x 3 repeats, with numbers chosen so that the tables exercise every
/// column: pv-v4.5 hangs twice at 8 vCPUs (blocked-wait, stale hash
/// entries) and fails once at 4, pv-upstream has rescues, ticket collapses
/// under overcommit.
fn fixture_record(variant: &str, vcpus: u32, rep: u32) -> Record {
    let vi = VARIANTS.iter().position(|v| *v == variant).unwrap();
    let pv = variant != "ticket";
    let over8 = vcpus == 8;
    let base = match (variant, over8) {
        ("ticket", false) => 2_000_000.0,
        ("ticket", true) => 400_000.0,
        ("pv-v4.5", false) => 1_800_000.0,
        ("pv-v4.5", true) => 1_500_000.0,
        (_, false) => 1_900_000.0,
        (_, true) => 1_600_000.0,
    };
    let noise = [0.98, 1.0, 1.02][rep as usize];
    let acq_per_sec: f64 = base * noise;
    let acquisitions = acq_per_sec.round() as u64;
    let hang = variant == "pv-v4.5" && over8 && rep >= 1;
    let failed = variant == "pv-v4.5" && !over8 && rep == 2;
    let status = if hang {
        "hang"
    } else if failed {
        "failed"
    } else {
        "ok"
    };
    let kick_rate = if pv { [0.0, 0.004, 0.003][vi] * if over8 { 5.0 } else { 1.0 } } else { 0.0 };
    let kicks = (acquisitions as f64 * kick_rate).round() as u64;
    let mut lock_events = BTreeMap::new();
    if pv {
        lock_events.insert("pv_kick_unlock".to_string(), kicks * 9 / 10);
        lock_events.insert("pv_kick_wake".to_string(), kicks - kicks * 9 / 10);
        lock_events.insert("pv_spurious_wakeup".to_string(), (rep as u64 + 1) * if over8 { 7 } else { 2 });
        lock_events.insert("kicked_but_stolen".to_string(), if variant == "pv-upstream" { 3 + rep as u64 } else { 0 });
        lock_events.insert("hash_inserts".to_string(), kicks);
        lock_events.insert("pv_hash_hops".to_string(), kicks / 20);
    }
    let mut vmm = BTreeMap::new();
    vmm.insert("waits".to_string(), kicks);
    vmm.insert("rescues".to_string(), if variant == "pv-upstream" && over8 && rep == 2 { 2 } else { 0 });
    let p50 = [150u64, 400, 300][vi] * if over8 { 3 } else { 1 };
    let p99 = [3_000u64, 20_000, 15_000][vi] * if over8 { 4 } else { 1 } + rep as u64 * 500;
    let per_vcpu: Vec<PerVcpu> = (0..vcpus)
        .map(|cpu| PerVcpu {
            cpu,
            done: !(hang && cpu == 3),
            acquisitions: acquisitions / vcpus as u64,
            max_wait_ns: p99 * 10,
            latency_ns: Percentiles {
                count: acquisitions / vcpus as u64,
                p50: p50 + 25 * cpu as u64,
                p99: p99 + 1_000 * cpu as u64,
                max: p99 * 10,
            },
            exits: kicks / vcpus as u64,
            final_phase: if hang && cpu == 3 { "wait".into() } else { "done".into() },
            lock_events: BTreeMap::new(),
            vmm: BTreeMap::new(),
            window_hits: BTreeMap::new(),
        })
        .collect();
    let stale = if hang || failed { 1 } else { 0 };
    let failure = if hang {
        Some(
            serde_json::from_value(serde_json::json!({
                "kind": "blocked-wait", "cpu": 3, "blocked_ms": 2000,
                "gpa": 0x10_0040, "expected": 3, "current": 0
            }))
            .unwrap(),
        )
    } else {
        None
    };
    let mut checks =
        vec![Check::new("all_vcpus_done", !hang, if hang { "not done: [3]" } else { "every vCPU reported done" })];
    if failed {
        checks.push(Check::new("hash_table_empty", false, "1 stale entries: [100040]"));
    }
    let config = RunConfig {
        name: "overcommit".into(),
        workload: pvlock_abi::Workload::Torture,
        vcpus,
        host_cpus: 2,
        repeats: 3,
        lock: pvlock_vmm::LockConfig { variant: Variant::from_name(variant).unwrap(), ..Default::default() },
        ..Default::default()
    };
    Record {
        schema_version: SCHEMA_VERSION,
        name: "overcommit".into(),
        run_key: format!("vcpus={vcpus},lock.variant={variant}"),
        status: pvlock_vmm::RunStatus::from_name(status).unwrap(),
        summary: if hang {
            "vCPU 3: blocked in pv_wait for 2000 ms on byte 0x100040 (expected 3, now 0)".into()
        } else if failed {
            "checks failed: hash_table_empty: 1 stale entries: [100040]".into()
        } else {
            "all vCPUs finished; all checks passed".into()
        },
        failure,
        started_at: format!("2026-01-0{}T10:00:00Z", rep + 1),
        pvlock_version: "0.1.0-fixture".into(),
        vcpus,
        host_cpus: 2,
        duration_ms: 1000.0,
        tsc_khz: 2_000_000,
        acquisitions,
        acquisitions_per_sec: acq_per_sec,
        latency_ns: Percentiles { count: acquisitions, p50, p99, max: p99 * 10 },
        max_wait_ns: p99 * 10,
        lock_events,
        vmm,
        hash: HashStats {
            entries: if pv { 64 } else { 0 },
            stale_entries: stale,
            inserts: if pv { kicks } else { 0 },
            removes: if pv { kicks - stale } else { 0 },
            max_probe: if pv { 2 } else { 0 },
            hops_per_insert: if pv && kicks > 0 { (kicks / 20) as f64 / kicks as f64 } else { 0.0 },
            hops_per_kick_unlock: 0.0,
            double_hash: if hang { 1 } else { 0 },
            occupancy: Vec::new(),
        },
        params: Params {
            variant: Variant::from_name(variant).unwrap(),
            mutant: false,
            pv,
            spin_threshold: 1 << 15,
            hash_bits: if pv { 6 } else { 0 },
            counters: pvlock::record::CounterOrigin::Kernel,
            wait_early: pv,
        },
        timing: Timing::default(),
        checks,
        diagnosis: Default::default(),
        per_vcpu,
        console: vec![],
        config,
        kernel: None,
        kernel_sites: None,
    }
}

/// The fixture matrix, in the order a matrix would run it.
fn fixture_records() -> Vec<Record> {
    let mut v = Vec::new();
    for vcpus in [4, 8] {
        for variant in VARIANTS {
            for rep in 0..3 {
                v.push(fixture_record(variant, vcpus, rep));
            }
        }
    }
    v
}

/// The fixture's text: every record, then the first 80 bytes of one more,
/// as a run killed mid-write would leave it. The records' `config` is
/// written as `{}` (every `RunConfig` field has a default, and reports do
/// not read it), so the fixture does not break when config keys change.
fn fixture_text() -> String {
    let mut s = String::new();
    for r in fixture_records() {
        let mut v = serde_json::to_value(&r).unwrap();
        v["config"] = serde_json::json!({});
        s.push_str(&serde_json::to_string(&v).unwrap());
        s.push('\n');
    }
    let extra = serde_json::to_string(&fixture_record("ticket", 8, 0)).unwrap();
    s.push_str(&extra[..80]);
    s
}

fn fixture_path() -> PathBuf {
    tests_dir().join("fixtures/runs.jsonl")
}

/// The fixture as loaded; under UPDATE_GOLDEN=1 it is rewritten first
/// (once, before any test reads it).
fn fixture() -> &'static Loaded {
    static F: OnceLock<Loaded> = OnceLock::new();
    F.get_or_init(|| {
        if update() {
            std::fs::create_dir_all(fixture_path().parent().unwrap()).unwrap();
            std::fs::write(fixture_path(), fixture_text()).unwrap();
        }
        parse_jsonl(&std::fs::read_to_string(fixture_path()).expect("fixture runs.jsonl"))
    })
}

fn env() -> EnvInfo {
    EnvInfo {
        host_cpu_model: "Test CPU @ 2.00GHz".into(),
        kernel: "6.8.0-test".into(),
        kvm_flavour: "VMX".into(),
        pvlock_version: "0.1.0-fixture".into(),
        command: "pvlock compare configs/fixture.toml".into(),
    }
}

fn golden(name: &str, actual: &str) {
    let p = tests_dir().join("golden").join(name);
    if update() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", p.display()));
    if want != actual {
        let line = want.lines().zip(actual.lines()).position(|(a, b)| a != b).map(|i| i + 1);
        panic!(
            "{} differs from the rendered output (first differing line: {line:?}; \
             UPDATE_GOLDEN=1 rewrites it)\n--- rendered ---\n{actual}",
            p.display()
        );
    }
}

#[test]
fn fixture_has_a_truncated_last_line() {
    let f = fixture();
    assert_eq!(f.records.len(), 18);
    assert_eq!(f.skipped.len(), 1);
    assert_eq!(f.skipped[0].line, 19);
}

#[test]
fn markdown_matches_golden() {
    let r = render_loaded(fixture(), &env(), false);
    golden("report.md", &r.markdown);
}

#[test]
fn csv_matches_golden() {
    let r = render_loaded(fixture(), &env(), false);
    golden("summary.csv", &r.csv);
}

#[test]
fn truncated_line_is_reported_and_partial_is_said() {
    let f = fixture();
    let md = render_loaded(f, &env(), false).markdown;
    assert!(md.contains("1 malformed or truncated line of runs.jsonl skipped: line 19"), "{md}");
    assert!(md.contains("- Runs: 18 (complete)"), "{md}");
    let md = render_loaded(f, &env(), true).markdown;
    assert!(md.contains("- Runs: 18 (PARTIAL: the matrix did not finish"), "{md}");
    // An aborted record alone makes it partial too.
    let mut recs = f.records.clone();
    recs[0].status = pvlock_vmm::RunStatus::Aborted;
    let md = pvlock::report::render(&recs, &env(), false).markdown;
    assert!(md.contains("(PARTIAL: 1 aborted run)"), "{md}");
}

#[test]
fn what_differs_comes_from_the_numbers() {
    let md = render_loaded(fixture(), &env(), false).markdown;
    // Hangs by kind, with the other variants' zero beside them.
    assert!(
        md.contains(
            "At 8 vCPUs / 2 host CPUs: ticket: 0 of 3 runs not ok; pv-v4.5: 2 of 3 runs not ok: \
             2 hang (blocked-wait 2); pv-upstream: 0 of 3 runs not ok."
        ),
        "{md}"
    );
    assert!(md.contains("ticket has the highest throughput at 4 vCPUs / 2 host CPUs"), "{md}");
    // At 4 vCPUs, ticket (2.0M ± 2%) vs pv-upstream (1.9M ± 2%) overlap.
    assert!(md.contains("not distinguishable at 95%"), "{md}");
    assert!(md.contains("pv-upstream has the highest throughput at 8 vCPUs / 2 host CPUs"), "{md}");
}

fn parse_svg(svg: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML: {e}\n{svg}"))
}

fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
    doc.descendants().filter(|n| n.has_tag_name("text")).map(|n| n.text().unwrap_or("").trim().to_string()).collect()
}

/// Distinct palette colours used by elements `tag` in attribute `attr`.
fn series_colours(doc: &roxmltree::Document<'_>, tag: &str, attr: &str) -> Vec<String> {
    let palette: Vec<String> = (0..VARIANTS.len()).map(pvlock::report::plots::variant_color_hex).collect();
    let mut seen: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name(tag))
        .filter_map(|n| n.attribute(attr))
        .map(|c| c.to_uppercase())
        .filter(|c| palette.contains(c))
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

#[test]
fn plots_are_svg_with_one_series_per_variant() {
    let r = render_loaded(fixture(), &env(), false);
    let names: Vec<&str> = r.plots.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, pvlock::report::plots::FILES);
    for (name, svg) in &r.plots {
        let doc = parse_svg(svg);
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{name}");
        let t = texts(&doc);
        match name.as_str() {
            "throughput_vs_overcommit.svg" | "latency.svg" | "kicks_per_acquisition.svg" => {
                for v in VARIANTS {
                    assert_eq!(t.iter().filter(|x| x == v).count(), 1, "{name}: legend entry for {v} in {t:?}");
                }
                let (tag, attr) = if name.starts_with("kicks") { ("rect", "fill") } else { ("polyline", "stroke") };
                assert_eq!(series_colours(&doc, tag, attr).len(), VARIANTS.len(), "{name}: series colours");
            }
            "outcomes.svg" => {
                for v in VARIANTS {
                    assert!(t.iter().any(|x| x.starts_with(&format!("{v} "))), "{name}: bar label for {v} in {t:?}");
                }
                for s in ["ok", "hang", "failed (violation)"] {
                    assert!(t.iter().any(|x| x == s), "{name}: legend entry {s} in {t:?}");
                }
            }
            other => panic!("unexpected plot {other}"),
        }
    }
}

#[test]
fn plots_of_nothing_still_parse() {
    let r = pvlock::report::render(&[], &env(), false);
    for (name, svg) in &r.plots {
        parse_svg(svg);
        assert!(svg.contains("no "), "{name} says there is no data");
    }
    assert!(r.markdown.contains("No records."));
}

#[test]
fn diff_flags_a_real_change_and_not_noise() {
    let a = fixture().records.clone();
    let mut b = a.clone();
    let key = |r: &Record| GroupKey::of(r);
    for r in &mut b {
        let k = key(r);
        if k.variant == "pv-upstream" && k.vcpus == 8 {
            // A real regression: 30% slower.
            r.acquisitions_per_sec *= 0.7;
        }
        if k.variant == "ticket" && k.vcpus == 4 {
            // Noise: within the repeats' own spread.
            r.acquisitions_per_sec *= 1.003;
        }
        if k.variant == "pv-v4.5" && k.vcpus == 8 {
            // Fixed: no more hangs.
            r.status = pvlock_vmm::RunStatus::Ok;
            r.failure = None;
        }
    }
    let d = diff(&a, &b);
    let find = |v: &str, vcpus: u32| d.groups.iter().find(|g| g.key.variant == v && g.key.vcpus == vcpus).unwrap();
    let acq = |g: &pvlock::report::diff::GroupDiff| g.metrics[0].verdict.clone();
    assert!(acq(find("pv-upstream", 8)).is_changed(), "{:?}", acq(find("pv-upstream", 8)));
    assert!(matches!(acq(find("ticket", 4)), Verdict::Unchanged { .. }), "{:?}", acq(find("ticket", 4)));
    assert!(matches!(acq(find("pv-upstream", 4)), Verdict::Unchanged { .. }));
    // pv-v4.5 at 8 vCPUs had one ok run in A: too few for a test.
    assert_eq!(acq(find("pv-v4.5", 8)), Verdict::NTooSmall);
    assert!(find("pv-v4.5", 8).status_changed);
    assert!(!find("ticket", 4).status_changed);
    let md = d.to_markdown();
    assert!(md.contains("**CHANGED**"), "{md}");
    assert!(md.contains("n too small"), "{md}");
    assert!(md.contains("pv-v4.5 @ 8 vCPUs / 2 host CPUs**: ok 1, hang 2 -> ok 3"), "{md}");
    // Identical sets: nothing flagged.
    assert!(!diff(&a, &a).any_change());
}

fn pvlock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pvlock"))
}

#[test]
fn cli_report_and_diff() {
    let fx = fixture();
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_path(), d.path().join("runs.jsonl")).unwrap();
    env().save(d.path()).unwrap();
    let out = pvlock().arg("report").arg(d.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| pv-v4.5 | 8 vCPUs / 2 host CPUs | 3 | 1 | 2 |"), "{stdout}");
    // With env.json present, the files are exactly what render gives.
    let r = render_loaded(fx, &env(), false);
    assert_eq!(std::fs::read_to_string(d.path().join("report.md")).unwrap(), r.markdown);
    assert_eq!(std::fs::read_to_string(d.path().join("summary.csv")).unwrap(), r.csv);
    for f in pvlock::report::plots::FILES {
        assert!(d.path().join("plots").join(f).exists(), "{f}");
    }
    // No temporary files left behind.
    let stray: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    let out = pvlock().arg("diff").arg(d.path()).arg(d.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# pvlock diff") && !stdout.contains("**CHANGED**"), "{stdout}");
    assert!(stdout.contains("A: 1 malformed or truncated line(s)"), "{stdout}");

    let out = pvlock().arg("report").arg(d.path().join("nope")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn report_md_shows_race_diagrams_and_where_the_vcpus_were() {
    let mut r = fixture_record("pv-v4.5", 4, 0);
    r.status = pvlock_vmm::RunStatus::GuestCrash;
    r.summary = "vCPU 1: guest BUG: double hash".into();
    r.diagnosis.race_diagram = Some("double hash: vCPU 1 inserted lock 0x41b000\n  vCPU 1 (lock holder)\n".into());
    r.diagnosis.vcpus = vec![serde_json::json!({
        "cpu": 1, "phase": "holding", "lock": 0x41b000u64,
        "location": {"function": "pvlock_guest_lib::hash::PvHash::insert", "file": "guest/lib/src/hash.rs", "line": 169}
    })];
    let clean = fixture_record("ticket", 4, 0);
    let md = pvlock::report::render(&[r, clean], &env(), false).markdown;
    assert!(md.contains("### Races, drawn from the runs' traces"), "{md}");
    assert!(md.contains("```\ndouble hash: vCPU 1 inserted lock 0x41b000\n"), "{md}");
    assert!(md.contains("### Where the vCPUs were when a run did not end ok"), "{md}");
    assert!(
        md.contains(
            "  - vCPU 1: holding, lock 0x41b000: pvlock_guest_lib::hash::PvHash::insert (guest/lib/src/hash.rs:169)"
        ),
        "{md}"
    );
}

/// Renders `records` on a thread and fails (instead of hanging the suite)
/// if that takes more than a minute.
fn render_within_a_minute(records: Vec<Record>) -> pvlock::report::Rendered {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(pvlock::report::render(&records, &env(), false));
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).expect("rendering did not finish within 60 s (a hang)")
}

#[test]
fn plots_are_total_over_huge_and_non_finite_values() {
    // Issue 15: two records at 1e308 acquisitions/s made `report` hang
    // (their mean overflows to infinity). Every value must give an SVG,
    // with the unplottable left out and said.
    for bad in [1e308, f64::MAX, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -1e308, 0.0] {
        let mut recs: Vec<Record> = fixture_records().into_iter().take(2).collect();
        for r in &mut recs {
            r.acquisitions_per_sec = bad;
        }
        let r = render_within_a_minute(recs);
        for (name, svg) in &r.plots {
            parse_svg(svg);
            if name.starts_with("throughput") && !bad.is_finite() {
                assert!(svg.contains("not plotted") || svg.contains("left out"), "{bad}: {name} says why");
            }
        }
        // Huge finite values (one record) are drawn, not refused.
        let mut one: Vec<Record> = fixture_records().into_iter().take(1).collect();
        one[0].acquisitions_per_sec = bad;
        let r = render_within_a_minute(one);
        let (_, tp) = r.plots.iter().find(|p| p.0.starts_with("throughput")).unwrap();
        parse_svg(tp);
        if bad.is_finite() && bad > 0.0 {
            assert!(!tp.contains("not plotted"), "{bad} is finite: plotted");
        }
    }
}

#[test]
fn the_outcome_plot_is_drawn_only_when_a_run_was_not_ok() {
    let all_ok: Vec<Record> = fixture_records().into_iter().filter(|r| r.status == "ok").collect();
    let r = pvlock::report::render(&all_ok, &env(), false);
    assert!(!r.plots.iter().any(|p| p.0 == "outcomes.svg"));
    let r = render_loaded(fixture(), &env(), false);
    assert!(r.plots.iter().any(|p| p.0 == "outcomes.svg"));
}

#[test]
fn axes_go_log_over_decades_with_unit_ticks() {
    // The fixture's rates span 0.4M..2M: linear. Make ticket 100x slower
    // (as non-stealing locks are under overcommit): log.
    let r = render_loaded(fixture(), &env(), false);
    let tp = &r.plots.iter().find(|p| p.0.starts_with("throughput")).unwrap().1;
    assert!(!tp.contains("(log;"), "a span of 5x stays linear");
    let mut recs = fixture_records();
    for r in recs.iter_mut().filter(|r| r.params.variant.name() == "ticket") {
        r.acquisitions_per_sec /= 100.0;
    }
    let r = pvlock::report::render(&recs, &env(), false);
    let tp = &r.plots.iter().find(|p| p.0.starts_with("throughput")).unwrap().1;
    assert!(tp.contains("(log;"), "a span of 500x is logarithmic");
    let t = texts(&parse_svg(tp));
    assert!(t.iter().any(|x| x == "1M") && t.iter().any(|x| x.ends_with('k')), "rate ticks in k/M: {t:?}");
    let lat = &r.plots.iter().find(|p| p.0 == "latency.svg").unwrap().1;
    let t = texts(&parse_svg(lat));
    assert!(
        t.iter().any(|x| x.ends_with(" ns")) && t.iter().any(|x| x.ends_with(" µs")),
        "latency ticks in ns/µs: {t:?}"
    );
}
