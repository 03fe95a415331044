//! Experiment configs (`configs/*.toml`): one schema, documented in
//! `configs/README.md`. Any scalar may be a list; a config is the cartesian
//! product of its lists, times `repeats`. Unknown keys and out-of-range
//! values are errors naming the key and the file line.

use anyhow::{anyhow, bail, Context, Result};
use pvlock_abi::{Variant, Window, Workload};
use pvlock_vmm::{
    HoldRule, HoldUntil, HolderStalls, HypervisorConfig, KickContract, MachineConfig, PreemptConfig, RandomStalls,
    StallDist, WaitContract,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use toml::{Table, Value};

/// One concrete run (every list resolved to one value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Experiment name (defaults to the file name).
    pub name: String,
    pub description: String,
    /// `smoke`, `torture`, `ping-pong`, `doorbells`, or a self-test:
    /// `fault`, `bad-pointer`, `wait-forever`, `panic`, `spin-forever`.
    pub workload: String,
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
    /// Runs per matrix point; repeat r gets seed `derive_seed(seed, r)`.
    pub repeats: u32,
    /// Entries of each vCPU's event trace ring (a power of two; 0 = off).
    /// The ring always keeps the last events before a failure; `--trace`
    /// raises it to [`TRACE_ENTRIES_FOR_EXPORT`].
    pub trace_entries: u64,
    pub lock: LockSection,
    pub torture: TortureSection,
    pub hypervisor: HypervisorSection,
    pub preempt: PreemptSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockSection {
    pub variant: String,
    /// SPIN_THRESHOLD (pause iterations before halting); kernel: 32768.
    pub spin_threshold: u32,
    /// log2 of PV hash entries, 2..=12; 0 = upstream's sizing.
    pub hash_bits: u32,
    /// End the run (BUG) at the first double hash insert.
    pub stop_on_double_hash: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TortureSection {
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorSection {
    /// `checked` (KVM) or `unchecked` (2016 pSeries proposal).
    pub wait: String,
    /// `remembered` (KVM) or `lost-if-not-waiting` (fault model).
    pub kick: String,
    pub halt_poll_us: u64,
    pub halt_poll_overcommitted: bool,
    pub stall_timeout_ms: u64,
    /// Kick delivery delay, us (non-zero: kicks exit to the VMM).
    pub kick_delay_us: u64,
    /// Probability that a blocking wait ends spuriously.
    pub spurious_wakeup_prob: f64,
    /// Period of a simulated interrupt that ends any wait, us (0 = none).
    pub interrupt_us: u64,
    /// Rescue missed wakeups (kick, count, go on) instead of ending as a hang.
    pub rescue: bool,
    /// Lock-aware detector persistence, ms.
    pub detect_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreemptSection {
    /// Race windows at which the guest may stall (names from `pvlock list windows`).
    pub windows: Vec<String>,
    /// Probability of stalling at an enabled window.
    pub window_prob: f64,
    /// Stall length at a window, microseconds.
    pub window_stall_us: u64,
    /// Random stalls: mean interval of the per-vCPU Poisson process, us (0 = off).
    pub random_mean_interval_us: u64,
    /// Random stalls: mean stall length, us.
    pub random_stall_us: u64,
    /// Random stalls: `fixed`, `uniform` or `exponential`.
    pub random_dist: String,
    /// Holder stalls: every this many us (0 = off) stall the holder of `holder_lock`.
    pub holder_interval_us: u64,
    pub holder_lock: u32,
    pub holder_stall_us: u64,
    /// Directed interleavings: hold rules.
    pub schedule: Vec<HoldRuleSection>,
}

/// `[[preempt.schedule]]`: hold a vCPU at window `at` until `until`
/// (`blocked`, `timeout`, or `window:NAME`) or `timeout_us`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoldRuleSection {
    pub at: String,
    pub until: String,
    pub timeout_us: u64,
    /// Only this vCPU (absent: any).
    pub cpu: Option<u32>,
    /// Holds this rule performs (0 = unlimited).
    pub count: u32,
    /// `always`, or `successor-running`: hold only while the vCPU's MCS
    /// successor is still spinning (R1's precondition).
    pub when: String,
}

impl Default for HoldRuleSection {
    fn default() -> Self {
        Self {
            at: String::new(),
            until: "timeout".into(),
            timeout_us: 10_000,
            cpu: None,
            count: 1,
            when: "always".into(),
        }
    }
}

impl HoldRuleSection {
    fn until(&self) -> Option<HoldUntil> {
        Some(match self.until.as_str() {
            "blocked" => HoldUntil::Blocked,
            "head-blocked" => HoldUntil::HeadBlocked,
            "timeout" => HoldUntil::Timeout,
            w => HoldUntil::Window(Window::from_name(w.strip_prefix("window:")?)?),
        })
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            workload: "smoke".into(),
            vcpus: 4,
            host_cpus: 2,
            ram_mib: 64,
            seed: 1,
            duration_ms: 1000,
            timeout_ms: 60_000,
            iterations: 20_000,
            repeats: 1,
            trace_entries: pvlock_vmm::config::DEFAULT_TRACE_LEN,
            lock: LockSection::default(),
            torture: TortureSection::default(),
            hypervisor: HypervisorSection::default(),
            preempt: PreemptSection::default(),
        }
    }
}

impl Default for LockSection {
    fn default() -> Self {
        Self { variant: "pv-upstream".into(), spin_threshold: 1 << 15, hash_bits: 0, stop_on_double_hash: false }
    }
}

impl Default for TortureSection {
    fn default() -> Self {
        Self { locks: 1, nest: 1, cs_ns: 200, think_ns: 200, irq_prob: 0.0, irq_max_depth: 3, max_acquisitions: 0 }
    }
}

impl Default for HypervisorSection {
    fn default() -> Self {
        let h = HypervisorConfig::default();
        Self {
            wait: "checked".into(),
            kick: "remembered".into(),
            halt_poll_us: h.halt_poll_us,
            halt_poll_overcommitted: h.halt_poll_overcommitted,
            stall_timeout_ms: h.stall_timeout_ms,
            kick_delay_us: h.kick_delay_us,
            spurious_wakeup_prob: h.spurious_wakeup_prob,
            interrupt_us: h.interrupt_us,
            rescue: h.rescue,
            detect_ms: h.detect_ms,
        }
    }
}

impl Default for PreemptSection {
    fn default() -> Self {
        Self {
            windows: Vec::new(),
            window_prob: 0.0,
            window_stall_us: 200,
            random_mean_interval_us: 0,
            random_stall_us: 500,
            random_dist: "exponential".into(),
            holder_interval_us: 0,
            holder_lock: 0,
            holder_stall_us: 500,
            schedule: Vec::new(),
        }
    }
}

/// A config error: which key, why, and where.
#[derive(Debug, thiserror::Error)]
#[error("{file}{line}: `{key}`: {why}")]
pub struct ConfigError {
    pub file: String,
    pub line: String,
    pub key: String,
    pub why: String,
}

/// Seed of repeat `r` derived from the base seed (splitmix64), so repeats
/// are independent streams and the same config always gives the same seeds.
/// Repeat 0 keeps the base seed.
pub fn derive_seed(base: u64, r: u32) -> u64 {
    if r == 0 {
        return base;
    }
    let mut x = base.wrapping_add((r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    // Below 2^63: TOML integers are i64, and a recorded seed must go back
    // into a config to reproduce its run.
    (x ^ (x >> 31)) >> 1
}

/// A parsed experiment: the matrix of runs it expands to.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub source: String,
    /// Every run, repeats included, in a stable order.
    pub runs: Vec<RunConfig>,
    /// The keys that vary across the matrix (dotted paths), for run keys.
    pub varying: Vec<String>,
}

fn line_of(text: &str, key: &str) -> String {
    // Best effort: the last path element as `key =` or `[key]`.
    let leaf = key.rsplit('.').next().unwrap_or(key);
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if t.starts_with(&format!("{leaf} ")) || t.starts_with(&format!("{leaf}=")) || t == format!("[{leaf}]") {
            return format!(":{}", i + 1);
        }
    }
    String::new()
}

impl Experiment {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Self::parse(&text, &path.display().to_string(), &name)
    }

    pub fn parse(text: &str, file: &str, default_name: &str) -> Result<Self> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| format!(":{}", text[..s.start].lines().count().max(1))).unwrap_or_default();
            ConfigError { file: file.into(), line, key: "(syntax)".into(), why: e.message().to_string() }
        })?;
        let mut axes: Vec<(Vec<String>, Vec<Value>)> = Vec::new();
        collect_axes(&table, &mut Vec::new(), &mut axes, text, file)?;
        let varying: Vec<String> = axes.iter().filter(|(_, v)| v.len() > 1).map(|(p, _)| p.join(".")).collect();
        let mut runs = Vec::new();
        let mut idx = vec![0usize; axes.len()];
        loop {
            let mut t = table.clone();
            for (a, (path, values)) in axes.iter().enumerate() {
                set_path(&mut t, path, values[idx[a]].clone());
            }
            let mut rc: RunConfig = Value::Table(t).try_into().map_err(|e: toml::de::Error| {
                let msg = e.message().to_string();
                let key = unknown_key(&msg).unwrap_or_else(|| "(config)".into());
                ConfigError { file: file.into(), line: line_of(text, &key), key, why: msg }
            })?;
            if rc.name.is_empty() {
                rc.name = default_name.to_string();
            }
            rc.validate().map_err(|(key, why)| ConfigError {
                file: file.into(),
                line: line_of(text, &key),
                key,
                why,
            })?;
            for r in 0..rc.repeats {
                let mut one = rc.clone();
                one.seed = derive_seed(rc.seed, r);
                runs.push(one);
            }
            // Next combination (odometer).
            let mut a = axes.len();
            loop {
                if a == 0 {
                    let name = runs.first().map(|r| r.name.clone()).unwrap_or_else(|| default_name.into());
                    return Ok(Self { name, source: text.to_string(), runs, varying });
                }
                a -= 1;
                idx[a] += 1;
                if idx[a] < axes[a].1.len() {
                    break;
                }
                idx[a] = 0;
            }
        }
    }
}

