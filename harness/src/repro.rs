//! The reproducer catalog (`pvlock repro`): for each known race, a config
//! that provokes it by random preemption at its window, a directed schedule
//! that forces its interleaving, and the evidence that shows it happened.
//! Races and windows: `../shared/PV-LOCK-BACKGROUND.md`, "Where the races live".
//!
//! Every reproducer also has a kernel-code form ([`kernel_form`]): the same
//! race provoked in a kernel tree's own `qspinlock_paravirt.h`
//! (`--variant kernel-pv --kernel-tree T`), where the Rust variants' named
//! windows do not exist, and the bug patch (`configs/kernel-bugs/`) that
//! puts the race back into a today's tree. An unpatched tree is the
//! negative control; the tree with the reproducer's bug patch must be
//! caught.

use crate::config::RunConfig;
use crate::record::Record;
use crate::runner::run_one_with_report;
use anyhow::{bail, Result};
use pvlock_abi::{LockEvent, MutexVariant, PageWakeVariant, Variant, Window, Workload};
use pvlock_vmm::config::HoldAt;
use pvlock_vmm::sites::SiteRef;
use pvlock_vmm::{
    GuestFailure, HoldRule, HoldUntil, HoldWhen, KickContract, MissedWakeupClass, RunStatus, StopHandle, WaitContract,
};
use serde::Serialize;
use std::path::{Path, PathBuf};

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
    /// Page-wake reproducers: the wake path (`lock.page_wake`) under test
    /// (`--page-wake`; `--all` runs every non-mutant path and the entry's
    /// own). None for the others.
    pub page_wake: Option<PageWakeVariant>,
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
    // Kernel code counts no inserts of its own: the second entry shows as
    // an entry left behind once its lock was unlocked (the VMM reads the
    // tree's table at the end of the run).
    stale_entries_left(r)
}

