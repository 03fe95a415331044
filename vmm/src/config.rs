//! The machine's configuration: plain data, validated once.

use pvlock_abi::{LockParams, TortureParams, Window, WindowParams, Workload, MAX_VCPUS};

/// pv_wait's contract (`[hypervisor] wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
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
#[derive(Clone, Debug, PartialEq)]
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
    /// Delay between a kick store and its delivery. Non-zero routes kicks
    /// through the VMM (an exit for the kicker) instead of ioeventfds.
    pub kick_delay_us: u64,
    /// Probability that a blocking wait ends spuriously (after a short
    /// random delay) without a kick.
    pub spurious_wakeup_prob: f64,
    /// Period of a simulated interrupt that ends any wait (0 = none): a
    /// guest that waits with interrupts enabled.
    pub interrupt_us: u64,
    /// On a detected missed wakeup, kick the blocked vCPU, count it and go
    /// on instead of ending the run as a hang.
    pub rescue: bool,
    /// A head blocked on a lock whose state cannot lead to a kick, for this
    /// long with nobody stalled, is a missed wakeup (lock-aware detector).
    pub detect_ms: u64,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            wait: WaitContract::Checked,
            kick: KickContract::Remembered,
            halt_poll_us: 0,
            halt_poll_overcommitted: false,
            stall_timeout_ms: 1000,
            kick_delay_us: 0,
            spurious_wakeup_prob: 0.0,
            interrupt_us: 0,
            rescue: false,
            detect_ms: 100,
        }
    }
}

/// Everything a run needs.
#[derive(Clone, Debug, PartialEq)]
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
    pub workload: Option<Workload>,
    pub iterations: u64,
    pub lock: LockParams,
    pub torture: TortureParams,
    pub windows: WindowParams,
    pub hypervisor: HypervisorConfig,
    pub preempt: PreemptConfig,
    /// Entries of each vCPU's trace ring (a power of two, at most
    /// `pvlock_abi::vcpu::MAX_TRACE_LEN`); 0 = tracing off.
    pub trace_len: u64,
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
            preempt: PreemptConfig::default(),
            trace_len: DEFAULT_TRACE_LEN,
        }
    }
}

/// Trace ring entries per vCPU by default: the last ~16K events (384 KiB).
pub const DEFAULT_TRACE_LEN: u64 = 1 << 14;

/// Bytes of RAM the trace rings of `vcpus` vCPUs take.
pub fn trace_bytes(vcpus: u32, trace_len: u64) -> u64 {
    vcpus as u64 * trace_len * std::mem::size_of::<pvlock_abi::TraceEntry>() as u64
}

impl MachineConfig {
    /// Checks what the VMM itself relies on (the harness checks the rest and
    /// names config keys; this is the last line of defence).
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.vcpus as usize > MAX_VCPUS {
            return Err(format!("vcpus = {} is out of range 1..={MAX_VCPUS}", self.vcpus));
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
        if self.trace_len != 0
            && (!self.trace_len.is_power_of_two() || self.trace_len > pvlock_abi::vcpu::MAX_TRACE_LEN)
        {
            return Err(format!(
                "trace_len = {} is not 0 or a power of two up to {}",
                self.trace_len,
                pvlock_abi::vcpu::MAX_TRACE_LEN
            ));
        }
        Ok(())
    }
}

/// Distribution of injected stall lengths.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum StallDist {
    #[default]
    Fixed,
    /// Uniform on `0..=2 * stall_us` (mean `stall_us`).
    Uniform,
    /// Exponential with mean `stall_us`.
    Exponential,
}

/// Random preemption: per vCPU, stalls arrive as a Poisson process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomStalls {
    pub mean_interval_us: u64,
    pub stall_us: u64,
    pub dist: StallDist,
}

/// What releases a vCPU held at a window by a schedule rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldUntil {
    /// Another vCPU reaches this window.
    Window(Window),
    /// Another vCPU blocks in a pv_wait.
    Blocked,
    /// Another vCPU blocks in a pv_wait on its own lock's word (a queue
    /// head in pv_wait_head_or_lock).
    HeadBlocked,
    /// Only the timeout.
    Timeout,
}

/// "Hold a vCPU at window `at` until `until`, or `timeout_us`": a directed
/// interleaving.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HoldRule {
    pub at: Window,
    /// Only this vCPU (any vCPU if None).
    pub cpu: Option<u32>,
    pub until: HoldUntil,
    pub timeout_us: u64,
    /// How many holds this rule performs (0 = unlimited).
    pub count: u32,
    /// Hold only if the holding vCPU's MCS successor is still running (its
    /// node state is `vcpu_running` and it is not blocked): R1's
    /// precondition, read from guest memory at the window.
    pub successor_running: bool,
}

/// Periodically stall whichever vCPU holds torture lock `lock`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HolderStalls {
    pub lock: u32,
    pub interval_us: u64,
    pub stall_us: u64,
}

/// Deliberate preemption (`[preempt]`), all parts combinable.
#[derive(Clone, Debug, PartialEq)]
pub struct PreemptConfig {
    /// Stall length at a window the guest chose to stall at (no rule).
    pub window_stall_us: u64,
    pub random: Option<RandomStalls>,
    pub schedule: Vec<HoldRule>,
    pub holder: Option<HolderStalls>,
}

impl Default for PreemptConfig {
    fn default() -> Self {
        Self { window_stall_us: 200, random: None, schedule: Vec::new(), holder: None }
    }
}
