//! What a run produced: read back from guest memory and the VMM's own
//! counters once the vCPUs have stopped.

use crate::watchdog::MissedWakeupClass;
use pvlock_abi::{FreedObject, PanicKind, WakeStep};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one run may keep, at most: a guest that floods the console or a
/// schedule that holds forever must not exhaust the VMM (a 4096-byte
/// console store in a loop once took 2.1 GB). What is dropped beyond these
/// is counted in [`RunReport::dropped`] and said in the record.
pub mod limits {
    /// Console bytes kept per run (after the per-store 4096-byte bound).
    pub const CONSOLE_BYTES: usize = 64 << 10;
    /// Console lines kept per run.
    pub const CONSOLE_LINES: usize = 1000;
    /// Directed-hold outcomes kept per run.
    pub const HOLDS: usize = 1000;
    /// Full state dumps of rescued missed wakeups kept per run (every
    /// rescue is still counted by class).
    pub const RESCUE_REPORTS: usize = 16;
}

/// A list that keeps at most `cap` items and counts the rest.
#[derive(Debug, Clone)]
pub struct BoundedLog<T> {
    pub items: Vec<T>,
    pub cap: usize,
    pub dropped: u64,
}

impl<T> BoundedLog<T> {
    pub fn new(cap: usize) -> Self {
        Self { items: Vec::new(), cap, dropped: 0 }
    }
    pub fn push(&mut self, v: T) {
        if self.items.len() < self.cap {
            self.items.push(v);
        } else {
            self.dropped += 1;
        }
    }
}

/// The console of a run, bounded by [`limits::CONSOLE_BYTES`] and
/// [`limits::CONSOLE_LINES`].
#[derive(Debug, Default)]
pub struct Console {
    pub lines: Vec<String>,
    bytes: usize,
    pub dropped_lines: u64,
    pub dropped_bytes: u64,
}

impl Console {
    /// Keeps `line` if it fits, otherwise counts it.
    pub fn push(&mut self, line: String) {
        if self.lines.len() < limits::CONSOLE_LINES && self.bytes + line.len() <= limits::CONSOLE_BYTES {
            self.bytes += line.len();
            self.lines.push(line);
        } else {
            self.dropped_lines += 1;
            self.dropped_bytes += line.len() as u64;
        }
    }

    /// The kept lines, and a last line saying what was dropped, if anything.
    pub fn into_lines(mut self) -> Vec<String> {
        if self.dropped_lines > 0 {
            self.lines.push(format!(
                "pvlock: console truncated: {} further lines ({} bytes) dropped (limits: {} lines, {} bytes per run)",
                self.dropped_lines,
                self.dropped_bytes,
                limits::CONSOLE_LINES,
                limits::CONSOLE_BYTES
            ));
        }
        self.lines
    }
}

/// What a run dropped to stay within [`limits`] (all zero normally).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Dropped {
    pub console_lines: u64,
    pub console_bytes: u64,
    pub holds: u64,
    pub rescue_reports: u64,
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Outcome of a run, as recorded in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Every vCPU reported done with status OK.
    Ok,
    /// The guest finished but a check failed (set by the harness), or a
    /// vCPU reported a failure status.
    Failed,
    /// A wait never ended, or the run exceeded its timeout.
    Hang,
    /// Stopped from outside (Ctrl-C).
    Aborted,
    /// The guest faulted, panicked, hit a BUG(), or abused the ABI.
    GuestCrash,
}

impl RunStatus {
    /// Every status, in report order.
    pub const ALL: &'static [RunStatus] =
        &[RunStatus::Ok, RunStatus::Hang, RunStatus::GuestCrash, RunStatus::Failed, RunStatus::Aborted];

    /// The JSON and report spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Hang => "hang",
            Self::Aborted => "aborted",
            Self::GuestCrash => "guest-crash",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|st| st.as_str() == s)
    }

    pub const fn is_ok(self) -> bool {
        matches!(self, Self::Ok)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure a [`GuestFailure`] is: its `kind` tag in JSON,
/// without the details (for counting failures by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    TripleFault,
    Panic,
    AbiViolation,
    UnexpectedExit,
    WorkloadFailed,
    MissedWakeup,
    UseAfterFree,
    BlockedWait,
    Timeout,
    Host,
    Aborted,
}

