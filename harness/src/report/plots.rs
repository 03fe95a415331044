//! SVG plots with `plotters` (SVG backend, no font files: text is emitted
//! as `<text>` elements and laid out with plotters' built-in estimate).
//! Each plot is a pure function of the group summaries (and, for latency,
//! of the records' per-vCPU percentiles).
//!
//! Made to be read: an axis whose values span more than [`LOG_SPAN`] is
//! logarithmic (throughput of stealing and non-stealing locks differs by
//! two orders of magnitude), times are ticked in ns/µs/ms/s and counts in
//! k/M, legends sit beside the plot (never over data), and the outcome
//! plot is drawn only when some run was not ok. Every plot is total: any
//! input, finite or not, gives an SVG, and values that cannot be drawn
//! (NaN, infinite) are left out and counted in the plot's note; if nothing
//! is left the SVG says "not plotted" and why.

use super::summary::{GroupSummary, STATUSES};
use crate::record::Record;
use plotters::prelude::*;
use pvlock_vmm::RunStatus;

/// File names under `plots/`, in the order [`render`] returns them
/// (`outcomes.svg` only when some run was not ok).
pub const FILES: &[&str] =
    &["throughput_vs_overcommit.svg", "latency.svg", "kicks_per_acquisition.svg", "outcomes.svg"];

const PALETTE: &[(u8, u8, u8)] = &[
    (0x1f, 0x77, 0xb4),
    (0xff, 0x7f, 0x0e),
    (0x2c, 0xa0, 0x2c),
    (0xd6, 0x27, 0x28),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
    (0xe3, 0x77, 0xc2),
    (0x7f, 0x7f, 0x7f),
    (0xbc, 0xbd, 0x22),
    (0x17, 0xbe, 0xcf),
];

