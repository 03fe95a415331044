//! The reproducer catalog (`pvlock repro`): for each known race, a config
//! that provokes it by random preemption at its window, a directed schedule
//! that forces its interleaving, and the evidence that shows it happened.
//! Races and windows: `../shared/PV-LOCK-BACKGROUND.md`, "Where the races live".

use crate::config::RunConfig;
use crate::record::Record;
use crate::runner::run_one_with_report;
use anyhow::{bail, Result};
use pvlock_abi::{LockEvent, MutexVariant, Variant, Window, Workload};
use pvlock_vmm::{
    GuestFailure, HoldRule, HoldUntil, HoldWhen, KickContract, MissedWakeupClass, RunStatus, StopHandle, WaitContract,
};
use serde::Serialize;

/// How a reproducer provokes its race.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Seeded random stalls at the race's windows.
    Random,
    /// A schedule that holds one vCPU at the window until the race's other
    /// half has happened.
    Directed,
}

/// One catalog entry.
#[derive(Clone, Copy)]
pub struct Repro {
    pub name: &'static str,
    pub race: &'static str,
    pub default_variant: Variant,
    pub what: &'static str,
    /// The run for `variant`, seed and budget, in `mode`.
    pub build: fn(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig,
    /// The evidence in a record, if any.
    pub evidence: fn(&Record) -> Option<String>,
    /// Sleeping-lock reproducers: the mutex variant (`lock.mutex`) under
    /// test, whose `wait_lock` is `variant`; `--all` runs every non-mutant
    /// mutex variant. None for the spinlock reproducers.
    pub mutex: Option<MutexVariant>,
}

fn base(variant: Variant, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = RunConfig {
        name: "repro".into(),
        workload: Workload::Torture,
        vcpus: 4,
        host_cpus: 2,
        seed,
        duration_ms: budget_ms,
        timeout_ms: budget_ms + 20_000,
        ..Default::default()
    };
    rc.lock.variant = variant;
    // A short spin makes waiters halt (and get hashed) often. 256, not
    // less: below 256 `pv_wait_early()` can never fire ((loop & 0xff) == 0
    // never holds), which would silently take the v4.5+ queue-node logic
    // out of every reproducer.
    rc.lock.spin_threshold = 256;
    rc.torture.locks = 1;
    rc.torture.cs_ns = 300;
    rc.torture.think_ns = 300;
    rc.hypervisor.stall_timeout_ms = 500;
    rc.hypervisor.detect_ms = 50;
    rc
}

fn hold(at: Window, until: HoldUntil, timeout_us: u64) -> HoldRule {
    HoldRule { until, timeout_us, count: 0, ..HoldRule::at(at) }
}

fn ev(r: &Record, e: LockEvent) -> u64 {
    r.lock_events.get(e.name()).copied().unwrap_or(0)
}

fn failure_text(r: &Record) -> Option<String> {
    r.failure.as_ref().map(|_| r.summary.clone())
}

/// A hang, a missed wakeup (detected or rescued), or a guest BUG.
fn lost_or_bug(r: &Record) -> Option<String> {
    if matches!(r.status, RunStatus::Hang | RunStatus::GuestCrash) {
        return failure_text(r);
    }
    let rescued = r.vmm.get("rescues").copied().unwrap_or(0);
    (rescued > 0).then(|| format!("{rescued} missed wakeups rescued"))
}

fn double_hash(r: &Record) -> Option<String> {
    // The guest counts the double hash before its stop_on_double_hash BUG.
    let n = ev(r, LockEvent::DoubleHash);
    if r.status == RunStatus::GuestCrash && n > 0 {
        return failure_text(r);
    }
    if n > 0 {
        return Some(format!("{n} double hash inserts"));
    }
    if matches!(r.failure, Some(GuestFailure::MissedWakeup { class: MissedWakeupClass::StaleEntry, .. })) {
        return failure_text(r);
    }
    None
}

fn double_hash_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = base(variant, seed, budget_ms);
    rc.lock.stop_on_double_hash = true;
    match mode {
        // R1: stall the new owner between the MCS hand-off and its
        // halted -> hashed cmpxchg for longer than the successor's head spin.
        // Chosen knowingly: 64 spins, so `pv_wait_early()` is off (it
        // needs >= 256). R1 does not involve wait-early, and successors
        // that halt only by exhausting a short spin become halted heads
        // sooner: on mutant-halted-head the median time to detect was 1.7 s
        // at 64 against 6.3 s at 256 (6 seeds each). The directed mode
        // runs with the kernel's threshold, wait-early on.
        Mode::Random => {
            rc.lock.spin_threshold = 64;
            rc.preempt.windows = vec![Window::Handoff];
            rc.preempt.window_prob = 0.02;
            rc.preempt.window_stall_us = 3000;
        }
        // Hold the new owner at the hand-off until a queue head blocks (the
        // successor became head, hashed itself and waits), then let it
        // hash the successor again.
        // The kernel's spin threshold keeps the successor spinning (not
        // halted) in pv_wait_node when the hand-off comes: R1's precondition.
        Mode::Directed => {
            rc.lock.spin_threshold = 1 << 15;
            let mut rule = hold(Window::Handoff, HoldUntil::HeadBlocked, 20_000);
            rule.when = HoldWhen::SuccessorRunning;
            rc.preempt.schedule = vec![rule];
        }
    }
    rc
}

