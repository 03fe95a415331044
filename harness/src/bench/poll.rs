//! What polling costs in throughput: pv-upstream torture at 1x, 2x and 4x
//! overcommit (2, 4 and 8 vCPUs on 2 host CPUs) without a poll, with the
//! guest's poll and with the VMM's halt poll, both forced on under
//! overcommit (`*_overcommitted`) where a default run would leave them off.
//! Modes are the inner loop of each repeat, run back to back (in reverse
//! order on odd repeats, so a steady drift does not favour one), and each
//! poll mode's cost is the paired ratio over the repeats
//! ([`super::stats::paired_ratio`]): the host's load moves from repeat to
//! repeat far more than it does between two runs of one repeat.

use super::stats::{pair_by_key, paired_ratio, Ratio};
use super::{not_ok, JobCtx, JobOutcome, Plan, Point, Samples};
use crate::stats::Estimate;
use anyhow::Result;
use pvlock_abi::{LockEvent, Variant, VmmCounter};
use serde::{Deserialize, Serialize};

/// Which poll a throughput run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PollMode {
    None,
    /// `guest_poll_ns = plan.poll_cost_ns`.
    Guest,
    /// `halt_poll_us = plan.poll_cost_ns / 1000`.
    Vmm,
}

impl PollMode {
    pub const ALL: [PollMode; 3] = [PollMode::None, PollMode::Guest, PollMode::Vmm];
    pub fn name(self) -> &'static str {
        match self {
            PollMode::None => "none",
            PollMode::Guest => "guest",
            PollMode::Vmm => "vmm",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollCostSample {
    pub vcpus: u32,
    pub mode: PollMode,
    /// The repeat: runs of one repeat are the pairs.
    #[serde(default)]
    pub rep: u32,
    pub ok: bool,
    pub acq_per_sec: f64,
    /// Polls won and lost (guest: its own counters; VMM: polls won and
    /// waits that blocked after the poll).
    pub polls_won: u64,
    pub polls_lost: u64,
}

/// One (vCPUs, mode) cell over repeats.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollCostRow {
    pub vcpus: u32,
    pub host_cpus: u32,
    pub mode: PollMode,
    /// The poll, ns (0 for `none`).
    pub poll_ns: u64,
    pub acq_per_sec: Option<Estimate>,
    /// This mode's acq/s over the no-poll run of the same repeat, paired
    /// over repeats.
    pub over_no_poll: Option<Ratio>,
    /// Fraction of polls that won, over all repeats.
    pub won_fraction: Option<f64>,
    pub ok_runs: usize,
    pub runs: usize,
}

/// The host CPUs of every poll-cost point.
pub const POLL_COST_HOST_CPUS: u32 = 2;

pub fn run_poll_cost(cx: &JobCtx<'_>, vcpus: u32, mode: PollMode, rep: u32, s: &mut Samples) -> Result<JobOutcome> {
    let plan = cx.plan;
    let point = Point { variant: Variant::PvUpstream, vcpus, host_cpus: POLL_COST_HOST_CPUS };
    let mut rc = plan.guest_config(&point, false, rep);
    rc.name = "bench-poll-cost".into();
    if plan.pair_ms > 0 {
        rc.duration_ms = plan.pair_ms;
        rc.timeout_ms = plan.pair_ms + 60_000;
    }
    match mode {
        PollMode::None => {}
        PollMode::Guest => {
            rc.hypervisor.guest_poll_ns = plan.poll_cost_ns;
            rc.hypervisor.guest_poll_overcommitted = true;
        }
        PollMode::Vmm => {
            rc.hypervisor.halt_poll_us = (plan.poll_cost_ns / 1000).max(1);
            rc.hypervisor.halt_poll_overcommitted = true;
        }
    }
    let rec = cx.vm(&rc, &format!("vcpus={vcpus},poll={},rep={rep}", mode.name()))?;
    let ev = |e: LockEvent| rec.lock_events.get(e.name()).copied().unwrap_or(0);
    let vmm = |c: VmmCounter| rec.vmm.get(c.name()).copied().unwrap_or(0);
    let (polls_won, polls_lost) = match mode {
        PollMode::None => (0, 0),
        PollMode::Guest => (ev(LockEvent::GuestPollsWon), ev(LockEvent::GuestPollsLost)),
        PollMode::Vmm => (vmm(VmmCounter::PollsWon), vmm(VmmCounter::WaitsBlocked)),
    };
    let what = format!("poll cost {} {vcpus}v/{}h rep {rep}", mode.name(), POLL_COST_HOST_CPUS);
    let line = format!(
        "{what}: {:.0} acq/s, polls won {polls_won} lost {polls_lost} [{}]",
        rec.acquisitions_per_sec, rec.status
    );
    s.poll_cost.push(PollCostSample {
        vcpus,
        mode,
        rep,
        ok: rec.status.is_ok(),
        acq_per_sec: rec.acquisitions_per_sec,
        polls_won,
        polls_lost,
    });
    Ok((line, not_ok(&rec, &what)))
}

/// The poll modes of repeat `rep` in run order: forwards on even repeats,
/// backwards on odd ones.
pub fn modes_of_repeat(rep: u32) -> [PollMode; 3] {
    let mut m = PollMode::ALL;
    if rep % 2 == 1 {
        m.reverse();
    }
    m
}

pub fn rows(plan: &Plan, s: &Samples) -> Vec<PollCostRow> {
    let mut out = Vec::new();
    for &vcpus in &plan.poll_cost_vcpus {
        let acq = |mode: PollMode| -> Vec<f64> {
            s.poll_cost.iter().filter(|p| p.ok && p.vcpus == vcpus && p.mode == mode).map(|p| p.acq_per_sec).collect()
        };
        let by_rep = |mode: PollMode| -> Vec<(u32, f64)> {
            s.poll_cost
                .iter()
                .filter(|p| p.ok && p.vcpus == vcpus && p.mode == mode)
                .map(|p| (p.rep, p.acq_per_sec))
                .collect()
        };
        let base = by_rep(PollMode::None);
        for mode in PollMode::ALL {
            let runs: Vec<&PollCostSample> =
                s.poll_cost.iter().filter(|p| p.vcpus == vcpus && p.mode == mode).collect();
            if runs.is_empty() {
                continue;
            }
            let a = acq(mode);
            let (won, lost): (u64, u64) =
                runs.iter().filter(|p| p.ok).fold((0, 0), |(w, l), p| (w + p.polls_won, l + p.polls_lost));
            out.push(PollCostRow {
                vcpus,
                host_cpus: POLL_COST_HOST_CPUS,
                mode,
                poll_ns: if mode == PollMode::None { 0 } else { plan.poll_cost_ns },
                acq_per_sec: Estimate::of(&a),
                over_no_poll: if mode == PollMode::None {
                    None
                } else {
                    paired_ratio(&pair_by_key(&by_rep(mode), &base))
                },
                won_fraction: (won + lost > 0).then(|| won as f64 / (won + lost) as f64),
                ok_runs: a.len(),
                runs: runs.len(),
            });
        }
    }
    out
}
