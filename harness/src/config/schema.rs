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
            lock_layout: None,
        }
    }
}

/// `pvlock list workloads`.
pub fn workload_names() -> String {
    Workload::NAMES.join(", ")
}