fn stolen_wakeup_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = base(variant, seed, budget_ms);
    rc.vcpus = 6;
    // R2's hang needs a wait that does not re-check (with KVM's checked
    // wait the kicked head only busy-spins: counted as kicked_but_stolen).
    rc.hypervisor.wait = WaitContract::Unchecked;
    match mode {
        Mode::Random => {
            rc.preempt.windows = vec![Window::UnlockKick, Window::HeadTrylock];
            rc.preempt.window_prob = 0.2;
            rc.preempt.window_stall_us = 500;
        }
        // Hold the kicked head before its trylock until a newcomer has
        // stolen the lock (it reaches the critical-section window).
        Mode::Directed => {
            rc.preempt.schedule = vec![hold(Window::HeadTrylock, HoldUntil::Window(Window::CriticalSection), 5_000)]
        }
    }
    rc
}

fn stolen_wakeup(r: &Record) -> Option<String> {
    lost_or_bug(r).or_else(|| {
        let n = ev(r, LockEvent::KickedButStolen);
        (n > 0 && r.config.hypervisor.wait == WaitContract::Checked)
            .then(|| format!("{n} kicked heads lost the lock to a stealer"))
    })
}

fn rehash_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = base(variant, seed, budget_ms);
    rc.lock.stop_on_double_hash = true;
    match mode {
        // R3: the owner between a successful state cmpxchg in pv_kick_node
        // and its _Q_SLOW_VAL write / hash insert.
        Mode::Random => {
            rc.preempt.windows = vec![Window::KickNodeHash];
            rc.preempt.window_prob = 0.2;
            rc.preempt.window_stall_us = 3000;
        }
        Mode::Directed => {
            rc.preempt.schedule = vec![hold(Window::KickNodeHash, HoldUntil::Window(Window::HeadHashSlow), 20_000)]
        }
    }
    rc
}

fn hashval_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = base(variant, seed, budget_ms);
    match mode {
        Mode::Random => {
            rc.preempt.windows = vec![Window::HashvalHeld];
            rc.preempt.window_prob = 0.1;
            rc.preempt.window_stall_us = 2000;
        }
        Mode::Directed => rc.preempt.schedule = vec![hold(Window::HashvalHeld, HoldUntil::Timeout, 2_000)],
    }
    rc
}

/// R4 is a cost: evidence is that hashers were stalled with the hash in
/// progress; the record's latency shows what it cost.
fn hashval_stall(r: &Record) -> Option<String> {
    lost_or_bug(r).or_else(|| {
        let hits: u64 =
            r.per_vcpu.iter().map(|v| v.window_hits.get(Window::HashvalHeld.name()).copied().unwrap_or(0)).sum();
        (hits > 0).then(|| {
            format!(
                "{hits} stalls with _Q_HASH_VAL held; latency p99 {} ns, longest wait {} ns",
                r.latency_ns.p99, r.max_wait_ns
            )
        })
    })
}

fn lost_kick_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = base(variant, seed, budget_ms);
    rc.hypervisor.kick = KickContract::LostIfNotWaiting;
    match mode {
        Mode::Random => {
            rc.preempt.random_mean_interval_us = 2000;
            rc.preempt.random_stall_us = 500;
        }
        // Stall the unlocker between its release and its kick.
        Mode::Directed => rc.preempt.schedule = vec![hold(Window::UnlockKick, HoldUntil::Timeout, 300)],
    }
    rc
}

