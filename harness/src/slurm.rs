//! `pvlock slurm`: a matrix as a Slurm job array of shards plus the jobs
//! that merge them. pvlock schedules nothing itself: it writes sbatch
//! scripts that call `pvlock compare --shard` and `pvlock merge`, and with
//! `--submit` hands them to `sbatch`.
//!
//! Layout of `--out DIR`: `<name>.toml` (the copy every shard reads, so the
//! hash cannot change under a running array), `shards.sbatch`,
//! `merge.sbatch`, `submit.sh` (the sbatch calls), `logs/`, `shards/`
//! (the shards' result directories) and `merged/` (the merge).
//!
//! Two merge jobs follow the array: one `afterok` (every shard succeeded)
//! and one `afterany` that runs `merge --only-if-incomplete`: it writes
//! the partial merge of the shards that did finish when some did not, and
//! nothing when the `afterok` one has the whole matrix. The `afterok` job
//! has `--kill-on-invalid-dep=yes`, so it is cancelled instead of pending
//! forever when a shard fails.

use crate::config::{Experiment, RunConfig};
use crate::output::write_atomic;
use crate::shard::config_hash;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The CPUs this process may run on (its affinity mask: the Slurm
/// allocation inside a task bound by `task/affinity` or cgroups, a
/// `taskset` outside), as the VMM's pinning uses them.
pub fn allowed_cpus() -> usize {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most sizeof(cpu_set_t) bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    }
    // SAFETY: CPU_COUNT reads the set initialised above.
    unsafe { libc::CPU_COUNT(&set) as usize }
}

/// Fails when a run wants more host CPUs than this process may use, naming
/// both numbers (and the Slurm job, inside one).
pub fn check_host_cpus(runs: &[RunConfig]) -> Result<()> {
    let Some(worst) = runs.iter().max_by_key(|r| r.host_cpus) else { return Ok(()) };
    let allowed = allowed_cpus();
    if worst.host_cpus as usize <= allowed {
        return Ok(());
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let whose = match (crate::shard::slurm_job(), var("SLURM_CPUS_PER_TASK")) {
        (Some(j), Some(c)) => format!("the Slurm allocation of job {j} (--cpus-per-task={c})"),
        (Some(j), None) => format!("the Slurm allocation of job {j}"),
        _ => "this process's CPU affinity".to_string(),
    };
    bail!(
        "host_cpus = {} (run `{}`) but {whose} gives {allowed} CPU{}: pinning needs at least as many; ask for \
         --cpus-per-task={} or lower host_cpus",
        worst.host_cpus,
        worst.name,
        if allowed == 1 { "" } else { "s" },
        worst.host_cpus
    )
}

/// Options of `pvlock slurm`.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    pub config: PathBuf,
    pub shards: u32,
    pub partition: Option<String>,
    /// `--time` of each shard, Slurm's syntax (`30`, `1:00:00`, `1-0`).
    pub time: Option<String>,
    /// CPUs per shard; default: the matrix's largest `host_cpus` (at least 1).
    pub cpus_per_task: Option<u32>,
    /// Default: `results/<experiment name>/slurm-<UTC time>`.
    pub out: Option<PathBuf>,
    pub quick: bool,
    /// The pvlock the jobs run (default: this executable).
    pub pvlock: PathBuf,
}

/// What `pvlock slurm` wrote.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub dir: PathBuf,
    pub shards: u32,
    pub cpus_per_task: u32,
    /// Warnings for the person (e.g. an allocation smaller than host_cpus).
    pub warnings: Vec<String>,
}

/// Job ids of a submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub array: String,
    pub merge: String,
    pub partial_merge: String,
}

/// Quotes a word for bash (single quotes).
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn sh_path(p: &Path) -> String {
    sh(&p.display().to_string())
}

fn check_slurm_word(what: &str, v: &str) -> Result<()> {
    if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_:.,".contains(c)) {
        bail!("--{what} `{v}`: expected letters, digits and -_:., only");
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir().context("cannot read the current directory")?.join(p))
}

