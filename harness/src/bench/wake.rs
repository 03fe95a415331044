//! Mechanism costs through our ABI: the MMIO doorbell round trip, a kick
//! store (ioeventfd), a disabled race window, and kick -> wake latency of
//! the ping-pong workload along the three paths a wait can take: the vCPU
//! really blocks (no poll), the VMM's halt poll catches the kick, or the
//! guest's own poll (`hypervisor.guest_poll_ns`) catches it before any exit.
//! A won VMM poll is measured twice, side by side: kicks through the
//! ioeventfd, and through the poll state word (`hypervisor.halt_poll_flag`,
//! no kick store). Both runs, and the doorbell exits, are split into their
//! legs on the one TSC the guest and the VMM share ([`WakeLegs`]).

use super::{not_ok, BenchResult, Goal, JobCtx, JobOutcome, Samples};
use crate::config::RunConfig;
use crate::record::{LegStats, TscOffsetBounds};
use crate::stats::Estimate;
use crate::stats::Percentiles;
use anyhow::Result;
use pvlock_abi::Leg;
use pvlock_abi::{LockEvent, VmmCounter, Workload};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DoorbellSample {
    /// Mean MMIO doorbell round trip, us.
    pub mmio_exit_us: f64,
    /// Mean kick store (ioeventfd), us.
    pub kick_store_us: f64,
    /// Disabled race window, ns per call.
    pub disabled_window_ns: Option<f64>,
    /// The PING exits split at the VMM's stamps, by leg name.
    #[serde(default)]
    pub legs: BTreeMap<String, LegStats>,
    /// Bounds on host TSC minus guest TSC from those exits, and the TSC
    /// rate to read them in time.
    #[serde(default)]
    pub tsc_offset: Option<TscOffsetBounds>,
    #[serde(default)]
    pub tsc_khz: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PingPongSample {
    pub halt_poll_us: u64,
    #[serde(default)]
    pub guest_poll_ns: u64,
    /// `hypervisor.halt_poll_flag`: the VMM's poll took kicks through the
    /// poll state word.
    #[serde(default)]
    pub halt_poll_flag: bool,
    /// Of the VMM polls won, those whose kick came through that word.
    #[serde(default)]
    pub poll_flag_kicks: u64,
    /// The wakes' legs, by leg name.
    #[serde(default)]
    pub legs: BTreeMap<String, LegStats>,
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
    #[serde(default)]
    pub halt_poll_flag: bool,
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

/// One leg over repeats, us: the means over repeats of each run's p50, p99
/// and exact mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LegSummary {
    pub leg: String,
    pub p50_us: Estimate,
    pub p99_us: Estimate,
    pub mean_us: Estimate,
    /// Wakes (or exits) timed, over all repeats.
    pub count: u64,
}

/// The legs of a wake, each timed on the side that sees both of its ends
/// (see `pvlock_abi::Leg`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WakeLegs {
    /// A PING exit: guest store -> VMM sees it -> `KVM_RUN` -> next guest
    /// instruction (doorbells workload, 1 vCPU on 1 host CPU).
    pub exit: Vec<LegSummary>,
    /// Kick -> wake with the tuned VMM poll, kick through the ioeventfd:
    /// kick store, kick seen by the poller, its turnaround, `KVM_RUN` ->
    /// the waiter's first instruction.
    pub vmm_poll: Vec<LegSummary>,
    /// The same with `halt_poll_flag` (kick through the poll state word).
    pub vmm_poll_flag: Vec<LegSummary>,
    /// Tightest bounds on host TSC minus guest TSC over the doorbell runs,
    /// us: one clock if they contain 0.
    pub tsc_offset_us: Option<(f64, f64)>,
    /// Exits that gave those bounds.
    pub tsc_offset_samples: u64,
}

impl WakeLegs {
    /// The leg named `leg` of `legs`.
    pub fn get(legs: &[LegSummary], leg: Leg) -> Option<&LegSummary> {
        legs.iter().find(|l| l.leg == leg.name())
    }
}

