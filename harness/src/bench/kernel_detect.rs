//! `pvlock bench --kernel-tree T`: time to detect each race on the kernel's
//! own code (the tree with the reproducer's bug patch from
//! `configs/kernel-bugs/`, random mode) beside the same reproducer on its
//! Rust variant, seed for seed with the same budget. Written to
//! `kernel_detect.json` and `kernel_detect.md` next to `bench.json`.

use super::stats::median;
use super::Plan;
use crate::repro::{bug_patch, catalog, kernel_form, run_repro_on, KernelTarget, Mode, ReproResult, Target};
use anyhow::Result;
use pvlock_abi::Variant;
use pvlock_vmm::StopHandle;
use serde::{Deserialize, Serialize};
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
        Self {
            on: r.column.clone(),
            seeds: r.runs.len(),
            detected: r.detected(),
            median_s: median(&t),
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

/// Every reproducer of `plan.repros` whose kernel form has a bug patch,
/// `plan.seeds` seeds each side.
pub fn measure(
    plan: &Plan,
    tree: &Path,
    elf: &[u8],
    stop: &StopHandle,
    mut progress: impl FnMut(&str),
) -> Result<Vec<KernelDetectRow>> {
    let mut rows = Vec::new();
    for r in catalog().into_iter().filter(|r| plan.repros.iter().any(|n| n == r.name)) {
        if stop.is_stopped() {
            break;
        }
        let Some(patch) = kernel_form(r.name).and_then(|_| bug_patch(&r).ok().flatten()) else { continue };
        let kernel = Target {
            variant: Variant::KernelPv,
            kernel: Some(KernelTarget { tree: tree.to_path_buf(), patches: vec![patch] }),
        };
        let budget = plan.detect_budget_ms;
        let k = run_repro_on(&r, &kernel, Mode::Random, plan.seeds, 1, budget, elf, stop, None, |_| {})?;
        let rust = (!r.default_variant.is_kernel())
            .then(|| {
                run_repro_on(
                    &r,
                    &Target::variant(r.default_variant),
                    Mode::Random,
                    plan.seeds,
                    1,
                    budget,
                    elf,
                    stop,
                    None,
                    |_| {},
                )
            })
            .transpose()?;
        let row = KernelDetectRow {
            repro: r.name.to_string(),
            rust: rust.as_ref().map(Detection::of),
            kernel: Detection::of(&k),
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
    Ok(rows)
}

/// The rows as a table for people.
pub fn markdown(rows: &[KernelDetectRow]) -> String {
    let mut s = String::from(
        "# Time to detect: kernel code vs the Rust variant\n\n\
         Random mode, the same seeds and budget per side. Each cell: seeds detected / seeds, \
         median time to detect [min, max] over the detecting seeds. Timing on a shared host is noisy.\n\n\
         | reproducer | kernel code (tree + bug patch) | Rust variant | budget |\n|---|---|---|---|\n",
    );
    for r in rows {
        let rust = r.rust.as_ref().map(|d| format!("{}: {}", d.on, d.show())).unwrap_or_else(|| "-".into());
        s += &format!("| {} | {}: {} | {} | {:.1} s |\n", r.repro, r.kernel.on, r.kernel.show(), rust, r.budget_s);
    }
    s
}
