//! Supervising a built machine while its vCPUs run: the supervisor loop
//! (done, failures, the run timeout, the lock-aware missed-wakeup detector,
//! hash occupancy samples), the preemptor thread (random and holder stalls)
//! and the delayed-kick timer. Building and tearing down is `machine.rs`.

use crate::config::MachineConfig;
use crate::machine::StopHandle;
use crate::preempt::Rng;
use crate::report::GuestFailure;
use crate::signal::{kick_thread, ImmediateExit};
use crate::vcpu::{Shared, VcpuEvent};
use crate::watchdog::{explain, is_definite_missed_wakeup, HangReport};
use pvlock_abi::seed::{stream_seed, Stream};
use pvlock_abi::VmmCounter;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) type Supervised = (Option<GuestFailure>, Vec<Option<u64>>, Option<HangReport>);

fn not_done(done: &[Option<u64>]) -> Vec<u32> {
    done.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(c, _)| c as u32).collect()
}

/// Waits for the vCPUs, running the lock-aware missed-wakeup detector
/// meanwhile; returns the first failure (if any), which vCPUs reported
/// done, and the state dump of a hang.
pub(crate) fn supervise(
    cfg: &MachineConfig,
    sh: &Shared,
    rx: &mpsc::Receiver<VcpuEvent>,
    stop: &StopHandle,
) -> Supervised {
    let n = cfg.vcpus as usize;
    let mut done: Vec<Option<u64>> = vec![None; n];
    let deadline = sh.run_start + Duration::from_millis(cfg.timeout_ms);
    // Per vCPU: since when the detector has judged it a certain missed
    // wakeup, and which wait (its start time) that judgement is about.
    // The third field: the host's run-queue delay of the vCPU threads
    // when the judgement began (host starvation does not count towards
    // detect_ms: see `host_run_delay_ns`).
    let mut suspect: Vec<Option<(Instant, u64, u64)>> = vec![None; n];
    loop {
        if done.iter().all(Option::is_some) {
            let bad = done.iter().enumerate().find(|(_, s)| **s != Some(pvlock_abi::doorbell::DONE_OK));
            let f = bad.map(|(cpu, s)| GuestFailure::WorkloadFailed { cpu: cpu as u32, status: s.unwrap_or(0) });
            return (f, done, None);
        }
        if stop.is_stopped() {
            return (Some(GuestFailure::Aborted { reason: "stop requested (Ctrl-C)".into() }), done, None);
        }
        if Instant::now() >= deadline {
            let blocked =
                (0..cfg.vcpus).find(|&c| sh.channels[c as usize].blocked_since_us.load(Ordering::Acquire) != 0);
            // Nobody blocked: dump the first vCPU that has not finished
            // (it is running guest code: spinning, or starved).
            let hang = match blocked {
                Some(c) => Some(explain(sh, c)),
                None => not_done(&done).first().map(|&c| crate::watchdog::explain_running(sh, c)),
            };
            return (Some(GuestFailure::Timeout { timeout_ms: cfg.timeout_ms, not_done: not_done(&done) }), done, hang);
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(VcpuEvent::Done { cpu, status }) => done[cpu as usize] = Some(status),
            Ok(VcpuEvent::Failed(f)) => {
                let hang = match &f {
                    GuestFailure::BlockedWait { cpu, .. } => Some(explain(sh, *cpu)),
                    _ => None,
                };
                return (Some(f), done, hang);
            }
            Ok(VcpuEvent::Exited { .. }) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let f = GuestFailure::Timeout { timeout_ms: cfg.timeout_ms, not_done: not_done(&done) };
                return (Some(f), done, None);
            }
        }
        sample_hash_occupancy(sh);
        // The lock-aware detector: a blocked waiter whose lock's state cannot
        // lead to a kick, judged so continuously for detect_ms while no vCPU
        // is held by the VMM (a held vCPU may be the one about to kick).
        if !cfg.lock.variant.is_pv() || sh.preempt.any_stalled() {
            suspect.iter_mut().for_each(|s| *s = None);
            continue;
        }
        for c in 0..cfg.vcpus {
            let ch = &sh.channels[c as usize];
            let since = ch.blocked_since_us.load(Ordering::Acquire);
            if since == 0 {
                suspect[c as usize] = None;
                continue;
            }
            let r = explain(sh, c);
            // A kick already in its eventfd will wake it once its thread
            // runs: not lost, only starved by the host.
            if !is_definite_missed_wakeup(&r) || ch.kick_pending() {
                suspect[c as usize] = None;
                continue;
            }
            let delay_now = crate::watchdog::host_run_delay_ns(&sh.channels);
            let first = *suspect[c as usize].get_or_insert((Instant::now(), since, delay_now));
            if first.1 != since {
                suspect[c as usize] = Some((Instant::now(), since, delay_now)); // a new wait
                continue;
            }
            let starved = Duration::from_nanos(delay_now.saturating_sub(first.2));
            if first.0.elapsed().saturating_sub(starved) >= Duration::from_millis(cfg.hypervisor.detect_ms)
                && !crate::watchdog::starved_now(&sh.channels, u32::MAX, crate::vcpu::STARVATION_PROBE)
            {
                if cfg.hypervisor.rescue {
                    ch.counters.add(VmmCounter::Rescues, 1);
                    sh.record_rescue(r);
                    let _ = ch.kick.write(1);
                    suspect[c as usize] = None;
                    continue;
                }
                let f = GuestFailure::MissedWakeup { cpu: c, class: r.class, detail: r.detail.clone() };
                return (Some(f), done, Some(r));
            }
        }
    }
}