fn mutant_run(window: Window) -> fn(Variant, Mode, u64, u64) -> RunConfig {
    match window {
        Window::WaitNodeRecheck => |variant, mode, seed, budget| {
            let mut rc = base(variant, seed, budget);
            rc.vcpus = 4;
            match mode {
                Mode::Random => {
                    rc.preempt.random_mean_interval_us = 2000;
                    rc.preempt.random_stall_us = 300;
                }
                Mode::Directed => rc.preempt.schedule = vec![hold(Window::WaitNodeRecheck, HoldUntil::Timeout, 200)],
            }
            rc
        },
        _ => |variant, mode, seed, budget| {
            let mut rc = base(variant, seed, budget);
            match mode {
                Mode::Random => {
                    rc.preempt.windows = vec![Window::HeadHashSlow];
                    rc.preempt.window_prob = 0.2;
                    rc.preempt.window_stall_us = 1000;
                }
                Mode::Directed => rc.preempt.schedule = vec![hold(Window::HeadHashSlow, HoldUntil::Timeout, 1_000)],
            }
            rc
        },
    }
}

/// The mutex torture of the sleeping-lock reproducers: `variant` is the
/// mutexes' `wait_lock` (the run's `lock.mutex` is set from the entry).
fn mutex_base(variant: Variant, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = base(variant, seed, budget_ms);
    rc.workload = Workload::MutexTorture;
    rc.torture.cs_ns = 2000;
    rc.torture.think_ns = 1000;
    rc
}

/// e274795ea7b7: task 0 holds mutex 0 and locks it again
/// (`lock.mutex_recursive`); vCPUs 1 and 2 torture mutex 1 and vCPU 1 sends
/// the fatal signal at the end. The recursive lock blocks; what wakes it
/// spuriously is the VMM: every wait (directed), or seeded spurious
/// wakeups plus a 20 ms simulated interrupt (random).
fn recursive_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = mutex_base(variant, seed, budget_ms);
    rc.vcpus = 3;
    rc.torture.locks = 2;
    rc.lock.mutex_recursive = true;
    match mode {
        Mode::Random => {
            rc.hypervisor.spurious_wakeup_prob = 0.05;
            rc.hypervisor.interrupt_us = 20_000;
        }
        Mode::Directed => rc.hypervisor.spurious_wakeup_prob = 1.0,
    }
    rc
}

/// The guest's BUG: the recursive `mutex_lock_killable()` returned 0.
fn recursive_taken(r: &Record) -> Option<String> {
    (r.status == RunStatus::GuestCrash && r.summary.contains("recursive mutex_lock")).then(|| r.summary.clone())
}

/// A first waiter that went on waiting this many times, in one
/// `mutex_lock()`, with no hand-off request standing did not renew its
/// request: where HANDOFF is requested again on each wakeup (048661a1f963)
/// the count is 1 per lost request (the wakeup on which the steal happened),
/// and the directed mode loses it once.
const HANDOFF_LOST_WAKEUPS: u64 = 2;

/// 048661a1f963: 4 tasks on one mutex, 50 us critical sections; the holder
/// is stalled often (300 us every 300 us), so waiters, the first one
/// included, stop spinning on it and sleep, and each unlock wakes the first
/// waiter while the others race it for the mutex. The
/// window: the first waiter has just set HANDOFF on an unlocked mutex.
/// Directed: held there (once) until another task is in the critical
/// section (its trylock took the mutex and cleared HANDOFF). Random: seeded
/// stalls at the window.
fn handoff_lost_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = mutex_base(variant, seed, budget_ms);
    rc.vcpus = 6;
    rc.torture.locks = 1;
    rc.torture.think_ns = 20_000;
    rc.torture.cs_ns = 50_000;
    rc.preempt.holder_interval_us = 300;
    rc.preempt.holder_lock = 0;
    rc.preempt.holder_stall_us = 300;
    match mode {
        Mode::Random => {
            rc.preempt.windows = vec![Window::MutexHandoffSet];
            rc.preempt.window_prob = 0.5;
            rc.preempt.window_stall_us = 1000;
        }
        Mode::Directed => {
            rc.preempt.schedule = vec![HoldRule {
                count: 1,
                ..hold(Window::MutexHandoffSet, HoldUntil::Window(Window::CriticalSection), 20_000)
            }]
        }
    }
    rc
}

fn handoff_lost(r: &Record) -> Option<String> {
    let n = r
        .per_vcpu
        .iter()
        .map(|v| v.lock_events.get(LockEvent::MutexFirstWakeNoHandoffMax.name()).copied().unwrap_or(0))
        .max()
        .unwrap_or(0);
    (n >= HANDOFF_LOST_WAKEUPS).then(|| {
        format!(
            "a first waiter woke {n} times in one mutex_lock() with no hand-off requested; longest wait {} ns",
            r.max_wait_ns
        )
    })
}