/// The colour of the `i`-th variant (in order of first appearance).
pub fn variant_color(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// [`variant_color`] as SVG writes it, `#RRGGBB`.
pub fn variant_color_hex(i: usize) -> String {
    let c = variant_color(i);
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

fn status_color(status: RunStatus) -> RGBColor {
    match status {
        RunStatus::Ok => RGBColor(0x2c, 0xa0, 0x2c),
        RunStatus::Hang => RGBColor(0xff, 0x7f, 0x0e),
        RunStatus::GuestCrash => RGBColor(0xd6, 0x27, 0x28),
        RunStatus::Failed => RGBColor(0x94, 0x67, 0xbd),
        RunStatus::Aborted => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

pub(crate) type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Runs a drawing function on an SVG string; a drawing error becomes an
/// SVG that says so (a report is never lost to a plot).
pub(crate) fn svg(
    size: (u32, u32),
    title: &str,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> PlotResult,
) -> String {
    let mut buf = String::new();
    let err = {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        let r = root
            .fill(&WHITE)
            .map_err(|e| e.into())
            .and_then(|_| draw(&root))
            .and_then(|_| root.present().map_err(|e| e.into()));
        r.err().map(|e| e.to_string())
    };
    match err {
        None => buf,
        Some(e) => format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\"><text x=\"10\" y=\"20\">{}: cannot draw: {}</text></svg>\n",
            size.0,
            size.1,
            xml_escape(title),
            xml_escape(&e)
        ),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Ratio of largest to smallest positive value from which an axis is
/// logarithmic: beyond it, a linear axis flattens the small values to zero.
pub const LOG_SPAN: f64 = 20.0;

/// A time in nanoseconds as a person reads it: `850 ns`, `1.5 µs`, `20 µs`,
/// `3 ms`, `1.2 s`.
pub fn fmt_ns(v: f64) -> String {
    let a = v.abs();
    let (x, unit) = if a < 1e3 {
        (v, "ns")
    } else if a < 1e6 {
        (v / 1e3, "µs")
    } else if a < 1e9 {
        (v / 1e6, "ms")
    } else {
        (v / 1e9, "s")
    };
    format!("{} {unit}", trim_number(x))
}

/// A count or rate with k/M/G: `950`, `2k`, `15k`, `1.2M`.
pub fn fmt_count(v: f64) -> String {
    let a = v.abs();
    let (x, unit) = if a < 1e3 {
        (v, "")
    } else if a < 1e6 {
        (v / 1e3, "k")
    } else if a < 1e9 {
        (v / 1e6, "M")
    } else if a < 1e12 {
        (v / 1e9, "G")
    } else {
        return format!("{v:.1e}");
    };
    format!("{}{unit}", trim_number(x))
}

/// Two significant digits at most for small mantissas, none for large.
fn trim_number(x: f64) -> String {
    let a = x.abs();
    let s = if a == 0.0 {
        "0".to_string()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `x` with `digits` significant digits, without trailing zeros:
/// `0.0031`, `0.13`, `12`.
pub fn significant(x: f64, digits: i32) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (digits - 1 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// How a value axis is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Axis {
    /// Linear from `0.0` (or the lowest value, if negative) to `.1`.
    Linear(f64, f64),
    /// Logarithmic over `[.0, .1]`, both positive.
    Log(f64, f64),
}

impl Axis {
    /// The axis for `values` (non-finite ones are ignored): logarithmic
    /// when the positive values span more than [`LOG_SPAN`] and none is
    /// negative. `Err` says why nothing can be drawn.
    pub fn for_values(values: impl IntoIterator<Item = f64>) -> Result<Self, String> {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Err("no finite values".into());
        }
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min_pos = v.iter().copied().filter(|x| *x > 0.0).fold(f64::INFINITY, f64::min);
        // Headroom without leaving the finite range (a value near f64::MAX
        // must still give a finite axis).
        let grow = |x: f64, f: f64| if (x * f).is_finite() { x * f } else { f64::MAX.copysign(x) };
        if lo >= 0.0 && min_pos.is_finite() && hi / min_pos > LOG_SPAN {
            return Ok(Axis::Log(min_pos / 2.0, grow(hi, 2.0)));
        }
        let top = if hi > 0.0 { grow(hi, 1.15) } else { 1.0 };
        let bottom = if lo < 0.0 { grow(lo, 1.15) } else { 0.0 };
        if !(top - bottom).is_finite() {
            return Err(format!("values from {lo:e} to {hi:e} span more than a float can hold"));
        }
        Ok(Axis::Linear(bottom, top))
    }

    fn is_log(&self) -> bool {
        matches!(self, Axis::Log(..))
    }

    /// The lowest drawable value (bars start here).
    fn floor(&self) -> f64 {
        match *self {
            Axis::Linear(lo, _) => lo,
            Axis::Log(lo, _) => lo,
        }
    }
}

/// An SVG that says why a plot is missing (still a valid SVG).
fn not_plotted(size: (u32, u32), title: &str, why: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\"><rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/><text x=\"20\" y=\"40\" font-family=\"sans-serif\" font-size=\"18\">{}</text><text x=\"20\" \
         y=\"70\" font-family=\"sans-serif\" font-size=\"15\">not plotted: {}</text></svg>\n",
        size.0,
        size.1,
        xml_escape(title),
        xml_escape(why)
    )
}

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
enum Mark {
    Line,
    Dashed,
    Box,
}

/// A legend in its own area beside the plot: a mark and a label per entry,
/// top to bottom; the notes (what was left out) below.
fn side_legend(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    entries: &[(String, RGBColor, Mark)],
    notes: &[String],
) -> PlotResult {
    let font = ("sans-serif", 13).into_font();
    let mut y = 50;
    for (label, c, mark) in entries {
        match mark {
            Mark::Line => area.draw(&PathElement::new(vec![(8, y), (30, y)], c.stroke_width(2)))?,
            Mark::Dashed => {
                for x in [8, 17, 26] {
                    area.draw(&PathElement::new(vec![(x, y), (x + 5, y)], c.stroke_width(2)))?;
                }
            }
            Mark::Box => area.draw(&Rectangle::new([(10, y - 5), (26, y + 5)], c.filled()))?,
        }
        area.draw(&Text::new(label.as_str(), (36, y - 7), font.clone()))?;
        y += 20;
    }
    for n in notes {
        y += 10;
        area.draw(&Text::new(n.as_str(), (8, y - 7), ("sans-serif", 11).into_font().color(&RGBColor(0x80, 0, 0))))?;
        y += 10;
    }
    Ok(())
}

const LEGEND_WIDTH: u32 = 200;

/// Short category label of a group: `pv-v4.8 8/2` (+ other keys).
fn short_label(s: &GroupSummary) -> String {
    let mut l = format!("{} {}/{}", s.key.variant, s.key.vcpus, s.key.host_cpus);
    if !s.key.other.is_empty() {
        l.push(' ');
        l.push_str(&s.key.other);
    }
    l
}

fn variant_index(variants: &[String], v: &str) -> usize {
    variants.iter().position(|x| x == v).unwrap_or(0)
}

/// Whether any group had a run that was not ok.
pub fn anything_failed(sums: &[GroupSummary]) -> bool {
    sums.iter().any(|s| s.not_ok() > 0)
}

/// Renders every plot: (file name, SVG). The outcome plot only when some
/// run was not ok (a wall of equal green bars answers nothing).
pub fn render(records: &[Record], sums: &[GroupSummary], variants: &[String]) -> Vec<(String, String)> {
    let mut out = vec![
        (FILES[0].into(), throughput(sums, variants)),
        (FILES[1].into(), latency(records, variants)),
        (FILES[2].into(), kicks(sums, variants)),
    ];
    if sums.is_empty() || anything_failed(sums) {
        out.push((FILES[3].into(), outcomes(sums)));
    }
    out
}

/// A throughput line: label, colour index, points (x, mean, 95% half-width).
type ThroughputSeries = (String, usize, Vec<(f64, f64, f64)>);

/// Draws `$body` on a chart whose y axis is `$axis` (linear or log): the
/// two coordinate types differ, the drawing code does not.
macro_rules! with_y_axis {
    ($axis:expr, $builder:expr, $x:expr, |$chart:ident| $body:block) => {
        match $axis {
            Axis::Linear(lo, hi) => {
                let mut $chart = $builder.build_cartesian_2d($x, lo..hi)?;
                $body
            }
            Axis::Log(lo, hi) => {
                let mut $chart = $builder.build_cartesian_2d($x, (lo..hi).log_scale())?;
                $body
            }
        }
    };
}

/// (a) Mean acquisitions/s (ok runs) against vCPUs per host CPU, one line
/// per variant (per variant and other key, if other keys vary), with the
/// 95% interval as a vertical bar; a log axis when rates span decades.
pub fn throughput(sums: &[GroupSummary], variants: &[String]) -> String {
    let mut series: Vec<ThroughputSeries> = Vec::new();
    let many_others = {
        let mut o: Vec<(&str, &str)> = sums.iter().map(|s| (s.key.name.as_str(), s.key.other.as_str())).collect();
        o.sort_unstable();
        o.dedup();
        o.len() > 1
    };
    let mut dropped = 0usize;
    for s in sums {
        let (Some(x), Some(e)) = (s.key.overcommit(), s.acq_per_sec) else {
            continue;
        };
        if !x.is_finite() || !e.mean.is_finite() {
            dropped += 1;
            continue;
        }
        let label = if many_others {
            format!("{} [{} {}]", s.key.variant, s.key.name, s.key.other)
        } else {
            s.key.variant.clone()
        };
        let ci = e.ci95.filter(|c| c.is_finite() && *c >= 0.0).unwrap_or(0.0);
        let p = (x, e.mean, ci);
        match series.iter_mut().find(|(l, _, _)| *l == label) {
            Some(se) => se.2.push(p),
            None => series.push((label, variant_index(variants, &s.key.variant), vec![p])),
        }
    }
    for s in &mut series {
        s.2.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let title = "Throughput vs overcommit";
    let size = (800 + LEGEND_WIDTH, 500);
    if sums.is_empty() || (series.is_empty() && dropped == 0) {
        return not_plotted(size, title, "no data: no group has an ok run with a rate");
    }
    let pts: Vec<(f64, f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
    let axis = match Axis::for_values(pts.iter().flat_map(|p| [p.1, p.1 + p.2])) {
        Ok(a) => a,
        Err(why) => {
            return not_plotted(
                size,
                title,
                &format!("{why}: the mean rate of {dropped} group(s) is not finite (NaN, or overflowed)"),
            )
        }
    };
    let x0 = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x1 = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((x1 - x0) * 0.08).max(0.25);
    let (x0, x1) = (x0 - pad, x1 + pad);
    let floor = axis.floor();
    let mut notes = Vec::new();
    if dropped > 0 {
        notes.push(format!("{dropped} group(s) left out: rate not finite"));
    }
    let legend: Vec<(String, RGBColor, Mark)> =
        series.iter().map(|(l, ci, _)| (l.clone(), variant_color(*ci), Mark::Line)).collect();
    let y_desc = if axis.is_log() {
        "acquisitions/s, mean of ok runs (log; bars: 95% interval)"
    } else {
        "acquisitions/s, mean of ok runs (bars: 95% interval)"
    };
    svg(size, title, |root| {
        let (plot, side) = root.split_horizontally(size.0 - LEGEND_WIDTH);
        let mut builder = ChartBuilder::on(&plot);
        builder.caption(title, ("sans-serif", 20)).margin(15).x_label_area_size(45).y_label_area_size(70);
        with_y_axis!(axis, builder, x0..x1, |chart| {
            chart
                .configure_mesh()
                .x_desc("vCPUs per host CPU (pinned runs)")
                .y_desc(y_desc)
                .x_label_formatter(&|v| format!("{}x", trim_number(*v)))
                .y_label_formatter(&|v| fmt_count(*v))
                .draw()?;
            for (_, ci, pts) in &series {
                let c = variant_color(*ci);
                chart.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2)))?;
                chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled())))?;
                chart.draw_series(
                    pts.iter()
                        .filter(|p| p.2 > 0.0)
                        .map(|p| PathElement::new(vec![(p.0, (p.1 - p.2).max(floor)), (p.0, p.1 + p.2)], c)),
                )?;
            }
        });
        side_legend(&side, &legend, &notes)
    })
}

/// Per-vCPU (p50, p99) latencies, ns, of the ok runs among `records`.
fn per_vcpu_latencies<'a>(records: impl Iterator<Item = &'a Record>) -> (Vec<f64>, Vec<f64>) {
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for r in records.filter(|r| r.status.is_ok()) {
        for v in r.per_vcpu.iter().filter(|v| v.latency_ns.count > 0) {
            p50.push(v.latency_ns.p50 as f64);
            p99.push(v.latency_ns.p99 as f64);
        }
    }
    p50.sort_by(f64::total_cmp);
    p99.sort_by(f64::total_cmp);
    (p50, p99)
}

