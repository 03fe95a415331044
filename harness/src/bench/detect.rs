//! Time to detect: each reproducer in random mode on its default variant,
//! over seeds.

use super::stats::median;
use super::{JobCtx, JobOutcome, Plan, Samples};
use crate::repro::{find, run_repro, Mode};
use anyhow::{Context, Result};
use pvlock_abi::Variant;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectSample {
    pub repro: String,
    pub variant: Variant,
    pub seed: u64,
    pub detected: bool,
    pub time_to_detect_s: Option<f64>,
}

/// Time-to-detect of one reproducer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectRow {
    pub repro: String,
    pub variant: Variant,
    pub seeds: usize,
    pub detected: usize,
    /// Median over the detecting seeds, s.
    pub median_s: Option<f64>,
    pub min_s: Option<f64>,
    pub max_s: Option<f64>,
    pub budget_s: f64,
}

/// One seed of reproducer `repro`.
pub fn run_detect(cx: &JobCtx<'_>, repro: &str, seed: u64, s: &mut Samples) -> Result<JobOutcome> {
    let r = find(repro)?;
    let res =
        run_repro(&r, r.default_variant, Mode::Random, 1, seed, cx.plan.detect_budget_ms, cx.elf, cx.stop, |_| {})?;
    let o = res.runs.first().context("run_repro returned no run")?;
    s.detect.push(DetectSample {
        repro: repro.to_string(),
        variant: r.default_variant,
        seed,
        detected: o.detected,
        time_to_detect_s: o.time_to_detect_s,
    });
    let line = format!(
        "detect {repro} on {} seed {seed}: {}",
        r.default_variant,
        o.time_to_detect_s.map(|t| format!("detected in {t:.2} s")).unwrap_or_else(|| "not detected".into())
    );
    Ok((line, None))
}

/// One row per reproducer that ran.
pub fn rows(plan: &Plan, s: &Samples) -> Vec<DetectRow> {
    let mut time_to_detect = Vec::new();
    for name in &plan.repros {
        let runs: Vec<&DetectSample> = s.detect.iter().filter(|d| &d.repro == name).collect();
        let Some(first) = runs.first() else { continue };
        let t: Vec<f64> = runs.iter().filter_map(|d| d.time_to_detect_s).collect();
        time_to_detect.push(DetectRow {
            repro: name.clone(),
            variant: first.variant,
            seeds: runs.len(),
            detected: runs.iter().filter(|d| d.detected).count(),
            median_s: median(&t),
            min_s: t.iter().copied().reduce(f64::min),
            max_s: t.iter().copied().reduce(f64::max),
            budget_s: plan.detect_budget_ms as f64 / 1e3,
        });
    }
    time_to_detect
}
