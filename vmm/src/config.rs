//! The machine's configuration: typed data, validated once.
//!
//! These types are also the sections of an experiment config
//! (`configs/*.toml`, `configs/README.md`): the harness embeds them as they
//! are, so every key has one type, one default and one range check, here.
//! Names (variants, windows, contracts, distributions) deserialize from
//! their config spelling once; after that everything is typed.

use pvlock_abi::lockword::LockLayout;
use pvlock_abi::{
    LockParams, MutexVariant, PageWakeVariant, TortureParams, Variant, Window, WindowParams, Workload, MAX_MUTEXES,
    MAX_VCPUS,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A value out of its range: the config key and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {why}")]
pub struct InvalidValue {
    /// Dotted config key, with `[i]` for an element of a list of tables
    /// (`preempt.schedule[1].cpu`).
    pub key: String,
    pub why: String,
}

impl InvalidValue {
    pub fn new(key: impl Into<String>, why: impl Into<String>) -> Self {
        Self { key: key.into(), why: why.into() }
    }
}

/// Checks `lo <= v <= hi` for integers.
pub fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), InvalidValue> {
    if v < lo || v > hi {
        return Err(InvalidValue::new(key, format!("{v} is out of range {lo}..={hi}")));
    }
    Ok(())
}

/// Checks that a float is finite and in `lo..=hi` (NaN is in no range).
pub fn check_float(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), InvalidValue> {
    if !v.is_finite() {
        return Err(InvalidValue::new(key, format!("{v} is not a finite number (must be in {lo}..={hi})")));
    }
    if !(lo..=hi).contains(&v) {
        return Err(InvalidValue::new(key, format!("{v} is out of range {lo}..={hi}")));
    }
    Ok(())
}

/// Longest injected stall or hold, microseconds: a stall of the VMM's own
/// longer than this is no preemption any host does, and would only be
/// misread as a hang.
pub const MAX_STALL_US: u64 = 10_000_000;
/// Longest interval of a periodic stall source, microseconds.
pub const MAX_INTERVAL_US: u64 = 60_000_000;

/// A probability as the guest reads it: parts per 2^32, saturating at
/// `u32::MAX` for 1.0.
pub fn prob_u32(p: f64) -> u32 {
    ((p.clamp(0.0, 1.0) * 4_294_967_295.0) as u64).min(u32::MAX as u64) as u32
}

/// pv_wait's contract (`[hypervisor] wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// The hypervisor half's knobs (`[hypervisor]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    pub wait: WaitContract,
    pub kick: KickContract,
    /// Poll for a kick this long before blocking the vCPU thread (KVM's halt
    /// polling). 0 = block at once.
    pub halt_poll_us: u64,
    /// Poll even when more vCPU threads are runnable than host CPUs (KVM
    /// would not).
    pub halt_poll_overcommitted: bool,
    /// While halt polling, mark the vCPU's poll state word polling: a
    /// kicker that sees the mark sets it to kicked instead of storing to the
    /// kick doorbell, and the poll spins on that word (reading the eventfd
    /// only now and then) — the VMM-side `set_nr_if_polling()`. Ignored with
    /// `kick_delay_us` (delayed kicks must go through the VMM).
    pub halt_poll_flag: bool,
    /// The guest spins this long on the wait byte and on its own "kicked"
    /// flag before the exiting wait store (the cpuidle-haltpoll driver's
    /// guest-side poll); a kick to a polling vCPU sets the flag instead of
    /// storing to the kick doorbell. 0 = exit at once.
    pub guest_poll_ns: u64,
    /// Guest-poll even when more vCPUs than host CPUs (off by default, as
    /// haltpoll is only enabled for dedicated CPUs: a polling vCPU burns the
    /// CPU its lock holder may need).
    pub guest_poll_overcommitted: bool,
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
            halt_poll_flag: false,
            guest_poll_ns: 0,
            guest_poll_overcommitted: false,
            stall_timeout_ms: 1000,
            kick_delay_us: 0,
            spurious_wakeup_prob: 0.0,
            interrupt_us: 0,
            rescue: false,
            detect_ms: 100,
        }
    }
}

