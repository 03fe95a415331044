//! Comparing two result sets group by group (same experiment, variant,
//! vCPUs, host CPUs and other keys; repeats pooled).
//!
//! A change in acquisitions/s or p99 latency is flagged with Welch's
//! t-test at 95%, not Student's pooled-variance test: the two sides come
//! from different builds, often different hosts or different times on a
//! shared host, so there is no reason to assume equal variances — an
//! overcommitted run on a noisy host spreads far more than one on a quiet
//! host. Welch's test does not assume it, costs nothing when the variances
//! happen to be equal, and its Welch–Satterthwaite degrees of freedom keep
//! the test honest when the repeat counts differ. Each side needs at least
//! two ok repeats to estimate its variance; otherwise the row says
//! "n too small" rather than guessing.

use super::load::GroupKey;
use super::markdown::num;
use super::summary::{summarize_all, GroupSummary, STATUSES};
use crate::record::Record;
use crate::stats::{t95, welch};
use pvlock_vmm::RunStatus;
use std::fmt::Write;

/// The verdict on one metric of one group.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// |t| exceeds the 95% critical value.
    Changed { t: f64, df: f64, critical: f64 },
    /// Within noise at 95%.
    Unchanged { t: f64, df: f64, critical: f64 },
    /// Fewer than two ok repeats on a side.
    NTooSmall,
}

impl Verdict {
    pub fn is_changed(&self) -> bool {
        matches!(self, Verdict::Changed { .. })
    }
}

/// Welch's test at 95%. The critical value is `t95` at the
/// Welch–Satterthwaite df rounded down (the conservative side).
pub fn welch_verdict(a: &[f64], b: &[f64]) -> Verdict {
    match welch(a, b) {
        None => Verdict::NTooSmall,
        Some((t, df)) => {
            let critical = t95((df.floor() as usize).max(1));
            if t.abs() > critical {
                Verdict::Changed { t, df, critical }
            } else {
                Verdict::Unchanged { t, df, critical }
            }
        }
    }
}

/// One metric compared.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDiff {
    pub metric: &'static str,
    pub n_a: usize,
    pub n_b: usize,
    pub mean_a: Option<f64>,
    pub mean_b: Option<f64>,
    pub verdict: Verdict,
}

/// One group present on both sides.
#[derive(Debug, Clone)]
pub struct GroupDiff {
    pub key: GroupKey,
    /// Runs per status, a then b, for statuses present on either side.
    pub status_a: Vec<(RunStatus, usize)>,
    pub status_b: Vec<(RunStatus, usize)>,
    /// The status mix changed (e.g. ok -> hang).
    pub status_changed: bool,
    pub metrics: Vec<MetricDiff>,
}

/// The comparison of two result sets.
#[derive(Debug, Clone, Default)]
pub struct DiffReport {
    pub groups: Vec<GroupDiff>,
    pub only_in_a: Vec<GroupKey>,
    pub only_in_b: Vec<GroupKey>,
}

fn ok_values(records: &[Record], key: &GroupKey, f: fn(&Record) -> Option<f64>) -> Vec<f64> {
    records.iter().filter(|r| r.status.is_ok() && &GroupKey::of(r) == key).filter_map(f).collect()
}

/// The statuses present, in report order.
fn statuses(s: &GroupSummary) -> Vec<(RunStatus, usize)> {
    STATUSES.iter().map(|(st, _)| (*st, s.count(*st))).filter(|(_, n)| *n > 0).collect()
}

/// Compares `b` against `a` (the baseline), group by group.
pub fn diff(a: &[Record], b: &[Record]) -> DiffReport {
    let (sa, sb) = (summarize_all(a), summarize_all(b));
    let mut out = DiffReport::default();
    for ga in &sa {
        let Some(gb) = sb.iter().find(|g| g.key == ga.key) else {
            out.only_in_a.push(ga.key.clone());
            continue;
        };
        let metric = |metric: &'static str, f: fn(&Record) -> Option<f64>| {
            let (xa, xb) = (ok_values(a, &ga.key, f), ok_values(b, &ga.key, f));
            let mean = |x: &[f64]| (!x.is_empty()).then(|| x.iter().sum::<f64>() / x.len() as f64);
            MetricDiff {
                metric,
                n_a: xa.len(),
                n_b: xb.len(),
                mean_a: mean(&xa),
                mean_b: mean(&xb),
                verdict: welch_verdict(&xa, &xb),
            }
        };
        let (st_a, st_b) = (statuses(ga), statuses(gb));
        out.groups.push(GroupDiff {
            key: ga.key.clone(),
            status_changed: st_a != st_b,
            status_a: st_a,
            status_b: st_b,
            metrics: vec![
                metric("acquisitions/s", |r| Some(r.acquisitions_per_sec)),
                metric("p99 latency ns", |r| (r.latency_ns.count > 0).then_some(r.latency_ns.p99 as f64)),
            ],
        });
    }
    out.only_in_b = sb.iter().filter(|g| !sa.iter().any(|x| x.key == g.key)).map(|g| g.key.clone()).collect();
    out
}

