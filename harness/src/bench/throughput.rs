//! Lock throughput and latency against vCPUs x host CPUs per variant,
//! without and with random injected stalls (overcommit), beside the same
//! lock code on host threads ([`super::host`]).

use super::stats::{ratio_of_means, Ratio};
use super::{
    not_ok, BenchResult, Goal, JobCtx, JobOutcome, Plan, Point, Samples, RATIO_PV_OVER_TICKET,
    RATIO_PV_OVER_TICKET_STALLS,
};
use crate::config::RunConfig;
use crate::stats::Estimate;
use anyhow::Result;
use pvlock_abi::{Variant, Workload};
use pvlock_vmm::RunStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestSample {
    #[serde(flatten)]
    pub point: Point,
    pub stalls: bool,
    pub ok: bool,
    pub status: RunStatus,
    pub acq_per_sec: f64,
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    /// Blocking waits (pv_wait that blocked the vCPU thread) per 1000
    /// acquisitions.
    pub blocked_waits_per_kacq: f64,
}

/// One row of the throughput table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThroughputRow {
    pub variant: Variant,
    pub vcpus: u32,
    pub host_cpus: u32,
    /// `none` or `random` (injected stalls).
    pub stalls: String,
    /// Acquisitions/s over the ok runs.
    pub acq_per_sec: Option<Estimate>,
    pub latency_p50_ns: Option<Estimate>,
    pub latency_p99_ns: Option<Estimate>,
    pub blocked_waits_per_kacq: Option<Estimate>,
    pub ok_runs: usize,
    pub runs: usize,
    /// The same lock code on as many host threads (no stalls rows only).
    pub host_acq_per_sec: Option<Estimate>,
    /// Guest acquisitions/s over host-thread acquisitions/s.
    pub guest_over_host: Option<Ratio>,
}

impl Plan {
    /// The throughput run of `point`.
    pub fn guest_config(&self, point: &Point, stalls: bool, rep: u32) -> RunConfig {
        let mut rc = RunConfig {
            name: "bench".into(),
            workload: Workload::Torture,
            vcpus: point.vcpus,
            host_cpus: point.host_cpus,
            seed: 1 + rep as u64,
            duration_ms: self.duration_ms,
            timeout_ms: self.duration_ms + 60_000,
            ..Default::default()
        };
        rc.lock.variant = point.variant;
        rc.torture.locks = 1;
        rc.torture.cs_ns = self.cs_ns;
        rc.torture.think_ns = self.think_ns;
        // As configs/overcommit-sweep.toml: a missed wakeup is counted and
        // rescued, not the end of the run.
        rc.hypervisor.rescue = true;
        rc.hypervisor.stall_timeout_ms = 500;
        if stalls {
            rc.preempt.random_mean_interval_us = self.stall_interval_us;
            rc.preempt.random_stall_us = self.stall_us;
        }
        rc
    }
}

/// One throughput run of `point`.
pub fn run_guest(cx: &JobCtx<'_>, point: &Point, stalls: bool, rep: u32, s: &mut Samples) -> Result<JobOutcome> {
    let rc = cx.plan.guest_config(point, stalls, rep);
    let st = if stalls { "random stalls" } else { "no stalls" };
    let key = format!(
        "variant={},vcpus={},host_cpus={},stalls={stalls},rep={rep}",
        point.variant, point.vcpus, point.host_cpus
    );
    let rec = cx.vm(&rc, &key)?;
    let waits = rec.vmm.get("waits_blocked").copied().unwrap_or(0) as f64;
    let what = format!("guest {} {}v/{}h {st} rep {rep}", point.variant, point.vcpus, point.host_cpus);
    let line = format!("{what}: {:.0} acq/s [{}]", rec.acquisitions_per_sec, rec.status);
    s.guest.push(GuestSample {
        point: point.clone(),
        stalls,
        ok: rec.status.is_ok(),
        status: rec.status,
        acq_per_sec: rec.acquisitions_per_sec,
        latency_p50_ns: rec.latency_ns.p50,
        latency_p99_ns: rec.latency_ns.p99,
        blocked_waits_per_kacq: if rec.acquisitions > 0 { waits * 1e3 / rec.acquisitions as f64 } else { 0.0 },
    });
    Ok((line, not_ok(&rec, &what)))
}