/// Longest guest-side poll, ns (10 ms).
pub const MAX_GUEST_POLL_NS: u64 = 10_000_000;

impl HypervisorConfig {
    /// The VMM's halt poll publishes itself in the poll state word.
    pub fn effective_halt_poll_flag(&self) -> bool {
        self.halt_poll_flag && self.halt_poll_us > 0 && self.kick_delay_us == 0
    }

    /// The guest poll the guest is told to use: `guest_poll_ns`, or 0 when
    /// vCPUs outnumber host CPUs and `guest_poll_overcommitted` is off.
    pub fn effective_guest_poll_ns(&self, vcpus: u32, host_cpus: u32) -> u32 {
        let overcommitted = host_cpus != 0 && vcpus > host_cpus;
        if overcommitted && !self.guest_poll_overcommitted {
            return 0;
        }
        self.guest_poll_ns.min(MAX_GUEST_POLL_NS) as u32
    }

    pub fn validate(&self) -> Result<(), InvalidValue> {
        check_range("hypervisor.halt_poll_us", self.halt_poll_us, 0, 1_000_000)?;
        check_range("hypervisor.guest_poll_ns", self.guest_poll_ns, 0, MAX_GUEST_POLL_NS)?;
        check_range("hypervisor.stall_timeout_ms", self.stall_timeout_ms, 1, 3_600_000)?;
        check_range("hypervisor.kick_delay_us", self.kick_delay_us, 0, MAX_STALL_US)?;
        check_float("hypervisor.spurious_wakeup_prob", self.spurious_wakeup_prob, 0.0, 1.0)?;
        check_range("hypervisor.interrupt_us", self.interrupt_us, 0, MAX_STALL_US)?;
        check_range("hypervisor.detect_ms", self.detect_ms, 1, 3_600_000)?;
        Ok(())
    }
}

/// The lock under test (`[lock]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockConfig {
    pub variant: Variant,
    /// SPIN_THRESHOLD (pause iterations before halting); kernel: 32768.
    pub spin_threshold: u32,
    /// log2 of PV hash entries, 2..=12; 0 = upstream's sizing.
    pub hash_bits: u32,
    /// End the run (BUG) at the first double hash insert.
    pub stop_on_double_hash: bool,
    /// The mutex variant of `workload = "mutex-torture"`; its `wait_lock`
    /// is a spinlock of `variant`.
    pub mutex: MutexVariant,
    /// Mutex torture only: task 0 locks mutex 0 a second time (incorrect
    /// code, the case of e274795ea7b7) and must stay blocked until vCPU 1
    /// kills it at the end of the run; the other tasks torture the other
    /// mutexes. A recursive lock that returns is a guest BUG.
    #[serde(skip_serializing_if = "is_false")]
    pub mutex_recursive: bool,
    /// The page wait / wake path of `workload = "page-wake"`; its wait
    /// queues' locks are spinlocks of `variant`.
    pub page_wake: PageWakeVariant,
    /// Kernel variants (`kernel-pv`, `kernel-native`): the kernel tree whose
    /// own `kernel/locking/qspinlock.c` the harness builds into the module
    /// the VMM loads (`Machine::run_with_module`). The kernel keys are left
    /// out of records when at their defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_tree: Option<PathBuf>,
    /// Unified diffs (`-p1`) applied in order to a private copy of the
    /// files the build reads; a list of lists is an axis of patch sets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_patches: Vec<PathBuf>,
    /// Which arch headers the kernel build uses.
    #[serde(skip_serializing_if = "KernelFlavour::is_default")]
    pub kernel_flavour: KernelFlavour,
    /// `CONFIG_NR_CPUS` of the kernel build; 0 = 64 (the most vCPUs).
    #[serde(skip_serializing_if = "is_zero")]
    pub kernel_nr_cpus: u32,
    /// `CONFIG_LOCK_EVENT_COUNTS`: the kernel's own event counters.
    #[serde(skip_serializing_if = "is_true")]
    pub kernel_lock_events: bool,
    /// Kernel builds: compile every shared-memory operation as a site
    /// (`pvlock list sites`); false builds the tree without them (the
    /// bench's baseline for what disabled sites cost).
    #[serde(skip_serializing_if = "is_true")]
    pub kernel_sites: bool,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn is_default_site_stall(v: &u64) -> bool {
    *v == PreemptConfig::default().site_stall_us
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_true(v: &bool) -> bool {
    *v
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// The arch headers of a kernel build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelFlavour {
    /// arch/x86's qspinlock headers: the `lock bts` pending path, the asm
    /// PV unlock, `virt_spin_lock` (what an x86 KVM guest runs).
    #[default]
    X86,
    /// asm-generic's qspinlock only, with the PV operations.
    Generic,
}

impl KernelFlavour {
    pub fn name(self) -> &'static str {
        match self {
            KernelFlavour::X86 => "x86",
            KernelFlavour::Generic => "generic",
        }
    }
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            variant: Variant::PvUpstream,
            spin_threshold: 1 << 15,
            hash_bits: 0,
            stop_on_double_hash: false,
            mutex: MutexVariant::Upstream,
            mutex_recursive: false,
            page_wake: PageWakeVariant::Upstream,
            kernel_tree: None,
            kernel_patches: Vec::new(),
            kernel_flavour: KernelFlavour::X86,
            kernel_nr_cpus: 0,
            kernel_lock_events: true,
            kernel_sites: true,
        }
    }
}