fn status_text(s: &[(RunStatus, usize)]) -> String {
    if s.is_empty() {
        return "none".into();
    }
    s.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

fn label(k: &GroupKey) -> String {
    format!("{} · {} @ {}", k.name, k.variant, k.setting())
}

impl DiffReport {
    /// Whether anything is flagged.
    pub fn any_change(&self) -> bool {
        self.groups.iter().any(|g| g.status_changed || g.metrics.iter().any(|m| m.verdict.is_changed()))
    }

    /// Markdown: one table of metrics, then status changes and unmatched
    /// groups.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("# pvlock diff (A = baseline, B = new)\n\n");
        out.push_str(
            "Metrics are over ok runs; a change is flagged when Welch's t-test rejects equal \
             means at 95% (two-sided; needs at least two ok runs on each side).\n\n",
        );
        out.push_str("| group | metric | A mean (n) | B mean (n) | change | verdict |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for g in &self.groups {
            for m in &g.metrics {
                let change = match (m.mean_a, m.mean_b) {
                    (Some(a), Some(b)) if a != 0.0 => format!("{:+.1}%", (b - a) / a * 100.0),
                    _ => "–".into(),
                };
                let verdict = match &m.verdict {
                    Verdict::Changed { t, df, critical } => {
                        format!("**CHANGED** (t = {t:.2}, df = {df:.1}, |t| > {critical:.3})")
                    }
                    Verdict::Unchanged { t, df, critical } => {
                        format!("within noise (t = {t:.2}, df = {df:.1}, |t| ≤ {critical:.3})")
                    }
                    Verdict::NTooSmall => "n too small".into(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} ({}) | {} ({}) | {change} | {verdict} |",
                    label(&g.key).replace('|', "\\|"),
                    m.metric,
                    num(m.mean_a, 1),
                    m.n_a,
                    num(m.mean_b, 1),
                    m.n_b
                );
            }
        }
        let changed: Vec<&GroupDiff> = self.groups.iter().filter(|g| g.status_changed).collect();
        out.push_str("\n## Status changes\n\n");
        if changed.is_empty() {
            out.push_str("None: every matching group has the same run outcomes.\n");
        }
        for g in changed {
            let _ =
                writeln!(out, "- **{}**: {} -> {}", label(&g.key), status_text(&g.status_a), status_text(&g.status_b));
        }
        if !self.only_in_a.is_empty() || !self.only_in_b.is_empty() {
            out.push_str("\n## Unmatched groups\n\n");
            for k in &self.only_in_a {
                let _ = writeln!(out, "- only in A: {}", label(k));
            }
            for k in &self.only_in_b {
                let _ = writeln!(out, "- only in B: {}", label(k));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_matches_a_hand_computation() {
        // a: mean 2, var 1 (n 3); b: mean 5, var 4 (n 3).
        // se2 = 1/3 + 4/3 = 5/3; t = 3 / sqrt(5/3) = 2.3238
        // df = (5/3)^2 / ((1/9)/2 + (16/9)/2) = (25/9) / (17/18) = 2.9412
        let (t, df) = welch(&[1.0, 2.0, 3.0], &[3.0, 5.0, 7.0]).unwrap();
        assert!((t - 2.32379).abs() < 1e-4, "{t}");
        assert!((df - 2.94118).abs() < 1e-4, "{df}");
        // df 2 -> critical 4.303: not significant.
        assert!(!welch_verdict(&[1.0, 2.0, 3.0], &[3.0, 5.0, 7.0]).is_changed());
        assert_eq!(welch_verdict(&[1.0], &[1.0, 2.0]), Verdict::NTooSmall);
    }

    #[test]
    fn zero_variance_differs_only_if_means_differ() {
        assert!(welch_verdict(&[2.0, 2.0], &[3.0, 3.0]).is_changed());
        assert!(!welch_verdict(&[2.0, 2.0], &[2.0, 2.0]).is_changed());
    }
}