/// Each leg over the runs that timed it.
fn leg_summaries<'a>(runs: impl Iterator<Item = &'a BTreeMap<String, LegStats>> + Clone) -> Vec<LegSummary> {
    let mut out = Vec::new();
    for leg in Leg::ALL {
        let of: Vec<&LegStats> = runs.clone().filter_map(|m| m.get(leg.name())).filter(|l| l.ns.count > 0).collect();
        let us = |f: &dyn Fn(&LegStats) -> f64| -> Vec<f64> { of.iter().map(|l| f(l) / 1e3).collect() };
        let (Some(p50_us), Some(p99_us), Some(mean_us)) = (
            Estimate::of(&us(&|l| l.ns.p50 as f64)),
            Estimate::of(&us(&|l| l.ns.p99 as f64)),
            Estimate::of(&us(&|l| l.mean_ns)),
        ) else {
            continue;
        };
        out.push(LegSummary {
            leg: leg.name().into(),
            p50_us,
            p99_us,
            mean_us,
            count: of.iter().map(|l| l.ns.count).sum(),
        });
    }
    out
}

/// The wake legs of a result: the doorbell exits and the two won-VMM-poll
/// ping-pongs (`tuned_halt_poll_us`, no guest poll).
pub fn wake_legs(s: &Samples, tuned_halt_poll_us: u64) -> Option<WakeLegs> {
    let pp = |flag: bool| {
        leg_summaries(
            s.ping_pong
                .iter()
                .filter(move |p| {
                    p.ok && p.halt_poll_us == tuned_halt_poll_us && p.guest_poll_ns == 0 && p.halt_poll_flag == flag
                })
                .map(|p| &p.legs),
        )
    };
    let exit = leg_summaries(s.doorbells.iter().map(|d| &d.legs));
    let (vmm_poll, vmm_poll_flag) = (pp(false), pp(true));
    if exit.is_empty() && vmm_poll.is_empty() && vmm_poll_flag.is_empty() {
        return None;
    }
    let bounds: Vec<(f64, f64, u64)> = s
        .doorbells
        .iter()
        .filter(|d| d.tsc_khz > 0)
        .filter_map(|d| {
            d.tsc_offset
                .map(|o| (o.lo as f64 / d.tsc_khz as f64 * 1e3, o.hi as f64 / d.tsc_khz as f64 * 1e3, o.samples))
        })
        .collect();
    let tsc_offset_us = (!bounds.is_empty()).then(|| {
        let lo = bounds.iter().map(|b| b.0).fold(f64::NEG_INFINITY, f64::max);
        let hi = bounds.iter().map(|b| b.1).fold(f64::INFINITY, f64::min);
        (lo, hi)
    });
    Some(WakeLegs {
        exit,
        vmm_poll,
        vmm_poll_flag,
        tsc_offset_us,
        tsc_offset_samples: bounds.iter().map(|b| b.2).sum(),
    })
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
            legs: t.wake_legs.clone(),
            tsc_offset: t.tsc_offset_cycles,
            tsc_khz: rec.tsc_khz,
        });
    }
    Ok((line, not_ok(&rec, &what)))
}

/// How one ping-pong run waits: the VMM's halt poll, us (and whether it
/// takes kicks through the poll state word), and the guest's poll, ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingPongMode {
    pub halt_poll_us: u64,
    pub halt_poll_flag: bool,
    pub guest_poll_ns: u64,
}

