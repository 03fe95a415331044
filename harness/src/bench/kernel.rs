//! `--kernel-tree`: the tree's `kernel-pv` measured beside `pv-upstream`,
//! uncontended and contended at 8 vCPUs on 2 host CPUs, in one run; and
//! what disabled sites cost: the same tree's `kernel-pv` uncontended with
//! sites compiled in (all disabled) beside the build without them
//! (`lock.kernel_sites = false`), repeat for repeat in the same run.

use super::stats::{pair_by_key, paired_ratio, ratio_of_means, Ratio};
use super::{not_ok, Goal, Job, JobCtx, JobOutcome, Plan, Point, Samples};
use crate::config::RunConfig;
use crate::stats::Estimate;
use anyhow::Result;
use pvlock_abi::{Variant, Workload};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The kernel build and the Rust variant it is measured against.
pub const KERNEL_PAIR: [Variant; 2] = [Variant::PvUpstream, Variant::KernelPv];

/// The kernel jobs of `plan` (none without a tree): per repeat the
/// uncontended pair and the build without sites, adjacent so that load
/// drifts hit all three alike; then the contended pair.
pub fn jobs(plan: &Plan) -> Vec<Job> {
    let mut jobs = Vec::new();
    if plan.kernel_tree.is_none() {
        return jobs;
    }
    for rep in 0..plan.mech_repeats {
        for variant in KERNEL_PAIR {
            jobs.push(Job::Kernel { variant, contended: false, sites: true, rep });
        }
        jobs.push(Job::Kernel { variant: Variant::KernelPv, contended: false, sites: false, rep });
    }
    for rep in 0..plan.pair_repeats.max(1) {
        for variant in KERNEL_PAIR {
            jobs.push(Job::Kernel { variant, contended: true, sites: true, rep });
        }
        // On x86 the uncontended path passes no site (our fast path, the
        // tree's asm unlock): the slow paths are where disabled sites are.
        jobs.push(Job::Kernel { variant: Variant::KernelPv, contended: true, sites: false, rep });
    }
    jobs
}

/// One `Job::Kernel` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelSample {
    pub variant: Variant,
    pub contended: bool,
    /// A kernel build with sites compiled in (`lock.kernel_sites`); all
    /// disabled in these runs (no `preempt.sites`). Always true for
    /// `pv-upstream`.
    #[serde(default = "yes")]
    pub sites: bool,
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
    /// ns per uncontended acquire+release of the build without sites.
    #[serde(default)]
    pub uncontended_no_sites_ns: Option<Estimate>,
    /// Sites compiled in and disabled over no sites, ns (goal <= 1.1x).
    #[serde(default)]
    pub disabled_sites_ratio: Option<Ratio>,
    /// Acquisitions/s at 8 vCPUs on 2 host CPUs of the build without sites.
    #[serde(default)]
    pub contended_no_sites_aps: Option<Estimate>,
    /// Sites compiled in and disabled over no sites, contended acq/s (the
    /// slow paths pass the sites).
    #[serde(default)]
    pub contended_sites_ratio: Option<Ratio>,
}

fn yes() -> bool {
    true
}

