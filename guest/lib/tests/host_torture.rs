//! Lock torture on host threads with the futex platform: every variant keeps
//! mutual exclusion and exact counts under heavy contention, simulated
//! interrupts really nest slow paths, and a tiny spin threshold really
//! reaches pv_wait.
//!
//! Expectations per variant:
//! - correct variants (`strict`): clean [`torture::verify`] (exclusion,
//!   exact counts, no owner left, free lock words, no stale hash entry), no
//!   BUG, no hang;
//! - historical variants with known races (pv-v4.5 double hash, the 2016
//!   proposals): exclusion and counts must hold; stale hash entries and
//!   wait timeouts are reported, not failed;
//! - mutants: the run must terminate, and exclusion holds or the failure is
//!   reported (violation, BUG panic, hang). Lost wakeups are bounded by the
//!   futex timeout and counted.
//!
//! Sizes are small in debug builds: the whole file runs in a few seconds on
//! a 2-core machine.
#![cfg(not(loom))]

use std::time::Duration;

use pvlock_abi::{LockEvent, TortureParams, Variant};
use pvlock_guest_lib::host::{run_torture, HostRun, HostRunSpec};
use pvlock_guest_lib::torture::Failure;
use pvlock_guest_lib::{default_hash_bits, LockConfig};

/// Outermost acquisitions per thread.
/// CI runs `cargo test --workspace --release`: release gets a little more.
const ACQ: u64 = if cfg!(debug_assertions) { 1000 } else { 3000 };

fn strict(v: Variant) -> bool {
    !v.is_mutant() && !matches!(v, Variant::PvV45 | Variant::PvRehash2016 | Variant::PvHashval2016)
}

fn qspinlock_family(v: Variant) -> bool {
    v == Variant::Qspinlock || v.is_pv()
}

fn spec(v: Variant, threads: u32, spin_threshold: u32, torture: TortureParams) -> HostRunSpec {
    let lock = LockConfig { variant: v, spin_threshold, hash_bits: default_hash_bits(threads) };
    let mut s = HostRunSpec::new(lock, torture, threads);
    s.seed = 0x5eed ^ v as u64;
    s.wait_timeout = Duration::from_millis(2);
    s.watchdog = if v.is_mutant() { Duration::from_secs(5) } else { Duration::from_secs(30) };
    s
}

fn params(nr_locks: u32, nest: u32) -> TortureParams {
    TortureParams { nr_locks, nest, cs_ns: 200, think_ns: 100, irq_prob: 0, irq_max_depth: 0, max_acquisitions: ACQ }
}

fn summary(v: Variant, r: &HostRun) -> String {
    format!(
        "{:<24} {:>6} acq {:>6.0} ms  slow {:>5} node2 {:>4} node3 {:>3} node4 {:>3} irqs {:>5} \
         wait_node {:>5} wait_head {:>5} blocked {:>5} timeouts {:>3} lost? {:>3} stale {} panics {} hung {}",
        v.name(),
        r.acquisitions(),
        r.elapsed.as_secs_f64() * 1e3,
        r.event(LockEvent::LockSlowpath),
        r.event(LockEvent::LockUseNode2),
        r.event(LockEvent::LockUseNode3),
        r.event(LockEvent::LockUseNode4),
        r.event(LockEvent::SimIrqs),
        r.event(LockEvent::PvWaitNode),
        r.event(LockEvent::PvWaitHead),
        r.waits.blocked,
        r.waits.timeouts,
        r.waits.suspected_lost,
        r.verify.any(|f| matches!(f, Failure::StaleHash { .. })),
        r.panics.len(),
        r.hung,
    )
}

/// Check `r` against `v`'s expectations; returns a failure description.
fn judge(v: Variant, r: &HostRun, expected_acq: u64) -> Result<(), String> {
    let details = || {
        format!(
            "{}\nverify: {}\nviolations: {:?}\npanics: {:?}\nhang: {:?}",
            summary(v, r),
            r.verify,
            r.violations,
            r.panics,
            r.hang_report
        )
    };
    if strict(v) {
        if !r.is_clean() {
            return Err(format!("{}: not clean\n{}", v.name(), details()));
        }
        if r.acquisitions() != expected_acq {
            return Err(format!(
                "{}: {} acquisitions, {expected_acq} expected\n{}",
                v.name(),
                r.acquisitions(),
                details()
            ));
        }
    } else if !v.is_mutant() {
        if !r.exclusion_held() || !r.panics.is_empty() || r.hung {
            return Err(format!("{}: exclusion or counts broken\n{}", v.name(), details()));
        }
    } else {
        // A mutant: it terminated (we are here); a broken exclusion must
        // have been reported by the owner check or the counts.
        let reported = !r.violations.is_empty() || !r.panics.is_empty() || r.hung || !r.verify.is_ok();
        if !r.exclusion_held() && !reported {
            return Err(format!("{}: exclusion broken but nothing reported\n{}", v.name(), details()));
        }
    }
    Ok(())
}

