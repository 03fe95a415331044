//! The schema of one run: the top-level keys of a config, with the VMM's
//! own section types embedded as they are (`[lock]`, `[torture]`,
//! `[hypervisor]`, `[preempt]`), and its lowering to a [`MachineConfig`].

use super::expect::{ExpectRule, Expected, TypedRule};
use pvlock_abi::Workload;
use pvlock_vmm::{HypervisorConfig, InvalidValue, LockConfig, MachineConfig, PreemptConfig, TortureConfig};
use serde::{Deserialize, Serialize};

/// One concrete run (every list resolved to one value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Experiment name (defaults to the file name).
    pub name: String,
    pub description: String,
    /// `pvlock list workloads`.
    pub workload: Workload,
    pub vcpus: u32,
    /// Host CPUs the vCPU threads are pinned to (0 = no pinning).
    pub host_cpus: u32,
    pub ram_mib: u32,
    pub seed: u64,
    /// Guest-timed run length, ms (torture).
    pub duration_ms: u64,
    /// Per-run timeout, ms: a run still going is a hang.
    pub timeout_ms: u64,
    /// Per-vCPU iterations of counting workloads (smoke, ping-pong, doorbells).
    pub iterations: u64,
    /// Runs per matrix point; repeat r gets seed
    /// `pvlock_abi::seed::repeat_seed(seed, r)`.
    pub repeats: u32,
    /// Entries of each vCPU's event trace ring (a power of two; 0 = off).
    /// The ring always keeps the last events before a failure; `--trace`
    /// raises it to [`TRACE_ENTRIES_FOR_EXPORT`].
    pub trace_entries: u64,
    pub lock: LockConfig,
    pub torture: TortureConfig,
    pub hypervisor: HypervisorConfig,
    pub preempt: PreemptConfig,
    /// `[[expect]]`: which runs must fail (known-buggy variants, mutants,
    /// fault models); see [`super::expect`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<ExpectRule>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            workload: Workload::Smoke,
            vcpus: 4,
            host_cpus: 2,
            ram_mib: 64,
            seed: 1,
            duration_ms: 1000,
            timeout_ms: 60_000,
            iterations: 20_000,
            repeats: 1,
            trace_entries: pvlock_vmm::config::DEFAULT_TRACE_LEN,
            lock: LockConfig::default(),
            torture: TortureConfig::default(),
            hypervisor: HypervisorConfig::default(),
            preempt: PreemptConfig::default(),
            expect: Vec::new(),
        }
    }
}

/// The largest seed, everywhere (config `seed`, `run --seed`, `repro
/// --seed-base` and its last seed): TOML integers are i64, and a recorded
/// seed must go back into a config to reproduce its run. Derived repeat
/// seeds stay below it too ([`pvlock_abi::seed::repeat_seed`]).
pub const MAX_SEED: u64 = i64::MAX as u64;

/// Most runs one matrix point may repeat.
pub const MAX_REPEATS: u32 = 10_000;

impl RunConfig {
    /// Checks every value; the error names the key (the experiment adds
    /// the file line).
    pub fn validate(&self) -> Result<(), InvalidValue> {
        pvlock_vmm::config::check_range("repeats", self.repeats, 1, MAX_REPEATS)?;
        pvlock_vmm::config::check_range("seed", self.seed, 0, MAX_SEED)?;
        self.expect_rules()?;
        self.machine().validate()
    }

    /// A kernel variant's tree and patches exist (checked before any run,
    /// with the host: not after a result directory was made).
    pub fn check_kernel_inputs(&self) -> Result<(), InvalidValue> {
        if crate::kernel::spec_of(self)?.is_none() {
            return Ok(());
        }
        for p in &self.lock.kernel_patches {
            if let Some(why) = patch_problem(p) {
                return Err(InvalidValue::new("lock.kernel_patches", format!("{}: {why}", p.display())));
            }
        }
        if let Some(t) = &self.lock.kernel_tree {
            // The tree's own check (a directory, a Makefile with a version,
            // kernel/locking/qspinlock.c, a layout pvlock builds).
            check_kernel_tree(t).map_err(|why| InvalidValue::new("lock.kernel_tree", why))?;
        }
        Ok(())
    }