/// One kernel-pair run: uncontended (1 vCPU, cs = think = 0) or the
/// throughput point at 8 vCPUs on 2 host CPUs.
pub fn run_kernel(
    cx: &JobCtx<'_>,
    variant: Variant,
    contended: bool,
    sites: bool,
    rep: u32,
    s: &mut Samples,
) -> Result<JobOutcome> {
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
    rc.lock.kernel_sites = sites;
    let key = format!("variant={variant},contended={contended},sites={sites},rep={rep}");
    let rec = cx.vm(&rc, &key)?;
    let what = format!(
        "{} {variant}{} rep {rep}",
        if contended { "contended 8v/2h" } else { "uncontended" },
        if sites || !variant.is_kernel() { "" } else { " (built without sites)" }
    );
    s.kernel.push(KernelSample {
        variant,
        contended,
        sites,
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
    let pick_built = |variant: Variant, contended: bool, sites: bool| -> Vec<f64> {
        s.kernel
            .iter()
            .filter(|k| k.ok && k.variant == variant && k.contended == contended && k.acq_per_sec > 0.0)
            .filter(|k| k.sites == sites)
            .map(|k| if contended { k.acq_per_sec } else { 1e9 / k.acq_per_sec })
            .collect()
    };
    let pick = |variant: Variant, contended: bool| pick_built(variant, contended, true);
    let (kn, rn) = (pick(Variant::KernelPv, false), pick(Variant::PvUpstream, false));
    let (kc, rc) = (pick(Variant::KernelPv, true), pick(Variant::PvUpstream, true));
    let by_rep = |variant: Variant, sites: bool| -> Vec<(u32, f64)> {
        s.kernel
            .iter()
            .filter(|k| k.ok && k.variant == variant && k.contended && k.sites == sites)
            .map(|k| (k.rep, k.acq_per_sec))
            .collect()
    };
    let bare = pick_built(Variant::KernelPv, false, false);
    let bare_c = pick_built(Variant::KernelPv, true, false);
    let version = crate::kernel::Tree::open(Path::new(tree)).map(|t| t.version).unwrap_or_else(|_| "?".into());
    Some(KernelBench {
        version,
        uncontended_kernel_ns: Estimate::of(&kn)?,
        uncontended_rust_ns: Estimate::of(&rn)?,
        uncontended_ratio: ratio_of_means(&kn, &rn)?,
        contended_kernel_aps: Estimate::of(&kc),
        contended_rust_aps: Estimate::of(&rc),
        contended_ratio: paired_ratio(&pair_by_key(
            &by_rep(Variant::KernelPv, true),
            &by_rep(Variant::PvUpstream, true),
        )),
        uncontended_no_sites_ns: Estimate::of(&bare),
        disabled_sites_ratio: ratio_of_means(&kn, &bare),
        contended_no_sites_aps: Estimate::of(&bare_c),
        contended_sites_ratio: paired_ratio(&pair_by_key(
            &by_rep(Variant::KernelPv, true),
            &by_rep(Variant::KernelPv, false),
        )),
    })
}
/// The kernel figures for report.md.
pub fn markdown(k: &KernelBench) -> String {
    let dash = || "-".to_string();
    format!(
        "Kernel build (`--kernel-tree`, Linux {}) beside pv-upstream, in this run:\n\n\
         | figure | kernel-pv | pv-upstream | kernel-pv / pv-upstream |\n|---|---|---|---|\n\
         | uncontended ns per acquisition (1 vCPU, cs = think = 0) | {} | {} | {} |\n\
         | contended acq/s, 8 vCPUs / 2 host CPUs (4x overcommit; ratio paired by repeat) | {} | {} | {} |\n\n\
         What disabled sites cost: the same tree's kernel-pv uncontended, built with every shared-memory \
         operation a site (none enabled) and built without sites (`lock.kernel_sites = false`), repeat for \
         repeat in this run:\n\n\
         | build | uncontended ns per acquisition | over no sites | contended acq/s, 8 vCPUs / 2 host CPUs | over no sites (paired by repeat) |\n\
         |---|---|---|---|---|\n\
         | sites compiled in, disabled | {} | {} | {} | {} |\n| without sites | {} | 1 | {} | 1 |\n\n\
         On x86 the uncontended path passes no site (our fast path and the tree's asm unlock), so the \
         uncontended pair runs the same instructions; the slow paths, where each disabled site is a byte \
         load, a test and a not-taken branch to an out-of-line call, are what the contended pair measures.\n\n",
        k.version,
        k.uncontended_kernel_ns.show(1),
        k.uncontended_rust_ns.show(1),
        k.uncontended_ratio.show(3),
        k.contended_kernel_aps.map(|x| x.show(0)).unwrap_or_else(dash),
        k.contended_rust_aps.map(|x| x.show(0)).unwrap_or_else(dash),
        k.contended_ratio.map(|x| x.show(2)).unwrap_or_else(dash),
        k.uncontended_kernel_ns.show(1),
        k.disabled_sites_ratio.as_ref().map(|x| x.show(3)).unwrap_or_else(dash),
        k.contended_kernel_aps.map(|x| x.show(0)).unwrap_or_else(dash),
        k.contended_sites_ratio.as_ref().map(|x| x.show(3)).unwrap_or_else(dash),
        k.uncontended_no_sites_ns.map(|x| x.show(1)).unwrap_or_else(dash),
        k.contended_no_sites_aps.map(|x| x.show(0)).unwrap_or_else(dash),
    )
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
    let k = r.kernel.as_ref();
    out.push(Goal {
        goal:
            "kernel-pv uncontended with sites compiled in and disabled within 1.1x of the same tree built without them"
                .into(),
        met: k.and_then(|k| k.disabled_sites_ratio.as_ref()).map(|q| q.value <= 1.1),
        detail: match k.and_then(|k| Some((k, k.disabled_sites_ratio.as_ref()?, k.uncontended_no_sites_ns?))) {
            Some((k, q, bare)) => format!(
                "Linux {}: sites disabled {} ns, no sites {} ns per acquisition; ratio {} (x86: no site on \
                 this path); contended acq/s sites disabled over no sites {}",
                k.version,
                k.uncontended_kernel_ns.show(1),
                bare.show(1),
                q.show(3),
                k.contended_sites_ratio.as_ref().map(|x| x.show(3)).unwrap_or_else(|| "-".into())
            ),
            None => "not measured".into(),
        },
    });
}
