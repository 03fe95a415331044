//! `pvlock slurm --submit` on a real single-node Slurm (started by
//! `.ci/slurm` under a temp dir): a small matrix as 2 shards, merged by the
//! dependent job, must hold exactly the run keys and seeds of the same
//! matrix run unsharded. Under `CI=true` it runs or fails loudly; elsewhere
//! it skips, saying why, when Slurm is not installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/slurm")
}

fn pvlock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pvlock"))
}

/// The cluster, stopped (exactly what `start` started) when dropped.
struct Cluster {
    state: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(state: PathBuf) -> Self {
        let out = Command::new("bash").arg(script()).arg("start").arg(&state).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let conf = stdout.lines().find_map(|l| l.strip_prefix("SLURM_CONF=")).map(str::to_string);
        let c = Self { state, conf: conf.unwrap_or_default() };
        assert!(
            out.status.success() && !c.conf.is_empty(),
            ".ci/slurm start failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", &self.conf);
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = Command::new("bash").arg(script()).arg("stop").arg(&self.state).output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!(".ci/slurm stop: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }
}

/// (run key, seed) of every record of `dir/runs.jsonl`, in file order.
fn run_ids(dir: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(dir.join("runs.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["run_key"].as_str().unwrap().to_string(), v["config"]["seed"].as_u64().unwrap())
        })
        .collect()
}

fn job_id(stdout: &str, prefix: &str) -> String {
    let line = stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in {stdout}"));
    line[prefix.len()..].split_whitespace().next().unwrap().to_string()
}

/// `pvlock slurm CFG --submit` into `sub`, then waits (polling squeue,
/// with a deadline) until none of its three jobs is left; returns their ids
/// (array, afterok merge, afterany merge).
fn submit_and_wait(cluster: &Cluster, cfg: &Path, sub: &Path, extra: &[&str]) -> [String; 3] {
    let out = pvlock()
        .env("SLURM_CONF", &cluster.conf)
        .arg("slurm")
        .arg(cfg)
        .args(["--shards", "2", "--time", "5", "--submit", "--out"])
        .arg(sub)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "pvlock slurm --submit: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let jobs =
        [job_id(&stdout, "shards: job array "), job_id(&stdout, "merge: job "), job_id(&stdout, "partial merge: job ")];
    // Poll (sbatch --wait backs off to 32 s) until no job of ours is left.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let q = cluster.cmd("squeue").args(["-h", "-o", "%i %T %r", "-j", &jobs.join(",")]).output().unwrap();
        let left = String::from_utf8_lossy(&q.stdout).into_owned();
        if q.status.success() && left.trim().is_empty() {
            return jobs;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = std::fs::read_dir(sub.join("logs"))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| {
                            format!(
                                "{}:\n{}",
                                e.path().display(),
                                std::fs::read_to_string(e.path()).unwrap_or_default()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            panic!("jobs still queued after 120 s:\n{left}{}\n{}", String::from_utf8_lossy(&q.stderr), logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn slurm_shards_merge_to_the_unsharded_matrix() {
    let have_slurm = ["slurmctld", "slurmd", "sbatch", "munged"].iter().all(|c| {
        Command::new("sh").arg("-c").arg(format!("command -v {c}")).output().is_ok_and(|o| o.status.success())
    });
    if !have_slurm {
        assert!(!ci(), "CI=true but Slurm is not installed (.ci/run installs it with `.ci/slurm install`)");
        eprintln!("skipping: Slurm (slurmctld, slurmd, sbatch, munged) is not installed; `.ci/slurm install`");
        return;
    }
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    // slurmd runs jobs as their submitter and
    // /dev/kvm is root's, so the cluster needs root.
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        assert!(!ci(), "CI=true but not root: the test cluster needs root");
        eprintln!("skipping: the single-node Slurm cluster needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(d.path().join("slurm"));
    // 3 variants x 2 repeats = 6 runs; one host CPU per shard, so both
    // shards run at once on two CPUs.
    let cfg = d.path().join("m.toml");
    std::fs::write(
        &cfg,
        "name = \"sharded\"\nworkload = \"smoke\"\nvcpus = 2\nhost_cpus = 1\niterations = 2000\nrepeats = 2\n\
         seed = 42\ntimeout_ms = 20000\n[lock]\nvariant = [\"pv-v4.8\", \"ticket\", \"pv-upstream\"]\n",
    )
    .unwrap();
    let sub = d.path().join("sub");
    let jobs = submit_and_wait(&cluster, &cfg, &sub, &[]);
    let merged = sub.join("merged");
    let log = |name: &str| std::fs::read_to_string(sub.join("logs").join(name)).unwrap_or_default();
    assert!(
        merged.join("merge.json").exists(),
        "no merge was written; merge log: {}",
        log(&format!("merge-job-{}.out", jobs[1]))
    );
    assert!(
        !merged.join("partial").exists(),
        "the merge of all shards is partial: {}",
        std::fs::read_to_string(merged.join("partial")).unwrap_or_default()
    );
    assert!(merged.join("report.md").exists() && merged.join("plots").is_dir());
    // The afterany job saw a complete matrix and wrote nothing.
    assert!(
        log(&format!("merge-job-{}.out", jobs[2])).contains("nothing to do"),
        "{}",
        log(&format!("merge-job-{}.out", jobs[2]))
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("merge.json")).unwrap()).unwrap();
    assert_eq!(summary["matrix_runs"], 6);
    assert_eq!(summary["merged_runs"], 6);
    let jobs_seen: BTreeSet<&str> =
        summary["inputs"].as_array().unwrap().iter().map(|i| i["slurm_job"].as_str().unwrap()).collect();
    assert_eq!(jobs_seen, [format!("{}_1", jobs[0]), format!("{}_2", jobs[0])].iter().map(String::as_str).collect());

    // The same matrix, unsharded, on this host.
    let out = pvlock().arg("compare").arg(&cfg).arg("--out").arg(d.path().join("whole")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let whole = d.path().join("whole/sharded/latest");
    let want = run_ids(&whole);
    assert_eq!(want.len(), 6);
    // Merged in matrix order: the same keys and seeds, in the same order.
    assert_eq!(run_ids(&merged), want);

    // A shard that fails: run 1 (shard 2 of 2) pins to 2 host CPUs, the
    // allocation gives 1. The afterok merge is cancelled; the afterany
    // one writes a partial merge that names run 1 as missing.
    let cfg2 = d.path().join("fail.toml");
    std::fs::write(
        &cfg2,
        "name = \"halfway\"\nworkload = \"smoke\"\nvcpus = 2\nhost_cpus = [1, 2]\niterations = 2000\ntimeout_ms = 20000\n",
    )
    .unwrap();
    let sub2 = d.path().join("sub2");
    let jobs = submit_and_wait(&cluster, &cfg2, &sub2, &["--cpus-per-task", "1"]);
    let log2 = |name: &str| std::fs::read_to_string(sub2.join("logs").join(name)).unwrap_or_default();
    let failed = log2(&format!("shard-2-of-2-job-{}.out", jobs[0]));
    assert!(failed.contains("host_cpus = 2") && failed.contains("gives 1 CPU"), "shard 2 log: {failed}");
    assert!(!sub2.join("logs").join(format!("merge-job-{}.out", jobs[1])).exists(), "the afterok merge ran");
    let merged = sub2.join("merged");
    let partial = std::fs::read_to_string(merged.join("partial")).unwrap_or_else(|e| {
        panic!("no partial merge ({e}); afterany log: {}", log2(&format!("merge-job-{}.out", jobs[2])))
    });
    assert!(
        partial.contains("merged 1 of 2 runs")
            && partial.contains("#1 [host_cpus=2]")
            && partial.contains("(shard 2/2)"),
        "{partial}"
    );
    let report = std::fs::read_to_string(merged.join("report.md")).unwrap();
    assert!(report.contains("PARTIAL") && report.contains("#1 [host_cpus=2]"), "{report}");
}
