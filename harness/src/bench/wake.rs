//! Mechanism costs through our ABI: the MMIO doorbell round trip, a kick
//! store (ioeventfd), a disabled race window, and kick -> wake latency of
//! the ping-pong workload along the three paths a wait can take: the vCPU
//! really blocks (no poll), the VMM's halt poll catches the kick, or the
//! guest's own poll (`hypervisor.guest_poll_ns`) catches it before any exit.

use super::{not_ok, BenchResult, Goal, JobCtx, JobOutcome, Samples};
use crate::config::RunConfig;
use crate::stats::Estimate;
use crate::stats::Percentiles;
use anyhow::Result;
use pvlock_abi::{LockEvent, VmmCounter, Workload};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoorbellSample {
    /// Mean MMIO doorbell round trip, us.
    pub mmio_exit_us: f64,
    /// Mean kick store (ioeventfd), us.
    pub kick_store_us: f64,
    /// Disabled race window, ns per call.
    pub disabled_window_ns: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PingPongSample {
    pub halt_poll_us: u64,
    #[serde(default)]
    pub guest_poll_ns: u64,
    /// Guest polls won / lost and kicks that went through the poller's
    /// flag in this run (0 without a guest poll).
    #[serde(default)]
    pub guest_polls_won: u64,
    #[serde(default)]
    pub guest_polls_lost: u64,
    #[serde(default)]
    pub kicks_to_poller: u64,
    /// VMM halt polls won and waits that blocked the vCPU thread.
    #[serde(default)]
    pub vmm_polls_won: u64,
    #[serde(default)]
    pub waits_blocked: u64,
    /// Kick -> wake of this run, ns (histogram bucket lower bounds).
    pub kick_wake_ns: Percentiles,
    pub ok: bool,
}

/// Kick -> wake latency over repeats, us. `p50`/`p99` are the means over
/// repeats of each run's percentile, `max` the largest of any run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KickWake {
    pub halt_poll_us: u64,
    #[serde(default)]
    pub guest_poll_ns: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub p50_spread: Estimate,
    pub p99_spread: Estimate,
    pub max_spread: Estimate,
    /// Round trips over all repeats.
    pub count: u64,
    /// Over all repeats: guest polls won, VMM polls won, blocked waits.
    #[serde(default)]
    pub guest_polls_won: u64,
    #[serde(default)]
    pub vmm_polls_won: u64,
    #[serde(default)]
    pub waits_blocked: u64,
}

/// vCPU 0 times exits, kick stores and a disabled window (1 vCPU on 1 host CPU).
pub fn run_doorbells(cx: &JobCtx<'_>, rep: u32, s: &mut Samples) -> Result<JobOutcome> {
    let rc = RunConfig {
        name: "bench-doorbells".into(),
        workload: Workload::Doorbells,
        vcpus: 1,
        host_cpus: 1,
        seed: 1 + rep as u64,
        iterations: cx.plan.doorbell_iterations,
        ..Default::default()
    };
    let rec = cx.vm(&rc, &format!("rep={rep}"))?;
    let t = &rec.timing;
    let what = format!("doorbells rep {rep}");
    let line = format!(
        "{what}: MMIO exit {:.2} us, kick store {:.2} us, disabled window {:.3} ns",
        t.mmio_exit_us.unwrap_or(f64::NAN),
        t.kick_store_us.unwrap_or(f64::NAN),
        t.disabled_window_ns.unwrap_or(f64::NAN)
    );
    if let (true, Some(m), Some(k)) = (rec.status.is_ok(), t.mmio_exit_us, t.kick_store_us) {
        s.doorbells.push(DoorbellSample {
            mmio_exit_us: m,
            kick_store_us: k,
            disabled_window_ns: t.disabled_window_ns,
        });
    }
    Ok((line, not_ok(&rec, &what)))
}