impl LockConfig {
    pub fn validate(&self) -> Result<(), InvalidValue> {
        check_range("lock.spin_threshold", self.spin_threshold, 1, 1 << 24)?;
        if self.hash_bits != 0 {
            check_range("lock.hash_bits", self.hash_bits, 2, 12)?;
        }
        if self.kernel_nr_cpus != 0 {
            check_range("lock.kernel_nr_cpus", self.kernel_nr_cpus, 1, pvlock_abi::MAX_VCPUS as u32)?;
        }
        Ok(())
    }

    /// `CONFIG_NR_CPUS` of the kernel build.
    pub fn kernel_nr_cpus(&self) -> u32 {
        if self.kernel_nr_cpus == 0 {
            pvlock_abi::MAX_VCPUS as u32
        } else {
            self.kernel_nr_cpus
        }
    }

    /// The boot block's view (the variant as its ABI id).
    pub fn params(&self) -> LockParams {
        LockParams {
            variant: self.variant as u32,
            spin_threshold: self.spin_threshold,
            hash_bits: self.hash_bits,
            flags: if self.stop_on_double_hash { pvlock_abi::boot::LOCK_FLAG_STOP_ON_DOUBLE_HASH } else { 0 }
                | if self.mutex_recursive { pvlock_abi::boot::LOCK_FLAG_MUTEX_RECURSIVE } else { 0 },
            mutex: self.mutex as u32,
            page_wake: self.page_wake as u32,
        }
    }
}

/// The torture workload (`[torture]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TortureConfig {
    pub locks: u32,
    pub nest: u32,
    pub cs_ns: u32,
    pub think_ns: u32,
    /// Probability that a slow-path spin point runs a simulated interrupt.
    pub irq_prob: f64,
    pub irq_max_depth: u32,
    /// Per-vCPU acquisition budget (0 = run for duration_ms).
    pub max_acquisitions: u64,
}

impl Default for TortureConfig {
    fn default() -> Self {
        Self { locks: 1, nest: 1, cs_ns: 200, think_ns: 200, irq_prob: 0.0, irq_max_depth: 3, max_acquisitions: 0 }
    }
}

