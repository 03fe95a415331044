//! Property test of the config layer (issue 15): configs generated from the
//! schema (every key of `RunConfig::default()`, with its type), then
//! mutated: wrong types, out-of-range and non-finite numbers, huge values,
//! lists (matrix axes) of junk, removed, unknown and duplicated keys,
//! tables replaced by values, extra `[[preempt.schedule]]` rules, truncated
//! text. Every one must parse to runs that all validate, or fail with a
//! `ConfigError` naming a key and a line of the file; never panic, never
//! hang (each parse has a 10 s budget). Parsing only (no runs): hundreds of
//! cases in a few seconds.
//!
//! A second property runs what it generates: configs drawn from the valid
//! ranges of the schema (and, now and then, one value past them), small
//! enough to run in well under a second, each through `pvlock run` on KVM.
//! Every one ends with exit 0 or 1 and a record per run that parses and
//! agrees with the exit code, or exit 2 naming key and line; never a
//! panic, never past its wall-clock budget. 16 cases, at least 6 of them run.

use proptest::prelude::*;
use pvlock::config::{ConfigError, Experiment, RunConfig};
use std::time::Duration;
use toml::Value;

/// Every leaf of the schema as (dotted key, default value).
fn leaves() -> Vec<(String, Value)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", &Value::try_from(RunConfig::default()).unwrap(), &mut out);
    out
}

fn junk() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Float(f64::NAN)),
        Just(Value::Float(f64::INFINITY)),
        Just(Value::Float(f64::NEG_INFINITY)),
        Just(Value::Float(1e308)),
        Just(Value::Float(-0.5)),
        Just(Value::Float(0.5)),
        Just(Value::Integer(i64::MAX)),
        Just(Value::Integer(i64::MIN)),
        Just(Value::Integer(-1)),
        Just(Value::Integer(0)),
        Just(Value::Integer(1)),
        Just(Value::Integer(u32::MAX as i64 + 1)),
        any::<i64>().prop_map(Value::Integer),
        any::<bool>().prop_map(Value::Boolean),
        Just(Value::String(String::new())),
        Just(Value::String("four".into())),
        Just(Value::String("x".repeat(5000))),
        "[a-z-]{1,12}".prop_map(Value::String),
        Just(Value::Array(vec![])),
        Just(Value::Array(vec![Value::Array(vec![Value::Integer(1)])])),
        Just(Value::Table(Default::default())),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace leaf `i` with a value.
    Set(usize, Value),
    /// Make leaf `i` a matrix axis: its default and a value.
    Axis(usize, Value),
    Remove(usize),
    /// An unknown key in the section of leaf `i`.
    Unknown(usize, String),
    /// Replace the whole section of leaf `i` by a value.
    SectionAsValue(usize, Value),
    /// Append a `[[preempt.schedule]]` rule with these fields.
    Rule(Vec<(String, Value)>),
    /// Append an `[[expect]]` rule with these fields.
    Expect(Vec<(String, Value)>),
}

