//! The JSON record of one run (`pvlock run --json`, one line of
//! `runs.jsonl`). Reports are pure functions of these records.

use crate::config::{Expected, RunConfig};
use crate::stats::Percentiles;
use pvlock_abi::Variant;
use pvlock_vmm::{GuestFailure, HoldOutcome, RunStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped when a field changes meaning or is removed.
pub const SCHEMA_VERSION: u32 = 1;

/// One correctness check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &str, passed: bool, detail: impl Into<String>) -> Self {
        Self { name: name.into(), passed, detail: detail.into() }
    }
}

/// One vCPU's numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerVcpu {
    pub cpu: u32,
    pub done: bool,
    pub acquisitions: u64,
    /// Longest single acquisition wait, ns.
    pub max_wait_ns: u64,
    pub latency_ns: Percentiles,
    pub exits: u64,
    pub final_phase: String,
    pub lock_events: BTreeMap<String, u64>,
    pub vmm: BTreeMap<String, u64>,
    pub window_hits: BTreeMap<String, u64>,
}

/// PV hash-table statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HashStats {
    /// Table size (entries); 0 if the run had no PV table.
    pub entries: u64,
    /// Entries still in use at the end (should be 0).
    pub stale_entries: u64,
    pub inserts: u64,
    pub removes: u64,
    pub max_probe: u64,
    /// Slots probed per insert, the first one included (pv_hash_hops /
    /// inserts: 1.0 without collisions).
    pub hops_per_insert: f64,
    /// pv_hash_hops / pv_kick_unlock: what the kernel's debugfs
    /// `pv_hash_hops` file shows (it divides the hops by the unlock kicks,
    /// not by the inserts). 0 without kicks.
    #[serde(default)]
    pub hops_per_kick_unlock: f64,
    pub double_hash: u64,
    /// Occupancy over the run: [entries in use, samples], sampled by the VMM
    /// every ~20 ms.
    #[serde(default)]
    pub occupancy: Vec<[u64; 2]>,
}

/// What the VMM saw of missed wakeups and directed holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The state dump and class of the hang that ended the run, if any.
    pub hang: Option<serde_json::Value>,
    /// The same dump as text, for people.
    pub hang_text: Option<String>,
    /// Missed wakeups by class: the one that ended the run plus every one
    /// rescued (`hypervisor.rescue`).
    pub missed_wakeups: BTreeMap<String, u64>,
    /// Severity of a missed wakeup in a real guest, which this testbed
    /// (no interrupts) cannot show directly.
    pub real_guest_severity: Option<String>,
    /// Directed holds and what released each (`condition`, `timeout`, `stop`).
    pub holds: Vec<HoldOutcome>,
    /// Random / holder stall requests skipped (vCPU blocked or already stalled).
    pub stalls_skipped: u64,
    /// A record that did not end OK: every vCPU's registers, symbolized
    /// frame-pointer backtrace, phase, lock, node and last trace events
    /// (`pvlock_vmm::vcpu_dump::VcpuDump`).
    #[serde(default)]
    pub vcpus: Vec<serde_json::Value>,
    /// The same for people.
    #[serde(default)]
    pub vcpus_text: Option<String>,
    /// A detected race (double hash, missed wakeup, stale entry) drawn from
    /// this run's trace: one column per vCPU involved, one row per step.
    #[serde(default)]
    pub race_diagram: Option<String>,
    /// What the VMM dropped to stay within its per-run limits (console
    /// lines and bytes, hold outcomes, rescue dumps); absent when nothing.
    #[serde(default, skip_serializing_if = "pvlock_vmm::report::Dropped::is_empty")]
    pub dropped: pvlock_vmm::report::Dropped,
    /// Kernel builds: every `WARN()` the tree's code hit, with the kernel's
    /// file:line. A WARN does not end the run (the kernel carries on after
    /// its splat); the `no_kernel_warnings` check fails on any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_warnings: Vec<KernelWarning>,
}

/// One kernel `WARN()` (the guest's console line, parsed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelWarning {
    pub cpu: u32,
    /// Tree-relative, as the kernel prints it.
    pub file: String,
    pub line: u32,
    pub message: String,
}

