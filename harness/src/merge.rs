//! `pvlock merge` and `pvlock status`: shards of one matrix (see
//! [`crate::shard`]) back into one result directory, and how far they are.
//!
//! A merge refuses shards of different configs (hash) or of different
//! pvlock versions and says which directory has which. Every record is
//! matched to its planned run by (run key, seed); a planned run no shard
//! delivered is *missing*, one delivered twice (a re-run shard) is a
//! *duplicate* (the first non-aborted record is kept). A merge with
//! missing runs, or of a shard that did not finish, is partial: the merged
//! directory keeps a `partial` marker that names what is missing, and the
//! report says so.

use crate::config::Experiment;
use crate::output::write_atomic;
use crate::record::Record;
use crate::report::{EnvInfo, ENV_FILE, PARTIAL_FILE, RUNS_FILE};
use crate::shard::{config_hash, find_shard_dirs, plan, PlannedRun, Shard, ShardManifest};
use anyhow::{bail, Context, Result};
use pvlock_vmm::RunStatus;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The merge's own account of what it merged, `merge.json`.
pub const MERGE_FILE: &str = "merge.json";

/// One shard directory as the merge saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInput {
    pub shard: Shard,
    /// The directory's name (not its path: results stay free of host paths).
    pub dir: String,
    pub host: String,
    #[serde(default)]
    pub slurm_job: Option<String>,
    /// Runs the shard owes.
    pub owed: usize,
    /// Records its runs.jsonl holds.
    pub records: usize,
    /// It ended without its `partial` marker.
    pub finished: bool,
}

/// A planned run delivered more than once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Duplicate {
    pub run: PlannedRun,
    /// Directories that delivered it; the record kept is from the first.
    pub dirs: Vec<String>,
}

/// A planned run no shard delivered, and the shard that owed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Missing {
    pub run: PlannedRun,
    pub shard: Shard,
}

/// `merge.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeSummary {
    pub experiment: String,
    pub config_hash: String,
    pub pvlock_version: String,
    pub shards: u32,
    pub matrix_runs: usize,
    pub merged_runs: usize,
    pub inputs: Vec<ShardInput>,
    /// Shards with no result directory at all.
    pub absent_shards: Vec<Shard>,
    pub missing: Vec<Missing>,
    pub duplicates: Vec<Duplicate>,
    /// Records that match no planned run ("dir: run key seed").
    pub unexpected: Vec<String>,
    pub partial: bool,
}

impl MergeSummary {
    /// What a person reads: one line of totals, then every missing,
    /// duplicated and unexpected run by name.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "merged {} of {} runs of {} (config {}) from {} shard director{} of {} shards{}",
            self.merged_runs,
            self.matrix_runs,
            self.experiment,
            crate::shard::short_hash(&self.config_hash),
            self.inputs.len(),
            if self.inputs.len() == 1 { "y" } else { "ies" },
            self.shards,
            if self.partial { ": PARTIAL" } else { "" }
        );
        for s in &self.absent_shards {
            let _ = writeln!(out, "shard {s}: no result directory");
        }
        for i in self.inputs.iter().filter(|i| !i.finished) {
            let _ = writeln!(
                out,
                "shard {} ({}, host {}): did not finish ({} of {} runs)",
                i.shard, i.dir, i.host, i.records, i.owed
            );
        }
        if !self.missing.is_empty() {
            let _ = writeln!(out, "missing runs ({}):", self.missing.len());
            for m in &self.missing {
                let _ = writeln!(out, "  {} (shard {})", m.run, m.shard);
            }
        }
        if !self.duplicates.is_empty() {
            let _ = writeln!(out, "duplicated runs ({}), first kept:", self.duplicates.len());
            for d in &self.duplicates {
                let _ = writeln!(out, "  {} in {}", d.run, d.dirs.join(", "));
            }
        }
        if !self.unexpected.is_empty() {
            let _ = writeln!(out, "records that are no run of this matrix ({}), left out:", self.unexpected.len());
            for u in &self.unexpected {
                let _ = writeln!(out, "  {u}");
            }
        }
        out
    }
}

/// One shard directory, read.
struct Input {
    dir: PathBuf,
    manifest: ShardManifest,
    records: Vec<Record>,
    finished: bool,
}