fn mutation(n: usize) -> impl Strategy<Value = Mutation> {
    let field = prop_oneof![
        Just("at"),
        Just("until"),
        Just("cpu"),
        Just("timeout_us"),
        Just("count"),
        Just("when"),
        Just("bogus")
    ];
    let good = prop_oneof![
        Just(Value::String("handoff".into())),
        Just(Value::String("blocked".into())),
        Just(Value::String("window:unlock-kick".into())),
        Just(Value::Integer(1)),
    ];
    let expect_field = prop_oneof![Just("where"), Just("outcome"), Just("bogus")];
    let where_table = |k: &str, v: Value| Value::Table([(k.to_string(), v)].into_iter().collect());
    let expect_good = prop_oneof![
        Just(Value::String("failure".into())),
        Just(Value::String("hang".into())),
        Just(where_table("workload", Value::String("smoke".into()))),
        Just(where_table("lock.variant", Value::Array(vec!["pv-upstream".into(), "pv-v4.2".into()]))),
        Just(where_table("vcpus", Value::Integer(4))),
        Just(where_table("vcpus", Value::Integer(5))),
        Just(where_table("lock.bogus", Value::Integer(1))),
        Just(where_table("preempt.windows", Value::Array(vec![]))),
    ];
    prop_oneof![
        4 => (0..n, junk()).prop_map(|(i, v)| Mutation::Set(i, v)),
        2 => (0..n, junk()).prop_map(|(i, v)| Mutation::Axis(i, v)),
        1 => (0..n).prop_map(Mutation::Remove),
        1 => (0..n, "[a-z_]{1,10}").prop_map(|(i, k)| Mutation::Unknown(i, k)),
        1 => (0..n, junk()).prop_map(|(i, v)| Mutation::SectionAsValue(i, v)),
        1 => proptest::collection::vec((field, prop_oneof![junk(), good]), 0..5)
            .prop_map(|f| Mutation::Rule(f.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        1 => proptest::collection::vec((expect_field, prop_oneof![junk(), expect_good]), 0..4)
            .prop_map(|f| Mutation::Expect(f.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
    ]
}

fn table_at<'a>(root: &'a mut toml::Table, path: &[&str]) -> Option<&'a mut toml::Table> {
    let mut t = root;
    for p in path {
        t = t.get_mut(*p)?.as_table_mut()?;
    }
    Some(t)
}

/// The config text after `muts` (and a cut of the text, if `cut`).
fn render(muts: &[Mutation], cut: Option<usize>) -> String {
    let leaves = leaves();
    let Value::Table(mut root) = Value::try_from(RunConfig::default()).unwrap() else { unreachable!() };
    for m in muts {
        let path = |i: usize| -> Vec<String> { leaves[i].0.split('.').map(str::to_string).collect() };
        match m {
            Mutation::Set(i, _) | Mutation::Axis(i, _) | Mutation::Remove(i) | Mutation::Unknown(i, _) => {
                let p = path(*i);
                let (last, sect) = p.split_last().unwrap();
                let sect: Vec<&str> = sect.iter().map(String::as_str).collect();
                let Some(t) = table_at(&mut root, &sect) else { continue };
                match m {
                    Mutation::Set(_, v) => {
                        t.insert(last.clone(), v.clone());
                    }
                    Mutation::Axis(_, v) => {
                        let old = leaves[*i].1.clone();
                        t.insert(last.clone(), Value::Array(vec![old, v.clone()]));
                    }
                    Mutation::Remove(_) => {
                        t.remove(last);
                    }
                    Mutation::Unknown(_, k) => {
                        t.insert(format!("zz_{k}"), Value::Integer(1));
                    }
                    _ => unreachable!(),
                }
            }
            Mutation::SectionAsValue(i, v) => {
                let p = path(*i);
                if p.len() > 1 {
                    root.insert(p[0].clone(), v.clone());
                }
            }
            Mutation::Expect(fields) => {
                let rule: toml::Table = fields.iter().cloned().collect();
                match root.get_mut("expect") {
                    Some(Value::Array(a)) => a.push(Value::Table(rule)),
                    _ => {
                        root.insert("expect".into(), Value::Array(vec![Value::Table(rule)]));
                    }
                }
            }
            Mutation::Rule(fields) => {
                if let Some(t) = table_at(&mut root, &["preempt"]) {
                    let rule: toml::Table = fields.iter().cloned().collect();
                    match t.get_mut("schedule") {
                        Some(Value::Array(a)) => a.push(Value::Table(rule)),
                        _ => {
                            t.insert("schedule".into(), Value::Array(vec![Value::Table(rule)]));
                        }
                    }
                }
            }
        }
    }
    let mut text = toml::to_string(&root).unwrap_or_default();
    if let Some(c) = cut {
        let mut c = c % (text.len() + 1);
        while !text.is_char_boundary(c) {
            c -= 1;
        }
        text.truncate(c);
    }
    text
}

/// Parses `text` on a thread with a time budget: a hang is a failure.
fn parse_bounded(text: &str) -> Result<Experiment, anyhow::Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = text.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(Experiment::parse(&t, "fuzz.toml", "fuzz"));
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => panic!("parse did not finish within 10 s ({e}) for:\n{text}"),
    }
}

fn check(text: &str) -> Result<(), TestCaseError> {
    match parse_bounded(text) {
        Ok(exp) => {
            prop_assert!(!exp.runs.is_empty(), "no runs from:\n{text}");
            for rc in &exp.runs {
                prop_assert!(rc.validate().is_ok(), "an accepted run does not validate: {:?}\n{text}", rc.validate());
                // Every float the run carries is finite (NaN once became
                // `null` in records and silently dropped runs).
                let json = serde_json::to_string(rc).unwrap();
                prop_assert!(!json.contains("null") || json.contains("\"cpu\":null"), "{json}");
            }
        }
        Err(e) => {
            let Some(ce) = e.downcast_ref::<ConfigError>() else {
                return Err(TestCaseError::fail(format!("not a ConfigError: {e:#}\n{text}")));
            };
            prop_assert!(!ce.key.is_empty() && ce.key != "(config)", "no key: {ce}\n{text}");
            prop_assert_eq!(&ce.file, "fuzz.toml");
            if ce.key != "(matrix)" {
                prop_assert!(ce.line.is_some(), "no line: {}\n{}", ce, text);
                let lines = text.lines().count().max(1);
                prop_assert!(ce.line.unwrap() <= lines + 1, "line {:?} of {}: {}", ce.line, lines, ce);
            }
        }
    }
    Ok(())
}