impl KernelWarning {
    /// Parses `"{KERNEL_WARNING_PREFIX}cpu=N at FILE:LINE: MESSAGE"`, as
    /// the VMM's console keeps it (after its `vcpuN: ` prefix).
    pub fn parse(console_line: &str) -> Option<Self> {
        let line = match console_line.split_once(": ") {
            Some((v, rest)) if v.starts_with("vcpu") => rest,
            _ => console_line,
        };
        let rest = line.strip_prefix(pvlock_abi::kmod::KERNEL_WARNING_PREFIX)?;
        let rest = rest.strip_prefix("cpu=")?;
        let (cpu, rest) = rest.split_once(" at ")?;
        let (at, message) = rest.split_once(": ")?;
        let (file, line) = at.rsplit_once(':')?;
        Some(Self {
            cpu: cpu.parse().ok()?,
            file: file.to_string(),
            line: line.parse().ok()?,
            message: message.trim_end().to_string(),
        })
    }
}

/// Lock parameters as run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub variant: Variant,
    pub mutant: bool,
    pub pv: bool,
    pub spin_threshold: u32,
    pub hash_bits: u32,
    /// Whether the kernel of the variant's era had these lock-event
    /// counters (`model-only` for v4.2, v4.3).
    #[serde(default)]
    pub counters: CounterOrigin,
    /// Whether `pv_wait_early()` could fire in this run (false below a
    /// spin threshold of 256, and for variants without it).
    #[serde(default)]
    pub wait_early: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            variant: Variant::PvUpstream,
            mutant: false,
            pv: true,
            spin_threshold: 1 << 15,
            hash_bits: 0,
            counters: CounterOrigin::Kernel,
            wait_early: true,
        }
    }
}

/// Where a run's lock-event counters come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CounterOrigin {
    /// The kernel of the variant's era counted the same events
    /// (`qspinlock_stat.h` / `lock_events.h`, v4.5 on).
    #[default]
    Kernel,
    /// No PV lock statistics in that kernel: the testbed's own counts.
    ModelOnly,
}

impl CounterOrigin {
    pub fn of(v: Variant) -> Self {
        if pvlock_guest_lib::variants::counters_model_only(v) {
            Self::ModelOnly
        } else {
            Self::Kernel
        }
    }
}

/// Guest-measured mechanism costs (timing workloads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Mean round trip of an exiting doorbell, microseconds.
    pub mmio_exit_us: Option<f64>,
    /// Mean cost of a kick store (ioeventfd), microseconds.
    pub kick_store_us: Option<f64>,
    /// Kick -> wake latency, ns.
    pub kick_wake_ns: Option<Percentiles>,
    /// Cost of one call of a disabled race window (`race_window()` with the
    /// window off) over an identical loop without the call, ns per call
    /// (doorbells workload; may be slightly negative in the noise).
    #[serde(default)]
    pub disabled_window_ns: Option<f64>,
    /// VM creation to the first guest instruction, microseconds.
    pub boot_us: Option<f64>,
    /// Of `boot_us`, the per-vCPU setup (KVM_CREATE_VCPU and the register
    /// ioctls of every vCPU, one after the other), microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_setup_us: Option<f64>,
    /// Of `boot_us`, the per-vCPU kick eventfds and their KVM_IOEVENTFD
    /// registrations, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kick_setup_us: Option<f64>,
    /// Wake legs by name (`pvlock_abi::Leg::name`), each timed on one clock
    /// across the guest/VMM boundary (doorbells and ping-pong workloads).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wake_legs: BTreeMap<String, LegStats>,
    /// Doorbells: bounds on host TSC minus guest TSC, cycles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsc_offset_cycles: Option<TscOffsetBounds>,
}

/// One wake leg of a run: its bucketed percentiles and exact mean, ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LegStats {
    pub ns: Percentiles,
    pub mean_ns: f64,
}

/// `lo <= host TSC - guest TSC <= hi`, from `samples` exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TscOffsetBounds {
    pub lo: i64,
    pub hi: i64,
    pub samples: u64,
}