impl FailureKind {
    /// The `kind` tag of the JSON form.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TripleFault => "triple-fault",
            Self::Panic => "panic",
            Self::AbiViolation => "abi-violation",
            Self::UnexpectedExit => "unexpected-exit",
            Self::WorkloadFailed => "workload-failed",
            Self::MissedWakeup => "missed-wakeup",
            Self::UseAfterFree => "use-after-free",
            Self::BlockedWait => "blocked-wait",
            Self::Timeout => "timeout",
            Self::Host => "host",
            Self::Aborted => "aborted",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a run did not end OK.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum GuestFailure {
    /// KVM_EXIT_SHUTDOWN: a fault the guest cannot handle (it has no IDT).
    TripleFault { cpu: u32, rip: u64, rsp: u64, cr2: u64, rax: u64, rdi: u64 },
    /// A guest panic, BUG() or mutual-exclusion violation (panic doorbell).
    Panic { cpu: u32, what: PanicKind, file: String, line: u32, message: String },
    /// The guest sent nonsense through the ABI.
    AbiViolation { cpu: u32, rip: u64, detail: String },
    /// An exit the VMM does not expect from this guest.
    UnexpectedExit { cpu: u32, rip: u64, exit: String, rsp: u64, cr2: u64, rax: u64, rdi: u64 },
    /// A vCPU reported DONE with a failure status.
    WorkloadFailed { cpu: u32, status: u64 },
    /// A vCPU touched another vCPU's poisoned wait entry or exited task
    /// (the page wait queues' lifetime check): `cpu` made the access at
    /// `step`; `owner` is the vCPU whose frame / task it was.
    UseAfterFree {
        cpu: u32,
        owner: u32,
        object: FreedObject,
        step: WakeStep,
        /// Lifetime tags: when the waker took its reference, and at the access.
        tag_then: u32,
        tag_now: u32,
        addr: u64,
        file: String,
        line: u32,
    },
    /// The lock-aware detector found a waiter nothing will wake.
    MissedWakeup { cpu: u32, class: MissedWakeupClass, detail: String },
    /// A vCPU blocked in pv_wait longer than the stall timeout.
    BlockedWait { cpu: u32, blocked_ms: u64, gpa: u64, expected: u8, current: u8 },
    /// The run did not finish within its timeout.
    Timeout { timeout_ms: u64, not_done: Vec<u32> },
    /// KVM_RUN or a host facility failed.
    Host { cpu: u32, error: String },
    /// Stopped from outside.
    Aborted { reason: String },
}

impl GuestFailure {
    pub fn status(&self) -> RunStatus {
        match self {
            Self::TripleFault { .. }
            | Self::Panic { .. }
            | Self::AbiViolation { .. }
            | Self::UnexpectedExit { .. }
            | Self::UseAfterFree { .. } => RunStatus::GuestCrash,
            Self::WorkloadFailed { .. } | Self::Host { .. } => RunStatus::Failed,
            Self::BlockedWait { .. } | Self::Timeout { .. } | Self::MissedWakeup { .. } => RunStatus::Hang,
            Self::Aborted { .. } => RunStatus::Aborted,
        }
    }

    /// Its kind (the `kind` tag of the JSON form).
    pub const fn kind(&self) -> FailureKind {
        match self {
            Self::TripleFault { .. } => FailureKind::TripleFault,
            Self::Panic { .. } => FailureKind::Panic,
            Self::AbiViolation { .. } => FailureKind::AbiViolation,
            Self::UnexpectedExit { .. } => FailureKind::UnexpectedExit,
            Self::WorkloadFailed { .. } => FailureKind::WorkloadFailed,
            Self::MissedWakeup { .. } => FailureKind::MissedWakeup,
            Self::UseAfterFree { .. } => FailureKind::UseAfterFree,
            Self::BlockedWait { .. } => FailureKind::BlockedWait,
            Self::Timeout { .. } => FailureKind::Timeout,
            Self::Host { .. } => FailureKind::Host,
            Self::Aborted { .. } => FailureKind::Aborted,
        }
    }