fn stale_entries_left(r: &Record) -> Option<String> {
    let c = r.checks.iter().find(|c| c.name == "hash_table_empty" && !c.passed)?;
    Some(format!("hash table not empty at the end: {}", c.detail))
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

/// A use-after-free record of the page wait queues.
fn use_after_free(r: &Record) -> Option<String> {
    matches!(r.failure, Some(GuestFailure::UseAfterFree { .. })).then(|| r.summary.clone())
}

/// The page-wake runs (`guest/lib/src/sleeping/page.rs`): 4 tasks on one
/// page, half lock it, half wait for it unlocked; every waiter's task exits
/// after its wait. `page_wake` is the wake path under test; `variant` the
/// queue lock.
pub fn page_wake_base(variant: Variant, page_wake: PageWakeVariant, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = base(variant, seed, budget_ms);
    rc.workload = Workload::PageWake;
    rc.lock.page_wake = page_wake;
    rc.lock.spin_threshold = 1 << 15;
    rc.torture.cs_ns = 2000;
    rc.torture.think_ns = 1000;
    rc
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

/// The waker of Linus's RFC between `list_del_init()` and
/// `wake_up_state(target)`: the waiter, woken by a (simulated) interrupt,
/// sees its entry unlinked, returns and its task exits; the waker then
/// wakes a freed task. Directed: hold the waker there until a task has
/// exited. The entry variant (`entry`) unlinks before reading
/// `wait->private`: the read hits the returned frame.
fn page_uaf_run(page_wake: PageWakeVariant) -> fn(Variant, Mode, u64, u64) -> RunConfig {
    fn build(variant: Variant, page_wake: PageWakeVariant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
        let mut rc = page_wake_base(variant, page_wake, seed, budget_ms);
        // An interrupt every 300 us ends any wait: the waiter's way to run
        // while its waker is held (the seed's "if it was already woken up").
        rc.hypervisor.interrupt_us = 300;
        match mode {
            Mode::Random => {
                rc.preempt.windows = vec![Window::PageWakeBetween];
                rc.preempt.window_prob = 0.3;
                rc.preempt.window_stall_us = 3000;
            }
            Mode::Directed => {
                rc.preempt.schedule =
                    vec![hold(Window::PageWakeBetween, HoldUntil::Window(Window::PageTaskExit), 20_000)]
            }
        }
        rc
    }
    match page_wake {
        PageWakeVariant::MutantDelBeforePrivate => {
            |v, m, s, b| build(v, PageWakeVariant::MutantDelBeforePrivate, m, s, b)
        }
        _ => |v, m, s, b| build(v, PageWakeVariant::Rfc2020, m, s, b),
    }
}

/// Oleg's WOKEN protocol with the WOKEN store after the wakeup (what its
/// wmb() forbids on a weakly ordered CPU): the woken waiter finds no WOKEN,
/// sleeps again, and nothing wakes it. Directed: hold the waker between
/// the wakeup and the store until another vCPU blocks. No interrupts or
/// spurious wakeups, so the lost wakeup stays lost.
fn page_lost_woken_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = page_wake_base(variant, PageWakeVariant::MutantWokenAfterWake, seed, budget_ms);
    match mode {
        Mode::Random => {
            rc.preempt.windows = vec![Window::PageWakeBeforeWoken];
            rc.preempt.window_prob = 0.3;
            rc.preempt.window_stall_us = 2000;
        }
        Mode::Directed => rc.preempt.schedule = vec![hold(Window::PageWakeBeforeWoken, HoldUntil::Blocked, 5_000)],
    }
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

/// 048661a1f963 ("locking/mutex: Fix HANDOFF condition", v5.15; stable
/// 5.10.64 / 5.14.3): from e274795ea7b7 (v4.11) a stealer's trylock clears
/// a HANDOFF request set on an unlocked mutex, and the first waiter asked
/// only when it *became* first: once lost, never renewed. The evidence is a
/// first waiter's wakeup after which no request stood for it
/// (`mutex_first_wake_no_handoff_max` >= 1): the owner word read after the
/// wakeup's HANDOFF decision carries neither HANDOFF nor PICKUP, and this
/// wakeup's own request did not land on an unlocked mutex. A request that
/// did land there and was stolen is the other race, the one ad90880dc962
/// closed (`mutex_handoff_request_stolen`): mutex-v5.13 (048661a1f963
/// without ad90880dc962) re-requests on the next wakeup, so it shows that
/// count and never this one; the evidence names both.
///
/// 4 tasks on one mutex, 50 us critical sections; the holder is stalled
/// often (300 us every 300 us), so waiters stop spinning on it and sleep.
/// Directed, three holds, each until a step of another vCPU:
/// 1. the first waiter W, having set HANDOFF on an unlocked mutex, until a
///    stealer S has taken the mutex (`mutex-handoff-stolen`);
/// 2. S, right after its steal, until W is about to sleep
///    (`mutex-first-sleeps`): S's vCPU is preempted meanwhile, so W's
///    trylock fails and its spin on S stops at `vcpu_is_preempted()`;
/// 3. none: S runs its critical section, unlocks without hand-off and
///    wakes W. W's next wakeup is the one that does (v5.13) or does not
///    (v5.12) ask again.
///
/// Random: seeded stalls at both steal windows.
fn handoff_lost_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = mutex_base(variant, seed, budget_ms);
    rc.vcpus = 6;
    rc.torture.locks = 1;
    rc.torture.think_ns = 20_000;
    rc.torture.cs_ns = 50_000;
    rc.preempt.holder_interval_us = 300;
    rc.preempt.holder_lock = 0;
    rc.preempt.holder_stall_us = 300;
    // The starvation itself keeps the waiters behind the first one asleep
    // for longer than the 500 ms stall timeout (seen on v5.12: waits up to
    // 0.7 s): a wait the watchdog cannot prove lost is counted, not a hang.
    rc.hypervisor.rescue = true;
    match mode {
        Mode::Random => {
            rc.preempt.windows = vec![Window::MutexHandoffSet, Window::MutexHandoffStolen];
            rc.preempt.window_prob = 0.5;
            rc.preempt.window_stall_us = 1000;
        }
        Mode::Directed => {
            rc.preempt.schedule = vec![
                hold(Window::MutexHandoffSet, HoldUntil::Window(Window::MutexHandoffStolen), 20_000),
                hold(Window::MutexHandoffStolen, HoldUntil::Window(Window::MutexFirstSleeps), 20_000),
            ]
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
    (n >= 1).then(|| {
        format!(
            "a first waiter woke {n} times in one mutex_lock() with no hand-off request standing for it \
             (its own request not stolen on those wakeups; requests stolen in the run: {}); longest wait {} ns",
            ev(r, LockEvent::MutexHandoffRequestStolen),
            r.max_wait_ns
        )
    })
}

/// The catalog.
pub fn catalog() -> Vec<Repro> {
    vec![
        Repro { name: "double-hash", race: "R1", default_variant: Variant::PvV45, what: "new owner stalled between MCS hand-off and pv_kick_node's cmpxchg: the successor hashes itself, then the owner hashes it again", build: double_hash_run, evidence: double_hash, mutex: None, page_wake: None },
        Repro { name: "stolen-wakeup", race: "R2", default_variant: Variant::PvV48, what: "a newcomer steals the lock between the unlock's release and the kicked head's trylock; with an unchecked wait the head blocks unhashed", build: stolen_wakeup_run, evidence: stolen_wakeup, mutex: None, page_wake: None },
        Repro { name: "rehash-double", race: "R3", default_variant: Variant::PvRehash2016, what: "owner stalled after pv_kick_node's cmpxchg, before its hash insert; the re-hash rule hashes the same waiter too", build: rehash_run, evidence: double_hash, mutex: None, page_wake: None },
        Repro { name: "hashval-stall", race: "R4", default_variant: Variant::PvHashval2016, what: "a hasher stalled with _Q_HASH_VAL held: the unlocker and the head wait (a latency cost)", build: hashval_run, evidence: hashval_stall, mutex: None, page_wake: None },
        Repro { name: "lost-kick", race: "contract", default_variant: Variant::PvUpstream, what: "kicks to vCPUs that are not yet waiting are dropped: which variants depend on remembered kicks", build: lost_kick_run, evidence: lost_or_bug, mutex: None, page_wake: None },
        Repro { name: "no-store-mb", race: "R5", default_variant: Variant::MutantNoStoreMb, what: "mutant: no full barrier between pv_wait_node's state store and its re-check (store buffering): lost wakeup", build: mutant_run(Window::WaitNodeRecheck), evidence: lost_or_bug, mutex: None, page_wake: None },
        Repro { name: "slow-before-hash", race: "mutant", default_variant: Variant::MutantSlowBeforeHash, what: "mutant: _Q_SLOW_VAL set before the hash insert: the unlocker finds no entry (pv_unhash BUG)", build: mutant_run(Window::HeadHashSlow), evidence: lost_or_bug, mutex: None, page_wake: None },
        Repro { name: "page-wake-uaf", race: "page-wake", default_variant: Variant::PvUpstream, what: "Linus's July 2020 RFC: the waker is stalled after list_del_init() of a page waiter's entry, before wake_up_state(target); the waiter sees its entry unlinked, returns and exits: the wakeup touches a freed task", build: page_uaf_run(PageWakeVariant::Rfc2020), evidence: use_after_free, mutex: None, page_wake: Some(PageWakeVariant::Rfc2020) },
        Repro { name: "page-wake-entry-uaf", race: "page-wake", default_variant: Variant::PvUpstream, what: "mutant: the RFC with list_del_init() before reading wait->private: the read hits the waiter's returned stack frame", build: page_uaf_run(PageWakeVariant::MutantDelBeforePrivate), evidence: use_after_free, mutex: None, page_wake: Some(PageWakeVariant::MutantDelBeforePrivate) },
        Repro { name: "page-wake-lost-woken", race: "page-wake", default_variant: Variant::PvUpstream, what: "mutant: Oleg's WQ_FLAG_WOKEN without its wmb(): WOKEN lands after the wakeup, the woken waiter sleeps again and nothing wakes it", build: page_lost_woken_run, evidence: lost_or_bug, mutex: None, page_wake: Some(PageWakeVariant::MutantWokenAfterWake) },
        Repro { name: "halted-head", race: "R1", default_variant: Variant::MutantHaltedHead, what: "mutant: upstream with the pre-v4.8 halted head write: the double hash again", build: double_hash_run, evidence: double_hash, mutex: None, page_wake: None },
        Repro { name: "mutex-recursive-handoff", race: "e274795ea7b7", default_variant: Variant::PvUpstream, what: "mutex: a task locks a mutex it holds and blocks; a spurious wakeup makes it first, it requests a hand-off and takes it from itself (v4.10; ad90880dc962 brought it back upstream, results/findings)", build: recursive_run, evidence: recursive_taken, mutex: Some(MutexVariant::V4_10), page_wake: None },
        Repro { name: "mutex-handoff-lost", race: "048661a1f963", default_variant: Variant::PvUpstream, what: "mutex: HANDOFF set on an unlocked mutex is cleared by a stealer and, before the fix, never requested again: the first waiter wakes again and again with no hand-off standing", build: handoff_lost_run, evidence: handoff_lost, mutex: Some(MutexVariant::V5_12), page_wake: None },
        Repro { name: "kick-hash-forgotten", race: "R1", default_variant: Variant::KernelPv, what: "a queue head that ignores that pv_kick_node() already hashed it hashes the lock again (kernel code only: configs/kernel-bugs/head-forgets-kick-hash.patch)", build: kick_hash_forgotten_run, evidence: double_hash, mutex: None, page_wake: None },
    ]
}

/// How a reproducer runs on a kernel tree's own code. The kernel's code
/// has none of the Rust variants' named windows: its random form preempts
/// it where it can be preempted, its directed form (when it has one) holds
/// a vCPU by the kernel's own source position.
#[derive(Clone, Copy)]
pub struct KernelForm {
    /// The bug patch under `configs/kernel-bugs/` that puts this race back
    /// into a today's `qspinlock_paravirt.h` (6.1 and 6.12 apply it);
    /// `None`: the race belongs to a historical or proposed variant that
    /// today's code does not have, and kernel trees are its negative control.
    pub bug_patch: Option<&'static str>,
    /// Turns the reproducer's Rust-variant config (already built for `mode`)
    /// into its kernel form; `Err` says why the mode has no kernel form.
    pub adapt: fn(rc: &mut RunConfig, mode: Mode) -> Result<(), String>,
    /// What the kernel form's outcome means when it differs from the Rust
    /// form's (printed under the outcome matrix).
    pub note: Option<&'static str>,
}

/// The kernel form of each reproducer that has one, by name. A table apart
/// from [`catalog`] so that reproducers of other locks (the sleeping locks)
/// are added there without one.
pub fn kernel_form(name: &str) -> Option<KernelForm> {
    let form = |bug_patch, adapt| Some(KernelForm { bug_patch, adapt, note: None });
    let contract_kept = |adapt| Some(KernelForm { bug_patch: None, adapt, note: Some(KERNEL_CONTRACT_NOTE) });
    match name {
        "double-hash" | "halted-head" => form(Some("halted-head.patch"), kernel_double_hash),
        "kick-hash-forgotten" => form(Some("head-forgets-kick-hash.patch"), kernel_kick_hash_forgotten),
        "slow-before-hash" => form(Some("slow-before-hash.patch"), kernel_slow_before_hash),
        "no-store-mb" => form(Some("wait-node-no-mb.patch"), kernel_no_store_mb),
        // R2's hang and the lost kick need a hypervisor that breaks the
        // contract KVM keeps; their kernel forms keep it (negative
        // controls, see KERNEL_CONTRACT_NOTE).
        "stolen-wakeup" => contract_kept(kernel_stolen_wakeup),
        "rehash-double" => form(None, kernel_rehash),
        "hashval-stall" => form(None, kernel_hashval),
        "lost-kick" => contract_kept(kernel_lost_kick),
        _ => None,
    }
}

/// Where the bug patches live, relative to the project root.
pub const KERNEL_BUGS_DIR: &str = "configs/kernel-bugs";

/// The kernel code has no named windows: what the Rust form asked of them
/// is replaced by the kernel form's preemption.
fn strip_windows(rc: &mut RunConfig) {
    rc.preempt.windows.clear();
    rc.preempt.window_prob = 0.0;
    rc.preempt.schedule.clear();
}

/// Random preemption of kernel code: stalls at random instants of every
/// vCPU (the VMM's Poisson process), 4 vCPUs on 2 host CPUs.
fn kernel_random_stalls(rc: &mut RunConfig, mean_interval_us: u64, stall_us: u64) {
    rc.preempt.random_mean_interval_us = mean_interval_us;
    rc.preempt.random_stall_us = stall_us;
}

/// Random stalls at the kernel code's sites that match `patterns`
/// (`pvlock list sites`): the kernel form of a window.
fn kernel_site_stalls(rc: &mut RunConfig, patterns: &[&str], prob: f64, stall_us: u64) {
    rc.preempt.sites = patterns.iter().map(|p| p.to_string()).collect();
    rc.preempt.site_prob = prob;
    rc.preempt.site_stall_us = stall_us;
}

/// A schedule rule held at kernel site `at` (`FUNCTION[:OP[:N]]`).
fn hold_site(at: &str, until: HoldUntil, timeout_us: u64) -> Result<HoldRule, String> {
    let at = HoldAt::Site(SiteRef::parse(at)?);
    Ok(HoldRule { until, timeout_us, count: 0, ..HoldRule::at_point(at) })
}

fn until_site(at: &str) -> Result<HoldUntil, String> {
    Ok(HoldUntil::Site(SiteRef::parse(at)?))
}

fn no_directed_form(mode: Mode, why: &str) -> Result<(), String> {
    match mode {
        Mode::Random => Ok(()),
        Mode::Directed => Err(format!("no directed form on kernel code: {why}")),
    }
}

const NEEDS_SITES: &str = "its interleaving is forced at a source position of the kernel code, \
                           which needs preemption sites in the kernel build";

/// The period of the simulated timer interrupt of the R1 kernel forms, µs:
/// a real guest's halted vCPU is woken by its interrupts, not only by
/// kicks, and that is how a waiter halted in `pv_wait_node()` runs again
/// while the owner that will kick it is preempted. Shorter than the
/// owner's stall below, so that every such stall has one.
const KERNEL_R1_TICK_US: u64 = 500;

/// How long the R1 kernel forms stall the owner in `pv_kick_node()`, µs:
/// several ticks, plus the woken successor's head spin (64 loops of
/// `trylock_clear_pending()`, a few µs) and its pv_hash().
const KERNEL_R1_STALL_US: u64 = 3000;

fn kernel_double_hash(rc: &mut RunConfig, mode: Mode) -> Result<(), String> {
    strip_windows(rc);
    // R1's window in the kernel's code (6.12 line numbers): the new owner
    // after its MCS hand-off (qspinlock.c:553
    // arch_mcs_spin_unlock_contended(&next->locked)) and before
    // pv_kick_node()'s cmpxchg halted -> hashed (qspinlock_paravirt.h:377);
    // the site stalls before the cmpxchg. With halted-head.patch the
    // successor, now head, hashes itself (:439), publishes _Q_SLOW_VAL
    // (:452) and writes vcpu_halted instead of vcpu_hashed (:463): the
    // owner's cmpxchg then succeeds and hashes the lock again (:388).
    const AT: &str = "pv_kick_node:cmpxchg";
    match mode {
        // The successor must run as head during the owner's stall: if it
        // spun in pv_wait_node() (:298) at the hand-off it does at once; if
        // it had halted there (:322), the next tick wakes it, it sees
        // node->locked and leaves. So every stall with a successor opens
        // the window; 0.1 of the hand-offs stall (each costs 3 ms of a
        // 4-vCPU run). A short spin makes heads hash and halt soon
        // (:430-:466). The unpatched head writes vcpu_hashed (:463): the
        // owner's cmpxchg fails, no second entry.
        Mode::Random => {
            rc.lock.spin_threshold = 64;
            rc.hypervisor.interrupt_us = KERNEL_R1_TICK_US;
            kernel_site_stalls(rc, &[AT], 0.1, KERNEL_R1_STALL_US);
        }
        // Hold the owner there until a queue head blocks (the successor
        // became head, hashed itself and waits), then let it go on.
        Mode::Directed => {
            rc.lock.spin_threshold = 1 << 15;
            let mut rule = hold_site(AT, HoldUntil::HeadBlocked, 20_000)?;
            rule.when = HoldWhen::SuccessorRunning;
            rc.preempt.schedule = vec![rule];
        }
    }
    Ok(())
}

fn kick_hash_forgotten_run(variant: Variant, mode: Mode, seed: u64, budget_ms: u64) -> RunConfig {
    let mut rc = base(variant, seed, budget_ms);
    rc.lock.stop_on_double_hash = true;
    // The waiter that pv_kick_node() hashed must run as head before the
    // owner's unlock kicks it: it woke spuriously, or its checked wait saw
    // the state change. Spurious wakeups make that common.
    rc.hypervisor.spurious_wakeup_prob = 0.2;
    if mode == Mode::Random {
        rc.preempt.random_mean_interval_us = 500;
        rc.preempt.random_stall_us = 2000;
    }
    rc
}

fn kernel_kick_hash_forgotten(rc: &mut RunConfig, mode: Mode) -> Result<(), String> {
    strip_windows(rc);
    // The Rust form's random stalls anywhere are replaced by the window's.
    rc.preempt.random_mean_interval_us = 0;
    rc.preempt.random_stall_us = 0;
    rc.lock.spin_threshold = 64;
    // The window (6.12 line numbers): the owner's pv_kick_node() has
    // turned its halted successor's state to vcpu_hashed
    // (qspinlock_paravirt.h:377) and is about to publish _Q_SLOW_VAL
    // (:387) and hash the lock for it (:388). With head-forgets-kick-hash
    // .patch the successor, run as head before the owner's unlock, no
    // longer starts with lp = 1 (:410-:411) and hashes the lock itself
    // (:439): two entries, whoever is first. It runs as head if it wakes
    // while halted in pv_wait_node() (:322; the kick comes only at the
    // unlock): the tick wakes it (the checked wait also returns if it
    // began after the state change), it keeps vcpu_hashed (:330) and
    // leaves, node->locked being set before pv_kick_node() (qspinlock.c
    // :553-:554). A short spin makes successors halt.
    rc.hypervisor.interrupt_us = KERNEL_R1_TICK_US;
    match mode {
        // The owner stalled at its _Q_SLOW_VAL write, several ticks long.
        Mode::Random => kernel_site_stalls(rc, &["pv_kick_node:write_once"], 0.2, KERNEL_R1_STALL_US),
        // Hold the owner there until the successor, as head, reaches its
        // own hash insert (pv_hash's cmpxchg of an empty slot).
        Mode::Directed => {
            rc.preempt.schedule = vec![hold_site("pv_kick_node:write_once", until_site("pv_hash:cmpxchg")?, 20_000)?]
        }
    }
    Ok(())
}

fn kernel_slow_before_hash(rc: &mut RunConfig, mode: Mode) -> Result<(), String> {
    strip_windows(rc);
    // The window (6.12 line numbers): with slow-before-hash.patch the head
    // in pv_wait_head_or_lock() publishes _Q_SLOW_VAL (qspinlock_paravirt.h
    // :452) before pv_hash() has claimed its entry (:439, moved after it);
    // an owner that unlocks in between takes the slow path (its cmpxchg
    // of _Q_LOCKED_VAL fails), pv_unhash() finds no entry and BUG()s
    // (:236-:256). A head gets there only when its spin (:430, 64 loops of
    // trylock_clear_pending() with a short threshold, a few µs) fails,
    // i.e. the owner holds the lock longer than that: 20 µs critical
    // sections make it the rule, not the exception (300 ns ones are shorter
    // than the spin). The owner is in its critical section then, so a stall
    // of the hasher in pv_hash()'s slot claim (:217, after the publish with
    // the patch) longer than the critical section lets the unlock come in
    // the window: 1 ms. The slot claim is also pv_kick_node()'s (:388, after
    // its own _Q_SLOW_VAL write): its stalls are harmless on both trees.
    rc.lock.spin_threshold = 64;
    rc.torture.cs_ns = 20_000;
    match mode {
        Mode::Random => kernel_site_stalls(rc, &["pv_hash:cmpxchg"], 0.5, 1000),
        // Hold the hasher until an unlock takes the slow path. The owner
        // unlocks within its 20 µs critical section of the head's publish,
        // so 500 µs is ample; a hold that sees no unlock by then is the
        // owner itself in pv_kick_node()'s pv_hash() (the same site), which
        // no unlock can follow: short, it costs little.
        Mode::Directed => {
            rc.preempt.schedule =
                vec![hold_site("pv_hash:cmpxchg", until_site("__pv_queued_spin_unlock_slowpath:rmb")?, 500)?]
        }
    }
    Ok(())
}

fn kernel_no_store_mb(rc: &mut RunConfig, mode: Mode) -> Result<(), String> {
    strip_windows(rc);
    // Only the hardware's store buffer reorders the waiter's store and
    // load; a VM exit drains it, so no stall can widen the window.
    no_directed_form(
        mode,
        "x86 store buffering cannot be forced from the VMM (every stall is an exit, which drains the store buffer)",
    )?;
    kernel_random_stalls(rc, 2000, 300);
    Ok(())
}

/// The hypervisor contract that today's kernel code relies on, kept by
/// the kernel forms of the reproducers that break it on purpose in their
/// Rust form (`stolen-wakeup`: a wait that does not re-check the byte;
/// `lost-kick`: kicks to a running vCPU dropped). Broken, every tree hangs
/// (the 2026-12-01 matrix: stolen-wakeup 10/10 on 6.1 and 6.12), and that
/// is the contract, not a bug of the tree: a head whose lock was stolen
/// after its kick waits again without re-hashing (qspinlock_paravirt.h
/// :463-:466, lp already set) and relies on kvm_wait()'s re-check of
/// `lock->locked` to return at once; pv_kick() before the kicked vCPU
/// halts relies on KVM's pv_unhalted. The kernel form is the negative
/// control: the same window provoked under the contract KVM keeps must
/// not hang.
pub const KERNEL_CONTRACT_NOTE: &str = "kernel form keeps the hypervisor contract (checked wait, remembered \
                                        kicks): the unpatched tree must stay clean; with the contract broken \
                                        every tree hangs, by design (docs/TEST-YOUR-PATCH.md)";

fn keep_kvm_contract(rc: &mut RunConfig) {
    rc.hypervisor.wait = WaitContract::Checked;
    rc.hypervisor.kick = KickContract::Remembered;
}

/// The unlocker between its release of the lock (6.12
/// qspinlock_paravirt.h:529) and its pv_kick() of the head (:539), where
/// newcomers steal the lock (pv_hybrid_queued_unfair_trylock(), :81, while
/// the halted head has not set pending) and the kick reaches a head that
/// finds the lock taken: R2's window, and the lost kick's. Every pv_kick
/// site (the unlock's is the only caller; with lock events it sits in
/// qspinlock_stat.h's __pv_kick() wrapper).
const KERNEL_UNLOCK_KICK: &str = "*:pv_kick";

fn kernel_stolen_wakeup(rc: &mut RunConfig, mode: Mode) -> Result<(), String> {
    strip_windows(rc);
    no_directed_form(mode, NEEDS_SITES)?;
    keep_kvm_contract(rc);
    kernel_site_stalls(rc, &[KERNEL_UNLOCK_KICK], 0.2, 500);
    Ok(())
}

fn kernel_rehash(rc: &mut RunConfig, mode: Mode) -> Result<(), String> {
    strip_windows(rc);
    no_directed_form(mode, NEEDS_SITES)?;
    kernel_random_stalls(rc, 500, 2000);
    Ok(())
}

fn kernel_hashval(rc: &mut RunConfig, mode: Mode) -> Result<(), String> {
    strip_windows(rc);
    no_directed_form(mode, NEEDS_SITES)?;
    kernel_random_stalls(rc, 1000, 2000);
    Ok(())
}

fn kernel_lost_kick(rc: &mut RunConfig, mode: Mode) -> Result<(), String> {
    strip_windows(rc);
    no_directed_form(mode, NEEDS_SITES)?;
    keep_kvm_contract(rc);
    // The Rust form's random stalls (any instant) plus the kick's window.
    kernel_random_stalls(rc, 2000, 500);
    kernel_site_stalls(rc, &[KERNEL_UNLOCK_KICK], 0.2, 500);
    Ok(())
}

/// A kernel tree (and patches) to run a reproducer's kernel form on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelTarget {
    pub tree: PathBuf,
    /// Applied in order to a private copy of the tree's files.
    pub patches: Vec<PathBuf>,
}

/// What a reproducer runs against: a lock variant, and for a kernel
/// variant the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub variant: Variant,
    pub kernel: Option<KernelTarget>,
}

impl Target {
    pub fn variant(variant: Variant) -> Self {
        Self { variant, kernel: None }
    }
}

/// The config of one seed of `repro` on `target`: the Rust form for our
/// variants, the kernel form for a kernel tree.
pub fn config_for(repro: &Repro, target: &Target, mode: Mode, seed: u64, budget_ms: u64) -> Result<RunConfig> {
    let mut rc = (repro.build)(target.variant, mode, seed, budget_ms);
    rc.name = format!("repro-{}", repro.name);
    if let Some(m) = repro.mutex {
        rc.lock.mutex = m;
    }
    if let Some(pw) = repro.page_wake {
        rc.lock.page_wake = pw;
    }
    if target.variant.is_kernel() {
        let Some(k) = &target.kernel else {
            bail!("reproducer `{}` on `{}`: name the kernel tree (--kernel-tree)", repro.name, target.variant)
        };
        if target.variant != Variant::KernelPv {
            bail!("reproducer `{}`: its races are in the PV slow path; run it on kernel-pv", repro.name);
        }
        let Some(form) = kernel_form(repro.name) else {
            bail!("reproducer `{}` has no kernel-code form (it is not a race of qspinlock_paravirt.h)", repro.name)
        };
        (form.adapt)(&mut rc, mode).map_err(|why| anyhow::anyhow!("reproducer `{}`: {why}", repro.name))?;
        rc.lock.kernel_tree = Some(k.tree.clone());
        rc.lock.kernel_patches = k.patches.clone();
    } else if target.kernel.is_some() {
        bail!("--kernel-tree applies to the kernel variants only, not `{}`", target.variant);
    }
    Ok(rc)
}

/// The bug patch of `repro`'s kernel form: `configs/kernel-bugs/` under
/// the working directory (a checkout of pvlock), else under the source
/// tree this binary was built from.
pub fn bug_patch(repro: &Repro) -> Result<Option<PathBuf>> {
    let cwd = Path::new(".");
    if cwd.join(KERNEL_BUGS_DIR).is_dir() {
        return bug_patch_path(cwd, repro);
    }
    bug_patch_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), repro)
}