/// Step points of an empirical CDF of sorted values.
fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    let mut out = Vec::new();
    for (i, &v) in sorted.iter().enumerate() {
        out.push((v, i as f64 / n));
        out.push((v, (i + 1) as f64 / n));
    }
    out
}

/// One panel of the latency plot: a setting, and per variant (colour
/// index, name, sorted per-vCPU p50s, sorted per-vCPU p99s).
type LatencyPanel<'a> = (String, Vec<(usize, &'a str, Vec<f64>, Vec<f64>)>);

/// (b) The guest's histograms are reduced to percentiles per vCPU, so this
/// is not the latency CDF itself: it is, per variant, the distribution
/// over vCPUs (of all ok runs) of each vCPU's p50 (solid) and p99 (dashed),
/// one panel per setting (pooling settings would mix distributions).
pub fn latency(records: &[Record], variants: &[String]) -> String {
    let groups = super::load::group(records);
    let many_names = groups.iter().any(|g| g.key.name != groups[0].key.name);
    let panel_of = |k: &super::load::GroupKey| {
        if many_names {
            format!("{}: {}", k.name, k.setting())
        } else {
            k.setting()
        }
    };
    let mut panels: Vec<LatencyPanel<'_>> = Vec::new();
    for g in &groups {
        let label = panel_of(&g.key);
        if !panels.iter().any(|p| p.0 == label) {
            panels.push((label, Vec::new()));
        }
    }
    for (label, series) in &mut panels {
        for (i, v) in variants.iter().enumerate() {
            let recs = groups
                .iter()
                .filter(|g| &g.key.variant == v && &panel_of(&g.key) == label)
                .flat_map(|g| g.records.iter().copied());
            let (a, b) = per_vcpu_latencies(recs);
            if !a.is_empty() {
                series.push((i, v.as_str(), a, b));
            }
        }
    }
    panels.retain(|p| !p.1.is_empty());
    let title = "Acquisition latency: CDF over vCPUs of per-vCPU p50 (solid) and p99 (dashed), ok runs";
    if panels.is_empty() {
        return not_plotted((800 + LEGEND_WIDTH, 500), title, "no data: no ok run has per-vCPU latencies");
    }
    // A percentile of 0 ns (a bucket's lower edge) sits at the axis floor.
    let (mut lo, mut hi) = (f64::MAX, 1.0f64);
    for v in panels.iter().flat_map(|p| p.1.iter()).flat_map(|d| d.2.iter().chain(d.3.iter())) {
        lo = lo.min(v.max(1.0));
        hi = hi.max(*v);
    }
    let (lo, hi) = (lo / 1.5, if (hi * 1.5).is_finite() { hi * 1.5 } else { f64::MAX });
    let floor = lo;
    let mut legend: Vec<(String, RGBColor, Mark)> = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        if panels.iter().any(|p| p.1.iter().any(|d| d.1 == v)) {
            legend.push((v.clone(), variant_color(i), Mark::Line));
        }
    }
    legend.push(("p50 of a vCPU".into(), BLACK, Mark::Line));
    legend.push(("p99 of a vCPU".into(), BLACK, Mark::Dashed));
    let panel_w = 520u32;
    let width = (panels.len() as u32 * panel_w).min(4000) + LEGEND_WIDTH;
    svg((width, 520), title, |root| {
        let root = root.titled(title, ("sans-serif", 18))?;
        let (plots, side) = root.split_horizontally(width - LEGEND_WIDTH);
        let areas = plots.split_evenly((1, panels.len()));
        for ((label, data), area) in panels.iter().zip(areas.iter()) {
            let mut chart = ChartBuilder::on(area)
                .caption(label.as_str(), ("sans-serif", 15))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(55)
                .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
            chart
                .configure_mesh()
                .x_desc("per-vCPU latency percentile (log)")
                .y_desc("fraction of vCPUs")
                .x_labels(10)
                .x_label_formatter(&|v| fmt_ns(*v))
                .draw()?;
            for (i, _, p50, p99) in data {
                let c = variant_color(*i);
                let at_floor =
                    |pts: Vec<(f64, f64)>| pts.into_iter().map(|(x, y)| (x.max(floor), y)).collect::<Vec<_>>();
                chart.draw_series(LineSeries::new(at_floor(cdf(p50)), c.stroke_width(2)))?;
                chart.draw_series(DashedLineSeries::new(at_floor(cdf(p99)), 6, 4, c.stroke_width(2)))?;
            }
        }
        side_legend(&side, &legend, &[])
    })
}