impl TortureConfig {
    pub fn validate(&self) -> Result<(), InvalidValue> {
        check_range("torture.locks", self.locks, 1, 1024)?;
        check_range("torture.nest", self.nest, 1, 4)?;
        if self.nest > self.locks {
            return Err(InvalidValue::new(
                "torture.nest",
                format!("{} nested locks need at least as many locks (torture.locks = {})", self.nest, self.locks),
            ));
        }
        check_range("torture.cs_ns", self.cs_ns, 0, 100_000_000)?;
        check_range("torture.think_ns", self.think_ns, 0, 100_000_000)?;
        check_float("torture.irq_prob", self.irq_prob, 0.0, 1.0)?;
        check_range("torture.irq_max_depth", self.irq_max_depth, 0, 3)?;
        check_range("torture.max_acquisitions", self.max_acquisitions, 0, 1 << 40)?;
        Ok(())
    }

    /// The boot block's view.
    pub fn params(&self) -> TortureParams {
        TortureParams {
            nr_locks: self.locks,
            nest: self.nest,
            cs_ns: self.cs_ns,
            think_ns: self.think_ns,
            irq_prob: prob_u32(self.irq_prob),
            irq_max_depth: self.irq_max_depth,
            max_acquisitions: self.max_acquisitions,
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
    pub workload: Workload,
    pub iterations: u64,
    pub lock: LockConfig,
    pub torture: TortureConfig,
    pub hypervisor: HypervisorConfig,
    pub preempt: PreemptConfig,
    /// Entries of each vCPU's trace ring (a power of two, at most
    /// `pvlock_abi::vcpu::MAX_TRACE_LEN`); 0 = tracing off.
    pub trace_len: u64,
    /// How the guest's locks are laid out in its memory; None: pvlock's own
    /// guest ([`LockLayout::for_variant`]). A guest built from a kernel tree
    /// supplies the descriptor read from that tree.
    pub lock_layout: Option<LockLayout>,
    /// A kernel build's site plan (flags per site, stall probability and
    /// length), resolved by the harness from `preempt.sites` and the
    /// schedule's `site:` rules; None: no kernel module, or sites untouched.
    pub sites: Option<crate::sites::SitePlan>,
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
            workload: Workload::Smoke,
            iterations: 20_000,
            lock: LockConfig::default(),
            torture: TortureConfig::default(),
            hypervisor: HypervisorConfig::default(),
            preempt: PreemptConfig::default(),
            trace_len: DEFAULT_TRACE_LEN,
            lock_layout: None,
            sites: None,
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
    /// The layout the VMM decodes the guest's locks with.
    pub fn layout(&self) -> LockLayout {
        self.lock_layout.unwrap_or(LockLayout::for_variant(self.lock.variant))
    }

    /// Checks every value; the error names the config key. The harness
    /// calls this on every run of a matrix before any runs (and adds the
    /// file line); [`crate::Machine::run`] calls it again as the last line
    /// of defence.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        check_range("vcpus", self.vcpus, 1, MAX_VCPUS as u32)?;
        check_range("host_cpus", self.host_cpus, 0, 1024)?;
        let (lo, hi) = ((pvlock_abi::MIN_RAM_BYTES >> 20) as u32, 2048);
        check_range("ram_mib", self.ram_mib, lo, hi)?;
        let stacks = self.vcpus as u64 * pvlock_abi::STACK_SIZE;
        let rings = trace_bytes(self.vcpus, self.trace_len);
        if ((self.ram_mib as u64) << 20) < (8u64 << 20) + stacks + rings {
            return Err(InvalidValue::new(
                "ram_mib",
                format!(
                    "{} MiB is too small for {} vCPU stacks, {} KiB of trace rings (trace_entries = {}) and the image",
                    self.ram_mib,
                    self.vcpus,
                    rings >> 10,
                    self.trace_len
                ),
            ));
        }
        check_range("duration_ms", self.duration_ms, 1, 3_600_000)?;
        check_range("timeout_ms", self.timeout_ms, 100, 24 * 3_600_000)?;
        check_range("iterations", self.iterations, 1, 1 << 40)?;
        self.lock.validate()?;
        if self.lock.variant.is_kernel() && self.lock.kernel_nr_cpus() < self.vcpus {
            return Err(InvalidValue::new(
                "lock.kernel_nr_cpus",
                format!("CONFIG_NR_CPUS {} is below vcpus = {}", self.lock.kernel_nr_cpus(), self.vcpus),
            ));
        }
        self.torture.validate()?;
        if self.workload == Workload::MutexTorture {
            // The mutex torture takes one mutex at a time, never in an
            // interrupt (guest/lib/src/sleeping/torture.rs checks the same).
            if self.torture.nest != 1 {
                return Err(InvalidValue::new("torture.nest", "mutex-torture takes one mutex at a time: nest = 1"));
            }
            if self.torture.irq_prob != 0.0 {
                return Err(InvalidValue::new(
                    "torture.irq_prob",
                    "mutex-torture: a mutex is never taken in interrupt context, irq_prob must be 0",
                ));
            }
            check_range("torture.locks", self.torture.locks, 1, MAX_MUTEXES as u32)?;
            if self.lock.mutex_recursive && self.vcpus < 2 {
                return Err(InvalidValue::new(
                    "lock.mutex_recursive",
                    "needs vcpus >= 2: vCPU 1 ends task 0's recursive lock with a fatal signal",
                ));
            }
        } else if self.lock.mutex_recursive {
            return Err(InvalidValue::new("lock.mutex_recursive", "only for workload = \"mutex-torture\""));
        }
        if self.workload == Workload::PageWake {
            // guest/lib/src/sleeping/page.rs: no nesting, no interrupts,
            // at most MAX_PAGES pages.
            if self.torture.nest != 1 {
                return Err(InvalidValue::new("torture.nest", "page-wake takes one page at a time: nest = 1"));
            }
            if self.torture.irq_prob != 0.0 {
                return Err(InvalidValue::new("torture.irq_prob", "page-wake: irq_prob must be 0"));
            }
            check_range("torture.locks", self.torture.locks, 1, pvlock_abi::MAX_PAGES as u32)?;
        }
        self.hypervisor.validate()?;
        self.preempt.validate(self.vcpus, self.torture.locks)?;
        if self.trace_len != 0
            && (!self.trace_len.is_power_of_two() || self.trace_len > pvlock_abi::vcpu::MAX_TRACE_LEN)
        {
            return Err(InvalidValue::new(
                "trace_entries",
                format!("{} is not 0 or a power of two up to {}", self.trace_len, pvlock_abi::vcpu::MAX_TRACE_LEN),
            ));
        }
        Ok(())
    }
}

/// Distribution of injected stall lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// What releases a vCPU held at a window by a schedule rule. In configs:
/// `blocked`, `head-blocked`, `timeout` or `window:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum HoldUntil {
    /// Another vCPU reaches this window.
    Window(Window),
    /// Another vCPU reaches one of these sites of a kernel build.
    Site(crate::sites::SiteRef),
    /// Another vCPU blocks in a pv_wait.
    Blocked,
    /// Another vCPU blocks in a pv_wait on its own lock's word (a queue
    /// head in pv_wait_head_or_lock).
    HeadBlocked,
    /// Only the timeout.
    #[default]
    Timeout,
}

