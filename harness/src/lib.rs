//! The pvlock harness: experiment configs, running them on the VMM, JSON
//! records, reports. The `pvlock` binary is a thin CLI over this library.

pub mod bench;
pub mod compare;
pub mod config;
pub mod merge;
pub mod output;
pub mod record;
pub mod report;
pub mod repro;
pub mod runner;
pub mod scale_cli;
pub mod shard;
pub mod slurm;
pub mod stats;

/// pvlock's version and git revision (if built from a checkout).
pub fn version() -> &'static str {
    concat!(env!("CARGO_PKG_VERSION"), env!("PVLOCK_GIT_REV"))
}

/// Skips (or, under `CI=true`, fails) a test that needs `/dev/kvm`.
/// Returns true when the test should run.
pub fn kvm_available_for_tests() -> bool {
    match pvlock_vmm::Machine::check_kvm() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
                panic!("CI=true but KVM is not usable: {e}");
            }
            eprintln!("skipping: KVM is not usable here: {e}");
            false
        }
    }
}

/// The values of an experiment's varying keys for one run, e.g.
/// `lock.variant=pv-v4.8,vcpus=4`: the run's identity within its matrix.
pub fn run_key(exp: &config::Experiment, rc: &config::RunConfig) -> String {
    let v = serde_json::to_value(rc).unwrap_or_default();
    exp.varying
        .iter()
        .map(|k| {
            let mut cur = &v;
            for part in k.split('.') {
                cur = cur.get(part).unwrap_or(&serde_json::Value::Null);
            }
            let s = match cur {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{k}={s}")
        })
        .collect::<Vec<_>>()
        .join(",")
}
