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