impl HoldUntil {
    /// The config spelling.
    pub fn name(&self) -> String {
        match self {
            HoldUntil::Window(w) => format!("window:{}", w.name()),
            HoldUntil::Site(s) => format!("site:{}", s.spec),
            HoldUntil::Blocked => "blocked".into(),
            HoldUntil::HeadBlocked => "head-blocked".into(),
            HoldUntil::Timeout => "timeout".into(),
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "blocked" => HoldUntil::Blocked,
            "head-blocked" => HoldUntil::HeadBlocked,
            "timeout" => HoldUntil::Timeout,
            s if s.starts_with("site:") => HoldUntil::Site(crate::sites::SiteRef::parse(&s[5..]).ok()?),
            w => HoldUntil::Window(Window::from_name(w.strip_prefix("window:")?)?),
        })
    }
}

/// Where a schedule rule holds: a race window of the Rust variants
/// (`handoff`, ...) or a site of a kernel build (`site:FUNCTION[:OP[:N]]`,
/// `site:FILE:LINE`). In configs: the window's name or `site:...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldAt {
    Window(Window),
    Site(crate::sites::SiteRef),
}

impl HoldAt {
    pub fn name(&self) -> String {
        match self {
            HoldAt::Window(w) => w.name().to_string(),
            HoldAt::Site(s) => format!("site:{}", s.spec),
        }
    }

