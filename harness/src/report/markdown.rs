//! `report.md`: a header, one table per question, and a "What differs"
//! paragraph generated only from the numbers in the tables.

use super::load::{Loaded, SkippedLine};
use super::summary::{GroupSummary, STATUSES};
use super::EnvInfo;
use crate::record::Record;
use crate::stats::Estimate;
use pvlock_vmm::RunStatus;
use std::fmt::Write;

/// Formats a float with `decimals` places; `–` for none.
pub(crate) fn num(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".into(),
    }
}

/// `mean ± half-width (n=k)`, or `mean (n=1)`, or `–`.
pub(crate) fn est(e: Option<&Estimate>, decimals: usize) -> String {
    match e {
        None => "–".into(),
        Some(e) => match e.ci95 {
            Some(ci) => format!("{} ± {} (n={})", num(Some(e.mean), decimals), num(Some(ci), decimals), e.n),
            None => format!("{} (n={})", num(Some(e.mean), decimals), e.n),
        },
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}|", head.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

/// Experiment names in order of first appearance.
fn names(sums: &[GroupSummary]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in sums {
        if !out.contains(&s.key.name) {
            out.push(s.key.name.clone());
        }
    }
    out
}

fn row_head(s: &GroupSummary) -> Vec<String> {
    vec![s.key.variant.clone(), s.key.setting()]
}

/// The main table (outcomes, throughput, latency) of one experiment.
fn outcomes_table(out: &mut String, sums: &[&GroupSummary]) {
    let mut head = vec!["variant", "setting", "runs"];
    head.extend(STATUSES.iter().map(|(_, t)| *t));
    head.extend(["acquisitions/s (mean ± 95%, ok runs)", "p50 ns (mean)", "p99 ns (mean ± 95%)"]);
    let rows: Vec<Vec<String>> = sums
        .iter()
        .map(|s| {
            let mut r = row_head(s);
            r.push(s.runs.to_string());
            r.extend(STATUSES.iter().map(|(st, _)| s.count(*st).to_string()));
            r.push(est(s.acq_per_sec.as_ref(), 0));
            r.push(num(s.p50_ns.map(|e| e.mean), 0));
            r.push(est(s.p99_ns.as_ref(), 0));
            r
        })
        .collect();
    table(out, &head, &rows);
}

/// The main table(s) alone: what `pvlock report` prints.
pub fn main_table(sums: &[GroupSummary]) -> String {
    let mut out = String::new();
    for name in names(sums) {
        let mine: Vec<&GroupSummary> = sums.iter().filter(|s| s.key.name == name).collect();
        let _ = writeln!(out, "{name}:\n");
        outcomes_table(&mut out, &mine);
        out.push('\n');
    }
    out
}

fn skipped_text(skipped: &[SkippedLine]) -> String {
    let lines: Vec<String> = skipped.iter().map(|s| format!("line {} ({})", s.line, s.error)).collect();
    format!(
        "{} malformed or truncated line{} of runs.jsonl skipped: {}",
        skipped.len(),
        if skipped.len() == 1 { "" } else { "s" },
        lines.join("; ")
    )
}

/// `report` with the text of its `partial` marker as a section after the
/// header (before the first table), so that what is missing is read first.
pub fn with_partial_note(report: &str, note: &str) -> String {
    let section = format!("\n## What is missing (partial result)\n\n```\n{}\n```\n", note.trim_end());
    match report.find("\nRates and latencies") {
        Some(at) => format!("{}{section}{}", &report[..at], &report[at..]),
        None => format!("{report}{section}"),
    }
}

/// How the runs met their `[[expect]]` rules, when any run has one: how
/// many expected failures happened, and every run that did not end as
/// expected (an expected failure that did not happen, or a failure that
/// was not expected), by run key.
pub fn expectations_text(records: &[Record]) -> Option<String> {
    let expecting: Vec<&Record> = records.iter().filter(|r| !r.expected.is_ok()).collect();
    if expecting.is_empty() {
        return None;
    }
    let met = expecting.iter().filter(|r| r.as_expected()).count();
    let missed: Vec<&Record> = records.iter().filter(|r| !r.as_expected()).collect();
    let mut line = format!(
        "{} of {} run{} expected to fail did",
        met,
        expecting.len(),
        if expecting.len() == 1 { "" } else { "s" }
    );
    if missed.is_empty() {
        line += "; every run ended as expected";
    } else {
        let list: Vec<String> = missed
            .iter()
            .map(|r| {
                let key = if r.run_key.is_empty() { r.name.as_str() } else { r.run_key.as_str() };
                format!("{key}: {} (expected {})", r.status.as_str(), r.expected.name())
            })
            .collect();
        line += &format!("; NOT AS EXPECTED ({}): {}", missed.len(), list.join("; "));
    }
    Some(line)
}

/// Renders `report.md`.
pub fn render(loaded: &Loaded, sums: &[GroupSummary], env: &EnvInfo, partial: bool) -> String {
    let records = &loaded.records;
    let mut out = String::new();
    let names = names(sums);
    let title = if names.is_empty() { "(no records)".to_string() } else { names.join(", ") };
    let _ = writeln!(out, "# pvlock report: {title}\n");
    let aborted = records.iter().filter(|r| r.status == RunStatus::Aborted).count();
    let mut why = Vec::new();
    if partial {
        why.push("the matrix did not finish (`partial` marker)".to_string());
    }
    if aborted > 0 {
        why.push(format!("{aborted} aborted run{}", if aborted == 1 { "" } else { "s" }));
    }
    let state = if why.is_empty() { "complete".to_string() } else { format!("PARTIAL: {}", why.join("; ")) };
    let _ = writeln!(out, "- Runs: {} ({state})", records.len());
    if !loaded.skipped.is_empty() {
        let _ = writeln!(out, "- Skipped: {}", skipped_text(&loaded.skipped));
    }
    if let Some(line) = expectations_text(records) {
        let _ = writeln!(out, "- Expected outcomes: {line}");
    }
    if !env.command.is_empty() {
        let _ = writeln!(out, "- Produced by: `{}`", env.command);
    }
    let _ = writeln!(out, "- Host CPU: {}", env.host_cpu_model);
    let _ = writeln!(out, "- Kernel: {}", env.kernel);
    let _ = writeln!(out, "- KVM: {}", env.kvm_flavour);
    let _ = writeln!(out, "- pvlock: {}", env.pvlock_version);
    let mut versions: Vec<&str> = records.iter().map(|r| r.pvlock_version.as_str()).collect();
    versions.sort_unstable();
    versions.dedup();
    if !versions.is_empty() && versions != [env.pvlock_version.as_str()] {
        let _ = writeln!(out, "- Records written by pvlock: {}", versions.join(", "));
    }
    out.push_str(
        "\nRates and latencies are means over a group's ok runs, with the half-width of a 95% \
         interval (Student's t over repeats) where there are at least two; counts are sums over \
         all runs of the group. A group is one variant at one setting; repeats differ only in \
         their seed.\n",
    );

    for name in &names {
        let mine: Vec<&GroupSummary> = sums.iter().filter(|s| &s.key.name == name).collect();
        let _ = writeln!(out, "\n## {name}\n");
        let _ = writeln!(out, "### Does it finish, how fast?\n");
        outcomes_table(&mut out, &mine);

        let _ = writeln!(out, "\n### How often does it kick and wake for nothing?\n");
        let rows: Vec<Vec<String>> = mine
            .iter()
            .map(|s| {
                let mut r = row_head(s);
                r.push(est(s.kicks_per_1000.as_ref(), 2));
                r.push(s.spurious_wakeups.to_string());
                r.push(s.kicked_but_stolen.to_string());
                r
            })
            .collect();
        table(
            &mut out,
            &[
                "variant",
                "setting",
                "kicks per 1000 acquisitions (ok runs)",
                "spurious wakeups (sum)",
                "kicked but stolen (sum)",
            ],
            &rows,
        );

        let _ = writeln!(out, "\n### How does the PV hash table behave?\n");
        let rows: Vec<Vec<String>> = mine
            .iter()
            .map(|s| {
                let mut r = row_head(s);
                r.push(est(s.hops_per_insert.as_ref(), 3));
                r.push(s.stale_entries.to_string());
                r.push(s.double_hash.to_string());
                r
            })
            .collect();
        table(
            &mut out,
            &[
                "variant",
                "setting",
                "hash hops per insert (runs with inserts)",
                "stale entries (sum)",
                "double hashes (sum)",
            ],
            &rows,
        );

        let _ = writeln!(out, "\n### Are wakeups missed?\n");
        let rows: Vec<Vec<String>> = mine
            .iter()
            .map(|s| {
                let mut r = row_head(s);
                r.push(s.rescues.to_string());
                r.push(s.count(RunStatus::Hang).to_string());
                let k = s.hang_kinds_text();
                r.push(if k.is_empty() { "–".into() } else { k });
                r
            })
            .collect();
        table(
            &mut out,
            &["variant", "setting", "rescued by the VMM (sum of `rescues`)", "hangs", "hangs by kind"],
            &rows,
        );

        let _ = writeln!(out, "\n### What differs\n");
        for line in what_differs(&mine) {
            let _ = writeln!(out, "- {line}");
        }
        let theirs: Vec<&Record> = records.iter().filter(|r| &r.name == name).collect();
        failures_section(&mut out, &theirs);
    }
    if records.is_empty() {
        out.push_str("\nNo records.\n");
    }
    out
}

/// Records shown in full (diagrams, vCPU locations) per experiment.
const FAILURES_SHOWN: usize = 3;

fn record_label(r: &Record) -> String {
    let key = if r.run_key.is_empty() { String::new() } else { format!("{}, ", r.run_key) };
    format!("{key}seed {}", r.config.seed)
}

/// The races drawn from the runs' traces, and where each vCPU was in runs
/// that did not end ok (only records that carry them: a section of its own
/// so that reports of clean matrices are unchanged).
fn failures_section(out: &mut String, records: &[&Record]) {
    let drawn: Vec<&&Record> = records.iter().filter(|r| r.diagnosis.race_diagram.is_some()).collect();
    if !drawn.is_empty() {
        let _ = writeln!(out, "\n### Races, drawn from the runs' traces\n");
        for r in drawn.iter().take(FAILURES_SHOWN) {
            let _ = writeln!(out, "{} ({}):\n", record_label(r), r.status);
            let _ = writeln!(out, "```\n{}```", r.diagnosis.race_diagram.as_deref().unwrap_or_default());
        }
        if drawn.len() > FAILURES_SHOWN {
            let _ = writeln!(out, "\n({} more in runs.jsonl, `diagnosis.race_diagram`.)", drawn.len() - FAILURES_SHOWN);
        }
    }
    let dumped: Vec<&&Record> = records.iter().filter(|r| !r.diagnosis.vcpus.is_empty()).collect();
    if !dumped.is_empty() {
        let _ = writeln!(out, "\n### Where the vCPUs were when a run did not end ok\n");
        for r in dumped.iter().take(FAILURES_SHOWN) {
            let _ = writeln!(out, "- {} ({}): {}", record_label(r), r.status, r.summary);
            for v in &r.diagnosis.vcpus {
                let at = &v["location"];
                let place = match (at["function"].as_str(), at["file"].as_str(), at["line"].as_u64()) {
                    (Some(f), Some(file), Some(line)) => format!("{f} ({file}:{line})"),
                    _ => "unknown".to_string(),
                };
                let _ = writeln!(
                    out,
                    "  - vCPU {}: {}, lock {:#x}: {place}",
                    v["cpu"],
                    v["phase"].as_str().unwrap_or("?"),
                    v["lock"].as_u64().unwrap_or(0)
                );
            }
        }
        if dumped.len() > FAILURES_SHOWN {
            let _ = writeln!(out, "\n({} more in runs.jsonl, `diagnosis.vcpus`.)", dumped.len() - FAILURES_SHOWN);
        }
    }
}

fn runs(n: usize) -> String {
    format!("{n} run{}", if n == 1 { "" } else { "s" })
}

/// How two estimates compare at 95%.
fn separation(a: &Estimate, b: &Estimate) -> &'static str {
    match a.overlaps(b) {
        Some(true) => "95% intervals overlap: not distinguishable at 95%",
        Some(false) => "95% intervals do not overlap",
        None => "n too small for a 95% interval",
    }
}

