//! The numbers of one group, shared by the markdown, CSV, plots and diff.
//!
//! Rates and latencies (acquisitions/s, p50/p99, kicks per 1000
//! acquisitions) are averaged over the group's `ok` runs only: a run that
//! hung or crashed stopped at an arbitrary point, so its rate says nothing.
//! Event counts (spurious wakeups, stolen kicks, stale hash entries, double
//! hashes, rescues) are summed over every run of the group: they are valid
//! up to wherever the run stopped, and the failed runs are the interesting
//! ones.

use super::load::{Group, GroupKey};
use crate::record::Record;
use crate::stats::Estimate;
use pvlock_vmm::RunStatus;
use std::collections::BTreeMap;

/// Statuses in report order, with their column titles.
pub const STATUSES: &[(&str, &str)] = &[
    ("ok", "ok"),
    ("hang", "hang"),
    ("guest-crash", "guest-crash (BUG)"),
    ("failed", "failed (violation)"),
    ("aborted", "aborted"),
];

/// Hang kinds (the `kind` of a hang record's `failure`) given their own
/// CSV column; any other kind is counted in `hang_other`.
pub const HANG_KINDS: &[&str] = &["blocked-wait", "timeout"];

/// Everything the report says about one group.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub key: GroupKey,
    pub runs: usize,
    /// Runs per status, for every status in [`STATUSES`] (and any other
    /// status found).
    pub status: BTreeMap<String, usize>,
    /// Acquisitions per second over ok runs.
    pub acq_per_sec: Option<Estimate>,
    /// Run-level p50 acquisition latency, ns, over ok runs.
    pub p50_ns: Option<Estimate>,
    /// Run-level p99 acquisition latency, ns, over ok runs.
    pub p99_ns: Option<Estimate>,
    /// (pv_kick_unlock + pv_kick_wake) per 1000 acquisitions, over ok runs
    /// with acquisitions.
    pub kicks_per_1000: Option<Estimate>,
    /// Sums over all runs.
    pub spurious_wakeups: u64,
    pub kicked_but_stolen: u64,
    pub stale_entries: u64,
    pub double_hash: u64,
    /// VMM `rescues` (missed wakeups rescued), summed over all runs.
    pub rescues: u64,
    /// Mean of `hash.hops_per_insert` over runs with inserts.
    pub hops_per_insert: Option<Estimate>,
    /// Hang records by `failure.kind` ("unknown" when absent).
    pub hang_kinds: BTreeMap<String, usize>,
}

impl GroupSummary {
    pub fn count(&self, status: &str) -> usize {
        self.status.get(status).copied().unwrap_or(0)
    }

    /// Runs whose status is not ok.
    pub fn not_ok(&self) -> usize {
        self.runs - self.count("ok")
    }

    pub fn hang_kind(&self, kind: &str) -> usize {
        self.hang_kinds.get(kind).copied().unwrap_or(0)
    }

    /// Hangs whose kind has no column of its own.
    pub fn hang_other(&self) -> usize {
        self.hang_kinds.iter().filter(|(k, _)| !HANG_KINDS.contains(&k.as_str())).map(|(_, n)| n).sum()
    }

    /// `blocked-wait 3, timeout 1`, or empty.
    pub fn hang_kinds_text(&self) -> String {
        self.hang_kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    }

    /// Row label: the variant, then the setting.
    pub fn label(&self) -> String {
        format!("{} @ {}", self.key.variant, self.key.setting())
    }
}

/// Sum of `pv_kick_unlock` and `pv_kick_wake`.
pub fn kicks(r: &Record) -> u64 {
    let ev = |k: &str| r.lock_events.get(k).copied().unwrap_or(0);
    ev("pv_kick_unlock") + ev("pv_kick_wake")
}

/// The `kind` of a record's failure object, if any.
pub fn failure_kind(r: &Record) -> Option<String> {
    r.failure.as_ref().map(|f| f.kind().to_string())
}

pub fn summarize(g: &Group<'_>) -> GroupSummary {
    let mut status: BTreeMap<String, usize> = STATUSES.iter().map(|(s, _)| (s.to_string(), 0)).collect();
    let mut hang_kinds = BTreeMap::new();
    for r in &g.records {
        *status.entry(r.status.as_str().to_string()).or_insert(0) += 1;
        if r.status == RunStatus::Hang {
            let kind = failure_kind(r).unwrap_or_else(|| "unknown".into());
            *hang_kinds.entry(kind).or_insert(0) += 1;
        }
    }
    let ok: Vec<&Record> = g.records.iter().copied().filter(|r| r.status.is_ok()).collect();
    let over = |f: &dyn Fn(&Record) -> Option<f64>| -> Option<Estimate> {
        Estimate::of(&ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    let sum = |f: &dyn Fn(&Record) -> u64| -> u64 { g.records.iter().map(|r| f(r)).sum() };
    let ev = |r: &Record, k: &str| r.lock_events.get(k).copied().unwrap_or(0);
    GroupSummary {
        key: g.key.clone(),
        runs: g.records.len(),
        status,
        acq_per_sec: over(&|r| Some(r.acquisitions_per_sec)),
        p50_ns: over(&|r| (r.latency_ns.count > 0).then_some(r.latency_ns.p50 as f64)),
        p99_ns: over(&|r| (r.latency_ns.count > 0).then_some(r.latency_ns.p99 as f64)),
        kicks_per_1000: over(&|r| (r.acquisitions > 0).then(|| kicks(r) as f64 * 1000.0 / r.acquisitions as f64)),
        spurious_wakeups: sum(&|r| ev(r, "pv_spurious_wakeup")),
        kicked_but_stolen: sum(&|r| ev(r, "kicked_but_stolen")),
        stale_entries: sum(&|r| r.hash.stale_entries),
        double_hash: sum(&|r| r.hash.double_hash),
        rescues: sum(&|r| r.vmm.get("rescues").copied().unwrap_or(0)),
        hops_per_insert: Estimate::of(
            &g.records.iter().filter(|r| r.hash.inserts > 0).map(|r| r.hash.hops_per_insert).collect::<Vec<_>>(),
        ),
        hang_kinds,
    }
}

/// Summaries of every group, in [`super::load::group`] order.
pub fn summarize_all(records: &[Record]) -> Vec<GroupSummary> {
    super::load::group(records).iter().map(summarize).collect()
}