fn category_width(n: usize) -> u32 {
    (n as u32 * 120).clamp(700, 4000)
}

/// (c) Kicks per acquisition (mean of ok runs), one bar per group,
/// coloured by variant, its value written above it; a log axis when the
/// values span decades (a variant that kicks once per 300 acquisitions
/// next to one that kicks on most).
pub fn kicks(sums: &[GroupSummary], variants: &[String]) -> String {
    let all: Vec<(&GroupSummary, f64)> =
        sums.iter().filter_map(|s| s.kicks_per_1000.map(|e| (s, e.mean / 1000.0))).collect();
    let dropped = all.iter().filter(|b| !b.1.is_finite()).count();
    let bars: Vec<(&GroupSummary, f64)> = all.into_iter().filter(|b| b.1.is_finite()).collect();
    let labels: Vec<String> = bars.iter().map(|(s, _)| short_label(s)).collect();
    let n = bars.len().max(1);
    let title = "Kicks per acquisition";
    let size = (category_width(n) + LEGEND_WIDTH, 500);
    if bars.is_empty() {
        let why = if dropped > 0 { format!("{dropped} group(s), none with a finite rate") } else { "no data".into() };
        return not_plotted(size, title, &why);
    }
    let axis = match Axis::for_values(bars.iter().map(|b| b.1)) {
        Ok(a) => a,
        Err(why) => return not_plotted(size, title, &why),
    };
    let floor = axis.floor();
    let mut legend: Vec<(String, RGBColor, Mark)> = Vec::new();
    for (vi, v) in variants.iter().enumerate() {
        if bars.iter().any(|(s, _)| &s.key.variant == v) {
            legend.push((v.clone(), variant_color(vi), Mark::Box));
        }
    }
    let notes: Vec<String> =
        if dropped > 0 { vec![format!("{dropped} group(s) left out: not finite")] } else { Vec::new() };
    let y_desc = if axis.is_log() {
        "(pv_kick_unlock + pv_kick_wake) / acquisitions, ok runs (log)"
    } else {
        "(pv_kick_unlock + pv_kick_wake) / acquisitions, ok runs"
    };
    svg(size, title, |root| {
        let (plot, side) = root.split_horizontally(size.0 - LEGEND_WIDTH);
        let mut builder = ChartBuilder::on(&plot);
        builder.caption(title, ("sans-serif", 20)).margin(15).x_label_area_size(45).y_label_area_size(70);
        with_y_axis!(axis, builder, (0..n - 1).into_segmented(), |chart| {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n)
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .x_desc("variant vCPUs/host CPUs")
                .y_desc(y_desc)
                .y_label_formatter(&|v| trim_number(*v))
                .draw()?;
            for (vi, v) in variants.iter().enumerate() {
                let c = variant_color(vi);
                let mine: Vec<(usize, f64)> = bars
                    .iter()
                    .enumerate()
                    .filter(|(_, (s, y))| &s.key.variant == v && *y > floor)
                    .map(|(i, (_, y))| (i, *y))
                    .collect();
                chart.draw_series(mine.into_iter().map(|(i, y)| {
                    let mut r =
                        Rectangle::new([(SegmentValue::Exact(i), floor), (SegmentValue::Exact(i + 1), y)], c.filled());
                    r.set_margin(0, 0, 12, 12);
                    r
                }))?;
            }
            // The value of each bar above it (a zero sits on the axis).
            use plotters::style::text_anchor::{HPos, Pos, VPos};
            let style = TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series(bars.iter().enumerate().map(|(i, (_, y))| {
                Text::new(significant(*y, 2), (SegmentValue::CenterOf(i), y.max(floor)), style.clone())
            }))?;
        });
        side_legend(&side, &legend, &notes)
    })
}