    /// The window, for a window rule.
    pub fn window(&self) -> Option<Window> {
        match self {
            HoldAt::Window(w) => Some(*w),
            HoldAt::Site(_) => None,
        }
    }
}

impl Serialize for HoldAt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for HoldAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(spec) = s.strip_prefix("site:") {
            return crate::sites::SiteRef::parse(spec).map(HoldAt::Site).map_err(serde::de::Error::custom);
        }
        Window::from_name(&s).map(HoldAt::Window).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}` is not a race window ({}) or `site:FUNCTION[:OP[:N]]` / `site:FILE:LINE`",
                Window::NAMES.join(", ")
            ))
        })
    }
}

impl Serialize for HoldUntil {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for HoldUntil {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HoldUntil::from_name(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}` is not `blocked`, `head-blocked`, `timeout`, `window:NAME` (NAME one of: {}) \
                 or `site:FUNCTION[:OP[:N]]` / `site:FILE:LINE`",
                Window::NAMES.join(", ")
            ))
        })
    }
}

/// When a schedule rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldWhen {
    /// Whenever a vCPU reaches the rule's window.
    #[default]
    Always,
    /// Only while the holding vCPU's MCS successor is still running (its
    /// node state is `vcpu_running` and it is not blocked): R1's
    /// precondition, read from guest memory at the window.
    SuccessorRunning,
}

/// `[[preempt.schedule]]`: "hold a vCPU at window `at` until `until`, or
/// `timeout_us`": a directed interleaving.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRule {
    pub at: HoldAt,
    #[serde(default)]
    pub until: HoldUntil,
    #[serde(default = "HoldRule::default_timeout_us")]
    pub timeout_us: u64,
    /// Only this vCPU (any vCPU if None).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// How many holds this rule performs (0 = unlimited).
    #[serde(default = "HoldRule::default_count")]
    pub count: u32,
    #[serde(default)]
    pub when: HoldWhen,
}

impl HoldRule {
    fn default_timeout_us() -> u64 {
        10_000
    }
    fn default_count() -> u32 {
        1
    }
    /// A rule at `at` with the config defaults for everything else.
    pub fn at(at: Window) -> Self {
        Self::at_point(HoldAt::Window(at))
    }
    /// A rule at a window or a site with the config defaults.
    pub fn at_point(at: HoldAt) -> Self {
        Self {
            at,
            until: HoldUntil::Timeout,
            timeout_us: Self::default_timeout_us(),
            cpu: None,
            count: Self::default_count(),
            when: HoldWhen::Always,
        }
    }
}

/// Periodically stall whichever vCPU holds torture lock `lock`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HolderStalls {
    pub lock: u32,
    pub interval_us: u64,
    pub stall_us: u64,
}