/// The bug patch of `repro`'s kernel form, as a path under `root` (the
/// project directory), checked to exist.
pub fn bug_patch_path(root: &Path, repro: &Repro) -> Result<Option<PathBuf>> {
    let Some(name) = kernel_form(repro.name).and_then(|f| f.bug_patch) else { return Ok(None) };
    let p = root.join(KERNEL_BUGS_DIR).join(name);
    if !p.is_file() {
        bail!("reproducer `{}`: its bug patch {} is missing", repro.name, p.display());
    }
    Ok(Some(p))
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
    /// The wake path of a page-wake reproducer (`variant` is then its
    /// queue lock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_wake: Option<PageWakeVariant>,
    /// The outcome matrix's column: the variant's name, or for a kernel
    /// build the tree's release and patches (`kernel-pv 6.12.117 x86
    /// +halted-head.patch`).
    pub column: String,
    pub mode: Mode,
    /// The per-seed budget, ms.
    pub budget_ms: u64,
    /// Kernel variants: the build that ran (tree version, patches with
    /// their sha256, compiler).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<crate::kernel::KernelBuildInfo>,
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
    progress: impl FnMut(&SeedOutcome),
) -> Result<ReproResult> {
    let target = Target::variant(variant);
    run_repro_on(repro, &target, mode, seeds, seed_base, budget_ms, elf, stop, trace_to, progress)
}

