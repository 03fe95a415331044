//! `summary.csv`: one row per group, the numbers of `report.md` in a
//! stable column order. Missing values are empty cells.

use super::summary::{GroupSummary, HANG_KINDS, STATUSES};
use crate::stats::Estimate;

/// The columns, in order. Appending is fine; reordering or renaming breaks
/// readers.
pub fn columns() -> Vec<String> {
    let mut c: Vec<String> =
        ["experiment", "variant", "vcpus", "host_cpus", "other_keys", "runs"].iter().map(|s| s.to_string()).collect();
    c.extend(STATUSES.iter().map(|(s, _)| s.as_str().replace('-', "_")));
    c.extend(
        [
            "acq_per_sec_n",
            "acq_per_sec_mean",
            "acq_per_sec_ci95",
            "latency_p50_ns_mean",
            "latency_p99_ns_mean",
            "latency_p99_ns_ci95",
            "kicks_per_1000_acq_mean",
            "kicks_per_1000_acq_ci95",
            "spurious_wakeups",
            "kicked_but_stolen",
            "hash_hops_per_insert_mean",
            "stale_entries",
            "double_hash",
            "rescues",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    c.extend(HANG_KINDS.iter().map(|k| format!("hang_{}", k.name().replace('-', "_"))));
    c.push("hang_other".into());
    c
}

/// Quotes a field if it needs it (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn f(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => String::new(),
    }
}

fn mean(e: &Option<Estimate>, d: usize) -> String {
    f(e.map(|e| e.mean), d)
}

fn ci(e: &Option<Estimate>, d: usize) -> String {
    f(e.and_then(|e| e.ci95), d)
}

/// Renders `summary.csv`.
pub fn render(sums: &[GroupSummary]) -> String {
    let mut out = columns().join(",");
    out.push('\n');
    for s in sums {
        let mut row = vec![
            s.key.name.clone(),
            s.key.variant.clone(),
            s.key.vcpus.to_string(),
            s.key.host_cpus.to_string(),
            s.key.other.clone(),
            s.runs.to_string(),
        ];
        row.extend(STATUSES.iter().map(|(st, _)| s.count(*st).to_string()));
        row.extend([
            s.acq_per_sec.map(|e| e.n).unwrap_or(0).to_string(),
            mean(&s.acq_per_sec, 1),
            ci(&s.acq_per_sec, 1),
            mean(&s.p50_ns, 1),
            mean(&s.p99_ns, 1),
            ci(&s.p99_ns, 1),
            mean(&s.kicks_per_1000, 4),
            ci(&s.kicks_per_1000, 4),
            s.spurious_wakeups.to_string(),
            s.kicked_but_stolen.to_string(),
            mean(&s.hops_per_insert, 4),
            s.stale_entries.to_string(),
            s.double_hash.to_string(),
            s.rescues.to_string(),
        ]);
        row.extend(HANG_KINDS.iter().map(|k| s.hang_kind(*k).to_string()));
        row.push(s.hang_other().to_string());
        let row: Vec<String> = row.iter().map(|c| field(c)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_are_quoted() {
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(field("q\",x"), "\"q\"\",x\"");
        assert_eq!(field("plain"), "plain");
    }
}
