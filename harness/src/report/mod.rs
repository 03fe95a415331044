//! Reports: pure functions of the records of a result directory.
//!
//! A result directory holds `runs.jsonl` (one [`Record`] per line, appended
//! as runs end), optionally `env.json` ([`EnvInfo`], written by whoever runs
//! the matrix) and a `partial` marker file while (or if) the matrix did not
//! finish. [`render_dir`] turns it into `report.md`, `summary.csv` and
//! `plots/*.svg`; [`render`] is the same without any I/O.

pub mod csv;
pub mod diff;
pub mod load;
pub mod markdown;
pub mod page_wake;
pub mod plots;
pub mod sleeping;
pub mod summary;
pub mod table;

pub use diff::{diff, DiffReport};

use crate::output::write_atomic;
use crate::record::Record;
use anyhow::{Context, Result};
use load::Loaded;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the runs ran. Stored as `env.json` in a result directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvInfo {
    /// `model name` of the host's first CPU (/proc/cpuinfo).
    pub host_cpu_model: String,
    /// Host kernel release (`uname -r`).
    pub kernel: String,
    /// `kvm_pvm (PVM)`, `VMX`, `SVM`, or `none`.
    pub kvm_flavour: String,
    /// [`crate::version`] of the pvlock that ran the matrix.
    pub pvlock_version: String,
    /// The command that produced the results (empty if unknown).
    #[serde(default)]
    pub command: String,
}

impl Default for EnvInfo {
    fn default() -> Self {
        Self {
            host_cpu_model: "unknown".into(),
            kernel: "unknown".into(),
            kvm_flavour: "unknown".into(),
            pvlock_version: crate::version().into(),
            command: String::new(),
        }
    }
}

impl EnvInfo {
    /// Reads this host's facts; any that cannot be read are `unknown`.
    pub fn collect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let module = |m: &str| Path::new("/sys/module").join(m).exists();
        let kvm = if module("kvm_pvm") {
            "kvm_pvm (PVM)"
        } else if module("kvm_intel") {
            "VMX"
        } else if module("kvm_amd") {
            "SVM"
        } else {
            "none"
        };
        // The command line, as a person would retype it (program name
        // without its directory).
        let mut argv: Vec<String> = std::env::args().collect();
        if let Some(first) = argv.first_mut() {
            if let Some(base) = std::path::Path::new(first.as_str()).file_name() {
                *first = base.to_string_lossy().into_owned();
            }
        }
        Self {
            host_cpu_model: cpu,
            kernel,
            kvm_flavour: kvm.into(),
            pvlock_version: crate::version().into(),
            command: argv.join(" "),
        }
    }

    /// Writes `dir/env.json` (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join(ENV_FILE), &serde_json::to_vec_pretty(self)?)
    }

    /// Reads `dir/env.json`, if present.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join(ENV_FILE);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not an env record", p.display()))?))
    }
}

pub const RUNS_FILE: &str = "runs.jsonl";
pub const ENV_FILE: &str = "env.json";
/// Present while a matrix runs, and left behind if it did not finish.
pub const PARTIAL_FILE: &str = "partial";

/// Everything a report consists of.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// `report.md`.
    pub markdown: String,
    /// `summary.csv`.
    pub csv: String,
    /// (file name under `plots/`, SVG).
    pub plots: Vec<(String, String)>,
    /// The main table alone (what `pvlock report` prints).
    pub main_table: String,
}

/// Renders a report from records (no I/O). `partial`: the matrix did not
/// finish (an aborted record also makes the report say partial).
pub fn render(records: &[Record], env: &EnvInfo, partial: bool) -> Rendered {
    render_loaded(&Loaded { records: records.to_vec(), skipped: Vec::new() }, env, partial)
}

/// [`render`], also naming the lines of `runs.jsonl` that were skipped.
pub fn render_loaded(loaded: &Loaded, env: &EnvInfo, partial: bool) -> Rendered {
    let sums = summary::summarize_all(&loaded.records);
    let variants = load::variants(&loaded.records);
    let mutex_rows = sleeping::rows(&loaded.records);
    let mut md = markdown::render(loaded, &sums, env, partial);
    md.push_str(&sleeping::markdown(&mutex_rows));
    md.push_str(&page_wake::markdown(&page_wake::rows(&loaded.records)));
    let mut plots = plots::render(&loaded.records, &sums, &variants);
    plots.extend(sleeping::plots(&mutex_rows));
    Rendered { markdown: md, csv: csv::render(&sums), plots, main_table: markdown::main_table(&sums) }
}