/// The catalog.
pub fn catalog() -> Vec<Repro> {
    vec![
        Repro { name: "double-hash", race: "R1", default_variant: Variant::PvV45, what: "new owner stalled between MCS hand-off and pv_kick_node's cmpxchg: the successor hashes itself, then the owner hashes it again", build: double_hash_run, evidence: double_hash, mutex: None },
        Repro { name: "stolen-wakeup", race: "R2", default_variant: Variant::PvV48, what: "a newcomer steals the lock between the unlock's release and the kicked head's trylock; with an unchecked wait the head blocks unhashed", build: stolen_wakeup_run, evidence: stolen_wakeup, mutex: None },
        Repro { name: "rehash-double", race: "R3", default_variant: Variant::PvRehash2016, what: "owner stalled after pv_kick_node's cmpxchg, before its hash insert; the re-hash rule hashes the same waiter too", build: rehash_run, evidence: double_hash, mutex: None },
        Repro { name: "hashval-stall", race: "R4", default_variant: Variant::PvHashval2016, what: "a hasher stalled with _Q_HASH_VAL held: the unlocker and the head wait (a latency cost)", build: hashval_run, evidence: hashval_stall, mutex: None },
        Repro { name: "lost-kick", race: "contract", default_variant: Variant::PvUpstream, what: "kicks to vCPUs that are not yet waiting are dropped: which variants depend on remembered kicks", build: lost_kick_run, evidence: lost_or_bug, mutex: None },
        Repro { name: "no-store-mb", race: "R5", default_variant: Variant::MutantNoStoreMb, what: "mutant: no full barrier between pv_wait_node's state store and its re-check (store buffering): lost wakeup", build: mutant_run(Window::WaitNodeRecheck), evidence: lost_or_bug, mutex: None },
        Repro { name: "slow-before-hash", race: "mutant", default_variant: Variant::MutantSlowBeforeHash, what: "mutant: _Q_SLOW_VAL set before the hash insert: the unlocker finds no entry (pv_unhash BUG)", build: mutant_run(Window::HeadHashSlow), evidence: lost_or_bug, mutex: None },
        Repro { name: "halted-head", race: "R1", default_variant: Variant::MutantHaltedHead, what: "mutant: upstream with the pre-v4.8 halted head write: the double hash again", build: double_hash_run, evidence: double_hash, mutex: None },
        Repro { name: "mutex-recursive-handoff", race: "e274795ea7b7", default_variant: Variant::PvUpstream, what: "mutex: a task locks a mutex it holds and blocks; a spurious wakeup makes it first, it requests a hand-off and takes it from itself (v4.10; ad90880dc962 brought it back upstream, results/findings)", build: recursive_run, evidence: recursive_taken, mutex: Some(MutexVariant::V4_10) },
        Repro { name: "mutex-handoff-lost", race: "048661a1f963", default_variant: Variant::PvUpstream, what: "mutex: HANDOFF set on an unlocked mutex is cleared by a stealer and, before the fix, never requested again: the first waiter wakes again and again with no hand-off standing", build: handoff_lost_run, evidence: handoff_lost, mutex: Some(MutexVariant::V5_12) },
    ]
}

/// One seed's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SeedOutcome {
    pub seed: u64,
    pub detected: bool,
    /// Wall time of the run that detected (the run stops at the evidence
    /// for hangs and BUGs; counted evidence is seen at the run's end).
    pub time_to_detect_s: Option<f64>,
    pub evidence: Option<String>,
    pub status: RunStatus,
    pub summary: String,
    /// The race as this run's trace shows it (`diagnosis.race_diagram`).
    pub race_diagram: Option<String>,
}

/// All seeds of one reproducer against one variant.
#[derive(Debug, Clone, Serialize)]
pub struct ReproResult {
    pub repro: String,
    pub variant: Variant,
    /// The mutex variant of a sleeping-lock reproducer (`variant` is then
    /// its `wait_lock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutex: Option<MutexVariant>,
    pub mode: Mode,
    pub runs: Vec<SeedOutcome>,
}

impl ReproResult {
    pub fn detected(&self) -> usize {
        self.runs.iter().filter(|r| r.detected).count()
    }
    pub fn median_time_to_detect_s(&self) -> Option<f64> {
        let mut t: Vec<f64> = self.runs.iter().filter_map(|r| r.time_to_detect_s).collect();
        if t.is_empty() {
            return None;
        }
        t.sort_by(|a, b| a.total_cmp(b));
        Some(if t.len() % 2 == 1 { t[t.len() / 2] } else { (t[t.len() / 2 - 1] + t[t.len() / 2]) / 2.0 })
    }
}