/// Cases of a property: `default` (what CI runs, in bounded time), or
/// `PROPTEST_CASES` for a longer local run (proptest's own variable, which
/// an explicit `cases` would otherwise override).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(400), ..ProptestConfig::default() })]

    #[test]
    fn any_config_parses_to_valid_runs_or_names_key_and_line(
        muts in proptest::collection::vec(mutation(leaves().len()), 1..4),
        cut in proptest::option::weighted(0.1, any::<usize>()),
    ) {
        check(&render(&muts, cut))?;
    }
}

/// The same property through the binary, for a few fixed mutations: exit 2
/// with `file:line: `key`` on stderr, never a panic.
#[test]
fn the_binary_names_key_and_line_for_bad_values() {
    let leaves = leaves();
    let d = tempfile::tempdir().unwrap();
    let idx = |k: &str| leaves.iter().position(|(n, _)| n == k).unwrap_or_else(|| panic!("no key {k}"));
    let cases = [
        ("torture.irq_prob", Value::Float(f64::NAN)),
        ("vcpus", Value::String("four".into())),
        ("preempt.holder_stall_us", Value::Integer(i64::MAX)),
        ("hypervisor.spurious_wakeup_prob", Value::Float(f64::INFINITY)),
        ("timeout_ms", Value::Float(1e308)),
    ];
    for (key, v) in cases {
        let text = render(&[Mutation::Set(idx(key), v)], None);
        let p = d.path().join("fuzz.toml");
        std::fs::write(&p, &text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pvlock")).arg("run").arg(&p).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert!(err.contains("fuzz.toml:") && err.contains(&format!("`{key}`")), "{key}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

// ------------------------------------------------- valid configs, run --

/// A small, mostly valid config as TOML text: each key drawn from its
/// valid range, a few with a value just past it.
fn runnable() -> impl Strategy<Value = String> {
    use pvlock_abi::{MutexVariant, Variant, Window};
    let variants: Vec<&str> = Variant::ALL.iter().filter(|v| !v.is_kernel()).map(|v| v.name()).collect();
    let workloads = [
        "smoke",
        "torture",
        "mutex-torture",
        "ping-pong",
        "doorbells",
        "panic",
        "fault",
        "bad-pointer",
        "doorbell-fuzz",
    ];
    let top = (
        proptest::sample::select(workloads.to_vec()),
        1u32..=4,
        prop_oneof![9 => 0u32..=2, 1 => Just(3u32)], // host_cpus: 3 is past a 2-CPU machine
        prop_oneof![Just(16u32), Just(32), Just(64)],
        any::<u32>(),
        1u64..=40,
        1u64..=300,
        prop_oneof![Just(1u32), Just(2)],
        prop_oneof![Just(0u64), Just(256), Just(4096)],
    );
    let lock = (
        proptest::sample::select(variants),
        proptest::sample::select(MutexVariant::NAMES.to_vec()),
        prop_oneof![Just(8u32), Just(256), Just(32768)],
    );
    let torture = (1u32..=9, 1u32..=2, 0u64..=2000, 0u64..=2000, prop_oneof![Just(0.0f64), 0.0f64..=1.0]);
    let hv = (
        proptest::sample::select(vec!["checked", "unchecked"]),
        proptest::sample::select(vec!["remembered", "lost-if-not-waiting"]),
        any::<bool>(),
        prop_oneof![Just(0.0f64), 0.0f64..=0.5],
        prop_oneof![Just(20u64), Just(200)],
    );
    let pre = (
        proptest::sample::subsequence(Window::NAMES.to_vec(), 0..=2),
        0.0f64..=1.0,
        prop_oneof![Just(0u64), Just(300), Just(2000)],
        any::<bool>(),
    );
    (top, lock, torture, hv, pre).prop_map(|(t, l, tt, h, p)| {
        let (workload, vcpus, host_cpus, ram, seed, duration, iterations, repeats, trace) = t;
        let windows: Vec<String> = p.0.iter().map(|w| format!("\"{w}\"")).collect();
        let mut s = format!(
            "workload = \"{workload}\"\nvcpus = {vcpus}\nhost_cpus = {host_cpus}\nram_mib = {ram}\nseed = {seed}\n\
             duration_ms = {duration}\niterations = {iterations}\nrepeats = {repeats}\ntrace_entries = {trace}\n\
             timeout_ms = 5000\n\n[lock]\nvariant = \"{}\"\n{}spin_threshold = {}\n\n\
             [torture]\nlocks = {}\nnest = {}\ncs_ns = {}\nthink_ns = {}\nirq_prob = {:?}\n\n\
             [hypervisor]\nwait = \"{}\"\nkick = \"{}\"\nrescue = {}\nspurious_wakeup_prob = {:?}\nstall_timeout_ms = {}\n\n\
             [preempt]\nwindows = [{}]\nwindow_prob = {:?}\nrandom_mean_interval_us = {}\nrandom_stall_us = 100\n",
            l.0,
            // `lock.mutex` only where a run reads it (config::applies).
            if workload == "mutex-torture" { format!("mutex = \"{}\"\n", l.1) } else { String::new() },
            l.2, tt.0, tt.1, tt.2, tt.3, tt.4, h.0, h.1, h.2, h.3, h.4, windows.join(", "), p.1, p.2
        );
        if p.3 && ["panic", "fault", "bad-pointer"].contains(&workload) {
            // Self-tests fail by design: say so.
            s += "\n[[expect]]\nwhere = { workload = [\"panic\", \"fault\", \"bad-pointer\"] }\noutcome = \"failure\"\n";
        }
        s
    })
}

/// Runs `text` through `pvlock run --json` with a wall-clock budget and
/// checks the outcome.
/// `Ok(true)` when it ran, `Ok(false)` when it was refused with key and line.
fn run_checked(dir: &std::path::Path, text: &str) -> Result<bool, TestCaseError> {
    use std::process::{Command, Stdio};
    let cfg = dir.join("run.toml");
    std::fs::write(&cfg, text).unwrap();
    let json = dir.join("run.json");
    let _ = std::fs::remove_file(&json);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvlock"))
        .arg("run")
        .arg(&cfg)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two runs of at most 5 s timeout each, and the process around them.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err(TestCaseError::fail(format!("pvlock run did not end within 20 s:\n{text}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    prop_assert!(!err.contains("panicked"), "{err}\n{text}");
    match status.code() {
        Some(2) => {
            // A clear error: file, line and key (host_cpus past the machine,
            // a mutex-torture limit, RAM too small for the trace...).
            prop_assert!(err.contains("run.toml:") && err.contains('`'), "exit 2 without key and line: {err}\n{text}");
            eprintln!("refused: {}", err.trim());
            return Ok(false);
        }
        Some(code @ (0 | 1)) => {
            let body = std::fs::read(&json)
                .map_err(|e| TestCaseError::fail(format!("no --json file ({e}): {err}\n{text}")))?;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let recs: Vec<pvlock::record::Record> = match v {
                serde_json::Value::Array(a) => a.into_iter().map(|r| serde_json::from_value(r).unwrap()).collect(),
                one => vec![serde_json::from_value(one).unwrap()],
            };
            let exp = Experiment::parse(text, "run.toml", "run").unwrap();
            prop_assert_eq!(recs.len(), exp.runs.len(), "{}", text);
            for r in &recs {
                prop_assert!(r.status != pvlock_vmm::RunStatus::Aborted, "{:?}", r.summary);
                prop_assert!(!r.summary.is_empty());
                prop_assert!(r.acquisitions_per_sec.is_finite() && r.duration_ms.is_finite());
            }
            let all_as_expected = recs.iter().all(|r| r.as_expected());
            prop_assert_eq!(
                code == 0,
                all_as_expected,
                "exit {} for {:?}\n{}",
                code,
                recs.iter().map(|r| (r.status, r.expected)).collect::<Vec<_>>(),
                text
            );
        }
        other => return Err(TestCaseError::fail(format!("exit {other:?} ({status}): {err}\n{text}"))),
    }
    Ok(true)
}

/// The outcomes of one generated run.
#[derive(Debug, Default)]
struct Tally {
    ran: usize,
    refused: usize,
}

/// 16 generated configs, run (a runner, not `proptest!`, so that the
/// test can then insist that most of them really ran on KVM).
#[test]
fn generated_configs_run_on_kvm_to_valid_records_or_name_key_and_line() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tally = std::cell::RefCell::new(Tally::default());
    let n = cases(16);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: n,
        max_shrink_iters: 8,
        ..ProptestConfig::default()
    });
    let result = runner.run(&runnable(), |text| {
        let ran = run_checked(d.path(), &text)?;
        let mut t = tally.borrow_mut();
        if ran {
            t.ran += 1;
        } else {
            t.refused += 1;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let t = tally.into_inner();
    eprintln!("generated configs: {t:?}");
    assert!(t.ran >= (n * 6).div_ceil(16) as usize, "too few generated configs ran: {t:?}");
}