/// Statements that follow from the numbers alone, setting by setting.
pub fn what_differs(sums: &[&GroupSummary]) -> Vec<String> {
    let mut out = Vec::new();
    let mut settings: Vec<String> = Vec::new();
    for s in sums {
        let k = s.key.setting();
        if !settings.contains(&k) {
            settings.push(k);
        }
    }
    let total: usize = sums.iter().map(|s| s.runs).sum();
    let not_ok: usize = sums.iter().map(|s| s.not_ok()).sum();
    if not_ok == 0 {
        out.push(format!("All {} ended ok.", runs(total)));
    }
    for setting in &settings {
        let here: Vec<&GroupSummary> = sums.iter().copied().filter(|s| &s.key.setting() == setting).collect();

        // Outcomes.
        if here.iter().any(|s| s.not_ok() > 0) {
            let parts: Vec<String> = here
                .iter()
                .map(|s| {
                    let bad: Vec<String> = STATUSES
                        .iter()
                        .filter(|(st, _)| !st.is_ok() && s.count(*st) > 0)
                        .map(|(st, _)| {
                            let n = s.count(*st);
                            if *st == RunStatus::Hang {
                                format!("{n} {st} ({})", s.hang_kinds_text())
                            } else {
                                format!("{n} {st}")
                            }
                        })
                        .collect();
                    if bad.is_empty() {
                        format!("{}: 0 of {} not ok", s.key.variant, runs(s.runs))
                    } else {
                        format!("{}: {} of {} not ok: {}", s.key.variant, s.not_ok(), runs(s.runs), bad.join(", "))
                    }
                })
                .collect();
            out.push(format!("At {setting}: {}.", parts.join("; ")));
        }

        // Throughput: best against runner-up.
        let mut tp: Vec<(&GroupSummary, Estimate)> =
            here.iter().filter_map(|s| s.acq_per_sec.map(|e| (*s, e))).collect();
        tp.sort_by(|a, b| b.1.mean.total_cmp(&a.1.mean));
        if tp.len() >= 2 {
            let (best, be) = tp[0];
            let (second, se) = tp[1];
            let ratio = if se.mean > 0.0 { format!(" ({:.2}×)", be.mean / se.mean) } else { String::new() };
            let mut line = format!(
                "{} has the highest throughput at {setting}: {}/s vs {}/s for {}{ratio}; {}",
                best.key.variant,
                num(Some(be.mean), 0),
                num(Some(se.mean), 0),
                second.key.variant,
                separation(&be, &se)
            );
            if tp.len() >= 3 {
                let (worst, we) = tp[tp.len() - 1];
                let _ = write!(line, "; lowest: {} at {}/s", worst.key.variant, num(Some(we.mean), 0));
            }
            line.push('.');
            out.push(line);
        }

        // Tail latency: lowest p99 against the next.
        let mut lat: Vec<(&GroupSummary, Estimate)> = here.iter().filter_map(|s| s.p99_ns.map(|e| (*s, e))).collect();
        lat.sort_by(|a, b| a.1.mean.total_cmp(&b.1.mean));
        if lat.len() >= 2 {
            let (best, be) = lat[0];
            let (second, se) = lat[1];
            out.push(format!(
                "{} has the lowest p99 latency at {setting}: {} ns vs {} ns for {}; {}.",
                best.key.variant,
                num(Some(be.mean), 0),
                num(Some(se.mean), 0),
                second.key.variant,
                separation(&be, &se)
            ));
        }

        // Kicks.
        let mut k: Vec<(&GroupSummary, Estimate)> =
            here.iter().filter_map(|s| s.kicks_per_1000.map(|e| (*s, e))).collect();
        k.sort_by(|a, b| a.1.mean.total_cmp(&b.1.mean));
        if k.len() >= 2 {
            let (lo, le) = k[0];
            let (hi, he) = k[k.len() - 1];
            out.push(format!(
                "Kicks per 1000 acquisitions at {setting} range from {} ({}) to {} ({}).",
                num(Some(le.mean), 2),
                lo.key.variant,
                num(Some(he.mean), 2),
                hi.key.variant
            ));
        }

        // Counters that should be zero.
        for (what, get) in [
            ("Stale hash entries", (|s: &GroupSummary| s.stale_entries) as fn(&GroupSummary) -> u64),
            ("Double hashes", |s| s.double_hash),
            ("Missed wakeups rescued by the VMM", |s| s.rescues),
        ] {
            let parts: Vec<String> = here
                .iter()
                .filter(|s| get(s) > 0)
                .map(|s| format!("{} {} over {}", s.key.variant, get(s), runs(s.runs)))
                .collect();
            if !parts.is_empty() {
                out.push(format!("{what} at {setting}: {}.", parts.join("; ")));
            }
        }
    }
    out
}

/// `true` if any record was aborted (which makes a result set partial).
pub fn any_aborted(records: &[Record]) -> bool {
    records.iter().any(|r| r.status == RunStatus::Aborted)
}