fn dir_label(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

fn read_inputs(roots: &[PathBuf], expected: Option<&Expected>) -> Result<Vec<Input>> {
    let dirs = find_shard_dirs(roots)?;
    if dirs.is_empty() && expected.is_none() {
        bail!(
            "no shard result directories (with {}) in {}",
            crate::shard::MANIFEST_FILE,
            roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    dirs.into_iter()
        .map(|dir| {
            let manifest = ShardManifest::load(&dir)?;
            let runs = dir.join(RUNS_FILE);
            // A shard that failed before its first run has no runs.jsonl.
            let records = if runs.exists() { crate::report::load::load_jsonl(&runs)?.records } else { Vec::new() };
            let finished = !dir.join(PARTIAL_FILE).exists();
            Ok(Input { dir, manifest, records, finished })
        })
        .collect()
}

/// Fails, naming each directory's value, unless `value` agrees across inputs.
fn same<'a>(inputs: &'a [Input], what: &str, value: impl Fn(&'a Input) -> String) -> Result<String> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in inputs {
        groups.entry(value(i)).or_default().push(dir_label(&i.dir));
    }
    if groups.len() == 1 {
        return Ok(groups.into_keys().next().expect("one group"));
    }
    let detail: Vec<String> = groups.iter().map(|(v, d)| format!("{what} {v}: {}", d.join(", "))).collect();
    bail!("the shards differ in {what}, so they are not one matrix:\n  {}", detail.join("\n  "))
}

/// The config the shards ran, checked against every manifest's hash.
fn shared_experiment(inputs: &[Input], hash: &str) -> Result<Experiment> {
    let mut exp = None;
    for i in inputs {
        let p = i.dir.join("config.toml");
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let h = config_hash(&text, i.manifest.quick);
        if h != hash {
            bail!(
                "{}: its config.toml hashes to {} but its shard.json says {}",
                i.dir.display(),
                crate::shard::short_hash(&h),
                crate::shard::short_hash(hash)
            );
        }
        if exp.is_none() {
            exp = Some(Experiment::parse(&text, &p.display().to_string(), &i.manifest.experiment)?);
        }
    }
    Ok(exp.expect("at least one input"))
}

/// Merges what `inputs` hold into a summary and the records in matrix order.
fn combine(inputs: &[Input], expected: Option<&Expected>) -> Result<(MergeSummary, Vec<Record>)> {
    let version = if inputs.is_empty() {
        crate::version().to_string()
    } else {
        same(inputs, "pvlock version", |i| {
            let mut v: Vec<&str> = i.records.iter().map(|r| r.pvlock_version.as_str()).collect();
            v.push(&i.manifest.pvlock_version);
            v.sort_unstable();
            v.dedup();
            v.join(" + ")
        })?
    };
    let (hash, count, quick, exp) = match expected {
        Some(e) => {
            let text = std::fs::read_to_string(&e.config)
                .with_context(|| format!("cannot read config {}", e.config.display()))?;
            let hash = config_hash(&text, e.quick);
            let name = e.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let exp = Experiment::parse(&text, &e.config.display().to_string(), &name)?;
            for i in inputs {
                if i.manifest.config_hash != hash || i.manifest.shard.count != e.shards || i.manifest.quick != e.quick {
                    bail!(
                        "{} is shard {} of config {}{}, not of {} cut into {} (config {}{})",
                        i.dir.display(),
                        i.manifest.shard,
                        crate::shard::short_hash(&i.manifest.config_hash),
                        if i.manifest.quick { ", --quick" } else { "" },
                        e.config.display(),
                        e.shards,
                        crate::shard::short_hash(&hash),
                        if e.quick { ", --quick" } else { "" }
                    );
                }
            }
            // The shards' own copies must still be that config.
            if !inputs.is_empty() {
                shared_experiment(inputs, &hash)?;
            }
            (hash, e.shards, e.quick, exp)
        }
        None => {
            let hash = same(inputs, "config hash", |i| i.manifest.config_hash.clone())?;
            let count = same(inputs, "shard count", |i| i.manifest.shard.count.to_string())?;
            let count: u32 = count.parse().expect("a shard count");
            let exp = shared_experiment(inputs, &hash)?;
            (hash, count, inputs[0].manifest.quick, exp)
        }
    };
    let planned: Vec<PlannedRun> = plan(&exp, quick).into_iter().map(|(p, _)| p).collect();

    // (run key, seed) -> planned indices (a config could repeat a point).
    let mut by_id: HashMap<(&str, u64), Vec<usize>> = HashMap::new();
    for p in &planned {
        by_id.entry((p.run_key.as_str(), p.seed)).or_default().push(p.index);
    }
    let mut slots: Vec<Option<(Record, Vec<String>)>> = vec![None; planned.len()];
    let mut unexpected = Vec::new();
    for i in inputs {
        let label = dir_label(&i.dir);
        for r in &i.records {
            let Some(idx) = by_id.get(&(r.run_key.as_str(), r.config.seed)) else {
                unexpected.push(format!("{label}: [{}] seed={}", r.run_key, r.config.seed));
                continue;
            };
            // The first slot of this id still free, else the first one.
            let slot = idx.iter().copied().find(|&k| slots[k].is_none()).unwrap_or(idx[0]);
            match &mut slots[slot] {
                None => slots[slot] = Some((r.clone(), vec![label.clone()])),
                Some((kept, dirs)) => {
                    dirs.push(label.clone());
                    if kept.status == RunStatus::Aborted && r.status != RunStatus::Aborted {
                        *kept = r.clone();
                    }
                }
            }
        }
    }
    let mut present = vec![false; count as usize];
    for i in inputs {
        present[(i.manifest.shard.index - 1) as usize] = true;
    }
    let absent_shards: Vec<Shard> =
        (1..=count).filter(|k| !present[(*k - 1) as usize]).map(|index| Shard { index, count }).collect();
    let missing: Vec<Missing> = planned
        .iter()
        .filter(|p| slots[p.index].is_none())
        .map(|p| Missing { run: p.clone(), shard: Shard::of_run(p.index, count) })
        .collect();
    let duplicates: Vec<Duplicate> = planned
        .iter()
        .filter_map(|p| match &slots[p.index] {
            Some((_, dirs)) if dirs.len() > 1 => Some(Duplicate { run: p.clone(), dirs: dirs.clone() }),
            _ => None,
        })
        .collect();
    let records: Vec<Record> = slots.into_iter().flatten().map(|(r, _)| r).collect();
    let inputs_out: Vec<ShardInput> = inputs
        .iter()
        .map(|i| ShardInput {
            shard: i.manifest.shard,
            dir: dir_label(&i.dir),
            host: i.manifest.host.clone(),
            slurm_job: i.manifest.slurm_job.clone(),
            owed: i.manifest.runs.len(),
            records: i.records.len(),
            finished: i.finished,
        })
        .collect();
    let partial = !missing.is_empty() || inputs.iter().any(|i| !i.finished);
    Ok((
        MergeSummary {
            experiment: exp.name.clone(),
            config_hash: hash,
            pvlock_version: version,
            shards: count,
            matrix_runs: planned.len(),
            merged_runs: records.len(),
            inputs: inputs_out,
            absent_shards,
            missing,
            duplicates,
            unexpected,
            partial,
        },
        records,
    ))
}

/// The environment of the merged report: a field all hosts agree on keeps
/// its value; one that differs says so (each host's own is under `env/`).
fn merged_env(envs: &[(String, EnvInfo)]) -> EnvInfo {
    let pick = |f: fn(&EnvInfo) -> &str| {
        let mut by_value: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (host, e) in envs {
            by_value.entry(f(e)).or_default().push(host);
        }
        if by_value.len() <= 1 {
            return by_value.into_keys().next().unwrap_or("unknown").to_string();
        }
        let parts: Vec<String> = by_value.iter().map(|(v, h)| format!("{v} ({})", h.join(", "))).collect();
        format!("differs by host: {}", parts.join("; "))
    };
    let here = EnvInfo::collect();
    EnvInfo {
        host_cpu_model: pick(|e| &e.host_cpu_model),
        kernel: pick(|e| &e.kernel),
        kvm_flavour: pick(|e| &e.kvm_flavour),
        pvlock_version: pick(|e| &e.pvlock_version),
        command: here.command,
    }
}

/// The matrix a merge expects, when known without any shard (the merge
/// jobs of `pvlock slurm` pass it, so that a merge after every shard failed
/// still names every run as missing).
#[derive(Debug, Clone)]
pub struct Expected {
    pub config: PathBuf,
    pub shards: u32,
    pub quick: bool,
}

/// Options of `pvlock merge`.
pub struct MergeOptions {
    /// The merged result directory (created; must not hold a merge yet).
    pub out: PathBuf,
    /// Shard result directories, or directories above them.
    pub inputs: Vec<PathBuf>,
    /// Write nothing when every run is in and every shard finished (the
    /// `afterany` job of `pvlock slurm`, beside the `afterok` one).
    pub only_if_incomplete: bool,
    /// The config and shard count the shards must be of.
    pub expected: Option<Expected>,
}

/// What a merge did.
pub struct MergeOutcome {
    pub summary: MergeSummary,
    /// False when `only_if_incomplete` found nothing to do.
    pub written: bool,
}

/// `pvlock merge`: merges, writes `OUT/{runs.jsonl, config.toml, env.json,
/// env/HOST.json, merge.json}` (and `partial` when partial) and renders the
/// report there.
pub fn merge(opts: &MergeOptions) -> Result<MergeOutcome> {
    let inputs = read_inputs(&opts.inputs, opts.expected.as_ref())?;
    let (summary, records) = combine(&inputs, opts.expected.as_ref())?;
    if opts.only_if_incomplete && !summary.partial {
        return Ok(MergeOutcome { summary, written: false });
    }
    if opts.out.join(RUNS_FILE).exists() {
        bail!("{} already holds a merge ({RUNS_FILE}): choose another --out", opts.out.display());
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    // The marker first, so that a merge killed half-way reads as partial.
    write_atomic(&opts.out.join(PARTIAL_FILE), b"the merge has not finished\n")?;
    let mut body = String::new();
    for r in &records {
        body.push_str(&serde_json::to_string(r)?);
        body.push('\n');
    }
    write_atomic(&opts.out.join(RUNS_FILE), body.as_bytes())?;
    let config = match (&opts.expected, inputs.first()) {
        (Some(e), _) => std::fs::read(&e.config)?,
        (None, Some(i)) => std::fs::read(i.dir.join("config.toml"))?,
        (None, None) => bail!("no shard directories and no --config: nothing to merge"),
    };
    write_atomic(&opts.out.join("config.toml"), &config)?;
    let mut envs: Vec<(String, EnvInfo)> = Vec::new();
    for i in &inputs {
        let Some(env) = EnvInfo::load(&i.dir)? else { continue };
        if envs.iter().any(|(h, e)| *h == i.manifest.host && *e == env) {
            continue;
        }
        // Two different environments under one host name (a reinstall
        // between shards) both stay.
        let n = envs.iter().filter(|(h, _)| *h == i.manifest.host).count();
        let file =
            if n == 0 { format!("{}.json", i.manifest.host) } else { format!("{}-{}.json", i.manifest.host, n + 1) };
        write_atomic(&opts.out.join("env").join(file), &serde_json::to_vec_pretty(&env)?)?;
        envs.push((i.manifest.host.clone(), env));
    }
    let env = merged_env(&envs);
    write_atomic(&opts.out.join(ENV_FILE), &serde_json::to_vec_pretty(&env)?)?;
    write_atomic(&opts.out.join(MERGE_FILE), &serde_json::to_vec_pretty(&summary)?)?;
    if summary.partial {
        write_atomic(&opts.out.join(PARTIAL_FILE), summary.render().as_bytes())?;
    } else {
        std::fs::remove_file(opts.out.join(PARTIAL_FILE))?;
    }
    crate::report::render_dir(&opts.out, &env)?;
    Ok(MergeOutcome { summary, written: true })
}

/// `pvlock status DIR...`: per config found, runs in of runs planned, and
/// per shard (absent shards too).
pub fn status(roots: &[PathBuf]) -> Result<(String, bool)> {
    let inputs = read_inputs(roots, None)?;
    let mut out = String::new();
    let mut all_done = true;
    let mut by_hash: BTreeMap<&str, Vec<&Input>> = BTreeMap::new();
    for i in &inputs {
        by_hash.entry(&i.manifest.config_hash).or_default().push(i);
    }
    for (hash, group) in by_hash {
        let m0 = &group[0].manifest;
        let count = m0.shard.count;
        let records: usize = group.iter().map(|i| i.records.len()).sum();
        let _ = writeln!(
            out,
            "{} (config {}): {} of {} runs in, {} shards",
            m0.experiment,
            crate::shard::short_hash(hash),
            records,
            m0.matrix_runs,
            count
        );
        for k in 1..=count {
            let mine: Vec<&&Input> = group.iter().filter(|i| i.manifest.shard.index == k).collect();
            if mine.is_empty() {
                all_done = false;
                let owed = (0..m0.matrix_runs).filter(|&i| Shard { index: k, count }.owns(i)).count();
                let _ = writeln!(out, "  shard {k}/{count}: 0 of {owed} runs (not started)");
            }
            for i in mine {
                let state = if i.finished { "finished" } else { "running or stopped" };
                all_done &= i.finished;
                let _ = writeln!(
                    out,
                    "  shard {k}/{count}: {} of {} runs ({state}) on {}{}  {}",
                    i.records.len(),
                    i.manifest.runs.len(),
                    i.manifest.host,
                    i.manifest.slurm_job.as_ref().map(|j| format!(", Slurm job {j}")).unwrap_or_default(),
                    dir_label(&i.dir)
                );
            }
        }
    }
    Ok((out, all_done))
}
