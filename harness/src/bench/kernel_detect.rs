//! `pvlock bench --kernel-tree T`: time to detect each race on the kernel's
//! own code (the tree with the reproducer's bug patch from
//! `configs/kernel-bugs/`, random mode) beside the same reproducer on its
//! Rust variant, seed for seed with the same budget; and PCT against
//! uniform random choice at every site of `qspinlock_paravirt.h` on two of
//! those patches ([`SCHEDULERS`]). Written to `kernel_detect.json` and
//! `kernel_detect.md` next to `bench.json`.

use super::stats::median;
use super::Plan;
use crate::config::RunConfig;
use crate::repro::{
    bug_patch, catalog, config_for, kernel_form, run_repro_on, KernelTarget, Mode, Repro, ReproResult, Target,
};
use anyhow::Result;
use pvlock_abi::Variant;
use pvlock_vmm::{SiteMode, StopHandle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// Detection over the seeds of one side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The variant, or the kernel column (`kernel-pv 6.12.117 x86 +halted-head.patch`).
    pub on: String,
    pub seeds: usize,
    pub detected: usize,
    /// Over the detecting seeds, s.
    pub median_s: Option<f64>,
    pub min_s: Option<f64>,
    pub max_s: Option<f64>,
}

impl Detection {
    fn of(r: &ReproResult) -> Self {
        let t: Vec<f64> = r.runs.iter().filter_map(|o| o.time_to_detect_s).collect();
        Self::from_times(r.column.clone(), r.runs.len(), &t)
    }

    fn from_times(on: String, seeds: usize, t: &[f64]) -> Self {
        Self {
            on,
            seeds,
            detected: t.len(),
            median_s: median(t),
            min_s: t.iter().copied().reduce(f64::min),
            max_s: t.iter().copied().reduce(f64::max),
        }
    }

    fn show(&self) -> String {
        let t = match (self.median_s, self.min_s, self.max_s) {
            (Some(m), Some(a), Some(b)) => format!(", median {m:.2} s [{a:.2}, {b:.2}]"),
            _ => String::new(),
        };
        format!("{}/{}{t}", self.detected, self.seeds)
    }
}

/// One reproducer: its Rust variant and the kernel tree with its bug patch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelDetectRow {
    pub repro: String,
    pub rust: Option<Detection>,
    pub kernel: Detection,
    pub budget_s: f64,
}

/// Everything `kernel_detect.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelDetect {
    pub rows: Vec<KernelDetectRow>,
    /// PCT against uniform random at the same sites, per bug patch.
    pub schedulers: Vec<SchedulerRow>,
}

/// The reproducers measured: those with a kernel form that has a bug
/// patch and a Rust form (a variant of ours). Quick: R1 and the
/// `_Q_SLOW_VAL`-before-hash mutant only.
pub fn reproducers(quick: bool) -> Vec<Repro> {
    let both = |r: &Repro| !r.default_variant.is_kernel() && kernel_form(r.name).is_some_and(|f| f.bug_patch.is_some());
    catalog()
        .into_iter()
        .filter(both)
        .filter(|r| !quick || ["double-hash", "slow-before-hash"].contains(&r.name))
        .collect()
}

/// Per-seed budget of the detection rows, ms: with the plan's seeds the
/// full bench's share stays within two minutes even when nothing is
/// detected (4 reproducers, the kernel side of two shared, x 2 sides x 5
/// seeds x 3 s), seconds in `--quick`.
const DETECT_BUDGET_MS: u64 = 3000;

