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
use pvlock_abi::{LockEvent, VmmCounter};
use pvlock_vmm::{FailureKind, GuestFailure, RunStatus};
use std::collections::BTreeMap;

/// Statuses in report order, with their column titles.
pub const STATUSES: &[(RunStatus, &str)] = &[
    (RunStatus::Ok, "ok"),
    (RunStatus::Hang, "hang"),
    (RunStatus::GuestCrash, "guest-crash (BUG)"),
    (RunStatus::Failed, "failed (violation)"),
    (RunStatus::Aborted, "aborted"),
];

/// Hang kinds (the kind of a hang record's `failure`) given their own CSV
/// column; any other kind is counted in `hang_other`.
pub const HANG_KINDS: &[FailureKind] = &[FailureKind::BlockedWait, FailureKind::Timeout];

/// Everything the report says about one group.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub key: GroupKey,
    pub runs: usize,
    /// Runs per status, for every status in [`STATUSES`].
    pub status: BTreeMap<RunStatus, usize>,
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
    /// Hang records by the kind of their failure (`None`: a hang record
    /// without one, "unknown" in the report).
    pub hang_kinds: BTreeMap<Option<FailureKind>, usize>,
}

impl GroupSummary {
    pub fn count(&self, status: RunStatus) -> usize {
        self.status.get(&status).copied().unwrap_or(0)
    }

    /// Runs whose status is not ok.
    pub fn not_ok(&self) -> usize {
        self.runs - self.count(RunStatus::Ok)
    }

    pub fn hang_kind(&self, kind: FailureKind) -> usize {
        self.hang_kinds.get(&Some(kind)).copied().unwrap_or(0)
    }

    /// Hangs whose kind has no column of its own.
    pub fn hang_other(&self) -> usize {
        self.hang_kinds.iter().filter(|(k, _)| !k.is_some_and(|k| HANG_KINDS.contains(&k))).map(|(_, n)| n).sum()
    }

    /// `blocked-wait 3, timeout 1`, or empty; by name.
    pub fn hang_kinds_text(&self) -> String {
        let mut kinds: Vec<(&str, usize)> =
            self.hang_kinds.iter().map(|(k, n)| (k.map_or("unknown", FailureKind::name), *n)).collect();
        kinds.sort();
        kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    }

    /// Row label: the variant, then the setting.
    pub fn label(&self) -> String {
        format!("{} @ {}", self.key.variant, self.key.setting())
    }
}

/// A lock event's count in a record (0 when absent).
fn event(r: &Record, e: LockEvent) -> u64 {
    r.lock_events.get(e.name()).copied().unwrap_or(0)
}

/// Sum of `pv_kick_unlock` and `pv_kick_wake`.
pub fn kicks(r: &Record) -> u64 {
    event(r, LockEvent::PvKickUnlock) + event(r, LockEvent::PvKickWake)
}

pub fn summarize(g: &Group<'_>) -> GroupSummary {
    let mut status: BTreeMap<RunStatus, usize> = STATUSES.iter().map(|(s, _)| (*s, 0)).collect();
    let mut hang_kinds = BTreeMap::new();
    for r in &g.records {
        *status.entry(r.status).or_insert(0) += 1;
        if r.status == RunStatus::Hang {
            *hang_kinds.entry(r.failure.as_ref().map(GuestFailure::kind)).or_insert(0) += 1;
        }
    }
    let ok: Vec<&Record> = g.records.iter().copied().filter(|r| r.status.is_ok()).collect();
    let over = |f: &dyn Fn(&Record) -> Option<f64>| -> Option<Estimate> {
        Estimate::of(&ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    let sum = |f: &dyn Fn(&Record) -> u64| -> u64 { g.records.iter().map(|r| f(r)).sum() };
    GroupSummary {
        key: g.key.clone(),
        runs: g.records.len(),
        status,
        acq_per_sec: over(&|r| Some(r.acquisitions_per_sec)),
        p50_ns: over(&|r| (r.latency_ns.count > 0).then_some(r.latency_ns.p50 as f64)),
        p99_ns: over(&|r| (r.latency_ns.count > 0).then_some(r.latency_ns.p99 as f64)),
        kicks_per_1000: over(&|r| (r.acquisitions > 0).then(|| kicks(r) as f64 * 1000.0 / r.acquisitions as f64)),
        spurious_wakeups: sum(&|r| event(r, LockEvent::PvSpuriousWakeup)),
        kicked_but_stolen: sum(&|r| event(r, LockEvent::KickedButStolen)),
        stale_entries: sum(&|r| r.hash.stale_entries),
        double_hash: sum(&|r| r.hash.double_hash),
        rescues: sum(&|r| r.vmm.get(VmmCounter::Rescues.name()).copied().unwrap_or(0)),
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