/// Deliberate preemption (`[preempt]`), all parts combinable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreemptConfig {
    /// Race windows at which the guest may stall (`pvlock list windows`).
    pub windows: Vec<Window>,
    /// Probability of stalling at an enabled window.
    pub window_prob: f64,
    /// Stall length at a window the guest chose to stall at (no rule), us.
    pub window_stall_us: u64,
    /// Random stalls: mean interval of the per-vCPU Poisson process, us (0 = off).
    pub random_mean_interval_us: u64,
    /// Random stalls: mean stall length, us.
    pub random_stall_us: u64,
    /// Random stalls: length distribution.
    pub random_dist: StallDist,
    /// Holder stalls: every this many us (0 = off) stall the holder of `holder_lock`.
    pub holder_interval_us: u64,
    pub holder_lock: u32,
    pub holder_stall_us: u64,
    /// Directed interleavings: hold rules.
    pub schedule: Vec<HoldRule>,
    /// Kernel builds: sites at which the guest may stall (patterns:
    /// `FUNCTION`, `FILE[:LINE]` with `*`, `*:OP`; `pvlock list sites`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// Probability of stalling at a selected site.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub site_prob: f64,
    /// Stall length at a site the guest chose to stall at (no rule), us.
    #[serde(skip_serializing_if = "is_default_site_stall")]
    pub site_stall_us: u64,
    /// Kernel builds: record the last site each vCPU passed (failure
    /// reports name its file:line). Costs a call per site passed.
    #[serde(skip_serializing_if = "is_true")]
    pub site_track: bool,
}

impl Default for PreemptConfig {
    fn default() -> Self {
        Self {
            windows: Vec::new(),
            window_prob: 0.0,
            window_stall_us: 200,
            random_mean_interval_us: 0,
            random_stall_us: 500,
            random_dist: StallDist::Exponential,
            holder_interval_us: 0,
            holder_lock: 0,
            holder_stall_us: 500,
            schedule: Vec::new(),
            sites: Vec::new(),
            site_prob: 0.0,
            site_stall_us: 200,
            site_track: true,
        }
    }
}

impl PreemptConfig {
    pub fn validate(&self, vcpus: u32, locks: u32) -> Result<(), InvalidValue> {
        check_float("preempt.window_prob", self.window_prob, 0.0, 1.0)?;
        check_range("preempt.window_stall_us", self.window_stall_us, 0, MAX_STALL_US)?;
        check_float("preempt.site_prob", self.site_prob, 0.0, 1.0)?;
        check_range("preempt.site_stall_us", self.site_stall_us, 0, MAX_STALL_US)?;
        check_range("preempt.random_mean_interval_us", self.random_mean_interval_us, 0, MAX_INTERVAL_US)?;
        if self.random_mean_interval_us > 0 {
            check_range("preempt.random_stall_us", self.random_stall_us, 1, MAX_STALL_US)?;
        } else {
            check_range("preempt.random_stall_us", self.random_stall_us, 0, MAX_STALL_US)?;
        }
        check_range("preempt.holder_interval_us", self.holder_interval_us, 0, MAX_INTERVAL_US)?;
        check_range("preempt.holder_stall_us", self.holder_stall_us, 0, MAX_STALL_US)?;
        if self.holder_interval_us > 0 && self.holder_lock >= locks {
            let why = format!("lock {} does not exist (torture.locks = {locks})", self.holder_lock);
            return Err(InvalidValue::new("preempt.holder_lock", why));
        }
        for (i, r) in self.schedule.iter().enumerate() {
            check_range(&format!("preempt.schedule[{i}].timeout_us"), r.timeout_us, 1, 60_000_000)?;
            if let Some(c) = r.cpu {
                if c >= vcpus {
                    let why = format!("vCPU {c} does not exist (vcpus = {vcpus})");
                    return Err(InvalidValue::new(format!("preempt.schedule[{i}].cpu"), why));
                }
            }
        }
        Ok(())
    }