/// Every reproducer of [`reproducers`] on kernel code and on its Rust
/// variant, then the scheduler comparison.
pub fn measure(
    plan: &Plan,
    tree: &Path,
    elf: &[u8],
    stop: &StopHandle,
    mut progress: impl FnMut(&str),
) -> Result<KernelDetect> {
    let (seeds, budget) = (plan.seeds, DETECT_BUDGET_MS);
    let mut rows = Vec::new();
    // Reproducers whose kernel forms coincide (double-hash and halted-head:
    // one patch, one adaptation) share the kernel side's runs.
    let mut kernel_done: Vec<(String, Detection)> = Vec::new();
    for r in reproducers(plan.quick) {
        if stop.is_stopped() {
            break;
        }
        let Some(patch) = bug_patch(&r)? else { continue };
        let kernel = kernel_target(tree, &patch);
        let same = kernel_done.iter().find(|(k, _)| *k == kernel_key(&r, &kernel)).map(|(_, d)| d.clone());
        let k = match same {
            Some(d) => d,
            None => {
                let d =
                    Detection::of(&run_repro_on(&r, &kernel, Mode::Random, seeds, 1, budget, elf, stop, None, |_| {})?);
                kernel_done.push((kernel_key(&r, &kernel), d.clone()));
                d
            }
        };
        let rust = run_repro_on(
            &r,
            &Target::variant(r.default_variant),
            Mode::Random,
            seeds,
            1,
            budget,
            elf,
            stop,
            None,
            |_| {},
        )?;
        let row = KernelDetectRow {
            repro: r.name.to_string(),
            rust: Some(Detection::of(&rust)),
            kernel: k,
            budget_s: budget as f64 / 1e3,
        };
        progress(&format!(
            "detect {} on kernel code: {}; on {}: {}",
            row.repro,
            row.kernel.show(),
            r.default_variant,
            row.rust.as_ref().map(Detection::show).unwrap_or_else(|| "-".into())
        ));
        rows.push(row);
    }
    let mut schedulers = Vec::new();
    for s in &SCHEDULERS {
        if stop.is_stopped() {
            break;
        }
        let row = compare_schedulers(plan, s, tree, elf, stop)?;
        progress(&row.progress_line());
        schedulers.push(row);
    }
    Ok(KernelDetect { rows, schedulers })
}

fn kernel_target(tree: &Path, patch: &Path) -> Target {
    Target {
        variant: Variant::KernelPv,
        kernel: Some(KernelTarget { tree: tree.to_path_buf(), patches: vec![patch.to_path_buf()] }),
    }
}

/// What makes two reproducers' kernel runs the same: the config of seed 1.
fn kernel_key(r: &Repro, t: &Target) -> String {
    config_for(r, t, Mode::Random, 1, 1000)
        .map(|mut rc| {
            rc.name.clear();
            toml::to_string(&rc).unwrap_or_default()
        })
        .unwrap_or_else(|e| format!("{} {e}", r.name))
}

/// One PCT-vs-random comparison: a reproducer whose kernel form and bug
/// patch are used, with the stalls moved to every site of `SITES` (what a
/// user's unannotated patch gets).
#[derive(Clone, Copy, Debug)]
pub struct SchedulerCase {
    pub repro: &'static str,
    /// PCT's d and k.
    pub depth: u32,
    pub steps: u64,
}

/// The sites both schedulers choose from: every shared-memory operation
/// of the PV slow path's file.
pub const SITES: &str = "qspinlock_paravirt.h:*";

/// R1 (the halted-head patch) and `_Q_SLOW_VAL` before the hash insert.
pub const SCHEDULERS: [SchedulerCase; 2] = [
    SchedulerCase { repro: "halted-head", depth: 3, steps: 200 },
    SchedulerCase { repro: "slow-before-hash", depth: 3, steps: 200 },
];

/// How one scheduler did on one bug patch over its seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerRun {
    /// `pct d=3 k=200` or `random p=0.0025`.
    pub scheduler: String,
    pub detection: Detection,
    /// Site stalls over all seeds.
    pub stalls: u64,
    /// Distinct stall signatures over all seeds (the union of each run's
    /// set: a signature is the multiset of (vCPU, site) stalls of one
    /// trial of k site executions per vCPU).
    pub distinct_signatures: u64,
    /// Wall seconds of all runs (until detection or the budget).
    pub run_s: f64,
    /// `distinct_signatures / run_s`.
    pub distinct_per_s: f64,
    /// Some run logged more trials than the VMM keeps.
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerRow {
    pub repro: String,
    /// The kernel column (tree + patch).
    pub on: String,
    pub sites: String,
    pub budget_s: f64,
    pub stall_us: u64,
    pub pct: SchedulerRun,
    pub random: SchedulerRun,
}

impl SchedulerRow {
    fn progress_line(&self) -> String {
        format!(
            "schedulers on {} at {}: {}: {}, {:.0} distinct/s; {}: {}, {:.0} distinct/s",
            self.on,
            self.sites,
            self.pct.scheduler,
            self.pct.detection.show(),
            self.pct.distinct_per_s,
            self.random.scheduler,
            self.random.detection.show(),
            self.random.distinct_per_s
        )
    }
}