/// Runs `repro` against `target` (a variant, or a kernel tree with
/// patches) for `seeds` seeds; see [`run_repro_traced`].
#[allow(clippy::too_many_arguments)]
pub fn run_repro_on(
    repro: &Repro,
    target: &Target,
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
    // A mutex reproducer's column is its mutex variant on its wait_lock.
    let mut column = match (repro.mutex, repro.page_wake) {
        (Some(m), _) => format!("{} on {}", m.name(), target.variant.name()),
        (None, Some(pw)) => format!("{} on {}", pw.name(), target.variant.name()),
        (None, None) => target.variant.name().to_string(),
    };
    let mut kernel = None;
    for i in 0..seeds {
        if stop.is_stopped() {
            break;
        }
        let seed = seed_base + i;
        let mut rc = config_for(repro, target, mode, seed, budget_ms)?;
        if trace_to.is_some() {
            rc.enable_trace_export();
        }
        rc.validate().map_err(|e| anyhow::anyhow!("reproducer config {e}"))?;
        let (rec, report) = run_one_with_report(&rc, &format!("seed={seed}"), elf, stop)?;
        let evidence = (repro.evidence)(&rec);
        if kernel.is_none() && rec.kernel.is_some() {
            column = rec.variant_label();
            kernel = rec.kernel.clone();
        }
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
    Ok(ReproResult {
        repro: repro.name.into(),
        variant: target.variant,
        mutex: repro.mutex,
        page_wake: repro.page_wake,
        column,
        mode,
        budget_ms,
        kernel,
        runs,
    })
}

/// The `--all` outcome matrix: reproducers down, variants across; each
/// cell "detected/seeds (median s)".
pub fn matrix_markdown(results: &[ReproResult]) -> String {
    let mut columns: Vec<&str> = Vec::new();
    let mut repros: Vec<&str> = Vec::new();
    for r in results {
        if !columns.contains(&r.column.as_str()) {
            columns.push(&r.column);
        }
        if !repros.contains(&r.repro.as_str()) {
            repros.push(&r.repro);
        }
    }
    let mut s = format!("\n| reproducer | {} |\n|---|{}\n", columns.join(" | "), "---|".repeat(columns.len()));
    for rp in &repros {
        s += &format!("| {rp} |");
        for c in &columns {
            let cell = results
                .iter()
                .find(|r| r.repro == *rp && r.column == *c)
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

/// A result directory of `pvlock repro --out`: `results.json` (every
/// [`ReproResult`], seeds and evidence), `matrix.md` (the outcome matrix and
/// what it ran on) and `env.json`, rewritten atomically after each
/// reproducer, so that an aborted run leaves a valid record of what
/// finished; `partial` is there until the last one is in.
pub struct ResultDir {
    pub dir: PathBuf,
}

impl ResultDir {
    /// A new directory under `out` named by the time (never an existing one).
    pub fn create(out: &Path) -> Result<Self> {
        let stem = crate::record::now_utc().replace(['-', ':'], "");
        let (dir, name) = crate::output::create_unique_dir(out, &stem)?;
        crate::output::write_atomic(&dir.join("partial"), b"the reproducers have not finished\n")?;
        let env = crate::report::EnvInfo::collect();
        crate::output::write_atomic(&dir.join("env.json"), &serde_json::to_vec_pretty(&env)?)?;
        crate::output::set_latest(out, &name)?;
        Ok(Self { dir })
    }

    /// Writes what has finished so far; `done` removes the `partial` mark.
    pub fn write(&self, command: &str, results: &[ReproResult], done: bool) -> Result<()> {
        crate::output::write_atomic(&self.dir.join("results.json"), &serde_json::to_vec_pretty(results)?)?;
        crate::output::write_atomic(&self.dir.join("matrix.md"), matrix_document(command, results).as_bytes())?;
        if done {
            match std::fs::remove_file(self.dir.join("partial")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The outcome matrix with what it ran: the command, mode and budget, and
/// for each kernel column the tree's release and each patch's sha256.
pub fn matrix_document(command: &str, results: &[ReproResult]) -> String {
    let mut s = format!("# pvlock repro outcome matrix\n\n    {command}\n\n");
    s += "Each cell: seeds with the race's evidence / seeds run (median time to detect). ";
    s += "Counted evidence is read at the end of a seed's budget; hangs and BUGs end the seed at once.\n";
    let mut modes: Vec<String> =
        results.iter().map(|r| format!("{:?} {:.1} s", r.mode, r.budget_ms as f64 / 1e3)).collect();
    modes.dedup();
    s += &format!("Mode and per-seed budget: {}.\n", modes.join(", "));
    s += &matrix_markdown(results);
    let mut seen = Vec::new();
    for r in results {
        let Some(k) = &r.kernel else { continue };
        if seen.contains(&r.column) {
            continue;
        }
        seen.push(r.column.clone());
        s += &format!(
            "\n`{}`: Linux {} ({} flavour), {}; build {}",
            r.column,
            k.version,
            k.flavour.name(),
            k.compiler,
            k.key
        );
        for [path, sha] in &k.patches {
            let file = Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            s += &format!("; patch {file} sha256 {sha}");
        }
        s += "\n";
    }
    s += &kernel_notes(results);
    s
}

/// What the kernel forms' cells mean where they differ from the Rust
/// forms' ([`KernelForm::note`]): one line per reproducer that ran on a
/// kernel tree and has a note.
pub fn kernel_notes(results: &[ReproResult]) -> String {
    let mut s = String::new();
    let mut noted = Vec::new();
    for r in results.iter().filter(|r| r.kernel.is_some()) {
        if let Some(note) = kernel_form(&r.repro).and_then(|f| f.note).filter(|_| !noted.contains(&r.repro)) {
            s += &format!("\n`{}` on kernel trees: {note}.\n", r.repro);
            noted.push(r.repro.clone());
        }
    }
    s
}
