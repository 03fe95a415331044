//! `compare --shard`, `merge` and `status` through the binary, on KVM,
//! without a batch system: a merge of every shard is the unsharded matrix;
//! a merge with a shard missing names the missing runs and renders a
//! partial report; shards of different configs are refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pvlock(args: &[&str], paths: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pvlock"));
    c.args(args);
    c.args(paths);
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const CONFIG: &str = "name = \"sh\"\nworkload = \"smoke\"\nvcpus = 2\nhost_cpus = 1\niterations = 1000\n\
                      repeats = 2\nseed = 9\ntimeout_ms = 20000\n[lock]\nvariant = [\"pv-v4.8\", \"ticket\"]\n";

fn shard_dir(out: &Path, k: u32) -> PathBuf {
    let parent = out.join("sh");
    std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains(&format!("-shard-{k}-of-2-")))
        .unwrap_or_else(|| panic!("no shard {k} directory in {}", parent.display()))
}

fn keys(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(dir.join("runs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["run_key"].as_str().unwrap().into(), v["config"]["seed"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn shards_merge_back_and_a_missing_shard_is_named() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("sh.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = d.path().join("r");
    for k in ["1/2", "2/2"] {
        let o = pvlock(&["compare", "--shard", k, "--out"], &[&out, &cfg]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let (s1, s2) = (shard_dir(&out, 1), shard_dir(&out, 2));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(s1.join("shard.json")).unwrap()).unwrap();
    assert_eq!(m["matrix_runs"], 4);
    assert_eq!(m["runs"].as_array().unwrap().len(), 2);
    assert!(s1.file_name().unwrap().to_string_lossy().ends_with(&m["config_hash"].as_str().unwrap()[..12]));

    let st = pvlock(&["status"], &[&out]);
    assert!(
        text(&st).contains("4 of 4 runs in") && text(&st).contains("shard 2/2: 2 of 2 runs (finished)"),
        "{}",
        text(&st)
    );

    // Shard 1 alone: partial, and the missing runs are shard 2's, by name.
    let part = d.path().join("part");
    let o = pvlock(&["merge", "--out"], &[&part, &s1]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("merged 2 of 4 runs") && t.contains("shard 2/2: no result directory"), "{t}");
    for key in ["lock.variant=pv-v4.8", "lock.variant=ticket"] {
        assert!(t.contains(&format!("[{key}] seed=")), "{key} missing from: {t}");
    }
    let report = std::fs::read_to_string(part.join("report.md")).unwrap();
    assert!(
        report.contains("PARTIAL") && report.contains("What is missing") && report.contains("(shard 2/2)"),
        "{report}"
    );
    assert!(part.join("partial").exists() && part.join("env/").is_dir());

    // Both: complete, in matrix order, exactly the unsharded run's keys and seeds.
    let all = d.path().join("all");
    let o = pvlock(&["merge", "--out"], &[&all, &out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!all.join("partial").exists());
    let o = pvlock(&["compare", "--out"], &[&d.path().join("whole"), &cfg]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(keys(&all), keys(&d.path().join("whole/sh/latest")));
    // The afterany job's mode writes nothing when the matrix is complete.
    let o = pvlock(&["merge", "--only-if-incomplete", "--out"], &[&d.path().join("none"), &out]);
    assert!(o.status.success() && !d.path().join("none").exists(), "{}", text(&o));
    // A second merge into the same directory is refused.
    let o = pvlock(&["merge", "--out"], &[&all, &out]);
    assert_eq!(o.status.code(), Some(2));

    // A shard of an edited config does not merge: both hashes are named.
    let cfg2 = d.path().join("sh2.toml");
    std::fs::write(&cfg2, CONFIG.replace("iterations = 1000", "iterations = 1001")).unwrap();
    let out2 = d.path().join("r2");
    let o = pvlock(&["compare", "--shard", "2/2", "--out"], &[&out2, &cfg2]);
    assert!(o.status.success(), "{}", text(&o));
    let o = pvlock(&["merge", "--out"], &[&d.path().join("mixed"), &s1, &shard_dir(&out2, 2)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("differ in config hash") && text(&o).contains(&m["config_hash"].as_str().unwrap()[..12]),
        "{}",
        text(&o)
    );
    let _ = s2;
}

#[test]
fn bad_shard_arguments_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("sh.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    for (arg, want) in [("3/2", "K must be in 1..=2"), ("0/2", "count from 1"), ("1", "expected K/N")] {
        let o = pvlock(&["compare", "--shard", arg], &[&cfg]);
        assert_eq!(o.status.code(), Some(2), "{arg}");
        assert!(text(&o).contains(want), "{arg}: {}", text(&o));
    }
    let o = pvlock(&["merge", "--out"], &[&d.path().join("m"), d.path()]);
    assert!(text(&o).contains("no shard result directories"), "{}", text(&o));
}

#[test]
fn a_merge_of_no_shard_with_the_config_names_every_run_missing() {
    // What the afterany merge job does when every shard failed before
    // writing anything: the config and shard count come from the job.
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("sh.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let empty = d.path().join("shards");
    std::fs::create_dir(&empty).unwrap();
    let out = d.path().join("m");
    let o = pvlock(&["merge", "--shards", "2", "--config"], &[&cfg, Path::new("--out"), &out, &empty]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("merged 0 of 4 runs") && t.contains("shard 1/2: no result directory"), "{t}");
    assert_eq!(t.matches("] seed=").count(), 4, "{t}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("PARTIAL") && report.contains("[lock.variant=ticket] seed="), "{report}");
    // --shards without --config is refused by the parser.
    let o = pvlock(&["merge", "--shards", "2", "--out"], &[&d.path().join("x"), &empty]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
