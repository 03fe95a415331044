//! The command-line side of `pvlock merge`, `pvlock slurm` and
//! `pvlock status` (arguments and what they print), kept out of `main.rs`
//! so that the binary only dispatches.

use crate::merge::{merge as do_merge, status as do_status, MergeOptions};
use crate::slurm::{prepare, submit, SlurmOptions};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The merged result directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Write nothing if every run is in and every shard finished (the
    /// `afterany` merge job beside the `afterok` one).
    #[arg(long)]
    pub only_if_incomplete: bool,
    /// The config the shards must be of (with --shards): runs of shards
    /// that left no directory at all are then named missing too.
    #[arg(long, requires = "shards")]
    pub config: Option<PathBuf>,
    /// The shard count the shards must be of (with --config).
    #[arg(long, requires = "config")]
    pub shards: Option<u32>,
    /// With --config: the shards ran with `--quick`.
    #[arg(long, requires = "config")]
    pub quick: bool,
    /// Shard result directories, or directories above them (searched three
    /// levels down for shard.json).
    #[arg(required = true)]
    pub shard_dirs: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct SlurmArgs {
    /// Experiment config (TOML); copied into --out for the jobs.
    pub config: PathBuf,
    /// Array tasks (shards) to cut the matrix into.
    #[arg(long)]
    pub shards: u32,
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit of each shard (Slurm syntax: `30`, `2:00:00`, `1-0`).
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs per shard (default: the matrix's largest host_cpus).
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// Where the scripts, logs, shards and merge go (default:
    /// results/<name>/slurm-<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Shrink durations and repeats, as `compare --quick`.
    #[arg(long)]
    pub quick: bool,
    /// Submit with sbatch and print the job ids (else print how to).
    #[arg(long)]
    pub submit: bool,
    /// The pvlock executable the jobs run (default: this one; it must be
    /// at the same path on the compute nodes).
    #[arg(long)]
    pub pvlock: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Result directories of shards, or directories above them.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Print again every N seconds until every shard has finished.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
}

/// `pvlock merge`: 0 when complete, 1 when partial (written or not).
pub fn merge(a: MergeArgs) -> Result<i32> {
    let expected = match (a.config, a.shards) {
        (Some(config), Some(shards)) => Some(crate::merge::Expected { config, shards, quick: a.quick }),
        _ => None,
    };
    let o = do_merge(&MergeOptions {
        out: a.out.clone(),
        inputs: a.shard_dirs,
        only_if_incomplete: a.only_if_incomplete,
        expected,
    })?;
    print!("{}", o.summary.render());
    if !o.written {
        println!(
            "every run is in and every shard finished: nothing to do (the afterok merge writes {})",
            a.out.display()
        );
        return Ok(0);
    }
    println!("report: {}", a.out.join("report.md").display());
    Ok(if o.summary.partial { 1 } else { 0 })
}

/// `pvlock slurm`.
pub fn slurm(a: SlurmArgs) -> Result<i32> {
    let pvlock = match a.pvlock {
        Some(p) => p,
        None => std::env::current_exe().context("cannot find this executable (give --pvlock)")?,
    };
    let p = prepare(&SlurmOptions {
        config: a.config,
        shards: a.shards,
        partition: a.partition,
        time: a.time,
        cpus_per_task: a.cpus_per_task,
        out: a.out,
        quick: a.quick,
        pvlock,
    })?;
    for w in &p.warnings {
        eprintln!("pvlock: warning: {w}");
    }
    println!(
        "wrote {}/{{shards.sbatch,merge.sbatch,submit.sh}}: {} shards, {} CPUs each",
        p.dir.display(),
        p.shards,
        p.cpus_per_task
    );
    if !a.submit {
        println!("submit with: bash {}/submit.sh", p.dir.display());
        return Ok(0);
    }
    let s = submit(&p)?;
    println!("shards: job array {} (tasks 1-{})", s.array, p.shards);
    println!("merge: job {} (afterok:{})", s.merge, s.array);
    println!("partial merge: job {} (afterany:{})", s.partial_merge, s.array);
    println!("progress: pvlock status {}/shards; result: {}/merged", p.dir.display(), p.dir.display());
    Ok(0)
}

/// `pvlock status`: 0 when every shard has finished, 1 otherwise.
pub fn status(a: StatusArgs) -> Result<i32> {
    loop {
        // Before the first shard starts there is nothing to read yet.
        let (text, done) = match do_status(&a.dirs) {
            Ok(x) => x,
            Err(e) if a.watch.is_some() => (format!("{e:#}\n"), false),
            Err(e) => return Err(e),
        };
        print!("{text}");
        match a.watch {
            Some(secs) if !done => {
                std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
                println!();
            }
            _ => return Ok(if done { 0 } else { 1 }),
        }
    }
}
