//! Keys that only some runs read: a kernel variant's build inputs, the
//! mutex and page-wake workloads' variants. Such a key set (in the file
//! or by its flag) while no run of the experiment reads it would be
//! ignored without a word, so it is an error naming the key and its line.
//!
//! A key that at least one run reads is accepted for every run: a matrix
//! that mixes kernel and Rust variants (`lock.variant = ["pv-upstream",
//! "kernel-pv"]`) shares one `lock.kernel_tree`, and the TOML cannot give
//! it to one axis value only (the other runs' records still show the
//! value as the config gave it; their variant says it was not built).

use super::{locate::Locator, ConfigError, Overrides, RunConfig};
use pvlock_abi::Workload;

/// A key, whether a run reads it, and who does (for the message).
struct Applies {
    key: &'static str,
    reads: fn(&RunConfig) -> bool,
    readers: &'static str,
}

fn kernel(rc: &RunConfig) -> bool {
    rc.lock.variant.is_kernel()
}

const KERNEL: &str = "the kernel variants (kernel-pv, kernel-native)";

const KEYS: &[Applies] = &[
    Applies { key: "lock.kernel_tree", reads: kernel, readers: KERNEL },
    Applies { key: "lock.kernel_patches", reads: kernel, readers: KERNEL },
    Applies { key: "lock.kernel_flavour", reads: kernel, readers: KERNEL },
    Applies { key: "lock.kernel_nr_cpus", reads: kernel, readers: KERNEL },
    Applies { key: "lock.kernel_lock_events", reads: kernel, readers: KERNEL },
    Applies { key: "lock.kernel_sites", reads: kernel, readers: KERNEL },
    Applies {
        key: "lock.mutex",
        reads: |rc| rc.workload == Workload::MutexTorture,
        readers: "workload = \"mutex-torture\"",
    },
    Applies {
        key: "lock.mutex_recursive",
        reads: |rc| rc.workload == Workload::MutexTorture,
        readers: "workload = \"mutex-torture\"",
    },
    Applies {
        key: "lock.page_wake",
        reads: |rc| rc.workload == Workload::PageWake,
        readers: "workload = \"page-wake\"",
    },
];

/// Refuses a key of [`KEYS`] that the file or the command line sets while
/// no run of `runs` reads it.
pub fn check(runs: &[RunConfig], loc: &Locator, overrides: &Overrides) -> Result<(), ConfigError> {
    for a in KEYS {
        if runs.iter().any(a.reads) {
            continue;
        }
        let why = format!("read by {} only, and no run of this experiment is one: it would be ignored", a.readers);
        if let Some((flag, val)) = overrides.flag_of(a.key) {
            let why = format!("{val}: {why}");
            return Err(ConfigError { file: "command line".into(), line: None, key: flag.into(), why });
        }
        if loc.line_of_key(a.key).is_some() {
            return Err(loc.error(a.key, why));
        }
    }
    Ok(())
}