    /// The `[[expect]]` rules with their values typed (errors name the
    /// rule's key).
    pub fn expect_rules(&self) -> Result<Vec<TypedRule>, InvalidValue> {
        self.expect
            .iter()
            .enumerate()
            .map(|(i, r)| Ok(TypedRule { keys: r.alternatives(i)?, outcome: r.outcome }))
            .collect()
    }

    /// What this run must end as (`ok` unless an `[[expect]]` rule
    /// selects it).
    pub fn expected(&self) -> Expected {
        if self.expect.is_empty() {
            return Expected::Ok;
        }
        match (self.expect_rules(), toml::Value::try_from(self)) {
            (Ok(rules), Ok(me)) => super::expect::expected_of(&rules, &me),
            // Validated configs do not get here.
            _ => Expected::Ok,
        }
    }

    /// The VMM's view of this run.
    pub fn machine(&self) -> MachineConfig {
        MachineConfig {
            vcpus: self.vcpus,
            host_cpus: self.host_cpus,
            ram_mib: self.ram_mib,
            seed: self.seed,
            duration_ms: self.duration_ms,
            timeout_ms: self.timeout_ms,
            workload: self.workload,
            iterations: self.iterations,
            lock: self.lock.clone(),
            torture: self.torture.clone(),
            hypervisor: self.hypervisor.clone(),
            preempt: self.preempt.clone(),
            trace_len: self.trace_entries,
            lock_layout: None,
            sites: None,
        }
    }

    /// For `--trace`: a ring big enough for a whole short run, and the RAM
    /// to hold it.
    pub fn enable_trace_export(&mut self) {
        self.trace_entries = self.trace_entries.max(TRACE_ENTRIES_FOR_EXPORT);
        let need = (8u64 << 20)
            + self.vcpus as u64 * pvlock_abi::STACK_SIZE
            + pvlock_vmm::config::trace_bytes(self.vcpus, self.trace_entries);
        self.ram_mib = self.ram_mib.max(need.div_ceil(1 << 20) as u32 + 8);
    }
}

/// Checks that `t` is a kernel tree pvlock builds ([`crate::kernel::Tree`]),
/// saying what it is otherwise (a file, a symlink loop, unreadable).
pub fn check_kernel_tree(t: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(t) {
        Ok(m) if !m.is_dir() => return Err(format!("{}: not a directory", t.display())),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("{}: {e}", t.display())),
        _ => {}
    }
    crate::kernel::Tree::open(t).map(|_| ()).map_err(|e| e.to_string())
}

/// Why the file `p` cannot be a kernel patch, if it cannot: it must be a
/// readable regular file (not a directory or a device) holding a unified
/// diff, and not absurdly large (the kernel's biggest single-file changes
/// to the lock code are a few hundred KiB).
pub fn patch_problem(p: &std::path::Path) -> Option<String> {
    const MAX_PATCH_BYTES: u64 = 16 << 20;
    let m = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("no such file".into()),
        Err(e) => return Some(e.to_string()),
    };
    if !m.is_file() {
        return Some("not a regular file".into());
    }
    if m.len() > MAX_PATCH_BYTES {
        return Some(format!(
            "{} bytes: larger than {} MiB, not a patch of the lock code",
            m.len(),
            MAX_PATCH_BYTES >> 20
        ));
    }
    let text = match std::fs::read(p) {
        Ok(t) => t,
        Err(e) => return Some(format!("cannot read it: {e}")),
    };
    if text.is_empty() {
        return Some("empty (a patch that changes nothing is a mistake)".into());
    }
    if text.contains(&0) {
        return Some("a binary file, not a unified diff".into());
    }
    let text = String::from_utf8_lossy(&text);
    if !text.lines().any(|l| l.starts_with("@@ ")) || !text.lines().any(|l| l.starts_with("+++ ")) {
        return Some("no unified-diff hunk (`+++ ` and `@@ ` lines)".into());
    }
    None
}

/// Trace ring entries per vCPU with `--trace` (6 MiB per vCPU): every
/// event of a run of a few hundred ms under contention.
pub const TRACE_ENTRIES_FOR_EXPORT: u64 = 1 << 18;

/// `pvlock list workloads`.
pub fn workload_names() -> String {
    Workload::NAMES.join(", ")
}