/// The ping-pong workload on 2 vCPUs / 2 host CPUs with this halt poll
/// (VMM) and guest poll.
pub fn run_ping_pong(
    cx: &JobCtx<'_>,
    halt_poll_us: u64,
    guest_poll_ns: u64,
    rep: u32,
    s: &mut Samples,
) -> Result<JobOutcome> {
    let mut rc = RunConfig {
        name: "bench-ping-pong".into(),
        workload: Workload::PingPong,
        vcpus: 2,
        host_cpus: 2,
        seed: 1 + rep as u64,
        iterations: cx.plan.ping_pong_iterations,
        ..Default::default()
    };
    rc.hypervisor.halt_poll_us = halt_poll_us;
    rc.hypervisor.guest_poll_ns = guest_poll_ns;
    let rec = cx.vm(&rc, &format!("halt_poll_us={halt_poll_us},guest_poll_ns={guest_poll_ns},rep={rep}"))?;
    let k = rec.timing.kick_wake_ns.unwrap_or_default();
    let ev = |e: LockEvent| rec.lock_events.get(e.name()).copied().unwrap_or(0);
    let vmm = |c: VmmCounter| rec.vmm.get(c.name()).copied().unwrap_or(0);
    let what = format!("ping-pong halt_poll_us={halt_poll_us} guest_poll_ns={guest_poll_ns} rep {rep}");
    let line = format!("{what}: kick -> wake p50 {} ns, p99 {} ns, max {} ns", k.p50, k.p99, k.max);
    let ok = rec.status.is_ok() && k.count > 0;
    s.ping_pong.push(PingPongSample {
        halt_poll_us,
        guest_poll_ns,
        guest_polls_won: ev(LockEvent::GuestPollsWon),
        guest_polls_lost: ev(LockEvent::GuestPollsLost),
        kicks_to_poller: ev(LockEvent::KicksToPoller),
        vmm_polls_won: vmm(VmmCounter::PollsWon),
        waits_blocked: vmm(VmmCounter::WaitsBlocked),
        kick_wake_ns: k,
        ok,
    });
    Ok((line, not_ok(&rec, &what)))
}

pub fn kick_wake(samples: &[PingPongSample], halt_poll_us: u64, guest_poll_ns: u64) -> Option<KickWake> {
    let ok: Vec<&PingPongSample> =
        samples.iter().filter(|p| p.ok && p.halt_poll_us == halt_poll_us && p.guest_poll_ns == guest_poll_ns).collect();
    let runs: Vec<&Percentiles> = ok.iter().map(|p| &p.kick_wake_ns).collect();
    let us = |f: fn(&Percentiles) -> u64| -> Vec<f64> { runs.iter().map(|p| f(p) as f64 / 1e3).collect() };
    let (p50, p99, max) = (Estimate::of(&us(|p| p.p50))?, Estimate::of(&us(|p| p.p99))?, Estimate::of(&us(|p| p.max))?);
    Some(KickWake {
        halt_poll_us,
        guest_poll_ns,
        p50: p50.mean,
        p99: p99.mean,
        max: max.max,
        p50_spread: p50,
        p99_spread: p99,
        max_spread: max,
        count: runs.iter().map(|p| p.count).sum(),
        guest_polls_won: ok.iter().map(|p| p.guest_polls_won).sum(),
        vmm_polls_won: ok.iter().map(|p| p.vmm_polls_won).sum(),
        waits_blocked: ok.iter().map(|p| p.waits_blocked).sum(),
    })
}
/// The kick -> wake goals: p50 <= 2 us when the guest poll wins, <= 20 us
/// when the VMM's halt poll wins; the blocking path has no goal (it is the
/// exit and the host scheduler's wakeup) and is shown beside them.
pub fn goals(r: &BenchResult, out: &mut Vec<Goal>) {
    let mmio = r.mmio_exit_us.map(|m| format!("; MMIO exit round trip {} us", m.show(1))).unwrap_or_default();
    let kw = |k: &Option<KickWake>| {
        k.as_ref()
            .map(|k| format!("p50 {} us, p99 {} us", k.p50_spread.show(2), k.p99_spread.show(1)))
            .unwrap_or_else(|| "not measured".into())
    };
    let blocked = format!("really blocking (no poll): {}", kw(&r.kick_wake_us));
    let bucket = "Values are histogram bucket lower bounds (buckets a quarter of a power of two wide).";
    let won = |k: &KickWake, polls: u64| format!("{polls} of {} wakeups caught by the poll", k.count);
    out.push(Goal {
        goal: "kick -> wake p50 <= 2 us when the guest poll wins".into(),
        met: r.kick_wake_guest_poll_us.as_ref().map(|k| k.p50 <= 2.0),
        detail: format!(
            "guest_poll_ns={} (> the ping-pong's 200 us pre-kick wait): {}{}; {blocked}. {bucket}",
            r.plan.tuned_guest_poll_ns,
            kw(&r.kick_wake_guest_poll_us),
            r.kick_wake_guest_poll_us.as_ref().map(|k| format!(" ({})", won(k, k.guest_polls_won))).unwrap_or_default(),
        ),
    });
    out.push(Goal {
        goal: "kick -> wake p50 <= 20 us when the VMM poll wins".into(),
        met: r.kick_wake_tuned_us.as_ref().map(|k| k.p50 <= 20.0),
        detail: format!(
            "halt_poll_us={}: {}{}; {blocked}{mmio}. A won VMM poll still pays the kick store (ioeventfd) and the \
             return half of the wait exit (KVM_RUN re-entry), which is what limits it. {bucket}",
            r.plan.tuned_halt_poll_us,
            kw(&r.kick_wake_tuned_us),
            r.kick_wake_tuned_us.as_ref().map(|k| format!(" ({})", won(k, k.vmm_polls_won))).unwrap_or_default(),
        ),
    });
}
