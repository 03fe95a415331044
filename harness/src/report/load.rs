//! Reading `runs.jsonl` and grouping its records.
//!
//! A matrix appends one record per line as runs end, so a killed run can
//! leave a partial last line: such lines are skipped, counted and named in
//! the report, never fatal.

use crate::record::Record;
use anyhow::{Context, Result};
use std::path::Path;

/// A line of `runs.jsonl` that is not a record.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// The parser's message.
    pub error: String,
}

/// The records of a `runs.jsonl`, in file order, and what was skipped.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    pub skipped: Vec<SkippedLine>,
}

/// Parses JSONL text: one record per non-blank line; malformed or
/// truncated lines are skipped and listed.
pub fn parse_jsonl(text: &str) -> Loaded {
    parse_jsonl_bytes(text.as_bytes())
}

/// [`parse_jsonl`] on raw bytes: a line that is not UTF-8 (a torn write, a
/// stray binary append) is skipped and named like a malformed one; the
/// other lines still count.
pub fn parse_jsonl_bytes(bytes: &[u8]) -> Loaded {
    let mut out = Loaded::default();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match std::str::from_utf8(raw) {
            Ok(l) => l,
            Err(e) => {
                out.skipped.push(SkippedLine { line: i + 1, error: format!("not UTF-8: {e}") });
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.records.push(r),
            Err(e) => out.skipped.push(SkippedLine { line: i + 1, error: e.to_string() }),
        }
    }
    out
}

impl Loaded {
    /// One line for a terminal about the skipped lines of `path` (`None`
    /// when nothing was skipped): how many, which (the first few), and
    /// whether anything was left.
    pub fn skipped_note(&self, path: &Path) -> Option<String> {
        self.skipped_summary().map(|s| format!("{}: {s}", path.display()))
    }

    /// [`Self::skipped_note`] without the path.
    pub fn skipped_summary(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let first: Vec<String> = self.skipped.iter().take(5).map(|s| format!("line {}: {}", s.line, s.error)).collect();
        let more =
            if self.skipped.len() > 5 { format!("; and {} more", self.skipped.len() - 5) } else { String::new() };
        let head = if self.records.is_empty() {
            format!(
                "no valid record: every one of its {} non-blank line(s) is malformed or truncated",
                self.skipped.len()
            )
        } else {
            format!(
                "{} malformed or truncated line(s) of runs.jsonl skipped, {} record(s) kept",
                self.skipped.len(),
                self.records.len()
            )
        };
        Some(format!("{head} ({}{more})", first.join("; ")))
    }
}

/// Reads and parses `path` (a `runs.jsonl`).
pub fn load_jsonl(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse_jsonl_bytes(&bytes))
}

/// Run-key entries that only tell repeats apart: dropped when grouping.
const REPEAT_KEYS: &[&str] = &["seed", "repeat", "repeats"];

