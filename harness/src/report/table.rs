//! What the per-workload report sections ([`super::sleeping`],
//! [`super::page_wake`]) share: the runs grouped by (subject variant, lock
//! variant, vCPUs, host CPUs), each group's ok runs as estimates, a lock
//! event as a number, and the "mean ± 95%" cell.

use crate::record::Record;
use crate::stats::Estimate;
use pvlock_abi::Workload;
use std::collections::BTreeMap;

/// A group's key: the section's subject variant (mutex, page wake path),
/// the spinlock variant under it, vCPUs, host CPUs.
pub type GroupKey = (String, String, u32, u32);

/// The runs of `workload` in `records`, grouped by [`GroupKey`]; `subject`
/// names a run's subject variant.
pub fn groups(
    records: &[Record],
    workload: Workload,
    subject: impl Fn(&Record) -> &'static str,
) -> BTreeMap<GroupKey, Vec<&Record>> {
    let mut groups: BTreeMap<GroupKey, Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.config.workload == workload) {
        let k = (subject(r).to_string(), r.config.lock.variant.name().to_string(), r.vcpus, r.host_cpus);
        groups.entry(k).or_default().push(r);
    }
    groups
}

/// A group's ok runs, and the estimate over them of a per-run figure
/// (runs without the figure left out).
pub struct OkRuns<'r> {
    pub ok: Vec<&'r Record>,
}

impl<'r> OkRuns<'r> {
    pub fn of(runs: &[&'r Record]) -> Self {
        Self { ok: runs.iter().copied().filter(|r| r.status.is_ok()).collect() }
    }
    pub fn estimate(&self, f: &dyn Fn(&Record) -> Option<f64>) -> Option<Estimate> {
        Estimate::of(&self.ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    }
}

/// A lock event's total in a record (0 if the run did not count it).
pub fn lock_event(r: &Record, name: &str) -> f64 {
    r.lock_events.get(name).copied().unwrap_or(0) as f64
}

/// "mean ± 95%" with `d` decimals ("-" without a value, the mean alone
/// from a single run).
pub fn cell(x: Option<Estimate>, d: usize) -> String {
    match x {
        None => "-".into(),
        Some(Estimate { mean, ci95: Some(c), .. }) => format!("{mean:.d$} ± {c:.d$}"),
        Some(Estimate { mean, .. }) => format!("{mean:.d$}"),
    }
}
