//! The `pvlock` binary: exit codes and error messages.

use std::process::Command;

fn pvlock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pvlock"))
}

#[test]
fn invalid_config_names_the_key_and_exits_2() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.toml");
    std::fs::write(&p, "vcpus = 4\n[lock]\nvariant = \"pv-v9.9\"\n").unwrap();
    let out = pvlock().args(["run"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`lock.variant`") && err.contains("bad.toml:3"), "{err}");
}

#[test]
fn bad_values_name_key_and_line_before_any_run() {
    let d = tempfile::tempdir().unwrap();
    for (text, key, line) in [
        ("[torture]\nirq_prob = nan\n", "torture.irq_prob", 2),
        ("name = \"x\"\nvcpus = \"four\"\n", "vcpus", 2),
        (
            "[[preempt.schedule]]\nat = \"handoff\"\n[[preempt.schedule]]\nuntil = \"blocked\"\n",
            "preempt.schedule[1]",
            3,
        ),
        ("[preempt]\nholder_stall_us = 9223372036854775807\n", "preempt.holder_stall_us", 2),
        ("vcpus = 2\nhost_cpus = 1024\n", "host_cpus", 2),
    ] {
        let p = d.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        let out = pvlock().args(["run"]).arg(&p).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(&format!("`{key}`")) && err.contains(&format!("bad.toml:{line}")), "{text}: {err}");
        assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "nothing ran: {text}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = pvlock().args(["run", "/nonexistent/x.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
}

#[test]
fn run_writes_a_json_record_and_a_crash_exits_nonzero() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, "workload = \"fault\"\nvcpus = 2\ntimeout_ms = 10000\n").unwrap();
    let json = d.path().join("r.json");
    let out = pvlock().args(["run"]).arg(&cfg).arg("--json").arg(&json).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for key in ["schema_version", "config", "status", "vcpus", "host_cpus", "duration_ms", "per_vcpu", "checks"] {
        assert!(v.get(key).is_some(), "record lacks `{key}`");
    }
    assert_eq!(v["status"], "guest-crash");
}

#[test]
fn missing_kvm_device_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, "workload = \"smoke\"\nvcpus = 1\nhost_cpus = 1\n").unwrap();
    let out = pvlock().args(["run"]).arg(&cfg).env("PVLOCK_KVM_DEVICE", "/nonexistent/kvm").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open /nonexistent/kvm") && err.contains("access to /dev/kvm"), "{err}");
}

#[test]
fn a_matrix_killed_midway_leaves_runs_that_report_renders() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("m.toml");
    std::fs::write(
        &cfg,
        "name = \"killme\"\nworkload = \"torture\"\nvcpus = 2\nhost_cpus = 2\nduration_ms = 300\nrepeats = 20\n[lock]\nvariant = [\"pv-v4.8\", \"pv-upstream\"]\n",
    )
    .unwrap();
    let out_dir = d.path().join("results");
    let mut child = pvlock().args(["compare"]).arg(&cfg).arg("--out").arg(&out_dir).spawn().unwrap();
    // Wait for at least two finished runs, then kill without warning.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let dir = loop {
        let latest = out_dir.join("killme").join("latest");
        let lines = std::fs::read_to_string(latest.join("runs.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
        if lines >= 2 {
            break std::fs::canonicalize(&latest).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no runs finished");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dir.join("partial").exists(), "a killed matrix stays marked partial");
    let out = pvlock().args(["report"]).arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("PARTIAL"), "{md}");
    assert!(md.contains("pv-v4.8"));
}

#[test]
fn ctrl_c_stops_the_vcpus_and_writes_an_aborted_record() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("long.toml");
    std::fs::write(
        &cfg,
        "workload = \"torture\"\nvcpus = 2\nhost_cpus = 2\nduration_ms = 60000\ntimeout_ms = 120000\n",
    )
    .unwrap();
    let json = d.path().join("r.json");
    let child = pvlock().args(["run"]).arg(&cfg).arg("--json").arg(&json).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(t.elapsed().as_secs() < 20, "Ctrl-C did not stop the run promptly");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["status"], "aborted");
    assert!(v["acquisitions"].as_u64().unwrap() > 0, "the partial record keeps what was done");
    assert!(v["latency_ns"]["count"].as_u64().unwrap() > 0, "the partial record keeps the latency histogram");
}