    /// Random stalls, if on.
    pub fn random(&self) -> Option<RandomStalls> {
        (self.random_mean_interval_us > 0).then_some(RandomStalls {
            mean_interval_us: self.random_mean_interval_us,
            stall_us: self.random_stall_us,
            dist: self.random_dist,
        })
    }

    /// Holder stalls, if on.
    pub fn holder(&self) -> Option<HolderStalls> {
        (self.holder_interval_us > 0).then_some(HolderStalls {
            lock: self.holder_lock,
            interval_us: self.holder_interval_us,
            stall_us: self.holder_stall_us,
        })
    }

    /// The guest's window parameters. A directed schedule needs every vCPU
    /// to exit at the windows its rules name (`always`); windows without a
    /// rule then cost an exit but no stall.
    pub fn window_params(&self) -> WindowParams {
        let mut mask = self.windows.iter().fold(0, |m, w| m | w.bit());
        for r in &self.schedule {
            if let HoldAt::Window(w) = r.at {
                mask |= w.bit();
            }
            if let HoldUntil::Window(w) = r.until {
                mask |= w.bit();
            }
        }
        WindowParams { enabled_mask: mask, prob: prob_u32(self.window_prob), always: !self.schedule.is_empty() as u32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_rules_enable_their_windows_always() {
        let mut p = PreemptConfig::default();
        p.schedule.push(HoldRule { until: HoldUntil::Blocked, ..HoldRule::at(Window::Handoff) });
        p.schedule.push(HoldRule { until: HoldUntil::Window(Window::HeadTrylock), ..HoldRule::at(Window::UnlockKick) });
        let w = p.window_params();
        assert_eq!(w.always, 1);
        assert_eq!(w.enabled_mask, Window::Handoff.bit() | Window::UnlockKick.bit() | Window::HeadTrylock.bit());
        let p = PreemptConfig { windows: vec![Window::Handoff], window_prob: 1.0, ..Default::default() };
        assert_eq!(p.window_params().prob, u32::MAX);
        assert_eq!(p.window_params().always, 0);
    }

    #[test]
    fn floats_must_be_finite_and_in_range() {
        for bad in [f64::NAN, f64::INFINITY, -0.5, 1.5] {
            let t = TortureConfig { irq_prob: bad, ..Default::default() };
            assert_eq!(t.validate().unwrap_err().key, "torture.irq_prob", "{bad}");
            let h = HypervisorConfig { spurious_wakeup_prob: bad, ..Default::default() };
            assert_eq!(h.validate().unwrap_err().key, "hypervisor.spurious_wakeup_prob");
            let p = PreemptConfig { window_prob: bad, ..Default::default() };
            assert_eq!(p.validate(4, 1).unwrap_err().key, "preempt.window_prob");
        }
    }

    #[test]
    fn lengths_have_upper_bounds() {
        let p = PreemptConfig { holder_stall_us: i64::MAX as u64, ..Default::default() };
        assert_eq!(p.validate(4, 1).unwrap_err().key, "preempt.holder_stall_us");
        let p = PreemptConfig { random_mean_interval_us: 10, random_stall_us: u64::MAX >> 1, ..Default::default() };
        assert_eq!(p.validate(4, 1).unwrap_err().key, "preempt.random_stall_us");
        let p = PreemptConfig { holder_interval_us: u64::MAX >> 1, ..Default::default() };
        assert_eq!(p.validate(4, 1).unwrap_err().key, "preempt.holder_interval_us");
        let h = HypervisorConfig { kick_delay_us: u64::MAX >> 1, ..Default::default() };
        assert_eq!(h.validate().unwrap_err().key, "hypervisor.kick_delay_us");
        let mut p = PreemptConfig::default();
        p.schedule.push(HoldRule::at(Window::Handoff));
        p.schedule.push(HoldRule { cpu: Some(4), ..HoldRule::at(Window::Handoff) });
        assert_eq!(p.validate(4, 1).unwrap_err().key, "preempt.schedule[1].cpu");
    }
}
