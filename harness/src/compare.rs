//! `pvlock compare`: run an experiment matrix into a result directory that
//! survives anything: each run's record is appended to `runs.jsonl` and
//! flushed as the run ends; `partial` marks a matrix that has not finished
//! (removed at the end unless stopped); the report is rendered from
//! `runs.jsonl` alone, so `pvlock report DIR` gives the same result later.

use crate::config::{Experiment, RunConfig};
use crate::output::{append_line, write_atomic};
use crate::record::Record;
use crate::report::EnvInfo;
use crate::runner::run_one;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pvlock_vmm::StopHandle;
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
}

/// Where the results went and how the matrix ended.
pub struct CompareOutcome {
    pub dir: PathBuf,
    pub runs: usize,
    pub not_ok: usize,
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

/// Points `parent/latest` at `target` (a symlink replaced atomically).
fn set_latest(parent: &Path, target: &str) -> Result<()> {
    let tmp = parent.join(format!(".latest.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, parent.join("latest"))?;
    Ok(())
}

pub fn compare(exp: &Experiment, opts: &CompareOptions, elf: &[u8], stop: &StopHandle) -> Result<CompareOutcome> {
    let mut runs: Vec<RunConfig> = exp.runs.clone();
    if opts.quick {
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
    let parent = opts.out.join(&exp.name);
    let name = stamp();
    let dir = parent.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(&dir.join("partial"), b"the matrix has not finished\n")?;
    let env = EnvInfo::collect();
    write_atomic(&dir.join("env.json"), &serde_json::to_vec_pretty(&env)?)?;
    write_atomic(&dir.join("config.toml"), exp.source.as_bytes())?;
    set_latest(&parent, &name)?;

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
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let write_lock = Mutex::new(());
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
                        let line = serde_json::to_string(&rec).expect("records serialize");
                        let _g = write_lock.lock();
                        if let Err(e) = append_line(&jsonl, &line) {
                            failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
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
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e.context(format!("matrix stopped; partial results in {}", dir.display())));
    }
    let aborted = stop.is_stopped();
    if !aborted {
        std::fs::remove_file(dir.join("partial"))?;
    }
    crate::report::render_dir(&dir, &env)?;
    Ok(CompareOutcome { dir, runs: total, not_ok: not_ok.into_inner(), aborted })
}

/// Reads back `runs.jsonl` of a result directory (for callers that print).
pub fn records(dir: &Path) -> Result<Vec<Record>> {
    Ok(crate::report::load::load_jsonl(&dir.join("runs.jsonl"))?.records)
}