/// The ping-pong workload on 2 vCPUs / 2 host CPUs in this wait mode.
pub fn run_ping_pong(cx: &JobCtx<'_>, mode: PingPongMode, rep: u32, s: &mut Samples) -> Result<JobOutcome> {
    let PingPongMode { halt_poll_us, halt_poll_flag, guest_poll_ns } = mode;
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
    rc.hypervisor.halt_poll_flag = halt_poll_flag;
    rc.hypervisor.guest_poll_ns = guest_poll_ns;
    let key =
        format!("halt_poll_us={halt_poll_us},halt_poll_flag={halt_poll_flag},guest_poll_ns={guest_poll_ns},rep={rep}");
    let rec = cx.vm(&rc, &key)?;
    let k = rec.timing.kick_wake_ns.unwrap_or_default();
    let ev = |e: LockEvent| rec.lock_events.get(e.name()).copied().unwrap_or(0);
    let vmm = |c: VmmCounter| rec.vmm.get(c.name()).copied().unwrap_or(0);
    let what = format!(
        "ping-pong halt_poll_us={halt_poll_us}{} guest_poll_ns={guest_poll_ns} rep {rep}",
        if halt_poll_flag { " (flag)" } else { "" }
    );
    let line = format!("{what}: kick -> wake p50 {} ns, p99 {} ns, max {} ns", k.p50, k.p99, k.max);
    let ok = rec.status.is_ok() && k.count > 0;
    s.ping_pong.push(PingPongSample {
        halt_poll_us,
        guest_poll_ns,
        halt_poll_flag,
        poll_flag_kicks: vmm(VmmCounter::PollFlagKicks),
        legs: rec.timing.wake_legs.clone(),
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

pub fn kick_wake(samples: &[PingPongSample], mode: PingPongMode) -> Option<KickWake> {
    let ok: Vec<&PingPongSample> = samples
        .iter()
        .filter(|p| {
            p.ok && p.halt_poll_us == mode.halt_poll_us
                && p.guest_poll_ns == mode.guest_poll_ns
                && p.halt_poll_flag == mode.halt_poll_flag
        })
        .collect();
    let runs: Vec<&Percentiles> = ok.iter().map(|p| &p.kick_wake_ns).collect();
    let us = |f: fn(&Percentiles) -> u64| -> Vec<f64> { runs.iter().map(|p| f(p) as f64 / 1e3).collect() };
    let (p50, p99, max) = (Estimate::of(&us(|p| p.p50))?, Estimate::of(&us(|p| p.p99))?, Estimate::of(&us(|p| p.max))?);
    Some(KickWake {
        halt_poll_us: mode.halt_poll_us,
        guest_poll_ns: mode.guest_poll_ns,
        halt_poll_flag: mode.halt_poll_flag,
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
/// What a leg is, for reports.
pub fn leg_label(leg: &str) -> &'static str {
    match leg {
        "exit_entry" => "guest store -> VMM sees the exit",
        "kick_store" => "kicker's kick (store or flag CAS)",
        "kick_seen" => "kick -> VMM poller sees it",
        "vmm_turnaround" => "VMM: seen -> KVM_RUN",
        "resume" => "KVM_RUN -> first guest instruction",
        _ => "?",
    }
}

/// `leg p50 a / p99 b` of every leg, one clause each.
pub fn legs_text(legs: &[LegSummary]) -> String {
    legs.iter()
        .map(|l| format!("{} p50 {} us (p99 {})", leg_label(&l.leg), l.p50_us.show(2), l.p99_us.show(1)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The legs that make up a kick -> wake (the kicker's own store is not on
/// the waiter's path: it overlaps `kick_seen`).
const WAKE_PATH: [Leg; 3] = [Leg::KickSeen, Leg::VmmTurnaround, Leg::Resume];

/// The largest leg on a won VMM poll's path, by p50.
pub fn limiting_leg(legs: &[LegSummary]) -> Option<&LegSummary> {
    WAKE_PATH.iter().filter_map(|&l| WakeLegs::get(legs, l)).max_by(|a, b| a.p50_us.mean.total_cmp(&b.p50_us.mean))
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
    let modes =
        [("kick through the ioeventfd", &r.kick_wake_tuned_us), ("through the poll flag", &r.kick_wake_flag_us)];
    let best = modes
        .iter()
        .filter_map(|(_, k)| k.as_ref())
        .map(|k| k.p50)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
    let runs = modes
        .iter()
        .map(|(label, k)| {
            format!(
                "{label}: {}{}",
                kw(k),
                k.as_ref().map(|k| format!(" ({})", won(k, k.vmm_polls_won))).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let legs = r.wake_legs.as_ref();
    let leg_detail = legs
        .map(|w| {
            let clock = w
                .tsc_offset_us
                .map(|(lo, hi)| {
                    format!(
                        "one clock: host TSC - guest TSC within [{lo:.1}, {hi:.1}] us over {} exits",
                        w.tsc_offset_samples
                    )
                })
                .unwrap_or_else(|| "clock offset not measured".into());
            let limit = |legs: &[LegSummary]| {
                limiting_leg(legs)
                    .map(|l| format!("{} p50 {} us", leg_label(&l.leg), l.p50_us.show(2)))
                    .unwrap_or_else(|| "-".into())
            };
            let exit_resume = WakeLegs::get(&w.exit, Leg::Resume)
                .map(|l| format!("; the PING exit's own return half: {} us", l.p50_us.show(2)))
                .unwrap_or_default();
            format!(
                " Legs (ioeventfd): {}. Legs (flag): {}. Largest leg: {} (ioeventfd), {} (flag){exit_resume}; {clock}.",
                legs_text(&w.vmm_poll),
                legs_text(&w.vmm_poll_flag),
                limit(&w.vmm_poll),
                limit(&w.vmm_poll_flag)
            )
        })
        .unwrap_or_default();
    out.push(Goal {
        goal: "kick -> wake p50 <= 20 us when the VMM poll wins".into(),
        met: best.map(|b| b <= 20.0),
        detail: format!("halt_poll_us={}, {runs}; {blocked}{mmio}.{leg_detail} {bucket}", r.plan.tuned_halt_poll_us,),
    });
}
