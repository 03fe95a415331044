//! The host-thread baseline: the same lock code and torture loop on host
//! threads (no VM) at the throughput points, and the uncontended
//! `qspinlock` acquire+release, guest against host thread, side by side.

use super::stats::{ratio_of_means, Ratio};
use super::{not_ok, BenchResult, Goal, JobCtx, JobOutcome, Point, Samples, RATIO_UNCONTENDED};
use crate::config::RunConfig;
use crate::stats::Estimate;
use anyhow::Result;
use pvlock_abi::{TortureParams, Variant, Workload};
use pvlock_guest_lib::host::{run_torture, HostRunSpec};
use pvlock_guest_lib::{default_hash_bits, LockConfig, DEFAULT_SPIN_THRESHOLD};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    #[serde(flatten)]
    pub point: Point,
    /// No violation, panic or hang.
    pub ok: bool,
    pub acq_per_sec: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UncontendedSample {
    /// ns per acquire+release (with the torture loop around it), guest.
    pub guest_ns: f64,
    pub host_ns: f64,
}

/// Uncontended `qspinlock`: 1 vCPU on 1 host CPU against 1 host thread on
/// 1 host CPU, `cs_ns = think_ns = 0`, ns per acquisition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Uncontended {
    pub guest_ns: Estimate,
    pub host_ns: Estimate,
    pub guest_over_host: Ratio,
}

/// The same lock code on `point.vcpus` host threads.
pub fn run_host(cx: &JobCtx<'_>, point: &Point, rep: u32, s: &mut Samples) -> Result<JobOutcome> {
    let plan = cx.plan;
    let torture = TortureParams {
        nr_locks: 1,
        nest: 1,
        cs_ns: plan.cs_ns,
        think_ns: plan.think_ns,
        irq_prob: 0,
        irq_max_depth: 0,
        max_acquisitions: 0,
    };
    let (acq_per_sec, ok) = host_torture(point.variant, torture, point.vcpus, point.host_cpus, plan.duration_ms, rep)?;
    let what = format!("host {} {} threads/{}h rep {rep}", point.variant, point.vcpus, point.host_cpus);
    s.host.push(HostSample { point: point.clone(), ok, acq_per_sec });
    let line = format!("{what}: {acq_per_sec:.0} acq/s{}", if ok { "" } else { " [NOT CLEAN]" });
    Ok((line, (!ok).then(|| format!("{what}: not clean"))))
}

/// Uncontended qspinlock: 1 vCPU on 1 host CPU, then 1 host thread on 1
/// host CPU, back to back (cs = think = 0).
pub fn run_uncontended(cx: &JobCtx<'_>, rep: u32, s: &mut Samples) -> Result<JobOutcome> {
    let plan = cx.plan;
    let mut rc = RunConfig {
        name: "bench-uncontended".into(),
        workload: Workload::Torture,
        vcpus: 1,
        host_cpus: 1,
        seed: 1 + rep as u64,
        duration_ms: plan.uncontended_ms,
        ..Default::default()
    };
    rc.lock.variant = Variant::Qspinlock;
    rc.torture.cs_ns = 0;
    rc.torture.think_ns = 0;
    let rec = cx.vm(&rc, &format!("rep={rep}"))?;
    let torture = TortureParams {
        nr_locks: 1,
        nest: 1,
        cs_ns: 0,
        think_ns: 0,
        irq_prob: 0,
        irq_max_depth: 0,
        max_acquisitions: 0,
    };
    let (host_aps, host_ok) = host_torture(Variant::Qspinlock, torture, 1, 1, plan.uncontended_ms, rep)?;
    let (g, h) = (1e9 / rec.acquisitions_per_sec, 1e9 / host_aps);
    let what = format!("uncontended qspinlock rep {rep}");
    if rec.status.is_ok() && host_ok && g.is_finite() && h.is_finite() {
        s.uncontended.push(UncontendedSample { guest_ns: g, host_ns: h });
    }
    Ok((format!("{what}: guest {g:.1} ns, host thread {h:.1} ns per acquisition"), not_ok(&rec, &what)))
}

