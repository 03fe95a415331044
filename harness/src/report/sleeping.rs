//! The sleeping-lock section of a report: for `mutex-torture` runs, per
//! (mutex variant, vCPUs, host CPUs), the facts that answer "what does
//! `vcpu_is_preempted()` buy" (spinning on an owner whose vCPU was
//! preempted: wasted) and "what does hand-off cost/buy" (max wait vs
//! throughput), with two plots against overcommit. Pure functions of the
//! records, like the rest of the report.
//!
//! Rates are over ok runs (mean and 95% interval over repeats): wasted
//! spinning in ms of spinning per second of run per vCPU, max wait in ms,
//! sleeps / wakeups / hand-offs per acquisition, hand-off to pickup in us.
//!
//! Runs with a task time slice (`lock.mutex_slice_us`) are their own
//! groups: there a spinner that outlasts the slice sleeps, so the wait list
//! is where starvation happens and the hand-off is what bounds it (the
//! third plot). Without a slice a v4.9 task never sleeps (nothing else is
//! runnable on its CPU) and the hand-off has nobody to serve.

use super::plots::{svg, variant_color};
use super::table::{cell as e, lock_event as ev, OkRuns};
use crate::record::Record;
use crate::stats::Estimate;
use plotters::prelude::*;
use pvlock_abi::Workload;
use std::collections::BTreeMap;

/// Plot files of this section.
pub const FILES: &[&str] = &[
    "mutex_wasted_spin_vs_overcommit.svg",
    "mutex_max_wait_vs_overcommit.svg",
    "mutex_max_wait_sliced_vs_overcommit.svg",
];

/// One group of mutex runs.
#[derive(Debug, Clone)]
pub struct MutexRow {
    pub mutex: String,
    pub wait_lock: String,
    pub vcpus: u32,
    pub host_cpus: u32,
    /// `lock.mutex_slice_us` (0: no time slice).
    pub slice_us: u32,
    pub runs: usize,
    pub ok: usize,
    pub acq_per_sec: Option<Estimate>,
    /// ms of `mutex_spin_on_owner()` on a preempted owner, per s per vCPU.
    pub wasted_ms_per_s: Option<Estimate>,
    /// ms of owner spinning in all, per s per vCPU.
    pub spin_ms_per_s: Option<Estimate>,
    pub max_wait_ms: Option<Estimate>,
    pub sleeps_per_acq: Option<Estimate>,
    pub wakes_per_acq: Option<Estimate>,
    pub handoffs_per_acq: Option<Estimate>,
    /// Mean `__mutex_handoff()` to pickup, us.
    pub handoff_us: Option<Estimate>,
}

impl MutexRow {
    pub fn overcommit(&self) -> Option<f64> {
        (self.host_cpus > 0).then(|| self.vcpus as f64 / self.host_cpus as f64)
    }
}

/// The mutex rows of `records` (empty when there are no mutex runs).
pub fn rows(records: &[Record]) -> Vec<MutexRow> {
    let mut groups: BTreeMap<(u32, String, String, u32, u32), Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.config.workload == Workload::MutexTorture) {
        let lock = &r.config.lock;
        let k =
            (lock.mutex_slice_us, lock.mutex.name().to_string(), lock.variant.name().to_string(), r.vcpus, r.host_cpus);
        groups.entry(k).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((slice_us, mutex, wait_lock, vcpus, host_cpus), rs)| {
            let ok = OkRuns::of(&rs);
            let per = |f: &dyn Fn(&Record) -> Option<f64>| ok.estimate(f);
            // Cycles -> ms, per second of run per vCPU.
            let ms_per_s = |r: &Record, name: &str| {
                let secs = r.duration_ms / 1e3;
                (r.tsc_khz > 0 && secs > 0.0 && r.vcpus > 0)
                    .then(|| ev(r, name) / r.tsc_khz as f64 / secs / r.vcpus as f64)
            };
            let per_acq = |r: &Record, name: &str| (r.acquisitions > 0).then(|| ev(r, name) / r.acquisitions as f64);
            MutexRow {
                mutex,
                wait_lock,
                vcpus,
                host_cpus,
                slice_us,
                runs: rs.len(),
                ok: ok.ok.len(),
                acq_per_sec: per(&|r| Some(r.acquisitions_per_sec)),
                wasted_ms_per_s: per(&|r| ms_per_s(r, "mutex_spin_preempted_cycles")),
                spin_ms_per_s: per(&|r| ms_per_s(r, "mutex_spin_cycles")),
                max_wait_ms: per(&|r| Some(r.max_wait_ns as f64 / 1e6)),
                sleeps_per_acq: per(&|r| per_acq(r, "mutex_sleep")),
                wakes_per_acq: per(&|r| per_acq(r, "mutex_wake")),
                handoffs_per_acq: per(&|r| per_acq(r, "mutex_handoff")),
                handoff_us: per(&|r| {
                    let n = ev(r, "mutex_handoff");
                    (n > 0.0 && r.tsc_khz > 0).then(|| ev(r, "mutex_handoff_cycles") / n / r.tsc_khz as f64 * 1e3)
                }),
            }
        })
        .collect()
}

