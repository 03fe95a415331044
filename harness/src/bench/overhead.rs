//! What the torture's own bookkeeping costs: one uncontended vCPU (1 host
//! CPU) at the settings (cs 200 ns, think 1000 ns) runs, back to
//! back in each repeat, the torture with its default trace ring, the
//! torture with tracing off, the dedicated loop around the same lock
//! (`lock-loop`: critical section and think time, no checks), the loop
//! around a plain test-and-set lock, and the loop around nothing
//! (`empty-loop`). Goal: torture >= 0.95x the dedicated loop.

use super::stats::{ratio_of_means, Ratio};
use super::{not_ok, BenchResult, Goal, JobCtx, JobOutcome, Samples};
use crate::config::RunConfig;
use crate::stats::Estimate;
use anyhow::Result;
use pvlock_abi::{Variant, Workload};
use serde::{Deserialize, Serialize};

/// One side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoopKind {
    /// The torture, default trace ring.
    Torture,
    /// The torture with `trace_entries = 0`.
    TortureNoTrace,
    /// `lock-loop` around the measured lock.
    LockLoop,
    /// `lock-loop` around a test-and-set lock.
    PlainLock,
    /// `empty-loop`.
    NoLock,
}

impl LoopKind {
    pub const ALL: [LoopKind; 5] =
        [LoopKind::Torture, LoopKind::TortureNoTrace, LoopKind::LockLoop, LoopKind::PlainLock, LoopKind::NoLock];
    pub fn name(self) -> &'static str {
        match self {
            LoopKind::Torture => "torture (trace ring on)",
            LoopKind::TortureNoTrace => "torture (trace ring off)",
            LoopKind::LockLoop => "dedicated loop, same lock",
            LoopKind::PlainLock => "dedicated loop, test-and-set lock",
            LoopKind::NoLock => "dedicated loop, no lock",
        }
    }
}

/// The lock the overhead runs measure.
pub const OVERHEAD_VARIANT: Variant = Variant::Qspinlock;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverheadSample {
    pub kind: LoopKind,
    pub ok: bool,
    pub acq_per_sec: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverheadRow {
    pub kind: LoopKind,
    /// ns per iteration (acquisition), over repeats.
    pub ns_per_iter: Option<Estimate>,
    pub acq_per_sec: Option<Estimate>,
    /// acq/s over the dedicated loop around the same lock.
    pub over_lock_loop: Option<Ratio>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overhead {
    pub variant: Variant,
    pub rows: Vec<OverheadRow>,
    /// Torture (default) acq/s over the dedicated loop's: the goal's figure.
    pub torture_over_loop: Option<Ratio>,
    /// Torture without tracing over torture with: what the trace ring costs.
    pub no_trace_over_trace: Option<Ratio>,
}

pub fn run_overhead(cx: &JobCtx<'_>, kind: LoopKind, rep: u32, s: &mut Samples) -> Result<JobOutcome> {
    let plan = cx.plan;
    let workload = match kind {
        LoopKind::Torture | LoopKind::TortureNoTrace => Workload::Torture,
        LoopKind::LockLoop | LoopKind::PlainLock => Workload::LockLoop,
        LoopKind::NoLock => Workload::EmptyLoop,
    };
    let mut rc = RunConfig {
        name: "bench-overhead".into(),
        workload,
        vcpus: 1,
        host_cpus: 1,
        seed: 1 + rep as u64,
        duration_ms: plan.overhead_ms,
        ..Default::default()
    };
    rc.lock.variant = if kind == LoopKind::PlainLock { Variant::Tas } else { OVERHEAD_VARIANT };
    rc.torture.locks = 1;
    rc.torture.cs_ns = plan.overhead_cs_ns;
    rc.torture.think_ns = plan.overhead_think_ns;
    if kind == LoopKind::TortureNoTrace {
        rc.trace_entries = 0;
    }
    let rec = cx.vm(&rc, &format!("kind={kind:?},rep={rep}"))?;
    let what = format!("overhead {} rep {rep}", kind.name());
    let line = format!(
        "{what}: {:.0} acq/s, {:.1} ns per iteration [{}]",
        rec.acquisitions_per_sec,
        1e9 / rec.acquisitions_per_sec,
        rec.status
    );
    s.overhead.push(OverheadSample { kind, ok: rec.status.is_ok(), acq_per_sec: rec.acquisitions_per_sec });
    Ok((line, not_ok(&rec, &what)))
}

pub fn summary(s: &Samples) -> Option<Overhead> {
    if s.overhead.is_empty() {
        return None;
    }
    let acq = |k: LoopKind| -> Vec<f64> {
        s.overhead.iter().filter(|o| o.ok && o.kind == k && o.acq_per_sec > 0.0).map(|o| o.acq_per_sec).collect()
    };
    let base = acq(LoopKind::LockLoop);
    let rows = LoopKind::ALL
        .iter()
        .map(|&kind| {
            let a = acq(kind);
            OverheadRow {
                kind,
                ns_per_iter: Estimate::of(&a.iter().map(|x| 1e9 / x).collect::<Vec<_>>()),
                acq_per_sec: Estimate::of(&a),
                over_lock_loop: ratio_of_means(&a, &base),
            }
        })
        .collect();
    Some(Overhead {
        variant: OVERHEAD_VARIANT,
        rows,
        torture_over_loop: ratio_of_means(&acq(LoopKind::Torture), &base),
        no_trace_over_trace: ratio_of_means(&acq(LoopKind::TortureNoTrace), &acq(LoopKind::Torture)),
    })
}

pub fn goals(r: &BenchResult, out: &mut Vec<Goal>) {
    let Some(o) = &r.overhead else { return };
    let ns = |k: LoopKind| {
        o.rows.iter().find(|x| x.kind == k).and_then(|x| x.ns_per_iter).map(|x| x.show(1)).unwrap_or_else(|| "-".into())
    };
    out.push(Goal {
        goal: "torture bookkeeping <= 5%: torture >= 0.95x the dedicated loop (1 vCPU, uncontended)".into(),
        met: o.torture_over_loop.map(|x| x.value >= 0.95),
        detail: format!(
            "{} at cs {} ns, think {} ns: torture {} ns per acquisition, trace ring off {} ns, dedicated loop {} ns, \
             test-and-set loop {} ns, no lock {} ns; torture / loop {}; trace off / on {}",
            o.variant,
            r.plan.overhead_cs_ns,
            r.plan.overhead_think_ns,
            ns(LoopKind::Torture),
            ns(LoopKind::TortureNoTrace),
            ns(LoopKind::LockLoop),
            ns(LoopKind::PlainLock),
            ns(LoopKind::NoLock),
            o.torture_over_loop.map(|x| x.show(3)).unwrap_or_else(|| "-".into()),
            o.no_trace_over_trace.map(|x| x.show(3)).unwrap_or_else(|| "-".into()),
        ),
    });
}