fn unknown_key(msg: &str) -> Option<String> {
    // toml/serde: "unknown field `foo`, expected one of ..."
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    Some(msg[start..end].to_string())
}

/// Keys whose value is a list by nature (not a matrix axis).
const LIST_KEYS: &[&str] = &["preempt.windows", "preempt.schedule"];

fn collect_axes(
    t: &Table,
    path: &mut Vec<String>,
    axes: &mut Vec<(Vec<String>, Vec<Value>)>,
    text: &str,
    file: &str,
) -> Result<()> {
    for (k, v) in t {
        path.push(k.clone());
        let dotted = path.join(".");
        match v {
            Value::Table(sub) => collect_axes(sub, path, axes, text, file)?,
            // A list-valued key is an axis only when it is a list of lists.
            Value::Array(items)
                if LIST_KEYS.contains(&dotted.as_str()) && !items.is_empty() && items.iter().all(|i| i.is_array()) =>
            {
                axes.push((path.clone(), items.clone()));
            }
            Value::Array(_) if LIST_KEYS.contains(&dotted.as_str()) => {}
            Value::Array(items) => {
                if items.is_empty() {
                    bail!(ConfigError {
                        file: file.into(),
                        line: line_of(text, &dotted),
                        key: dotted,
                        why: "an empty list gives no runs".into()
                    });
                }
                if items.iter().any(|i| i.is_array() || i.is_table()) {
                    bail!(ConfigError {
                        file: file.into(),
                        line: line_of(text, &dotted),
                        key: dotted,
                        why: "a matrix axis must be a list of scalars".into()
                    });
                }
                axes.push((path.clone(), items.clone()));
            }
            _ => {}
        }
        path.pop();
    }
    Ok(())
}