/// Writes the sbatch scripts for `opts` (nothing is submitted).
pub fn prepare(opts: &SlurmOptions) -> Result<Prepared> {
    if opts.shards == 0 || opts.shards > crate::shard::MAX_SHARDS {
        bail!("--shards {}: expected 1..={}", opts.shards, crate::shard::MAX_SHARDS);
    }
    for (what, v) in [("partition", &opts.partition), ("time", &opts.time)] {
        if let Some(v) = v {
            check_slurm_word(what, v)?;
        }
    }
    let exp = Experiment::load(&opts.config)?;
    let runs = crate::compare::planned_runs(&exp, opts.quick);
    if (opts.shards as usize) > runs.len() {
        bail!("--shards {} but the matrix has only {} runs: some shards would be empty", opts.shards, runs.len());
    }
    let need = runs.iter().map(|r| r.host_cpus).max().unwrap_or(1).max(1);
    let cpus = opts.cpus_per_task.unwrap_or(need);
    if cpus == 0 {
        bail!("--cpus-per-task 0: expected at least 1");
    }
    let mut warnings = Vec::new();
    if cpus < need {
        warnings.push(format!(
            "--cpus-per-task={cpus} but runs pin to host_cpus = {need}: under task/affinity or cgroups each shard \
             will stop with an error naming both numbers"
        ));
    }
    let out = opts.out.clone().unwrap_or_else(|| {
        let stamp = crate::record::now_utc().replace(['-', ':'], "");
        PathBuf::from("results").join(&exp.name).join(format!("slurm-{stamp}"))
    });
    let dir = absolute(&out)?;
    // `#SBATCH --output=` takes the rest of its line unquoted.
    if dir.to_string_lossy().chars().any(char::is_whitespace) {
        bail!("--out {}: Slurm's #SBATCH lines cannot hold a path with white space", dir.display());
    }
    if dir.join("shards.sbatch").exists() {
        bail!("{} already holds a Slurm submission: choose another --out", dir.display());
    }
    let pvlock = absolute(&opts.pvlock)?;
    // Named after the experiment, so that a config without `name` gets the
    // same name (its file stem) in every shard and in the merge.
    if exp.name.is_empty() || exp.name.starts_with('.') || exp.name.contains(['/', '\0']) {
        bail!("the experiment's name `{}` cannot name a file: set `name` in the config", exp.name);
    }
    let config_copy = dir.join(format!("{}.toml", exp.name));
    let hash = config_hash(&exp.source, opts.quick);
    for sub in ["logs", "shards"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomic(&config_copy, exp.source.as_bytes())?;
    let n = opts.shards;
    let mut common = String::new();
    if let Some(p) = &opts.partition {
        common.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    let quick = if opts.quick { " --quick" } else { "" };
    let head = format!(
        "#!/bin/bash\n# Written by pvlock {} (`pvlock slurm`) for {} (config {}).\n",
        crate::version(),
        exp.name,
        crate::shard::short_hash(&hash)
    );
    let shards = format!(
        "{head}#SBATCH --job-name=pvlock-{name}\n#SBATCH --array=1-{n}\n#SBATCH --ntasks=1\n\
         #SBATCH --cpus-per-task={cpus}\n{time}{common}#SBATCH --output={logs}/shard-%a-of-{n}-job-%A.out\n\
         # One shard of the matrix per array task; the runs of shard K are\n\
         # the matrix's runs i with i mod {n} = K - 1, with the seeds of the\n\
         # unsharded run. pvlock pins vCPUs to the CPUs of the allocation.\n\
         set -euo pipefail\n\
         exec {pvlock} compare {config} --shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\" --out {shards_dir}{quick}\n",
        name = exp.name,
        time = opts.time.as_ref().map(|t| format!("#SBATCH --time={t}\n")).unwrap_or_default(),
        logs = dir.join("logs").display(),
        pvlock = sh_path(&pvlock),
        config = sh_path(&config_copy),
        shards_dir = sh_path(&dir.join("shards")),
    );
    let merge = format!(
        "{head}#SBATCH --job-name=pvlock-merge-{name}\n#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=1\n\
         #SBATCH --time=30\n{common}#SBATCH --output={logs}/merge-job-%j.out\n\
         # Submitted twice by submit.sh: afterok (the whole matrix), and\n\
         # afterany with --only-if-incomplete (a partial merge of the shards\n\
         # that finished, written only if some did not).\n\
         set -euo pipefail\n\
         exec {pvlock} merge --out {merged} --config {config} --shards {n}{quick} \"$@\" {shards_dir}\n",
        name = exp.name,
        logs = dir.join("logs").display(),
        pvlock = sh_path(&pvlock),
        merged = sh_path(&dir.join("merged")),
        config = sh_path(&config_copy),
        shards_dir = sh_path(&dir.join("shards")),
    );
    let submit = format!(
        "#!/bin/bash\n# Submits the shards and both merge jobs; prints their job ids.\nset -euo pipefail\n\
         cd {d}\n\
         array=$(sbatch --parsable shards.sbatch); array=${{array%%;*}}\n\
         merge=$(sbatch --parsable --dependency=afterok:$array --kill-on-invalid-dep=yes merge.sbatch); \
         merge=${{merge%%;*}}\n\
         partial=$(sbatch --parsable --dependency=afterany:$array merge.sbatch --only-if-incomplete); \
         partial=${{partial%%;*}}\n\
         echo \"shards: job array $array (tasks 1-{n})\"\necho \"merge: job $merge (afterok:$array)\"\n\
         echo \"partial merge: job $partial (afterany:$array)\"\n",
        d = sh_path(&dir),
    );
    write_atomic(&dir.join("shards.sbatch"), shards.as_bytes())?;
    write_atomic(&dir.join("merge.sbatch"), merge.as_bytes())?;
    write_atomic(&dir.join("submit.sh"), submit.as_bytes())?;
    Ok(Prepared { dir, shards: n, cpus_per_task: cpus, warnings })
}

/// Runs `sbatch --parsable ARGS` in `dir` and returns the job id.
fn sbatch(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run sbatch (is Slurm's client installed and SLURM_CONF set?)")?;
    if !out.status.success() {
        bail!("sbatch {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch {} printed no job id: `{}`", args.join(" "), text.trim());
    }
    Ok(id)
}

/// Submits what [`prepare`] wrote, as `submit.sh` would.
pub fn submit(p: &Prepared) -> Result<Submitted> {
    let array = sbatch(&p.dir, &["shards.sbatch"])?;
    let merge =
        sbatch(&p.dir, &[&format!("--dependency=afterok:{array}"), "--kill-on-invalid-dep=yes", "merge.sbatch"])?;
    let partial_merge =
        sbatch(&p.dir, &[&format!("--dependency=afterany:{array}"), "merge.sbatch", "--only-if-incomplete"])?;
    Ok(Submitted { array, merge, partial_merge })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, shards: u32) -> SlurmOptions {
        let cfg = dir.join("m.toml");
        std::fs::write(&cfg, "workload = \"smoke\"\nvcpus = 2\nhost_cpus = 2\nrepeats = 3\n[lock]\nvariant = [\"pv-v4.8\", \"ticket\"]\n").unwrap();
        SlurmOptions {
            config: cfg,
            shards,
            partition: Some("debug".into()),
            time: Some("10:00".into()),
            cpus_per_task: None,
            out: Some(dir.join("s")),
            quick: false,
            pvlock: "/opt/pvlock/bin/pvlock".into(),
        }
    }

    #[test]
    fn scripts_name_the_array_the_allocation_and_the_dependencies() {
        let d = tempfile::tempdir().unwrap();
        let p = prepare(&opts(d.path(), 3)).unwrap();
        assert_eq!(p.cpus_per_task, 2, "defaults to the matrix's host_cpus");
        assert!(p.warnings.is_empty());
        let s = std::fs::read_to_string(p.dir.join("shards.sbatch")).unwrap();
        for want in [
            "#SBATCH --array=1-3\n",
            "#SBATCH --cpus-per-task=2\n",
            "#SBATCH --partition=debug\n",
            "#SBATCH --time=10:00\n",
            "'/opt/pvlock/bin/pvlock' compare",
            "--shard \"${SLURM_ARRAY_TASK_ID}/3\"",
        ] {
            assert!(s.contains(want), "shards.sbatch lacks {want:?}:\n{s}");
        }
        let sub = std::fs::read_to_string(p.dir.join("submit.sh")).unwrap();
        assert!(sub.contains("--dependency=afterok:$array --kill-on-invalid-dep=yes merge.sbatch"));
        assert!(sub.contains("--dependency=afterany:$array merge.sbatch --only-if-incomplete"));
        assert_eq!(
            std::fs::read_to_string(p.dir.join("m.toml")).unwrap(),
            std::fs::read_to_string(d.path().join("m.toml")).unwrap()
        );
        let m = std::fs::read_to_string(p.dir.join("merge.sbatch")).unwrap();
        assert!(m.contains("merge --out") && m.contains("/s/m.toml' --shards 3 "), "{m}");
        // A second submission into the same directory is refused.
        assert!(prepare(&opts(d.path(), 3)).unwrap_err().to_string().contains("already holds"));
    }

    #[test]
    fn bad_options_are_errors_that_say_why() {
        let d = tempfile::tempdir().unwrap();
        let mut o = opts(d.path(), 7);
        assert!(prepare(&o).unwrap_err().to_string().contains("only 6 runs"));
        o.shards = 2;
        o.partition = Some("a b; rm".into());
        assert!(prepare(&o).unwrap_err().to_string().contains("--partition"));
        o.partition = None;
        o.cpus_per_task = Some(1);
        let p = prepare(&o).unwrap();
        assert!(p.warnings[0].contains("--cpus-per-task=1") && p.warnings[0].contains("host_cpus = 2"));
    }

    #[test]
    fn host_cpus_beyond_the_affinity_names_both_numbers() {
        let allowed = allowed_cpus();
        assert!(allowed >= 1);
        let rc = RunConfig { host_cpus: allowed as u32 + 1, name: "big".into(), ..Default::default() };
        let e = check_host_cpus(&[RunConfig::default(), rc]).unwrap_err().to_string();
        assert!(
            e.contains(&format!("host_cpus = {}", allowed + 1)) && e.contains(&format!("gives {allowed} CPU")),
            "{e}"
        );
        check_host_cpus(&[RunConfig { host_cpus: allowed as u32, ..Default::default() }]).unwrap();
    }
}
