//! `--kernel-tree`: the tree's `kernel-pv` measured beside `pv-upstream`,
//! uncontended and contended at 8 vCPUs on 2 host CPUs, in one run.

use super::stats::{pair_by_key, paired_ratio, ratio_of_means, Ratio};
use super::{not_ok, Goal, JobCtx, JobOutcome, Plan, Point, Samples};
use crate::config::RunConfig;
use crate::stats::Estimate;
use anyhow::Result;
use pvlock_abi::{Variant, Workload};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The kernel build and the Rust variant it is measured against.
pub const KERNEL_PAIR: [Variant; 2] = [Variant::PvUpstream, Variant::KernelPv];

/// One `Job::Kernel` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelSample {
    pub variant: Variant,
    pub contended: bool,
    pub ok: bool,
    pub acq_per_sec: f64,
    /// The repeat (the contended runs of one repeat are a pair).
    #[serde(default)]
    pub rep: u32,
}

/// `kernel-pv` of `plan.kernel_tree` against `pv-upstream`, in one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelBench {
    /// The tree's version (its Makefile).
    pub version: String,
    /// ns per uncontended acquire+release, torture loop included.
    pub uncontended_kernel_ns: Estimate,
    pub uncontended_rust_ns: Estimate,
    /// kernel-pv over pv-upstream, ns.
    pub uncontended_ratio: Ratio,
    /// Acquisitions/s at 8 vCPUs on 2 host CPUs.
    pub contended_kernel_aps: Option<Estimate>,
    pub contended_rust_aps: Option<Estimate>,
    /// kernel-pv over pv-upstream, paired by repeat.
    pub contended_ratio: Option<Ratio>,
}

/// One kernel-pair run: uncontended (1 vCPU, cs = think = 0) or the
/// throughput point at 8 vCPUs on 2 host CPUs.
pub fn run_kernel(cx: &JobCtx<'_>, variant: Variant, contended: bool, rep: u32, s: &mut Samples) -> Result<JobOutcome> {
    let plan = cx.plan;
    let point = Point { variant, vcpus: 8, host_cpus: 2 };
    let mut rc = if contended {
        let mut rc = plan.guest_config(&point, false, rep);
        if plan.pair_ms > 0 {
            rc.duration_ms = plan.pair_ms;
            rc.timeout_ms = plan.pair_ms + 60_000;
        }
        rc
    } else {
        let mut rc = RunConfig {
            name: "bench-uncontended".into(),
            workload: Workload::Torture,
            vcpus: 1,
            host_cpus: 1,
            seed: 1 + rep as u64,
            duration_ms: plan.uncontended_ms,
            ..Default::default()
        };
        rc.lock.variant = variant;
        rc.torture.cs_ns = 0;
        rc.torture.think_ns = 0;
        rc
    };
    rc.lock.kernel_tree = plan.kernel_tree.as_ref().map(PathBuf::from);
    let key = format!("variant={variant},contended={contended},rep={rep}");
    let rec = cx.vm(&rc, &key)?;
    let what = format!("{} {variant} rep {rep}", if contended { "contended 8v/2h" } else { "uncontended" });
    s.kernel.push(KernelSample {
        variant,
        contended,
        ok: rec.status.is_ok(),
        acq_per_sec: rec.acquisitions_per_sec,
        rep,
    });
    let line = if contended {
        format!("{what}: {:.0} acq/s [{}]", rec.acquisitions_per_sec, rec.status)
    } else {
        format!("{what}: {:.1} ns per acquisition [{}]", 1e9 / rec.acquisitions_per_sec, rec.status)
    };
    Ok((line, not_ok(&rec, &what)))
}

/// The kernel build's numbers beside pv-upstream's, if they were measured.
pub fn kernel_bench(plan: &Plan, s: &Samples) -> Option<KernelBench> {
    let tree = plan.kernel_tree.as_ref()?;
    let pick = |variant: Variant, contended: bool| -> Vec<f64> {
        s.kernel
            .iter()
            .filter(|k| k.ok && k.variant == variant && k.contended == contended && k.acq_per_sec > 0.0)
            .map(|k| if contended { k.acq_per_sec } else { 1e9 / k.acq_per_sec })
            .collect()
    };
    let (kn, rn) = (pick(Variant::KernelPv, false), pick(Variant::PvUpstream, false));
    let (kc, rc) = (pick(Variant::KernelPv, true), pick(Variant::PvUpstream, true));
    let by_rep = |variant: Variant| -> Vec<(u32, f64)> {
        s.kernel
            .iter()
            .filter(|k| k.ok && k.variant == variant && k.contended)
            .map(|k| (k.rep, k.acq_per_sec))
            .collect()
    };
    let version = crate::kernel::Tree::open(Path::new(tree)).map(|t| t.version).unwrap_or_else(|_| "?".into());
    Some(KernelBench {
        version,
        uncontended_kernel_ns: Estimate::of(&kn)?,
        uncontended_rust_ns: Estimate::of(&rn)?,
        uncontended_ratio: ratio_of_means(&kn, &rn)?,
        contended_kernel_aps: Estimate::of(&kc),
        contended_rust_aps: Estimate::of(&rc),
        contended_ratio: paired_ratio(&pair_by_key(&by_rep(Variant::KernelPv), &by_rep(Variant::PvUpstream))),
    })
}
/// The kernel build's goal (only with `--kernel-tree`).
pub fn goals(r: &super::BenchResult, out: &mut Vec<Goal>) {
    if r.plan.kernel_tree.is_none() {
        return;
    }
    out.push(Goal {
        goal: "kernel-pv uncontended acquire+release within 1.2x of pv-upstream in the guest".into(),
        met: r.kernel.as_ref().map(|k| k.uncontended_ratio.value <= 1.2),
        detail: match &r.kernel {
            Some(k) => format!(
                "Linux {}: kernel-pv {} ns, pv-upstream {} ns per acquisition (torture loop included); \
                 ratio {}; contended at 8 vCPUs / 2 host CPUs: kernel-pv {} acq/s, pv-upstream {} acq/s, \
                 kernel-pv / pv-upstream paired by repeat {}",
                k.version,
                k.uncontended_kernel_ns.show(1),
                k.uncontended_rust_ns.show(1),
                k.uncontended_ratio.show(3),
                k.contended_kernel_aps.map(|x| x.show(0)).unwrap_or_else(|| "-".into()),
                k.contended_rust_aps.map(|x| x.show(0)).unwrap_or_else(|| "-".into()),
                k.contended_ratio.map(|x| x.show(3)).unwrap_or_else(|| "-".into()),
            ),
            None => "not measured".into(),
        },
    });
}