/// Seeds and per-seed budget of the scheduler comparison: 10 seeds in
/// full (k/10 is the figure asked for), 2 s each, so at most 80 s when
/// nothing is found.
fn scheduler_plan(plan: &Plan) -> (u64, u64) {
    if plan.quick {
        (2, 2000)
    } else {
        (10, 2000)
    }
}

/// Uniform random's per-execution probability that spends PCT's stall
/// budget: d - 1 stalls per trial, a trial being k executions on each of
/// n vCPUs.
pub fn matched_prob(depth: u32, steps: u64, vcpus: u32) -> f64 {
    (depth.saturating_sub(1)) as f64 / (steps as f64 * vcpus.max(1) as f64)
}

/// The two configs of `case` for one seed: the reproducer's kernel form
/// with its stalls moved to [`SITES`], once by PCT, once uniform random
/// at the matched probability (same k, so both group stalls alike).
pub fn scheduler_configs(
    r: &Repro,
    case: &SchedulerCase,
    target: &Target,
    seed: u64,
    budget_ms: u64,
) -> Result<[RunConfig; 2]> {
    let mut pct = config_for(r, target, Mode::Random, seed, budget_ms)?;
    pct.preempt.sites = vec![SITES.to_string()];
    pct.preempt.random_mean_interval_us = 0;
    pct.preempt.pct_steps = case.steps;
    let mut random = pct.clone();
    pct.preempt.site_mode = SiteMode::Pct;
    pct.preempt.pct_depth = case.depth;
    pct.preempt.site_prob = 0.0;
    random.preempt.site_mode = SiteMode::Random;
    random.preempt.site_prob = matched_prob(case.depth, case.steps, random.vcpus);
    Ok([pct, random])
}

fn compare_schedulers(
    plan: &Plan,
    case: &SchedulerCase,
    tree: &Path,
    elf: &[u8],
    stop: &StopHandle,
) -> Result<SchedulerRow> {
    let (seeds, budget) = scheduler_plan(plan);
    let r = crate::repro::find(case.repro)?;
    let patch = bug_patch(&r)?.ok_or_else(|| anyhow::anyhow!("`{}` has no kernel bug patch", r.name))?;
    let target = kernel_target(tree, &patch);
    let mut acc: [Acc; 2] = Default::default();
    let mut on = String::new();
    let mut stall_us = 0;
    for seed in 1..=seeds {
        for (side, rc) in scheduler_configs(&r, case, &target, seed, budget)?.into_iter().enumerate() {
            if stop.is_stopped() {
                break;
            }
            rc.validate().map_err(|e| anyhow::anyhow!("scheduler config {e}"))?;
            stall_us = rc.preempt.site_stall_us;
            let rec = crate::runner::run_one(&rc, &format!("scheduler={side},seed={seed}"), elf, stop)?;
            if on.is_empty() {
                on = rec.variant_label();
            }
            acc[side].add(&rec, (r.evidence)(&rec).is_some());
        }
    }
    let [p, q] = acc;
    let prob = matched_prob(case.depth, case.steps, 4);
    Ok(SchedulerRow {
        repro: r.name.to_string(),
        sites: SITES.to_string(),
        budget_s: budget as f64 / 1e3,
        stall_us,
        pct: p.finish(format!("pct d={} k={}", case.depth, case.steps), &on),
        random: q.finish(format!("random p={prob:.4} (k={})", case.steps), &on),
        on,
    })
}

/// One scheduler's runs so far.
#[derive(Default)]
struct Acc {
    times: Vec<f64>,
    seeds: usize,
    stalls: u64,
    signatures: BTreeSet<u64>,
    run_s: f64,
    truncated: bool,
}

impl Acc {
    fn add(&mut self, rec: &crate::record::Record, detected: bool) {
        self.seeds += 1;
        self.run_s += rec.duration_ms / 1e3;
        if detected {
            self.times.push(rec.duration_ms / 1e3);
        }
        if let Some(sc) = rec.kernel_sites.as_ref().and_then(|k| k.schedule.as_ref()) {
            self.stalls += sc.stalls;
            self.signatures.extend(sc.signatures.iter().copied());
            self.truncated |= sc.truncated;
        }
    }