/// Counts the PV hash entries in use now, into the run's occupancy
/// histogram (sampled every supervisor tick, ~20 ms).
fn sample_hash_occupancy(sh: &Shared) {
    let boot = sh.boot();
    if boot.hash_gpa == 0 || boot.hash_entries == 0 || boot.hash_entries > crate::watchdog::MAX_HASH_ENTRIES {
        return;
    }
    let used = crate::watchdog::hash_entries_in_use(sh).len() as u64;
    *sh.hash_occupancy.lock().unwrap_or_else(|p| p.into_inner()).entry(used).or_insert(0) += 1;
}

/// Random (Poisson) and holder stalls: asks vCPU threads to stall by
/// setting their stall request and kicking them out of KVM_RUN.
pub(crate) fn preemptor(sh: &Shared, targets: &[(ImmediateExit, libc::pthread_t)]) {
    let (random, holder) = (sh.cfg.preempt.random(), sh.cfg.preempt.holder());
    let n = targets.len();
    let mut rng = Rng::new(stream_seed(sh.cfg.seed, Stream::Preemptor));
    let start = Instant::now();
    let mut next: Vec<Instant> = match random {
        Some(r) => (0..n).map(|_| start + Duration::from_micros(rng.exp(r.mean_interval_us as f64) as u64)).collect(),
        None => Vec::new(),
    };
    let mut next_holder = holder.map(|h| start + Duration::from_micros(h.interval_us));
    let request = |cpu: usize, us: u64| {
        let blocked = sh.channels[cpu].blocked_since_us.load(Ordering::Acquire) != 0;
        let stalled = sh.preempt.stalled[cpu].load(Ordering::Acquire) != 0;
        if blocked || stalled || us == 0 {
            // A blocked or already stalled vCPU runs no guest code anyway.
            sh.preempt.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        sh.preempt.stall_request_us[cpu].store(us, Ordering::Release);
        kick_thread(targets[cpu].0, targets[cpu].1);
    };
    while !sh.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if let Some(r) = random {
            for (cpu, t) in next.iter_mut().enumerate() {
                if *t <= now {
                    request(cpu, rng.stall_us(r.dist, r.stall_us));
                    *t = now + Duration::from_micros(rng.exp(r.mean_interval_us as f64).max(1.0) as u64);
                }
            }
        }
        if let (Some(h), Some(t)) = (holder, next_holder.as_mut()) {
            if *t <= now {
                let boot = sh.boot();
                if boot.locks_gpa != 0 && (h.lock as u64) < boot.nr_locks {
                    let owner_gpa = boot.locks_gpa + h.lock as u64 * boot.lock_stride + sh.layout.torture_lock.owner;
                    let owner = sh.ram.read_u32(owner_gpa).unwrap_or(0);
                    if owner != 0 && (owner as usize) <= n {
                        request(owner as usize - 1, h.stall_us);
                    }
                }
                *t = now + Duration::from_micros(h.interval_us.max(1));
            }
        }
        let wake = next.iter().copied().chain(next_holder).min().unwrap_or(now + Duration::from_millis(10));
        let d = wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(10));
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }
}

/// Delivers delayed kicks (`kick_delay_us`): kicks arrive over a channel
/// with their delivery time and are written to the target's eventfd then.
pub(crate) fn spawn_kick_timer(sh: Arc<Shared>, rx: mpsc::Receiver<(Instant, u32)>) -> JoinHandle<()> {
    use std::cmp::Reverse;
    std::thread::spawn(move || {
        let mut pending: std::collections::BinaryHeap<Reverse<(Instant, u32)>> = Default::default();
        loop {
            let timeout = pending
                .peek()
                .map(|r| r.0 .0.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(20));
            match rx.recv_timeout(timeout) {
                Ok(k) => pending.push(Reverse(k)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while pending.peek().is_some_and(|r| r.0 .0 <= Instant::now()) {
                if let Some(Reverse((_, cpu))) = pending.pop() {
                    let _ = sh.channels[cpu as usize].kick.write(1);
                }
            }
            if sh.stop.load(Ordering::Acquire) {
                return;
            }
        }
    })
}