/// The uncontended pair over repeats (and its ratio into `ratios`).
pub fn uncontended(s: &Samples, ratios: &mut BTreeMap<String, Ratio>) -> Option<Uncontended> {
    let g: Vec<f64> = s.uncontended.iter().map(|u| u.guest_ns).collect();
    let h: Vec<f64> = s.uncontended.iter().map(|u| u.host_ns).collect();
    let (guest_ns, host_ns, r) = (Estimate::of(&g)?, Estimate::of(&h)?, ratio_of_means(&g, &h)?);
    ratios.insert(RATIO_UNCONTENDED.to_string(), r);
    Some(Uncontended { guest_ns, host_ns, guest_over_host: r })
}

/// Lock torture on `threads` host threads confined to the first
/// `host_cpus` CPUs this process may use (the threads inherit the mask of
/// the thread that spawns them; unlike the VMM's one-CPU-per-vCPU pinning,
/// they may move between those CPUs). `yield_every = 0`: spinning threads
/// never yield, as spinning vCPUs do not. Returns (acquisitions/s, clean).
pub fn host_torture(
    variant: Variant,
    torture: TortureParams,
    threads: u32,
    host_cpus: u32,
    duration_ms: u64,
    rep: u32,
) -> Result<(f64, bool)> {
    let lock = LockConfig { variant, spin_threshold: DEFAULT_SPIN_THRESHOLD, hash_bits: default_hash_bits(threads) };
    let mut spec = HostRunSpec::new(lock, torture, threads);
    spec.seed = 1 + rep as u64;
    spec.duration = Duration::from_millis(duration_ms);
    spec.yield_every = 0;
    spec.watchdog = Duration::from_millis(duration_ms + 30_000);
    let run = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("pvlock-bench-host".into())
            .spawn_scoped(s, || {
                confine_to_first(host_cpus as usize);
                run_torture(&spec)
            })
            .expect("spawn the host-run thread")
            .join()
    });
    let run = match run {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => anyhow::bail!("host torture parameters: {e}"),
        Err(_) => anyhow::bail!("the host torture thread panicked"),
    };
    // Over the time the threads really ran (their own TSC timing, as the
    // guest times its runs), not the nominal duration.
    Ok((run.acquisitions_per_sec(), run.is_clean()))
}

/// Restricts the calling thread to the first `n` CPUs it may use now.
fn confine_to_first(n: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most sizeof(cpu_set_t) bytes into it; pid 0 is this thread.
    unsafe {
        let mut cur: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut cur) != 0 {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let allowed = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &cur));
        for c in allowed.take(n.max(1)) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
/// The uncontended guest/host goal.
pub fn goals(r: &BenchResult, out: &mut Vec<Goal>) {
    out.push(Goal {
        goal: "guest qspinlock uncontended acquire+release within 1.2x of a host thread".into(),
        met: r.uncontended.as_ref().map(|u| u.guest_over_host.value <= 1.2),
        detail: match &r.uncontended {
            Some(u) => format!(
                "guest {} ns, host thread {} ns per acquisition (torture loop included); guest/host {}",
                u.guest_ns.show(2),
                u.host_ns.show(2),
                u.guest_over_host.show(3)
            ),
            None => "not measured".into(),
        },
    });
    out.push(Goal {
        goal: "host-thread baseline at least as fast as the guest, uncontended (guest/host >= 1)".into(),
        met: r.uncontended.as_ref().map(|u| u.guest_over_host.value >= 1.0),
        detail: match &r.uncontended {
            Some(u) => format!(
                "guest/host ns per acquisition {} (guest {} ns, host thread {} ns); the interval's low end {}",
                u.guest_over_host.show(3),
                u.guest_ns.show(1),
                u.host_ns.show(1),
                u.guest_over_host.ci95_lo.map(|l| format!("{l:.3}")).unwrap_or_else(|| "unbounded".into())
            ),
            None => "not measured".into(),
        },
    });
}