/// The throughput table: one row per point and stall setting that ran.
pub fn rows(plan: &Plan, s: &Samples) -> Vec<ThroughputRow> {
    let mut throughput = Vec::new();
    for &h in &plan.host_cpus {
        for &v in &plan.vcpus {
            for variant in &plan.variants {
                let p = Point { variant: *variant, vcpus: v, host_cpus: h };
                for stalls in [false, true] {
                    let runs: Vec<&GuestSample> =
                        s.guest.iter().filter(|g| g.point == p && g.stalls == stalls).collect();
                    if runs.is_empty() {
                        continue;
                    }
                    let ok: Vec<&GuestSample> = runs.iter().copied().filter(|g| g.ok).collect();
                    let of = |f: fn(&GuestSample) -> f64| Estimate::of(&ok.iter().map(|g| f(g)).collect::<Vec<_>>());
                    let guest: Vec<f64> = ok.iter().map(|g| g.acq_per_sec).collect();
                    let host: Vec<f64> = if stalls {
                        Vec::new()
                    } else {
                        s.host.iter().filter(|x| x.point == p && x.ok).map(|x| x.acq_per_sec).collect()
                    };
                    throughput.push(ThroughputRow {
                        variant: *variant,
                        vcpus: v,
                        host_cpus: h,
                        stalls: if stalls { "random" } else { "none" }.into(),
                        acq_per_sec: Estimate::of(&guest),
                        latency_p50_ns: of(|g| g.latency_p50_ns as f64),
                        latency_p99_ns: of(|g| g.latency_p99_ns as f64),
                        blocked_waits_per_kacq: of(|g| g.blocked_waits_per_kacq),
                        ok_runs: ok.len(),
                        runs: runs.len(),
                        host_acq_per_sec: Estimate::of(&host),
                        guest_over_host: ratio_of_means(&guest, &host),
                    });
                }
            }
        }
    }
    throughput
}

/// pv-upstream over ticket at 8 vCPUs on 2 host CPUs, without and with stalls.
pub fn ratios(s: &Samples, ratios: &mut BTreeMap<String, Ratio>) {
    let acq = |variant: Variant, stalls: bool| -> Vec<f64> {
        s.guest
            .iter()
            .filter(|g| g.ok && g.point.variant == variant && g.point.vcpus == 8 && g.point.host_cpus == 2)
            .filter(|g| g.stalls == stalls)
            .map(|g| g.acq_per_sec)
            .collect()
    };
    for (name, stalls) in [(RATIO_PV_OVER_TICKET, false), (RATIO_PV_OVER_TICKET_STALLS, true)] {
        if let Some(r) = ratio_of_means(&acq(Variant::PvUpstream, stalls), &acq(Variant::Ticket, stalls)) {
            ratios.insert(name.to_string(), r);
        }
    }
}

/// The overcommit goal: pv-upstream against ticket at 4x.
pub fn goals(r: &BenchResult, out: &mut Vec<Goal>) {
    let ratio = r.ratios.get(RATIO_PV_OVER_TICKET);
    let tp = |v: Variant, n: u32| r.row(v, n, 2, "none").and_then(|x| x.acq_per_sec).map(|s| s.show(0));
    out.push(Goal {
        goal: "pv-upstream >= 10x ticket throughput at 4x overcommit (8 vCPUs, 2 host CPUs)".into(),
        met: ratio.map(|x| x.value >= 10.0),
        detail: match ratio {
            Some(x) => format!(
                "ratio {} (Fieller 95%), worst case over repeats min(pv-upstream)/max(ticket) {:.1}; \
                 pv-upstream {} acq/s, ticket {} acq/s; ticket at 2 vCPUs/2 host CPUs (no overcommit) {} acq/s",
                x.show(1),
                x.num.min / x.den.max,
                x.num.show(0),
                x.den.show(0),
                tp(Variant::Ticket, 2).unwrap_or_else(|| "-".into())
            ),
            None => "not measured".into(),
        },
    });
}
