//! Sharding a matrix over hosts: `pvlock compare CONFIG --shard K/N`.
//!
//! The rule: the matrix is expanded exactly as an unsharded run expands it
//! (points x repeats, in the config's stable order, `--quick` applied), and
//! run `i` (0-based) belongs to shard `i mod N + 1`. Nothing else enters the
//! rule, so every host that reads the same config computes the same
//! assignment, every run keeps the seed the unsharded run gives it, and the
//! shards of one N are disjoint and together are the whole matrix.
//! Round robin (rather than contiguous blocks) spreads each variant and
//! each vCPU count over all shards, so shards take about equally long.
//!
//! Each shard's result directory holds a [`ShardManifest`] (`shard.json`)
//! saying which shard of which config (by hash) it is and which runs it
//! owes; `pvlock merge` and `pvlock status` read it.

use crate::config::{Experiment, RunConfig};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The manifest's file name in a shard's result directory.
pub const MANIFEST_FILE: &str = "shard.json";

/// Bumped when a manifest field changes meaning.
pub const MANIFEST_VERSION: u32 = 1;

/// Shard `index` of `count` (1-based: `1/4` .. `4/4`, as Slurm array task
/// ids and GNU parallel's `{}` count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The most shards a matrix may be cut into (a sanity bound on typos).
pub const MAX_SHARDS: u32 = 100_000;

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s.split_once('/').ok_or_else(|| format!("`{s}`: expected K/N, e.g. 1/4"))?;
        let k: u32 = k.trim().parse().map_err(|_| format!("`{s}`: K (`{k}`) is not a whole number"))?;
        let n: u32 = n.trim().parse().map_err(|_| format!("`{s}`: N (`{n}`) is not a whole number"))?;
        if n == 0 || n > MAX_SHARDS {
            return Err(format!("`{s}`: N must be in 1..={MAX_SHARDS}"));
        }
        if k == 0 || k > n {
            return Err(format!("`{s}`: K must be in 1..={n} (shards count from 1)"));
        }
        Ok(Self { index: k, count: n })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The shard that owns run `run_index` of the expanded matrix.
    pub fn of_run(run_index: usize, count: u32) -> Self {
        Self { index: (run_index % count as usize) as u32 + 1, count }
    }

    /// Whether run `run_index` of the expanded matrix is this shard's.
    pub fn owns(&self, run_index: usize) -> bool {
        Self::of_run(run_index, self.count) == *self
    }
}

/// The identity of a config: SHA-256 of its text (and of `--quick`, which
/// changes the runs), as lowercase hex. Shards merge only with equal hashes.
pub fn config_hash(source: &str, quick: bool) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    if quick {
        h.update(b"\n# pvlock --quick\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The short form of a hash used in directory names.
pub fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Result directory name of a shard: `STAMP-shard-K-of-N-HASH12`.
pub fn dir_name(stamp: &str, shard: Shard, hash: &str) -> String {
    format!("{stamp}-shard-{}-of-{}-{}", shard.index, shard.count, short_hash(hash))
}

/// One run as planned: where it sits in the matrix and what identifies its
/// record (run key and seed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlannedRun {
    /// 0-based position in the expanded matrix.
    pub index: usize,
    pub run_key: String,
    pub seed: u64,
}

impl fmt::Display for PlannedRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.run_key.is_empty() { "(single point)" } else { self.run_key.as_str() };
        write!(f, "#{} [{key}] seed={}", self.index, self.seed)
    }
}

/// The runs of `exp` as `compare` runs them (with `--quick` applied):
/// the matrix every shard and every merge agrees on.
pub fn plan(exp: &Experiment, quick: bool) -> Vec<(PlannedRun, RunConfig)> {
    crate::compare::planned_runs(exp, quick)
        .into_iter()
        .enumerate()
        .map(|(index, rc)| (PlannedRun { index, run_key: crate::run_key(exp, &rc), seed: rc.seed }, rc))
        .collect()
}

/// `shard.json`: which shard of which config a result directory holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub manifest_version: u32,
    /// The experiment's name (the config's `name`, else its file stem).
    pub experiment: String,
    /// [`config_hash`] of `config.toml` (and `--quick`).
    pub config_hash: String,
    pub quick: bool,
    pub shard: Shard,
    /// Runs of the whole matrix (all shards).
    pub matrix_runs: usize,
    /// The runs this shard owes, in matrix order.
    pub runs: Vec<PlannedRun>,
    /// [`crate::version`] of the pvlock that ran the shard.
    pub pvlock_version: String,
    /// The host it ran on (`/proc/sys/kernel/hostname`).
    pub host: String,
    /// Slurm job and array task, when run under Slurm.
    #[serde(default)]
    pub slurm_job: Option<String>,
    pub started_at: String,
}