pub fn find(name: &str) -> Result<Repro> {
    match catalog().into_iter().find(|r| r.name == name) {
        Some(r) => Ok(r),
        None => {
            let names: Vec<_> = catalog().iter().map(|r| r.name).collect();
            bail!("unknown reproducer `{name}` (one of: {})", names.join(", "))
        }
    }
}

/// Runs `repro` against `variant` for `seeds` seeds.
#[allow(clippy::too_many_arguments)]
pub fn run_repro(
    repro: &Repro,
    variant: Variant,
    mode: Mode,
    seeds: u64,
    seed_base: u64,
    budget_ms: u64,
    elf: &[u8],
    stop: &StopHandle,
    progress: impl FnMut(&SeedOutcome),
) -> Result<ReproResult> {
    run_repro_traced(repro, variant, mode, seeds, seed_base, budget_ms, elf, stop, None, progress)
}

/// [`run_repro`], writing the Chrome trace of the first seed that
/// detected the race (of the last seed if none did) to `trace_to`.
#[allow(clippy::too_many_arguments)]
pub fn run_repro_traced(
    repro: &Repro,
    variant: Variant,
    mode: Mode,
    seeds: u64,
    seed_base: u64,
    budget_ms: u64,
    elf: &[u8],
    stop: &StopHandle,
    trace_to: Option<&std::path::Path>,
    mut progress: impl FnMut(&SeedOutcome),
) -> Result<ReproResult> {
    let mut runs = Vec::new();
    let mut traced_detection = false;
    for i in 0..seeds {
        if stop.is_stopped() {
            break;
        }
        let seed = seed_base + i;
        let mut rc = (repro.build)(variant, mode, seed, budget_ms);
        rc.name = format!("repro-{}", repro.name);
        if let Some(m) = repro.mutex {
            rc.lock.mutex = m;
        }
        if trace_to.is_some() {
            rc.enable_trace_export();
        }
        rc.validate().map_err(|e| anyhow::anyhow!("reproducer config {e}"))?;
        let (rec, report) = run_one_with_report(&rc, &format!("seed={seed}"), elf, stop)?;
        let evidence = (repro.evidence)(&rec);
        if let Some(path) = trace_to.filter(|_| !traced_detection) {
            crate::trace_export::write_run(path, &rec, &report)?;
            traced_detection = evidence.is_some();
        }
        let out = SeedOutcome {
            seed,
            detected: evidence.is_some(),
            time_to_detect_s: evidence.as_ref().map(|_| rec.duration_ms / 1e3),
            evidence,
            status: rec.status,
            summary: rec.summary.clone(),
            race_diagram: rec.diagnosis.race_diagram.clone(),
        };
        progress(&out);
        runs.push(out);
    }
    Ok(ReproResult { repro: repro.name.into(), variant, mutex: repro.mutex, mode, runs })
}

/// The `--all` outcome matrix: reproducers down, variants across; each
/// cell "detected/seeds (median s)".
pub fn matrix_markdown(results: &[ReproResult]) -> String {
    // A column per spinlock variant, and per mutex variant (on its
    // wait_lock) for the sleeping-lock reproducers.
    let mut variants: Vec<(Variant, Option<MutexVariant>)> = Vec::new();
    let mut repros: Vec<&str> = Vec::new();
    for r in results {
        if !variants.contains(&(r.variant, r.mutex)) {
            variants.push((r.variant, r.mutex));
        }
        if !repros.contains(&r.repro.as_str()) {
            repros.push(&r.repro);
        }
    }
    let names: Vec<String> = variants
        .iter()
        .map(|(v, m)| match m {
            Some(m) => format!("{} on {}", m.name(), v.name()),
            None => v.name().to_string(),
        })
        .collect();
    let mut s = format!("\n| reproducer | {} |\n|---|{}\n", names.join(" | "), "---|".repeat(variants.len()));
    for rp in &repros {
        s += &format!("| {rp} |");
        for v in &variants {
            let cell = results
                .iter()
                .find(|r| r.repro == *rp && (r.variant, r.mutex) == *v)
                .map(|r| {
                    let t = r.median_time_to_detect_s().map(|t| format!(" ({t:.1} s)")).unwrap_or_default();
                    format!(" {}/{}{} |", r.detected(), r.runs.len(), t)
                })
                .unwrap_or_else(|| " |".into());
            s += &cell;
        }
        s += "\n";
    }
    s
}