/// The markdown section ("" without mutex runs).
pub fn markdown(rows: &[MutexRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n## Sleeping locks (mutex-torture)\n\n\
         Per mutex variant and overcommit (vCPUs / host CPUs), ok runs, mean ± 95% interval over repeats. \
         *wasted spin*: ms per second per vCPU that `mutex_spin_on_owner()` spun while the owner's vCPU \
         was preempted (the VMM's flag, sampled every spin iteration, whatever the variant checks); \
         *max wait*: the longest `mutex_lock()` of any task; hand-off: `__mutex_handoff()` to pickup. \
         `mutex-v4.9` has no `vcpu_is_preempted()` and no hand-off; `mutex-v4.10`+ have both; \
         `mutex-v2.6.28` never spins. *slice*: `lock.mutex_slice_us`, a spin longer than this in one \
         `mutex_lock()` sees `need_resched()` and the task sleeps (as if another task were runnable on \
         its CPU); without one (`-`) a v4.9 task never sleeps and the hand-off serves nobody.\n\n",
    );
    out.push_str(
        "| mutex | wait_lock | vCPUs/host | slice us | ok/runs | acq/s | wasted spin ms/s | spin ms/s | max wait ms | sleeps/acq | wakeups/acq | hand-offs/acq | hand-off us |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {}/{} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.mutex,
            r.wait_lock,
            r.vcpus,
            r.host_cpus,
            if r.slice_us == 0 { "-".to_string() } else { r.slice_us.to_string() },
            r.ok,
            r.runs,
            e(r.acq_per_sec, 0),
            e(r.wasted_ms_per_s, 2),
            e(r.spin_ms_per_s, 2),
            e(r.max_wait_ms, 2),
            e(r.sleeps_per_acq, 3),
            e(r.wakes_per_acq, 3),
            e(r.handoffs_per_acq, 4),
            e(r.handoff_us, 1),
        ));
    }
    let files: Vec<String> = plots(rows).into_iter().map(|(f, _)| format!("`plots/{f}`")).collect();
    out.push_str(&format!("\nPlots: {}.\n", files.join(", ")));
    out
}

/// A plotted line: label, points (x, mean, 95% half-width).
type Series = (String, Vec<(f64, f64, f64)>);

/// A metric against overcommit, one line per mutex variant.
fn line_plot(rows: &[MutexRow], title: &str, y_desc: &str, f: impl Fn(&MutexRow) -> Option<Estimate>) -> String {
    let mut series: Vec<Series> = Vec::new();
    for r in rows {
        let (Some(x), Some(y)) = (r.overcommit(), f(r)) else { continue };
        let label = match r.slice_us {
            0 => format!("{} on {}", r.mutex, r.wait_lock),
            s => format!("{} on {}, slice {s} us", r.mutex, r.wait_lock),
        };
        let p = (x, y.mean, y.ci95.unwrap_or(0.0));
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some(s) => s.1.push(p),
            None => series.push((label, vec![p])),
        }
    }
    for s in &mut series {
        s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y, c) in series.iter().flat_map(|s| s.1.iter()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y + c);
    }
    let no_data = series.is_empty();
    if no_data {
        (x0, x1, y1) = (0.0, 1.0, 1.0);
    }
    let pad = ((x1 - x0) * 0.05).max(0.25);
    let (x0, x1) = (x0 - pad, x1 + pad);
    let y1 = if y1 > 0.0 { y1 * 1.15 } else { 1.0 };
    svg((800, 500), title, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(if no_data { format!("{title} (no data)") } else { title.to_string() }, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, 0.0..y1)?;
        chart.configure_mesh().x_desc("vCPUs per host CPU").y_desc(y_desc).draw()?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let c = variant_color(i);
            chart
                .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled())))?;
            chart.draw_series(
                pts.iter().filter(|p| p.2 > 0.0).map(|p| PathElement::new(vec![(p.0, p.1 - p.2), (p.0, p.1 + p.2)], c)),
            )?;
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}

/// The section's plots (none without mutex runs).
pub fn plots(rows: &[MutexRow]) -> Vec<(String, String)> {
    if rows.is_empty() {
        return Vec::new();
    }
    // The first two plots: the runs without a time slice (all runs if
    // every group has one); the third: those with one.
    let unsliced: Vec<MutexRow> = rows.iter().filter(|r| r.slice_us == 0).cloned().collect();
    let sliced: Vec<MutexRow> = rows.iter().filter(|r| r.slice_us != 0).cloned().collect();
    let base = if unsliced.is_empty() { rows } else { &unsliced[..] };
    let mut out = vec![
        (
            FILES[0].into(),
            line_plot(base, "Spinning on a preempted mutex owner", "wasted spin, ms per s per vCPU (bars: 95%)", |r| {
                r.wasted_ms_per_s
            }),
        ),
        (FILES[1].into(), line_plot(base, "Longest mutex_lock() wait", "max wait, ms (bars: 95%)", |r| r.max_wait_ms)),
    ];
    if !sliced.is_empty() && !unsliced.is_empty() {
        let title = "Longest mutex_lock() wait, spinners sleep after their time slice";
        out.push((FILES[2].into(), line_plot(&sliced, title, "max wait, ms (bars: 95%)", |r| r.max_wait_ms)));
    }
    out
}