/// Run every variant with `make`, judge each, and fail with all the
/// failures at once. `extra` checks that something was *exercised* (a
/// counter is non-zero): a run that fails only those is repeated with
/// another seed, up to [`ATTEMPTS`] runs, since whether two handlers
/// overlap is up to the host scheduler. Correctness failures never retry.
fn for_all_variants(
    name: &str,
    mut make: impl FnMut(Variant) -> HostRunSpec,
    extra: impl Fn(Variant, &HostRun) -> Result<(), String>,
) {
    let mut failures = Vec::new();
    for &v in Variant::ALL.iter().filter(|v| !v.is_kernel()) {
        quiet_cpu_panics();
        let mut s = make(v);
        let expected = u64::from(s.threads) * s.torture.max_acquisitions;
        for attempt in 1..=ATTEMPTS {
            let r = run_torture(&s).expect("valid torture params");
            eprintln!("[{name}] {}", summary(v, &r));
            if let Err(e) = judge(v, &r, expected) {
                failures.push(e);
                break;
            }
            match extra(v, &r) {
                Ok(()) => break,
                Err(e) if attempt == ATTEMPTS => failures.push(format!("{e} (after {ATTEMPTS} runs)")),
                Err(_) => s.seed = s.seed.wrapping_add(0x1000),
            }
        }
    }
    assert!(failures.is_empty(), "[{name}] {} failures:\n{}", failures.len(), failures.join("\n\n"));
}

/// CPU threads panic on purpose (a mutant's BUG, then every other CPU
/// aborting): their messages are collected in [`HostRun::panics`] and shown
/// on failure, so keep them off stderr. Other threads' panics print as usual.
fn quiet_cpu_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let cpu_thread = std::thread::current().name().is_some_and(|n| n.starts_with("pvlock-cpu"));
            if !cpu_thread {
                default(info);
            }
        }));
    });
}

/// Runs per variant for the "was it exercised" checks.
const ATTEMPTS: u32 = 3;

fn oversubscribed_threads() -> u32 {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
    (2 * n).clamp(4, 32)
}

#[test]
fn every_variant_keeps_exclusion_with_4_threads() {
    // Three locks, two held at once: heavy contention with nesting.
    for_all_variants("4 threads", |v| spec(v, 4, 256, params(3, 2)), |_, _| Ok(()));
}

#[test]
fn every_variant_keeps_exclusion_oversubscribed() {
    let threads = oversubscribed_threads();
    let mut p = params(1, 1);
    p.max_acquisitions = ACQ / 2;
    for_all_variants(&format!("oversubscribed, {threads} threads"), |v| spec(v, threads, 1 << 10, p), |_, _| Ok(()));
}

#[test]
fn simulated_interrupts_nest_slow_paths() {
    let mut p = params(1, 1);
    p.irq_prob = 1 << 30; // one spin point in four
    p.irq_max_depth = 3;
    // Long critical sections (the handlers' too): the holder of an irq
    // lock yields inside it (cpu_relax), so other CPUs' handlers pile up
    // behind it even on two cores, and their slow paths queue.
    p.cs_ns = 5_000;
    p.think_ns = 0;
    p.max_acquisitions = ACQ / 2;
    for_all_variants(
        "irqs",
        |v| spec(v, 4, 64, p),
        |v, r| {
            if !r.panics.is_empty() {
                // A mutant's BUG: its CPUs' results are lost.
                return Ok(());
            }
            let irqs: u64 = r.results.iter().map(|x| x.irq_acquisitions).sum();
            if r.event(LockEvent::SimIrqs) != irqs {
                return Err(format!(
                    "{}: sim_irqs {} != irq acquisitions {irqs}",
                    v.name(),
                    r.event(LockEvent::SimIrqs)
                ));
            }
            if qspinlock_family(v) && !v.is_mutant() && r.event(LockEvent::LockUseNode2) == 0 {
                return Err(format!("{}: lock_use_node2 == 0 with simulated interrupts\n{}", v.name(), summary(v, r)));
            }
            Ok(())
        },
    );
}

/// A threshold of 16 on purpose: every waiter exhausts its spin and halts.
/// (`pv_wait_early()` is off below 256; this test is about reaching
/// `pv_wait()`, not about wait-early.)
#[test]
fn tiny_spin_threshold_reaches_pv_wait() {
    for_all_variants(
        "threshold 16",
        |v| spec(v, 4, 16, params(1, 1)),
        |v, r| {
            if v.is_pv() && !v.is_mutant() {
                let (node, head) = (r.event(LockEvent::PvWaitNode), r.event(LockEvent::PvWaitHead));
                if node == 0 || head == 0 || r.waits.waits == 0 {
                    return Err(format!(
                        "{}: pv_wait_node {node} pv_wait_head {head} waits {}\n{}",
                        v.name(),
                        r.waits.waits,
                        summary(v, r)
                    ));
                }
            }
            Ok(())
        },
    );
}

/// A run by duration lasts that duration (the deadline is converted to
/// `cycles()` units, not taken as nanoseconds), and its acq/s is computed
/// over the time it really ran.
#[test]
fn a_timed_run_lasts_its_duration() {
    let mut t = params(1, 1);
    t.max_acquisitions = 0;
    let mut s = spec(Variant::Qspinlock, 1, 1 << 15, t);
    s.duration = Duration::from_millis(60);
    let r = run_torture(&s).unwrap();
    assert!(r.is_clean(), "{}", summary(Variant::Qspinlock, &r));
    let ran_ms = r.results[0].elapsed_ns as f64 / 1e6;
    assert!(ran_ms >= 59.0, "the CPU ran {ran_ms:.1} ms of a 60 ms run");
    assert!(r.elapsed >= Duration::from_millis(59), "wall {:?}", r.elapsed);
    let aps = r.acquisitions_per_sec();
    assert!((aps - r.acquisitions() as f64 / (ran_ms / 1e3)).abs() <= aps * 1e-9);
}
