//! The machine's configuration: plain data, validated once.

use pvlock_abi::{LockParams, TortureParams, WindowParams, Workload, MAX_VCPUS};
use serde::{Deserialize, Serialize};

/// pv_wait's contract (`[hypervisor] wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WaitContract {
    /// Block only while the byte still equals the expected value (KVM's
    /// `kvm_wait()` re-check before `hlt`).
    #[default]
    Checked,
    /// Block regardless of the byte (the 2016 pSeries proposal: yield
    /// without re-checking).
    Unchecked,
}

/// pv_kick's contract (`[hypervisor] kick`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KickContract {
    /// A kick to a running vCPU is kept until its next wait (KVM's
    /// `pv_unhalted`, Xen's pending event).
    #[default]
    Remembered,
    /// A kick that arrives while the target is not waiting is dropped: a
    /// fault model that shows which algorithms rely on remembered kicks.
    LostIfNotWaiting,
}

/// The hypervisor half's knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HypervisorConfig {
    pub wait: WaitContract,
    pub kick: KickContract,
    /// Poll for a kick this long before blocking the vCPU thread (KVM's halt
    /// polling). 0 = block at once.
    pub halt_poll_us: u64,
    /// Poll even when more vCPU threads are runnable than host CPUs (KVM
    /// would not).
    pub halt_poll_overcommitted: bool,
    /// A wait blocked longer than this while the run is live is a hang.
    pub stall_timeout_ms: u64,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            wait: WaitContract::Checked,
            kick: KickContract::Remembered,
            halt_poll_us: 0,
            halt_poll_overcommitted: false,
            stall_timeout_ms: 1000,
        }
    }
}

/// Everything a run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineConfig {
    pub vcpus: u32,
    /// vCPU threads are pinned to host CPUs `0..host_cpus` (round robin).
    /// 0 = do not pin.
    pub host_cpus: u32,
    pub ram_mib: u32,
    pub seed: u64,
    /// Guest-timed run length (workloads that run by time).
    pub duration_ms: u64,
    /// The VMM gives up this long after start: the run is a hang.
    pub timeout_ms: u64,
    #[serde(skip)]
    pub workload: Option<Workload>,
    pub iterations: u64,
    #[serde(skip)]
    pub lock: LockParams,
    #[serde(skip)]
    pub torture: TortureParams,
    #[serde(skip)]
    pub windows: WindowParams,
    pub hypervisor: HypervisorConfig,
    /// How long a vCPU stalls when the guest stops at an enabled race window.
    pub window_stall_us: u64,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpus: 4,
            host_cpus: 2,
            ram_mib: 64,
            seed: 1,
            duration_ms: 1000,
            timeout_ms: 30_000,
            workload: Some(Workload::Smoke),
            iterations: 20_000,
            lock: LockParams::default(),
            torture: TortureParams::default(),
            windows: WindowParams::default(),
            hypervisor: HypervisorConfig::default(),
            window_stall_us: 200,
        }
    }
}

impl MachineConfig {
    /// Checks what the VMM itself relies on (the harness checks the rest and
    /// names config keys; this is the last line of defence).
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.vcpus as usize > MAX_VCPUS {
            return Err(format!(
                "vcpus = {} is out of range 1..={MAX_VCPUS}",
                self.vcpus
            ));
        }
        let ram = self.ram_mib as u64 * 1024 * 1024;
        if !(pvlock_abi::MIN_RAM_BYTES..=pvlock_abi::MAX_RAM_BYTES).contains(&ram) {
            return Err(format!(
                "ram_mib = {} is out of range {}..={}",
                self.ram_mib,
                pvlock_abi::MIN_RAM_BYTES >> 20,
                pvlock_abi::MAX_RAM_BYTES >> 20
            ));
        }
        if self.workload.is_none() {
            return Err("no workload".into());
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be > 0".into());
        }
        Ok(())
    }
}