    /// One line for a human.
    pub fn summary(&self) -> String {
        match self {
            Self::TripleFault { cpu, rip, rsp, cr2, .. } => {
                format!("vCPU {cpu}: triple fault at RIP {rip:#x} (RSP {rsp:#x}, CR2 {cr2:#x})")
            }
            Self::Panic { cpu, what, file, line, message } => format!("vCPU {cpu}: guest {what} at {file}:{line}: {message}"),
            Self::AbiViolation { cpu, rip, detail } => format!("vCPU {cpu}: ABI violation at RIP {rip:#x}: {detail}"),
            Self::UnexpectedExit { cpu, rip, exit, rsp, cr2, .. } => {
                format!("vCPU {cpu}: unexpected exit {exit} at RIP {rip:#x} (RSP {rsp:#x}, CR2 {cr2:#x})")
            }
            Self::WorkloadFailed { cpu, status } => format!("vCPU {cpu}: workload reported failure status {status}"),
            Self::BlockedWait { cpu, blocked_ms, gpa, expected, current } => format!(
                "vCPU {cpu}: blocked in pv_wait for {blocked_ms} ms on byte {gpa:#x} (expected {expected}, now {current})"
            ),
            Self::MissedWakeup { cpu, class, detail } => format!("vCPU {cpu}: missed wakeup ({class}): {detail}"),
            Self::UseAfterFree { cpu, owner, object, step, tag_then, tag_now, addr, file, line } => {
                let what = if tag_now & 1 == 0 { "freed" } else { "freed and reused" };
                format!(
                    "vCPU {cpu}: use-after-free of vCPU {owner}'s {object} at {addr:#x} ({what}; tag {tag_then:#x} -> \
                     {tag_now:#x}) by the waker's step {step}, {file}:{line}"
                )
            }
            Self::Timeout { timeout_ms, not_done } => {
                format!("run did not finish within {timeout_ms} ms; vCPUs not done: {not_done:?}")
            }
            Self::Host { cpu, error } => format!("vCPU {cpu}: host error: {error}"),
            Self::Aborted { reason } => format!("aborted: {reason}"),
        }
    }
}

/// One vCPU's results.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VcpuReport {
    pub cpu: u32,
    /// The guest reached DONE.
    pub done: bool,
    pub done_status: Option<u64>,
    pub acquisitions: u64,
    pub max_wait_ns: u64,
    /// Lock events by Linux name.
    pub lock_events: BTreeMap<String, u64>,
    /// VMM-side wait/kick/stall counters.
    pub vmm: BTreeMap<String, u64>,
    /// Race windows reached while enabled, by name.
    pub window_hits: BTreeMap<String, u64>,
    /// Number of MMIO exits handled.
    pub exits: u64,
    /// Guest phase when the run ended (None: an id the VMM does not know).
    #[serde(serialize_with = "crate::watchdog::phase_name")]
    pub final_phase: Option<pvlock_abi::GuestPhase>,
    /// Raw guest timing slots (workload-specific, see pvlock_abi::VcpuBlock).
    #[serde(skip)]
    pub timing: [u64; 8],
    /// Non-empty latency histogram buckets: (lower bound ns, count).
    #[serde(skip)]
    pub latency_buckets: Vec<(u64, u64)>,
    /// Per wake leg (`pvlock_abi::Leg`, by index): non-empty histogram
    /// buckets (lower bound ns, count).
    #[serde(skip)]
    pub leg_buckets: Vec<Vec<(u64, u64)>>,
    /// Per wake leg, the sum of its values, ns.
    #[serde(skip)]
    pub leg_sum_ns: Vec<u64>,
    /// Doorbells workload: host TSC minus guest TSC is within
    /// `[lo, hi]` cycles, from `samples` timed exits.
    #[serde(skip)]
    pub tsc_offset: Option<TscOffset>,
}

