//! The pvlock harness: experiment configs, running them on the VMM, JSON
//! records, reports. The `pvlock` binary is a thin CLI over this library.

pub mod config;
pub mod output;
pub mod record;
pub mod report;
pub mod runner;
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