/// The record of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub schema_version: u32,
    pub name: String,
    /// The values of the matrix keys that vary, e.g. `lock.variant=pv-v4.8,vcpus=4`.
    pub run_key: String,
    /// `ok` | `failed` | `hang` | `aborted` | `guest-crash`.
    pub status: RunStatus,
    /// What the config's `[[expect]]` rules said this run must end as
    /// (absent: `ok`).
    #[serde(default, skip_serializing_if = "Expected::is_ok")]
    pub expected: Expected,
    /// One line: why the status is what it is.
    pub summary: String,
    /// Structured failure (kind, vCPU, RIP, message...), if any.
    pub failure: Option<GuestFailure>,
    pub started_at: String,
    pub pvlock_version: String,
    pub vcpus: u32,
    pub host_cpus: u32,
    /// Wall time of the run (VM creation to teardown), ms.
    pub duration_ms: f64,
    pub tsc_khz: u64,
    /// Outermost lock acquisitions, all vCPUs.
    pub acquisitions: u64,
    /// Acquisitions per second of guest run time.
    pub acquisitions_per_sec: f64,
    /// Acquisition latency over all vCPUs, ns.
    pub latency_ns: Percentiles,
    /// Longest acquisition wait of any vCPU, ns (fairness).
    pub max_wait_ns: u64,
    pub lock_events: BTreeMap<String, u64>,
    pub vmm: BTreeMap<String, u64>,
    pub hash: HashStats,
    pub params: Params,
    pub timing: Timing,
    pub checks: Vec<Check>,
    /// Hang dump, directed holds, missed wakeups by class.
    #[serde(default)]
    pub diagnosis: Diagnosis,
    pub per_vcpu: Vec<PerVcpu>,
    pub console: Vec<String>,
    /// The effective config of this run.
    pub config: RunConfig,
    /// Kernel variants: the build that ran (tree version, flavour, patches
    /// with their sha256, compiler, the layout it reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<crate::kernel::KernelBuildInfo>,
    /// Kernel variants: the sites the run stalled at and how often, and
    /// the last site each vCPU passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_sites: Option<crate::kernel::sites::SiteStats>,
}

impl Record {
    /// The variant as reports show it: its name, and for a kernel build
    /// the tree's release, the flavour and the patches applied, e.g.
    /// `kernel-pv 6.12.117 x86 +fix.patch`.
    pub fn variant_label(&self) -> String {
        let name = self.params.variant.name();
        let Some(k) = &self.kernel else { return name.to_string() };
        let mut label = format!("{name} {} {}", k.version, k.flavour.name());
        for [path, _sha] in &k.patches {
            let file = std::path::Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned());
            label += &format!(" +{}", file.unwrap_or_else(|| path.clone()));
        }
        label
    }

    /// Whether the run ended as its config expects (`ok`, or a failure
    /// an `[[expect]]` rule names). Only these count for the exit code.
    pub fn as_expected(&self) -> bool {
        self.expected.admits(self.status)
    }

    pub fn all_checks_passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a UNIX time (civil-from-days, proleptic
/// Gregorian), so records need no date crate.
pub fn utc_timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

pub fn now_utc() -> String {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    utc_timestamp(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_462_201), "2026-11-23T19:30:01Z");
    }
}

#[cfg(test)]
mod kernel_warning_tests {
    use super::KernelWarning;

    #[test]
    fn parses_the_guest_warning_line_and_nothing_else() {
        let w = KernelWarning::parse(
            "vcpu3: kernel WARNING cpu=3 at kernel/locking/qspinlock_paravirt.h:500: pvqspinlock: lock 0x%lx has corrupted value 0x%x!",
        )
        .unwrap();
        assert_eq!((w.cpu, w.file.as_str(), w.line), (3, "kernel/locking/qspinlock_paravirt.h", 500));
        assert!(w.message.starts_with("pvqspinlock: lock"));
        assert_eq!(KernelWarning::parse("guest: hello"), None);
        assert_eq!(KernelWarning::parse("kernel WARNING cpu=x at a.h:1: m"), None);
    }
}