fn set_path(t: &mut Table, path: &[String], v: Value) {
    let mut cur = t;
    for k in &path[..path.len() - 1] {
        cur = cur.get_mut(k).and_then(Value::as_table_mut).expect("axis path exists");
    }
    cur.insert(path[path.len() - 1].clone(), v);
}

type KeyError = (String, String);

fn range<T: PartialOrd + std::fmt::Display + Copy>(key: &str, v: T, lo: T, hi: T) -> Result<(), KeyError> {
    if v < lo || v > hi {
        return Err((key.into(), format!("{v} is out of range {lo}..={hi}")));
    }
    Ok(())
}

pub fn parse_workload(s: &str) -> Option<Workload> {
    Some(match s {
        "smoke" => Workload::Smoke,
        "torture" => Workload::Torture,
        "fault" => Workload::Fault,
        "bad-pointer" => Workload::BadPointer,
        "wait-forever" => Workload::WaitForever,
        "panic" => Workload::Panic,
        "spin-forever" => Workload::SpinForever,
        "ping-pong" => Workload::PingPong,
        "doorbells" => Workload::Doorbells,
        "preempt-probe" => Workload::PreemptProbe,
        _ => return None,
    })
}

pub const WORKLOADS: &str =
    "smoke, torture, ping-pong, doorbells, preempt-probe, fault, bad-pointer, wait-forever, panic, spin-forever";