    fn finish(self, scheduler: String, on: &str) -> SchedulerRun {
        let n = self.signatures.len() as u64;
        SchedulerRun {
            scheduler,
            detection: Detection::from_times(on.to_string(), self.seeds, &self.times),
            stalls: self.stalls,
            distinct_signatures: n,
            distinct_per_s: if self.run_s > 0.0 { n as f64 / self.run_s } else { 0.0 },
            run_s: self.run_s,
            truncated: self.truncated,
        }
    }
}

/// The rows as a table for people.
pub fn markdown(d: &KernelDetect) -> String {
    let mut s = String::from(
        "# Time to detect: kernel code vs the Rust variant\n\n\
         Random mode, the same seeds and budget per side. Each cell: seeds detected / seeds, \
         median time to detect [min, max] over the detecting seeds. Timing on a shared host is noisy.\n\n\
         | reproducer | kernel code (tree + bug patch) | Rust variant | budget |\n|---|---|---|---|\n",
    );
    for r in &d.rows {
        let rust = r.rust.as_ref().map(|d| format!("{}: {}", d.on, d.show())).unwrap_or_else(|| "-".into());
        s += &format!("| {} | {}: {} | {} | {:.1} s |\n", r.repro, r.kernel.on, r.kernel.show(), rust, r.budget_s);
    }
    if !d.schedulers.is_empty() {
        s += "\n# PCT vs uniform random at every site\n\n\
              Both schedulers choose among every site of the file named (no knowledge of where the bug is), \
              with the same stall length and the same expected number of stalls: PCT has d - 1 change points per \
              trial of k site executions per vCPU; random stalls each execution with p = (d - 1) / (n k). \
              Distinct interleavings per second: distinct stall signatures (the multiset of (vCPU, site) stalls \
              of one trial) over all seeds, divided by the seconds those runs took; a proxy that counts which \
              vCPU was preempted where, not the timing around it (docs/KERNEL-BUILDS.md, \"PCT\").\n\n\
              | bug (kernel form) | scheduler | detected, time to detect | stalls | distinct signatures | \
              distinct / s |\n|---|---|---|---|---|---|\n";
        for r in &d.schedulers {
            for run in [&r.pct, &r.random] {
                s += &format!(
                    "| {} ({}, {} us stalls, {:.0} s budget) | {} | {} | {} | {}{} | {:.0} |\n",
                    r.repro,
                    r.on,
                    r.stall_us,
                    r.budget_s,
                    run.scheduler,
                    run.detection.show(),
                    run.stalls,
                    run.distinct_signatures,
                    if run.truncated { " (truncated)" } else { "" },
                    run.distinct_per_s
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_measured_reproducer_has_both_forms_and_a_patch() {
        let full: Vec<&str> = reproducers(false).iter().map(|r| r.name).collect();
        for name in ["double-hash", "halted-head", "slow-before-hash", "no-store-mb"] {
            assert!(full.contains(&name), "{name} missing from {full:?}");
        }
        assert!(!full.contains(&"kick-hash-forgotten"), "no Rust form");
        assert!(reproducers(true).len() < full.len());
        for r in reproducers(false) {
            assert!(bug_patch(&r).unwrap().is_some(), "{}", r.name);
        }
    }

    #[test]
    fn the_schedulers_spend_the_same_stall_budget() {
        let tree = Path::new("/nonexistent");
        for case in &SCHEDULERS {
            let r = crate::repro::find(case.repro).unwrap();
            let patch = bug_patch(&r).unwrap().unwrap();
            let [pct, random] = scheduler_configs(&r, case, &kernel_target(tree, &patch), 3, 1000).unwrap();
            pct.validate().unwrap();
            random.validate().unwrap();
            assert_eq!((pct.preempt.site_mode, random.preempt.site_mode), (SiteMode::Pct, SiteMode::Random));
            assert_eq!(pct.preempt.sites, random.preempt.sites);
            assert_eq!(pct.preempt.site_stall_us, random.preempt.site_stall_us);
            assert_eq!(pct.seed, random.seed);
            // Expected stalls per trial of n * k executions: d - 1 both.
            let n_k = random.vcpus as f64 * case.steps as f64;
            assert!((random.preempt.site_prob * n_k - (case.depth - 1) as f64).abs() < 1e-9);
        }
    }
}