/// Reads `dir/runs.jsonl` and writes `report.md`, `summary.csv` and
/// `plots/*.svg` into `dir`, each atomically. The environment is
/// `dir/env.json` when present (it describes the host the runs ran on),
/// otherwise `env`.
pub fn render_dir(dir: &Path, env: &EnvInfo) -> Result<()> {
    render_dir_with(dir, env).map(|_| ())
}

/// [`render_dir`], returning what it wrote.
pub fn render_dir_with(dir: &Path, env: &EnvInfo) -> Result<Rendered> {
    let r = render_from(dir, env)?.1;
    write_rendered(&r, dir)?;
    Ok(r)
}

/// Reads `dir` (runs.jsonl, env.json, partial) and renders it, no writes.
fn render_from(dir: &Path, env: &EnvInfo) -> Result<(Loaded, Rendered)> {
    let loaded = load::load_jsonl(&dir.join(RUNS_FILE))?;
    let env = EnvInfo::load(dir)?.unwrap_or_else(|| env.clone());
    let marker = dir.join(PARTIAL_FILE);
    let partial = marker.exists();
    let mut r = render_loaded(&loaded, &env, partial);
    // A marker that says more than "not finished" (a partial merge names
    // its missing runs) is shown as it is.
    let note = if partial { std::fs::read_to_string(&marker).unwrap_or_default() } else { String::new() };
    if !note.trim().is_empty() && !note.starts_with("the matrix has not finished") {
        r.markdown = markdown::with_partial_note(&r.markdown, &note);
    }
    Ok((loaded, r))
}

/// Writes `report.md`, `summary.csv` and `plots/*.svg` into `out`, each
/// atomically.
fn write_rendered(r: &Rendered, out: &Path) -> Result<()> {
    write_atomic(&out.join("report.md"), r.markdown.as_bytes())?;
    write_atomic(&out.join("summary.csv"), r.csv.as_bytes())?;
    for (name, svg) in &r.plots {
        write_atomic(&out.join("plots").join(name), svg.as_bytes())?;
    }
    // A plot this render left out (outcomes, when all is ok) must not
    // survive from an earlier render of the same directory.
    for f in plots::FILES.iter().filter(|f| !r.plots.iter().any(|(n, _)| n == *f)) {
        let _ = std::fs::remove_file(out.join("plots").join(f));
    }
    Ok(())
}

/// `pvlock report DIR [--out OUT]`: re-renders DIR (into OUT if given) and
/// returns what to print: a note on skipped lines of runs.jsonl (on stdout,
/// so a file of nothing but bad lines is never a silent empty table), the
/// main table, and where the report went. When DIR cannot be written (a
/// read-only result directory) and no OUT is given, the whole report.md
/// is printed instead, with a note saying why.
pub fn report_command(dir: &Path, out: Option<&Path>) -> Result<String> {
    let (loaded, r) = render_from(dir, &EnvInfo::collect())?;
    let mut text = String::new();
    if let Some(note) = loaded.skipped_note(&dir.join(RUNS_FILE)) {
        text.push_str(&note);
        text.push('\n');
    }
    let target = out.unwrap_or(dir);
    match write_rendered(&r, target) {
        Ok(()) => {
            text.push_str(&r.main_table);
            text.push_str(&format!("report: {}\n", target.join("report.md").display()));
        }
        Err(e) if out.is_none() => {
            text.push_str(&format!(
                "note: cannot write the report into {} ({e:#}); report.md follows here instead \
                 (use --out DIR to write report.md, summary.csv and plots elsewhere)\n\n",
                dir.display()
            ));
            text.push_str(&r.markdown);
        }
        Err(e) => return Err(e),
    }
    Ok(text)
}

/// `pvlock diff A B`: the diff of two result directories, as markdown.
pub fn diff_command(a: &Path, b: &Path) -> Result<String> {
    let la = load::load_jsonl(&a.join(RUNS_FILE))?;
    let lb = load::load_jsonl(&b.join(RUNS_FILE))?;
    let mut out = String::new();
    for (side, l) in [("A", &la), ("B", &lb)] {
        if let Some(note) = l.skipped_summary() {
            out.push_str(&format!("{side}: {note}\n"));
        }
    }
    out.push_str(&diff(&la.records, &lb.records).to_markdown());
    Ok(out)
}