impl RunConfig {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), KeyError> {
        if parse_workload(&self.workload).is_none() {
            return Err(("workload".into(), format!("unknown workload `{}` (one of: {WORKLOADS})", self.workload)));
        }
        range("vcpus", self.vcpus, 1, pvlock_abi::MAX_VCPUS as u32)?;
        range("host_cpus", self.host_cpus, 0, 1024)?;
        range("ram_mib", self.ram_mib, (pvlock_abi::MIN_RAM_BYTES >> 20) as u32, 2048)?;
        if self.trace_entries != 0
            && (!self.trace_entries.is_power_of_two() || self.trace_entries > pvlock_abi::vcpu::MAX_TRACE_LEN)
        {
            return Err((
                "trace_entries".into(),
                format!("{} is not 0 or a power of two up to {}", self.trace_entries, pvlock_abi::vcpu::MAX_TRACE_LEN),
            ));
        }
        let stacks = self.vcpus as u64 * pvlock_abi::STACK_SIZE;
        let rings = pvlock_vmm::config::trace_bytes(self.vcpus, self.trace_entries);
        if ((self.ram_mib as u64) << 20) < (8u64 << 20) + stacks + rings {
            return Err((
                "ram_mib".into(),
                format!(
                    "{} MiB is too small for {} vCPU stacks, {} KiB of trace rings (trace_entries = {}) and the image",
                    self.ram_mib,
                    self.vcpus,
                    rings >> 10,
                    self.trace_entries
                ),
            ));
        }
        range("duration_ms", self.duration_ms, 1, 3_600_000)?;
        range("timeout_ms", self.timeout_ms, 100, 24 * 3_600_000)?;
        range("iterations", self.iterations, 1, 1 << 40)?;
        range("repeats", self.repeats, 1, 10_000)?;
        if Variant::from_name(&self.lock.variant).is_none() {
            let all: Vec<_> = Variant::ALL.iter().map(|v| v.name()).collect();
            return Err((
                "lock.variant".into(),
                format!("unknown variant `{}` (one of: {})", self.lock.variant, all.join(", ")),
            ));
        }
        range("lock.spin_threshold", self.lock.spin_threshold, 1, 1 << 24)?;
        if self.lock.hash_bits != 0 {
            range("lock.hash_bits", self.lock.hash_bits, 2, 12)?;
        }
        range("torture.locks", self.torture.locks, 1, 1024)?;
        range("torture.nest", self.torture.nest, 1, 4)?;
        if self.torture.nest > self.torture.locks {
            return Err((
                "torture.nest".into(),
                format!(
                    "{} nested locks need at least as many locks (torture.locks = {})",
                    self.torture.nest, self.torture.locks
                ),
            ));
        }
        range("torture.cs_ns", self.torture.cs_ns, 0, 100_000_000)?;
        range("torture.think_ns", self.torture.think_ns, 0, 100_000_000)?;
        range("torture.irq_prob", self.torture.irq_prob, 0.0, 1.0)?;
        range("torture.irq_max_depth", self.torture.irq_max_depth, 0, 3)?;
        if self.hypervisor.wait != "checked" && self.hypervisor.wait != "unchecked" {
            return Err((
                "hypervisor.wait".into(),
                format!("`{}` is not `checked` or `unchecked`", self.hypervisor.wait),
            ));
        }
        if self.hypervisor.kick != "remembered" && self.hypervisor.kick != "lost-if-not-waiting" {
            return Err((
                "hypervisor.kick".into(),
                format!("`{}` is not `remembered` or `lost-if-not-waiting`", self.hypervisor.kick),
            ));
        }
        range("hypervisor.halt_poll_us", self.hypervisor.halt_poll_us, 0, 1_000_000)?;
        range("hypervisor.stall_timeout_ms", self.hypervisor.stall_timeout_ms, 1, 3_600_000)?;
        for w in &self.preempt.windows {
            if Window::from_name(w).is_none() {
                let all: Vec<_> = Window::ALL.iter().map(|w| w.name()).collect();
                return Err(("preempt.windows".into(), format!("unknown window `{w}` (one of: {})", all.join(", "))));
            }
        }
        range("preempt.window_prob", self.preempt.window_prob, 0.0, 1.0)?;
        range("preempt.window_stall_us", self.preempt.window_stall_us, 0, 10_000_000)?;
        range("hypervisor.kick_delay_us", self.hypervisor.kick_delay_us, 0, 10_000_000)?;
        range("hypervisor.spurious_wakeup_prob", self.hypervisor.spurious_wakeup_prob, 0.0, 1.0)?;
        range("hypervisor.interrupt_us", self.hypervisor.interrupt_us, 0, 10_000_000)?;
        range("hypervisor.detect_ms", self.hypervisor.detect_ms, 1, 3_600_000)?;
        if !["fixed", "uniform", "exponential"].contains(&self.preempt.random_dist.as_str()) {
            let why = format!("`{}` is not fixed, uniform or exponential", self.preempt.random_dist);
            return Err(("preempt.random_dist".into(), why));
        }
        if self.preempt.random_mean_interval_us > 0 {
            range("preempt.random_stall_us", self.preempt.random_stall_us, 1, 10_000_000)?;
        }
        if self.preempt.holder_interval_us > 0 && self.preempt.holder_lock >= self.torture.locks {
            let why =
                format!("lock {} does not exist (torture.locks = {})", self.preempt.holder_lock, self.torture.locks);
            return Err(("preempt.holder_lock".into(), why));
        }
        for r in &self.preempt.schedule {
            if Window::from_name(&r.at).is_none() {
                return Err(("preempt.schedule.at".into(), format!("unknown window `{}`", r.at)));
            }
            if r.until().is_none() {
                let why = format!("`{}` is not `blocked`, `head-blocked`, `timeout` or `window:NAME`", r.until);
                return Err(("preempt.schedule.until".into(), why));
            }
            range("preempt.schedule.timeout_us", r.timeout_us, 1, 60_000_000)?;
            if r.when != "always" && r.when != "successor-running" {
                let why = format!("`{}` is not `always` or `successor-running`", r.when);
                return Err(("preempt.schedule.when".into(), why));
            }
            if let Some(c) = r.cpu {
                if c >= self.vcpus {
                    let why = format!("vCPU {c} does not exist (vcpus = {})", self.vcpus);
                    return Err(("preempt.schedule.cpu".into(), why));
                }
            }
        }
        Ok(())
    }

    /// The VMM's view of this run.
    pub fn machine(&self) -> Result<MachineConfig> {
        let variant = Variant::from_name(&self.lock.variant).ok_or_else(|| anyhow!("unknown variant"))?;
        let prob = |p: f64| ((p.clamp(0.0, 1.0) * 4_294_967_295.0) as u64).min(u32::MAX as u64) as u32;
        let mut mask = 0u64;
        for w in &self.preempt.windows {
            mask |= 1 << (Window::from_name(w).ok_or_else(|| anyhow!("unknown window {w}"))? as u32);
        }
        // A directed schedule needs every vCPU to exit at the windows its
        // rules name (`always`); windows without a rule then cost an exit
        // but no stall.
        let mut schedule = Vec::new();
        for r in &self.preempt.schedule {
            let at = Window::from_name(&r.at).ok_or_else(|| anyhow!("unknown window {}", r.at))?;
            let until = r.until().ok_or_else(|| anyhow!("bad until {}", r.until))?;
            mask |= 1 << at as u32;
            if let HoldUntil::Window(w) = until {
                mask |= 1 << w as u32;
            }
            schedule.push(HoldRule {
                at,
                cpu: r.cpu,
                until,
                timeout_us: r.timeout_us,
                count: r.count,
                successor_running: r.when == "successor-running",
            });
        }
        let dist = match self.preempt.random_dist.as_str() {
            "fixed" => StallDist::Fixed,
            "uniform" => StallDist::Uniform,
            _ => StallDist::Exponential,
        };
        Ok(MachineConfig {
            vcpus: self.vcpus,
            host_cpus: self.host_cpus,
            ram_mib: self.ram_mib,
            seed: self.seed,
            duration_ms: self.duration_ms,
            timeout_ms: self.timeout_ms,
            workload: parse_workload(&self.workload),
            iterations: self.iterations,
            lock: pvlock_abi::LockParams {
                variant: variant as u32,
                spin_threshold: self.lock.spin_threshold,
                hash_bits: self.lock.hash_bits,
                flags: if self.lock.stop_on_double_hash { pvlock_abi::boot::LOCK_FLAG_STOP_ON_DOUBLE_HASH } else { 0 },
            },
            torture: pvlock_abi::TortureParams {
                nr_locks: self.torture.locks,
                nest: self.torture.nest,
                cs_ns: self.torture.cs_ns,
                think_ns: self.torture.think_ns,
                irq_prob: prob(self.torture.irq_prob),
                irq_max_depth: self.torture.irq_max_depth,
                max_acquisitions: self.torture.max_acquisitions,
            },
            windows: pvlock_abi::WindowParams {
                enabled_mask: mask,
                prob: prob(self.preempt.window_prob),
                always: !schedule.is_empty() as u32,
            },
            hypervisor: HypervisorConfig {
                wait: if self.hypervisor.wait == "unchecked" { WaitContract::Unchecked } else { WaitContract::Checked },
                kick: if self.hypervisor.kick == "lost-if-not-waiting" {
                    KickContract::LostIfNotWaiting
                } else {
                    KickContract::Remembered
                },
                halt_poll_us: self.hypervisor.halt_poll_us,
                halt_poll_overcommitted: self.hypervisor.halt_poll_overcommitted,
                stall_timeout_ms: self.hypervisor.stall_timeout_ms,
                kick_delay_us: self.hypervisor.kick_delay_us,
                spurious_wakeup_prob: self.hypervisor.spurious_wakeup_prob,
                interrupt_us: self.hypervisor.interrupt_us,
                rescue: self.hypervisor.rescue,
                detect_ms: self.hypervisor.detect_ms,
            },
            preempt: PreemptConfig {
                window_stall_us: self.preempt.window_stall_us,
                random: (self.preempt.random_mean_interval_us > 0).then_some(RandomStalls {
                    mean_interval_us: self.preempt.random_mean_interval_us,
                    stall_us: self.preempt.random_stall_us,
                    dist,
                }),
                schedule,
                holder: (self.preempt.holder_interval_us > 0).then_some(HolderStalls {
                    lock: self.preempt.holder_lock,
                    interval_us: self.preempt.holder_interval_us,
                    stall_us: self.preempt.holder_stall_us,
                }),
            },
            trace_len: self.trace_entries,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Experiment> {
        Experiment::parse(s, "t.toml", "t")
    }

    #[test]
    fn defaults_parse_and_validate() {
        let e = parse("").unwrap();
        assert_eq!(e.runs.len(), 1);
        assert_eq!(e.runs[0], RunConfig { name: "t".into(), ..Default::default() });
    }

    #[test]
    fn lists_expand_to_a_matrix_times_repeats() {
        let e = parse("vcpus = [2, 4, 8]\nrepeats = 2\n[lock]\nvariant = [\"pv-v4.5\", \"pv-v4.8\"]\n").unwrap();
        assert_eq!(e.runs.len(), 3 * 2 * 2);
        assert_eq!(e.varying, vec!["lock.variant".to_string(), "vcpus".to_string()]);
        // Repeats get distinct, reproducible seeds.
        assert_ne!(e.runs[0].seed, e.runs[1].seed);
        assert_eq!(e.runs[0].seed, 1);
        assert_eq!(parse("vcpus = [2, 4, 8]\nrepeats = 2\n").unwrap().runs[1].seed, e.runs[1].seed);
    }

    #[test]
    fn window_lists_are_values_not_axes() {
        let e = parse("[preempt]\nwindows = [\"handoff\", \"unlock-kick\"]\n").unwrap();
        assert_eq!(e.runs.len(), 1);
        let e = parse("[preempt]\nwindows = [[\"handoff\"], [\"unlock-kick\"]]\n").unwrap();
        assert_eq!(e.runs.len(), 2);
    }

    fn err(s: &str) -> String {
        format!("{:#}", parse(s).unwrap_err())
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = err("vcpus = 4\nbogus = 1\n");
        assert!(e.contains("`bogus`") && e.contains("t.toml:2"), "{e}");
        let e = err("vcpus = 0\n");
        assert!(e.contains("`vcpus`") && e.contains("out of range") && e.contains(":1"), "{e}");
        let e = err("[lock]\nvariant = \"pv-v9\"\n");
        assert!(e.contains("`lock.variant`") && e.contains("pv-v9") && e.contains(":2"), "{e}");
        let e = err("[torture]\nnest = 3\nlocks = 2\n");
        assert!(e.contains("`torture.nest`"), "{e}");
        let e = err("[hypervisor]\nkick = \"sometimes\"\n");
        assert!(e.contains("`hypervisor.kick`"), "{e}");
        let e = err("[preempt]\nwindows = [\"nowhere\"]\n");
        assert!(e.contains("`preempt.windows`") && e.contains("nowhere"), "{e}");
        let e = err("vcpus = []\n");
        assert!(e.contains("`vcpus`") && e.contains("empty"), "{e}");
        let e = err("vcpus = \"four\"\n");
        assert!(e.contains("vcpus") || e.contains("invalid type"), "{e}");
        let e = err("vcpus = [\n");
        assert!(e.contains("syntax"), "{e}");
        let e = err("[lock]\nhash_bits = 1\n");
        assert!(e.contains("`lock.hash_bits`"), "{e}");
    }

    #[test]
    fn schedule_rules_enable_their_windows_always() {
        let e = parse("[[preempt.schedule]]\nat = \"handoff\"\nuntil = \"blocked\"\n[[preempt.schedule]]\nat = \"unlock-kick\"\nuntil = \"window:head-trylock\"\n").unwrap();
        assert_eq!(e.runs.len(), 1);
        let m = e.runs[0].machine().unwrap();
        assert_eq!(m.windows.always, 1);
        assert_eq!(m.preempt.schedule.len(), 2);
        assert_eq!(m.preempt.schedule[1].until, HoldUntil::Window(Window::HeadTrylock));
        let want =
            [Window::Handoff, Window::UnlockKick, Window::HeadTrylock].iter().fold(0u64, |m, w| m | 1 << *w as u32);
        assert_eq!(m.windows.enabled_mask, want);
        let e = err("[[preempt.schedule]]\nat = \"handoff\"\nuntil = \"later\"\n");
        assert!(e.contains("`preempt.schedule.until`"), "{e}");
    }

    #[test]
    fn machine_config_maps_contracts_and_windows() {
        let e = parse("[hypervisor]\nwait = \"unchecked\"\nkick = \"lost-if-not-waiting\"\n[preempt]\nwindows = [\"handoff\", \"unlock-kick\"]\nwindow_prob = 1.0\n").unwrap();
        let m = e.runs[0].machine().unwrap();
        assert_eq!(m.hypervisor.wait, WaitContract::Unchecked);
        assert_eq!(m.hypervisor.kick, KickContract::LostIfNotWaiting);
        assert_eq!(m.windows.enabled_mask, (1 << Window::Handoff as u32) | (1 << Window::UnlockKick as u32));
        assert_eq!(m.windows.prob, u32::MAX);
    }
}