/// Bounds on host TSC minus guest TSC, cycles (see `pvlock_abi::LegTiming`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscOffset {
    pub lo: i64,
    pub hi: i64,
    pub samples: u64,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub status: RunStatus,
    pub failure: Option<GuestFailure>,
    /// Wall time from VM creation to the end of the run.
    pub wall_ms: f64,
    /// VM creation start to the first guest instruction (vCPU 0's entry TSC).
    pub boot_us: Option<f64>,
    /// Of that, creating and setting up every vCPU (KVM_CREATE_VCPU, the
    /// kvm_run mmap, CPUID, special and general registers), in order.
    pub vcpu_setup_us: Option<f64>,
    /// Of that, every vCPU's kick and control eventfds and its kick
    /// doorbell's KVM_IOEVENTFD registration.
    pub kick_setup_us: Option<f64>,
    pub tsc_khz: u64,
    pub per_vcpu: Vec<VcpuReport>,
    /// Console lines, prefixed with the vCPU.
    pub console: Vec<String>,
    /// The boot block as read back at the end.
    #[serde(skip)]
    pub boot: pvlock_abi::BootBlock,
    /// Every PV hash-table slot still in use at the end: (lock, node).
    pub hash_in_use: Vec<(u64, u64)>,
    /// Per torture lock: plain counter at the end.
    #[serde(skip)]
    pub lock_counts: Vec<u64>,
    /// Per torture lock: owner field at the end (cpu + 1, 0 free).
    #[serde(skip)]
    pub lock_owners: Vec<u32>,
    /// Directed holds and how each was released.
    pub holds: Vec<crate::preempt::HoldOutcome>,
    /// The state dump of a hang or missed wakeup.
    pub hang: Option<crate::watchdog::HangReport>,
    /// Missed wakeups rescued (`rescue`), each with its dump (the first
    /// [`limits::RESCUE_REPORTS`]).
    pub rescued: Vec<crate::watchdog::HangReport>,
    /// Every rescued missed wakeup, by class (also those whose dump was dropped).
    pub rescued_by_class: BTreeMap<crate::watchdog::MissedWakeupClass, u64>,
    /// What was dropped to stay within [`limits`].
    pub dropped: Dropped,
    /// Random / holder stall requests skipped (vCPU blocked or stalled).
    pub stalls_skipped: u64,
    /// Kernel builds: per site of the build's table, stalls performed there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_stalls: Vec<u64>,
    /// Kernel builds: per site, exits there (stalls, holds, `until` arrivals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_arrivals: Vec<u64>,
    /// Kernel builds: per vCPU, the last tracked site it passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_sites: Vec<Option<u32>>,
    /// (entries in use, samples) of the PV hash table over the run.
    pub hash_occupancy: Vec<(u64, u64)>,
    /// Every vCPU at the end (registers, backtrace, phase, lock, trace
    /// tail); symbolized when the run did not end OK.
    pub vcpu_dumps: Vec<crate::vcpu_dump::VcpuDump>,
    /// Every vCPU's trace ring, oldest first (for `--trace` and race diagrams).
    #[serde(skip)]
    pub traces: Vec<crate::trace::VcpuTrace>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_statuses_are_their_json_spellings() {
        let failures = [
            GuestFailure::TripleFault { cpu: 0, rip: 0, rsp: 0, cr2: 0, rax: 0, rdi: 0 },
            GuestFailure::Panic { cpu: 0, what: PanicKind::Bug, file: "f".into(), line: 1, message: "m".into() },
            GuestFailure::AbiViolation { cpu: 0, rip: 0, detail: String::new() },
            GuestFailure::UnexpectedExit { cpu: 0, rip: 0, exit: String::new(), rsp: 0, cr2: 0, rax: 0, rdi: 0 },
            GuestFailure::WorkloadFailed { cpu: 0, status: 1 },
            GuestFailure::MissedWakeup { cpu: 0, class: MissedWakeupClass::StaleEntry, detail: String::new() },
            GuestFailure::BlockedWait { cpu: 0, blocked_ms: 1, gpa: 0, expected: 0, current: 0 },
            GuestFailure::Timeout { timeout_ms: 1, not_done: vec![] },
            GuestFailure::Host { cpu: 0, error: String::new() },
            GuestFailure::Aborted { reason: String::new() },
        ];
        for f in failures {
            let v = serde_json::to_value(&f).unwrap();
            assert_eq!(v["kind"], f.kind().name());
            assert_eq!(serde_json::to_value(f.kind()).unwrap(), f.kind().name());
            assert_eq!(serde_json::from_value::<GuestFailure>(v).unwrap(), f);
        }
        for s in RunStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(RunStatus::from_name(s.as_str()), Some(*s));
        }
        for c in MissedWakeupClass::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.name());
        }
        // Records written before the class was typed spelled it as the Rust name.
        let old: MissedWakeupClass = serde_json::from_str("\"StaleEntry\"").unwrap();
        assert_eq!(old, MissedWakeupClass::StaleEntry);
        let p = serde_json::to_value(PanicKind::MutualExclusion).unwrap();
        assert_eq!(p, "mutual-exclusion violation");
    }
}