/// (d) Run outcomes per group, stacked by status (rendered only when some
/// run was not ok, see [`render`]).
pub fn outcomes(sums: &[GroupSummary]) -> String {
    let labels: Vec<String> = sums.iter().map(short_label).collect();
    let n = sums.len().max(1);
    let most = sums.iter().map(|s| s.runs).max().unwrap_or(1).max(1) as u32;
    let ymax = most + (most / 10).max(1);
    let title = "Run outcomes";
    let size = (category_width(n) + LEGEND_WIDTH, 500);
    if sums.is_empty() {
        return not_plotted(size, title, "no data: no records");
    }
    let legend: Vec<(String, RGBColor, Mark)> = STATUSES
        .iter()
        .filter(|(st, _)| sums.iter().any(|s| s.count(*st) > 0))
        .map(|(st, t)| (t.to_string(), status_color(*st), Mark::Box))
        .collect();
    svg(size, title, |root| {
        let (plot, side) = root.split_horizontally(size.0 - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0u32..ymax)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("variant vCPUs/host CPUs")
            .y_desc("runs")
            .y_labels((ymax as usize + 1).min(11))
            .draw()?;
        let mut base = vec![0usize; sums.len()];
        for (st, _) in STATUSES {
            let c = status_color(*st);
            let mut rects = Vec::new();
            for (i, s) in sums.iter().enumerate() {
                let k = s.count(*st);
                if k == 0 {
                    continue;
                }
                let mut r = Rectangle::new(
                    [(SegmentValue::Exact(i), base[i] as u32), (SegmentValue::Exact(i + 1), (base[i] + k) as u32)],
                    c.filled(),
                );
                r.set_margin(0, 0, 12, 12);
                rects.push(r);
                base[i] += k;
            }
            chart.draw_series(rects)?;
        }
        side_legend(&side, &legend, &[])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_as_units() {
        assert_eq!(fmt_ns(850.0), "850 ns");
        assert_eq!(fmt_ns(1500.0), "1.5 µs");
        assert_eq!(fmt_ns(20_000.0), "20 µs");
        assert_eq!(fmt_ns(3e6), "3 ms");
        assert_eq!(fmt_ns(1.2e9), "1.2 s");
        assert_eq!(fmt_count(950.0), "950");
        assert_eq!(fmt_count(2000.0), "2k");
        assert_eq!(fmt_count(512_345.0), "512k");
        assert_eq!(fmt_count(1.25e6), "1.25M");
        assert_eq!(trim_number(0.0031), "0.003");
        assert_eq!(significant(0.003_14, 2), "0.0031");
        assert_eq!(significant(0.707, 2), "0.71");
        assert_eq!(significant(12.3, 2), "12");
        assert_eq!(significant(0.0, 2), "0");
        assert_eq!(trim_number(0.0), "0");
    }

    #[test]
    fn axes_go_log_over_decades_and_stay_finite() {
        assert_eq!(Axis::for_values([2_000.0, 14_000.0]), Ok(Axis::Linear(0.0, 14_000.0 * 1.15)));
        assert!(Axis::for_values([2_000.0, 500_000.0]).unwrap().is_log());
        // Zeros do not make an axis logarithmic by themselves, nor break it.
        assert!(!Axis::for_values([0.0, 5.0]).unwrap().is_log());
        assert!(Axis::for_values([0.0, 0.003, 0.7]).unwrap().is_log());
        assert_eq!(Axis::for_values([0.0]), Ok(Axis::Linear(0.0, 1.0)));
        for v in [f64::MAX, 1e308] {
            let a = Axis::for_values([v, v]).unwrap();
            let Axis::Linear(lo, hi) = a else { panic!("{a:?}") };
            assert!(lo.is_finite() && hi.is_finite() && hi >= v);
        }
        assert!(Axis::for_values([f64::NAN, f64::INFINITY]).is_err());
        assert!(Axis::for_values([-f64::MAX, f64::MAX]).unwrap_err().contains("span"));
    }
}