impl ShardManifest {
    /// The manifest of `shard` of `exp`.
    pub fn new(exp: &Experiment, quick: bool, shard: Shard) -> Self {
        let planned = plan(exp, quick);
        let matrix_runs = planned.len();
        Self {
            manifest_version: MANIFEST_VERSION,
            experiment: exp.name.clone(),
            config_hash: config_hash(&exp.source, quick),
            quick,
            shard,
            matrix_runs,
            runs: planned.into_iter().filter(|(p, _)| shard.owns(p.index)).map(|(p, _)| p).collect(),
            pvlock_version: crate::version().to_string(),
            host: hostname(),
            slurm_job: slurm_job(),
            started_at: crate::record::now_utc(),
        }
    }

    /// Reads `dir/shard.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let m: Self =
            serde_json::from_str(&text).with_context(|| format!("{} is not a shard manifest", p.display()))?;
        if m.manifest_version != MANIFEST_VERSION {
            bail!("{}: manifest_version {} (this pvlock reads {MANIFEST_VERSION})", p.display(), m.manifest_version);
        }
        Ok(m)
    }
}

/// This host's name, for telling hosts apart in a merge.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// `JOB_TASK` (array) or `JOB` when running inside a Slurm job.
pub fn slurm_job() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID"), var("SLURM_JOB_ID")) {
        (Some(a), Some(t), _) => Some(format!("{a}_{t}")),
        (_, _, Some(j)) => Some(j),
        _ => None,
    }
}

/// Shard result directories at or below each of `roots` (a directory with
/// `shard.json` is one; others are searched down to three levels, so the
/// `--out` of the shards works as well as the shard directories
/// themselves), sorted and without repeats.
pub fn find_shard_dirs(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) -> Result<()> {
        if dir.join(MANIFEST_FILE).is_file() {
            out.push(dir.to_path_buf());
            return Ok(());
        }
        if depth == 0 {
            return Ok(());
        }
        let rd = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        let mut subs: Vec<PathBuf> =
            rd.filter_map(|e| e.ok()).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
        subs.sort();
        for s in subs {
            walk(&s, depth - 1, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    for r in roots {
        if !r.is_dir() {
            bail!("{} is not a directory", r.display());
        }
        walk(r, 3, &mut out)?;
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Experiment {
        Experiment::parse(
            "vcpus = [2, 4, 8]\nrepeats = 3\nseed = 7\n[lock]\nvariant = [\"pv-v4.5\", \"pv-v4.8\"]\n",
            "t.toml",
            "t",
        )
        .unwrap()
    }

    #[test]
    fn parses_k_of_n_and_rejects_the_rest() {
        assert_eq!("2/5".parse::<Shard>().unwrap(), Shard { index: 2, count: 5 });
        assert_eq!("1/1".parse::<Shard>().unwrap().to_string(), "1/1");
        for bad in ["0/3", "4/3", "1/0", "3", "a/2", "1/b", "-1/2", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!("0/3".parse::<Shard>().unwrap_err().contains("count from 1"));
    }

    #[test]
    fn shards_partition_the_matrix_with_the_unsharded_seeds() {
        let e = exp();
        let all = plan(&e, false);
        assert_eq!(all.len(), 18);
        for n in [1u32, 2, 3, 5, 18, 40] {
            let mut union: Vec<PlannedRun> = Vec::new();
            for k in 1..=n {
                let m = ShardManifest::new(&e, false, Shard { index: k, count: n });
                assert_eq!(m.matrix_runs, 18);
                union.extend(m.runs);
            }
            union.sort();
            let want: Vec<PlannedRun> = all.iter().map(|(p, _)| p.clone()).collect();
            assert_eq!(union, want, "N = {n}: shards must be disjoint and cover the matrix");
        }
        // The seeds are the unsharded run's own: repeat r of a point has
        // derive_seed(7, r), whatever the shard.
        let seeds: Vec<u64> =
            all.iter().filter(|(p, _)| p.run_key == "lock.variant=pv-v4.8,vcpus=4").map(|(p, _)| p.seed).collect();
        assert_eq!(seeds, (0..3).map(|r| crate::config::derive_seed(7, r)).collect::<Vec<_>>());
    }

    #[test]
    fn round_robin_spreads_points_over_shards() {
        let m = ShardManifest::new(&exp(), false, Shard { index: 1, count: 2 });
        assert_eq!(m.runs.iter().map(|r| r.index).collect::<Vec<_>>(), vec![0, 2, 4, 6, 8, 10, 12, 14, 16]);
        let mut keys: Vec<&str> = m.runs.iter().map(|r| r.run_key.as_str()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 6, "every point has a run in shard 1 of 2: {keys:?}");
    }

    #[test]
    fn the_hash_names_the_config_and_quick() {
        let e = exp();
        let h = config_hash(&e.source, false);
        assert_eq!(h.len(), 64);
        assert_ne!(h, config_hash(&e.source, true));
        assert_ne!(h, config_hash(&format!("{} ", e.source), false));
        assert_eq!(
            dir_name("20261201T000000Z", Shard { index: 2, count: 3 }, &h),
            format!("20261201T000000Z-shard-2-of-3-{}", &h[..12])
        );
    }
}
