//! `pvlock compare`: run an experiment matrix into a result directory that
//! survives anything: each run's record is appended to `runs.jsonl` and
//! flushed as the run ends; `partial` marks a matrix that has not finished
//! (removed at the end unless stopped); the report is rendered from
//! `runs.jsonl` alone, so `pvlock report DIR` gives the same result later.

use crate::config::{Experiment, RunConfig};
use crate::output::{append_line, check_path_component, create_unique_dir, set_latest, write_atomic};
use crate::record::Record;
use crate::report::EnvInfo;
use crate::runner::run_one;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use pvlock_vmm::StopHandle;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Options of one `compare` invocation.
pub struct CompareOptions {
    pub out: PathBuf,
    pub quick: bool,
    pub jobs: usize,
    /// Show a progress bar (off in tests).
    pub progress: bool,
    /// Run only this shard of the matrix (see [`crate::shard`]).
    pub shard: Option<crate::shard::Shard>,
}

/// Where the results went and how the matrix ended.
pub struct CompareOutcome {
    pub dir: PathBuf,
    /// Runs in the matrix.
    pub runs: usize,
    /// Runs that finished (their records are in runs.jsonl): fewer than
    /// `runs` when the matrix was stopped.
    pub finished: usize,
    pub not_ok: usize,
    /// Runs that did not end as their config expects (a failure no
    /// `[[expect]]` rule names, or an expected failure that did not
    /// happen): what the exit code counts.
    pub unexpected: usize,
    pub aborted: bool,
}

/// Shrinks a run for `--quick`: a first look in a few minutes.
pub fn quick(rc: &mut RunConfig) {
    rc.duration_ms = rc.duration_ms.min(300);
    rc.iterations = (rc.iterations / 10).max(1);
    rc.repeats = rc.repeats.min(2);
    rc.torture.max_acquisitions = rc.torture.max_acquisitions.min(20_000);
}

/// `YYYYMMDDTHHMMSSZ`: sortable and safe in a path.
fn stamp() -> String {
    crate::record::now_utc().replace(['-', ':'], "")
}

/// The runs `compare` makes of `exp`, in matrix order (`--quick` applied).
pub fn planned_runs(exp: &Experiment, quick_look: bool) -> Vec<RunConfig> {
    let mut runs: Vec<RunConfig> = exp.runs.clone();
    if quick_look {
        // Repeats were expanded already: keep at most two per matrix point.
        let mut seen = std::collections::HashMap::new();
        runs.retain(|rc| {
            let mut k = rc.clone();
            k.seed = 0;
            let n = seen.entry(format!("{k:?}")).or_insert(0);
            *n += 1;
            *n <= 2
        });
        runs.iter_mut().for_each(quick);
    }
    runs
}

pub fn compare(exp: &Experiment, opts: &CompareOptions, elf: &[u8], stop: &StopHandle) -> Result<CompareOutcome> {
    let mut runs = planned_runs(exp, opts.quick);
    let manifest = opts.shard.map(|s| crate::shard::ShardManifest::new(exp, opts.quick, s));
    if let Some(s) = opts.shard {
        runs = runs.into_iter().enumerate().filter(|(i, _)| s.owns(*i)).map(|(_, rc)| rc).collect();
    }
    // Before anything is written: a run pinned to more CPUs than this
    // process may use (a Slurm allocation, taskset) would fail anyway.
    crate::slurm::check_host_cpus(&runs)?;
    // The name becomes a directory under --out: one path component only,
    // so that no config can write outside --out.
    check_path_component("experiment name", &exp.name)?;
    let parent = opts.out.join(&exp.name);
    let stem = match &manifest {
        Some(m) => crate::shard::dir_name(&stamp(), m.shard, &m.config_hash),
        None => stamp(),
    };
    // A fresh directory per invocation, even for two in the same second.
    let (dir, name) = create_unique_dir(&parent, &stem)?;
    write_atomic(&dir.join("partial"), b"the matrix has not finished\n")?;
    let env = EnvInfo::collect();
    write_atomic(&dir.join("env.json"), &serde_json::to_vec_pretty(&env)?)?;
    write_atomic(&dir.join("config.toml"), exp.source.as_bytes())?;
    match &manifest {
        Some(m) => write_atomic(&dir.join(crate::shard::MANIFEST_FILE), &serde_json::to_vec_pretty(m)?)?,
        // Shards of one matrix start together: `latest` would point at
        // any one of them, so only a whole matrix sets it.
        None => set_latest(&parent, &name)?,
    }

    let total = runs.len();
    let bar = if opts.progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs, ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let jsonl = dir.join("runs.jsonl");
    let next = AtomicUsize::new(0);
    let not_ok = AtomicUsize::new(0);
    let unexpected = AtomicUsize::new(0);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    // Lines appended to runs.jsonl so far (guarded: one writer at a time),
    // and finished records that could not be written.
    let write_lock: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let unsaved: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let jobs = opts.jobs.clamp(1, 16);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                if stop.is_stopped() || failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::AcqRel);
                let Some(rc) = runs.get(i) else { return };
                let key = crate::run_key(exp, rc);
                match run_one(rc, &key, elf, stop) {
                    Ok(rec) => {
                        if !rec.status.is_ok() {
                            not_ok.fetch_add(1, Ordering::AcqRel);
                        }
                        if !rec.as_expected() {
                            unexpected.fetch_add(1, Ordering::AcqRel);
                        }
                        let line = serde_json::to_string(&rec).expect("records serialize");
                        let mut saved = write_lock.lock().unwrap_or_else(|p| p.into_inner());
                        match append_line(&jsonl, &line) {
                            Ok(()) => saved.push(line),
                            Err(e) => {
                                // A full disk, or the directory was removed:
                                // stop, and hand every record that is not on
                                // disk any more back to the caller.
                                if !jsonl.exists() {
                                    unsaved.lock().unwrap_or_else(|p| p.into_inner()).append(&mut saved);
                                }
                                unsaved.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                                failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                            }
                        }
                        drop(saved);
                        bar.set_message(format!("{} not ok", not_ok.load(Ordering::Acquire)));
                        bar.inc(1);
                    }
                    Err(e) => {
                        failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    let finished = write_lock.into_inner().unwrap_or_else(|p| p.into_inner()).len();
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let unsaved = unsaved.into_inner().unwrap_or_else(|p| p.into_inner());
        if unsaved.is_empty() {
            return Err(e.context(format!("matrix stopped; partial results in {}", dir.display())));
        }
        // No finished record is lost: what could not be written goes to
        // stdout, one JSON line per record (the runs.jsonl format).
        let mut out = std::io::stdout().lock();
        for l in &unsaved {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
        return Err(e.context(format!(
            "matrix stopped; {} finished record(s) could not be written to {} and were printed to stdout as JSON lines",
            unsaved.len(),
            jsonl.display()
        )));
    }
    let aborted = stop.is_stopped();
    if !aborted {
        std::fs::remove_file(dir.join("partial"))?;
    }
    crate::report::render_dir(&dir, &env)?;
    Ok(CompareOutcome {
        dir,
        runs: total,
        finished,
        not_ok: not_ok.into_inner(),
        unexpected: unexpected.into_inner(),
        aborted,
    })
}

/// Reads back `runs.jsonl` of a result directory (for callers that print).
pub fn records(dir: &Path) -> Result<Vec<Record>> {
    Ok(crate::report::load::load_jsonl(&dir.join("runs.jsonl"))?.records)
}