/// Splits a run key (`k=v,k=v`) into its entries. A value may itself hold
/// commas (a list, `["a","b"]`): a piece that does not start with `key=`
/// belongs to the previous entry.
pub fn split_run_key(key: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    if key.is_empty() {
        return out;
    }
    for piece in key.split(',') {
        let starts_entry = piece.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        });
        match (starts_entry, out.last_mut()) {
            (false, Some(last)) => {
                last.1.push(',');
                last.1.push_str(piece);
            }
            _ => {
                let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

/// The identity of a group: every record that differs only in its seed or
/// repeat belongs to the same group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// Experiment name (a "question").
    pub name: String,
    /// `params.variant`, for a kernel build with its release, flavour and
    /// patches ([`Record::variant_label`]).
    pub variant: String,
    pub vcpus: u32,
    pub host_cpus: u32,
    /// The other varying keys (not variant, vCPUs, host CPUs, seed or
    /// repeat), as `k=v,k=v`.
    pub other: String,
}

impl GroupKey {
    pub fn of(r: &Record) -> Self {
        let other = split_run_key(&r.run_key)
            .into_iter()
            .filter(|(k, _)| {
                !REPEAT_KEYS.contains(&k.as_str()) && !matches!(k.as_str(), "lock.variant" | "vcpus" | "host_cpus")
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Self { name: r.name.clone(), variant: r.variant_label(), vcpus: r.vcpus, host_cpus: r.host_cpus, other }
    }

    /// The setting without the variant: `8 vCPUs / 2 host CPUs`, plus the
    /// other keys. Rows of one setting are the ones to compare.
    pub fn setting(&self) -> String {
        let cpus = if self.host_cpus == 0 {
            format!("{} vCPUs / unpinned", self.vcpus)
        } else {
            format!("{} vCPUs / {} host CPUs", self.vcpus, self.host_cpus)
        };
        if self.other.is_empty() {
            cpus
        } else {
            format!("{cpus}, {}", self.other)
        }
    }

    /// vCPUs per host CPU, if pinned.
    pub fn overcommit(&self) -> Option<f64> {
        (self.host_cpus > 0).then(|| self.vcpus as f64 / self.host_cpus as f64)
    }
}

/// Records of one group, in file order.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    pub key: GroupKey,
    pub records: Vec<&'a Record>,
}

/// Groups records by [`GroupKey`]. Order: experiments and variants in order
/// of first appearance, settings by vCPUs, host CPUs, then other keys in
/// order of first appearance — stable for a given file.
pub fn group(records: &[Record]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for r in records {
        let key = GroupKey::of(r);
        match groups.iter_mut().find(|g| g.key == key) {
            Some(g) => g.records.push(r),
            None => groups.push(Group { key, records: vec![r] }),
        }
    }
    let first = |f: &dyn Fn(&GroupKey) -> String| -> Vec<String> {
        let mut seen = Vec::new();
        for g in &groups {
            let v = f(&g.key);
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
        seen
    };
    let names = first(&|k| k.name.clone());
    let variants = first(&|k| k.variant.clone());
    let others = first(&|k| k.other.clone());
    let pos = |list: &[String], v: &str| list.iter().position(|x| x == v).unwrap_or(usize::MAX);
    groups.sort_by_key(|g| {
        (
            pos(&names, &g.key.name),
            g.key.vcpus,
            g.key.host_cpus,
            pos(&others, &g.key.other),
            pos(&variants, &g.key.variant),
        )
    });
    groups
}

/// Variants in order of first appearance.
pub fn variants(records: &[Record]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        let name = r.variant_label();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_split_with_commas_in_values() {
        assert_eq!(
            split_run_key("lock.variant=pv-v4.8,preempt.windows=[\"a\",\"b\"],seed=3"),
            vec![
                ("lock.variant".into(), "pv-v4.8".into()),
                ("preempt.windows".into(), "[\"a\",\"b\"]".into()),
                ("seed".into(), "3".into()),
            ]
        );
        assert!(split_run_key("").is_empty());
    }

    #[test]
    fn groups_ignore_seed_and_repeat() {
        let mut a = crate::record::Record {
            schema_version: 1,
            name: "x".into(),
            run_key: "seed=1,vcpus=8,torture.locks=4".into(),
            status: pvlock_vmm::RunStatus::Ok,
            summary: String::new(),
            failure: None,
            started_at: String::new(),
            pvlock_version: String::new(),
            vcpus: 8,
            host_cpus: 2,
            duration_ms: 0.0,
            tsc_khz: 0,
            acquisitions: 0,
            acquisitions_per_sec: 0.0,
            latency_ns: Default::default(),
            max_wait_ns: 0,
            lock_events: Default::default(),
            vmm: Default::default(),
            hash: Default::default(),
            params: Default::default(),
            timing: Default::default(),
            checks: vec![],
            diagnosis: Default::default(),
            per_vcpu: vec![],
            console: vec![],
            config: Default::default(),
            kernel: None,
            kernel_sites: None,
        };
        let k1 = GroupKey::of(&a);
        assert_eq!(k1.other, "torture.locks=4");
        assert_eq!(k1.setting(), "8 vCPUs / 2 host CPUs, torture.locks=4");
        a.run_key = "seed=2,vcpus=8,torture.locks=4".into();
        assert_eq!(GroupKey::of(&a), k1);
        a.run_key = "seed=2,vcpus=8,torture.locks=8".into();
        assert_ne!(GroupKey::of(&a), k1);
        let b = a.clone();
        assert_eq!(group(&[a, b]).len(), 1);
    }

    #[test]
    fn truncated_lines_are_skipped_and_counted() {
        let l = parse_jsonl("{\"schema_version\":1\n\n{not json");
        assert!(l.records.is_empty());
        assert_eq!(l.skipped.iter().map(|s| s.line).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn invalid_utf8_lines_are_skipped_and_named() {
        let mut bytes = b"{bad json\n".to_vec();
        bytes.extend_from_slice(b"\xff\xfe not utf-8\n\n");
        bytes.extend_from_slice(b"\xc3\n");
        let l = parse_jsonl_bytes(&bytes);
        assert_eq!(l.skipped.iter().map(|s| s.line).collect::<Vec<_>>(), vec![1, 2, 4]);
        assert!(l.skipped[1].error.contains("UTF-8"), "{:?}", l.skipped);
        let note = l.skipped_note(Path::new("r/runs.jsonl")).unwrap();
        assert!(note.contains("no valid record") && note.contains("line 2"), "{note}");
        assert!(parse_jsonl("").skipped_note(Path::new("x")).is_none());
    }
}
