//! SVG plots with `plotters` (SVG backend, no font files: text is emitted
//! as `<text>` elements and laid out with plotters' built-in estimate).
//! Each plot is a pure function of the group summaries (and, for latency,
//! of the records' per-vCPU percentiles).

use super::summary::{GroupSummary, STATUSES};
use crate::record::Record;
use plotters::prelude::*;

/// File names under `plots/`, in the order [`render`] returns them.
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

fn status_color(status: &str) -> RGBColor {
    match status {
        "ok" => RGBColor(0x2c, 0xa0, 0x2c),
        "hang" => RGBColor(0xff, 0x7f, 0x0e),
        "guest-crash" => RGBColor(0xd6, 0x27, 0x28),
        "failed" => RGBColor(0x94, 0x67, 0xbd),
        _ => RGBColor(0x7f, 0x7f, 0x7f),
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

/// Renders every plot: (file name, SVG).
pub fn render(records: &[Record], sums: &[GroupSummary], variants: &[String]) -> Vec<(String, String)> {
    vec![
        (FILES[0].into(), throughput(sums, variants)),
        (FILES[1].into(), latency(records, variants)),
        (FILES[2].into(), kicks(sums, variants)),
        (FILES[3].into(), outcomes(sums)),
    ]
}

/// A throughput line: label, colour index, points (x, mean, 95% half-width).
type ThroughputSeries = (String, usize, Vec<(f64, f64, f64)>);

/// (a) Mean acquisitions/s (ok runs) against vCPUs per host CPU, one line
/// per variant (per variant and other key, if other keys vary), with the
/// 95% interval as a vertical bar.
pub fn throughput(sums: &[GroupSummary], variants: &[String]) -> String {
    let mut series: Vec<ThroughputSeries> = Vec::new();
    let many_others = {
        let mut o: Vec<(&str, &str)> = sums.iter().map(|s| (s.key.name.as_str(), s.key.other.as_str())).collect();
        o.sort_unstable();
        o.dedup();
        o.len() > 1
    };
    for s in sums {
        let (Some(x), Some(e)) = (s.key.overcommit(), s.acq_per_sec) else {
            continue;
        };
        let label = if many_others {
            format!("{} [{} {}]", s.key.variant, s.key.name, s.key.other)
        } else {
            s.key.variant.clone()
        };
        let p = (x, e.mean, e.ci95.unwrap_or(0.0));
        match series.iter_mut().find(|(l, _, _)| *l == label) {
            Some(se) => se.2.push(p),
            None => series.push((label, variant_index(variants, &s.key.variant), vec![p])),
        }
    }
    for s in &mut series {
        s.2.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y, ci) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y + ci);
    }
    let title = "Throughput vs overcommit";
    let no_data = series.is_empty();
    if no_data {
        (x0, x1, y1) = (0.0, 1.0, 1.0);
    }
    let pad = ((x1 - x0) * 0.05).max(0.25);
    let (x0, x1) = (x0 - pad, x1 + pad);
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    svg((800, 500), title, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(if no_data { "Throughput vs overcommit (no data)" } else { title }, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, 0.0..y1)?;
        chart
            .configure_mesh()
            .x_desc("vCPUs per host CPU (pinned runs)")
            .y_desc("acquisitions/s, mean of ok runs (bars: 95% interval)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        for (label, ci, pts) in &series {
            let c = variant_color(*ci);
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
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}

/// Per-vCPU (p50, p99) latencies, ns, of the ok runs among `records`.
fn per_vcpu_latencies<'a>(records: impl Iterator<Item = &'a Record>) -> (Vec<f64>, Vec<f64>) {
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for r in records.filter(|r| r.status == "ok") {
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
    let (mut lo, mut hi) = (f64::MAX, 1.0f64);
    for v in panels.iter().flat_map(|p| p.1.iter()).flat_map(|d| d.2.iter().chain(d.3.iter())) {
        lo = lo.min(v.max(1.0));
        hi = hi.max(*v);
    }
    let no_data = panels.is_empty();
    if no_data {
        (lo, hi) = (1.0, 10.0);
        panels.push(("no per-vCPU latency data".into(), Vec::new()));
    }
    let (lo, hi) = (lo / 1.5, hi * 1.5);
    let title = "Acquisition latency: CDF over vCPUs of per-vCPU p50 (solid) and p99 (dashed), ok runs";
    let width = if panels.len() == 1 { 800 } else { (panels.len() as u32 * 450).min(4000) };
    svg((width, 500), title, |root| {
        let root = root.titled(title, ("sans-serif", 18))?;
        let areas = root.split_evenly((1, panels.len()));
        for (pi, ((label, data), area)) in panels.iter().zip(areas.iter()).enumerate() {
            let mut chart = ChartBuilder::on(area)
                .caption(label.as_str(), ("sans-serif", 15))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
            chart
                .configure_mesh()
                .x_desc("per-vCPU latency percentile, ns (log)")
                .y_desc("fraction of vCPUs")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .draw()?;
            for (i, v, p50, p99) in data {
                let c = variant_color(*i);
                let s = chart.draw_series(LineSeries::new(cdf(p50), c.stroke_width(2)))?;
                // The legend (in the first panel only) names each variant once.
                if pi == 0 {
                    s.label(*v).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
                }
                chart.draw_series(DashedLineSeries::new(cdf(p99), 6, 4, c.stroke_width(2)))?;
            }
            if pi == 0 && !data.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }
        }
        Ok(())
    })
}

fn category_width(n: usize) -> u32 {
    (n as u32 * 110).clamp(800, 4000)
}

/// (c) Kicks per acquisition (mean of ok runs), one bar per group,
/// coloured by variant.
pub fn kicks(sums: &[GroupSummary], variants: &[String]) -> String {
    let bars: Vec<(&GroupSummary, f64)> =
        sums.iter().filter_map(|s| s.kicks_per_1000.map(|e| (s, e.mean / 1000.0))).collect();
    let labels: Vec<String> = bars.iter().map(|(s, _)| short_label(s)).collect();
    let ymax = bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
    let ymax = if ymax > 0.0 { ymax * 1.15 } else { 1.0 };
    let n = bars.len().max(1);
    let title = if bars.is_empty() { "Kicks per acquisition (no data)" } else { "Kicks per acquisition" };
    svg((category_width(n), 500), title, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..ymax)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("variant vCPUs/host CPUs")
            .y_desc("(pv_kick_unlock + pv_kick_wake) / acquisitions, ok runs")
            .y_label_formatter(&|v| format!("{v:.3}"))
            .draw()?;
        for (vi, v) in variants.iter().enumerate() {
            let c = variant_color(vi);
            let mine: Vec<(usize, f64)> =
                bars.iter().enumerate().filter(|(_, (s, _))| &s.key.variant == v).map(|(i, (_, y))| (i, *y)).collect();
            if mine.is_empty() {
                continue;
            }
            chart
                .draw_series(mine.into_iter().map(|(i, y)| {
                    let mut r =
                        Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), y)], c.filled());
                    r.set_margin(0, 0, 12, 12);
                    r
                }))?
                .label(v.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
        }
        if !bars.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}

/// (d) Run outcomes per group, stacked by status.
pub fn outcomes(sums: &[GroupSummary]) -> String {
    let labels: Vec<String> = sums.iter().map(short_label).collect();
    let n = sums.len().max(1);
    // Integer runs on y, with room for the legend.
    let most = sums.iter().map(|s| s.runs).max().unwrap_or(1).max(1) as u32;
    let ymax = most + (most / 4).max(1);
    let title = if sums.is_empty() { "Run outcomes (no data)" } else { "Run outcomes" };
    svg((category_width(n), 500), title, |root| {
        let mut chart = ChartBuilder::on(root)
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
        for (st, title) in STATUSES {
            let c = status_color(st);
            let mut rects = Vec::new();
            for (i, s) in sums.iter().enumerate() {
                let k = s.count(st);
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
            if rects.is_empty() {
                continue;
            }
            chart
                .draw_series(rects)?
                .label(*title)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
        }
        if !sums.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}
