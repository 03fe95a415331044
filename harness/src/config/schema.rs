//! The schema of one run: the top-level keys of a config, with the VMM's
//! own section types embedded as they are (`[lock]`, `[torture]`,
//! `[hypervisor]`, `[preempt]`), and its lowering to a [`MachineConfig`].

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
        }
    }
}

/// Most runs one matrix point may repeat.
pub const MAX_REPEATS: u32 = 10_000;

impl RunConfig {
    /// Checks every value; the error names the key (the experiment adds
    /// the file line).
    pub fn validate(&self) -> Result<(), InvalidValue> {
        pvlock_vmm::config::check_range("repeats", self.repeats, 1, MAX_REPEATS)?;
        self.machine().validate()
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

/// Trace ring entries per vCPU with `--trace` (6 MiB per vCPU): every
/// event of a run of a few hundred ms under contention.
pub const TRACE_ENTRIES_FOR_EXPORT: u64 = 1 << 18;

/// `pvlock list workloads`.
pub fn workload_names() -> String {
    Workload::NAMES.join(", ")
}
