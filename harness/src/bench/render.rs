//! `report.md` and the SVG plots of a bench result: pure functions of
//! [`BenchResult`], drawn like `report/plots.rs` (plotters' SVG backend,
//! text as `<text>` elements, no font files).

use super::stats::Ratio;
use super::{BenchResult, KickWake, ThroughputRow, RATIO_PV_OVER_TICKET, RATIO_PV_OVER_TICKET_STALLS};
use crate::report::plots::variant_color;
use crate::stats::Estimate;
use plotters::prelude::*;
use std::fmt::Write as _;

/// Every file of a result directory besides `bench.json`: (name, text).
pub fn files(r: &BenchResult) -> Vec<(String, String)> {
    let mut out = vec![("report.md".to_string(), markdown(r))];
    for &h in &r.plan.host_cpus {
        out.push((format!("throughput_{h}host.svg"), throughput_svg(r, h)));
    }
    out.push(("guest_over_host.svg".into(), guest_host_svg(r)));
    out.push(("readme-section.md".into(), readme_section(r)));
    out
}

/// The README's performance section: the goals and the headline figures
/// of this one run (`scripts/publish-bench` pastes it between the README's
/// bench markers, so README and committed results come from one run).
pub fn readme_section(r: &BenchResult) -> String {
    let mut s = String::new();
    let load = |l: &Option<[f64; 3]>| l.map(|l| format!("{:.2}", l[0])).unwrap_or("?".into());
    let _ = writeln!(
        s,
        "Figures of one `pvlock bench` run{} started {} on {} ({}, kernel {}; 1-minute load {} at start, {} at \
         end{}), mean ± 95% half-width over repeats; its full report, raw samples and plots are in \
         `results/bench/` (the directory of that start time).\n",
        if r.plan.quick { " (--quick)" } else { "" },
        r.started_at,
        r.env.host_cpu_model,
        r.env.kvm_flavour,
        r.env.kernel,
        load(&r.load_start),
        load(&r.load_end),
        if r.complete { "" } else { "; PARTIAL" }
    );
    s += "| goal | met | numbers |\n|---|---|---|\n";
    for g in &r.goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(s, "| {} | {met} | {} |", g.goal, g.detail);
    }
    s += "\n| figure | value |\n|---|---|\n";
    let _ = writeln!(s, "| MMIO exit round trip | {} us |", opt(&r.mmio_exit_us, 2));
    let _ = writeln!(s, "| kick store (ioeventfd) | {} us |", opt(&r.kick_store_us, 2));
    for (label, k) in [
        ("really blocks", &r.kick_wake_us),
        ("VMM poll wins (kick through the ioeventfd)", &r.kick_wake_tuned_us),
        ("VMM poll wins (kick through the poll flag)", &r.kick_wake_flag_us),
        ("guest poll wins", &r.kick_wake_guest_poll_us),
    ] {
        let v = k
            .as_ref()
            .map(|k| format!("p50 {} us, p99 {} us", k.p50_spread.show(2), k.p99_spread.show(1)))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "| kick -> wake, {label} | {v} |");
    }
    if let Some(w) = &r.wake_legs {
        for (what, legs) in [
            ("PING exit", &w.exit),
            ("won VMM poll, ioeventfd", &w.vmm_poll),
            ("won VMM poll, poll flag", &w.vmm_poll_flag),
        ] {
            for l in legs {
                let _ = writeln!(
                    s,
                    "| {what}: {} | p50 {} us, p99 {} us |",
                    super::wake::leg_label(&l.leg),
                    l.p50_us.show(2),
                    l.p99_us.show(1)
                );
            }
        }
        if let Some((lo, hi)) = w.tsc_offset_us {
            let _ = writeln!(
                s,
                "| host TSC - guest TSC (bounds over {} exits) | [{lo:.2}, {hi:.2}] us |",
                w.tsc_offset_samples
            );
        }
    }
    for row in r.poll_cost.iter().filter(|x| x.over_no_poll.is_some()) {
        let _ = writeln!(
            s,
            "| throughput with the {} poll, {}x overcommit, over no poll (paired) | {} |",
            row.mode.name(),
            row.vcpus / row.host_cpus.max(1),
            ratio_cell(&row.over_no_poll)
        );
    }
    if let Some(u) = &r.uncontended {
        let _ = writeln!(
            s,
            "| uncontended qspinlock, guest / host thread (ns per acquisition) | {} ({} ns / {} ns) |",
            u.guest_over_host.show(3),
            u.guest_ns.show(1),
            u.host_ns.show(1)
        );
    }
    if let Some(o) = &r.overhead {
        let _ = writeln!(s, "| torture / dedicated loop (bookkeeping) | {} |", ratio_cell(&o.torture_over_loop));
        let _ = writeln!(s, "| torture without / with the trace ring | {} |", ratio_cell(&o.no_trace_over_trace));
    }
    if let Some(sw) = &r.sweep {
        let slope = |x: &Option<super::sweep::Slope>| x.map(|x| x.show(3)).unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "| boot time per vCPU | {} ms |", slope(&sw.boot_slope_ms));
        let _ = writeln!(s, "| of it, vCPU setup per vCPU | {} ms |", slope(&sw.vcpu_setup_slope_ms));
        let _ = writeln!(s, "| of it, kick eventfd registration per vCPU | {} ms |", slope(&sw.kick_setup_slope_ms));
        let _ = writeln!(s, "| peak RSS per vCPU | {} MiB |", slope(&sw.rss_slope_mib));
    }
    if let Some(k) = &r.kernel {
        let _ = writeln!(
            s,
            "| Linux {} kernel-pv / pv-upstream, uncontended ns per acquisition | {} ({} ns / {} ns) |",
            k.version,
            k.uncontended_ratio.show(3),
            k.uncontended_kernel_ns.show(1),
            k.uncontended_rust_ns.show(1)
        );
        let _ = writeln!(
            s,
            "| Linux {} kernel-pv / pv-upstream, acq/s at 8 vCPUs / 2 host CPUs (paired) | {} ({} / {}) |",
            k.version,
            ratio_cell(&k.contended_ratio),
            opt(&k.contended_kernel_aps, 0),
            opt(&k.contended_rust_aps, 0)
        );
    }
    for (k, v) in &r.ratios {
        let _ = writeln!(s, "| `{k}` | {} |", v.show(3));
    }
    s
}

/// The legs of one wake path as table rows of `report.md`.
fn legs_rows(what: &str, legs: &[super::wake::LegSummary]) -> String {
    let mut s = String::new();
    for l in legs {
        let _ = writeln!(
            s,
            "| {what} | {} (`{}`) | {} | {} | {} | {} |",
            super::wake::leg_label(&l.leg),
            l.leg,
            l.p50_us.show(2),
            l.p99_us.show(1),
            l.mean_us.show(2),
            l.count
        );
    }
    s
}

fn opt(s: &Option<Estimate>, prec: usize) -> String {
    s.map(|s| s.show(prec)).unwrap_or_else(|| "-".into())
}

fn kw_row(k: &Option<KickWake>, label: &str) -> String {
    match k {
        Some(k) => format!(
            "| kick -> wake, {label} (halt_poll_us = {}, guest_poll_ns = {}) | p50 {} / p99 {} / max {} (max of runs {:.1}) | us | {} runs, {} round trips; guest polls won {}, VMM polls won {}, blocked waits {} |\n",
            k.halt_poll_us,
            k.guest_poll_ns,
            k.p50_spread.show(1),
            k.p99_spread.show(1),
            k.max_spread.show(1),
            k.max,
            k.p50_spread.n,
            k.count,
            k.guest_polls_won,
            k.vmm_polls_won,
            k.waits_blocked
        ),
        None => format!("| kick -> wake, {label} | - | us | not measured |\n"),
    }
}

fn ratio_cell(r: &Option<Ratio>) -> String {
    r.as_ref().map(|r| r.show(3)).unwrap_or_else(|| "-".into())
}

/// `report.md`: every figure as mean ± 95% half-width over repeats.
pub fn markdown(r: &BenchResult) -> String {
    let mut s = String::new();
    let p = &r.plan;
    let _ = writeln!(s, "# pvlock bench{}\n", if p.quick { " (--quick)" } else { "" });
    let load = |l: &Option<[f64; 3]>| l.map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])).unwrap_or("?".into());
    let _ = writeln!(
        s,
        "Started {}, finished {}; host {} ({}), kernel {}; load average at start {}, at end {}.{}\n",
        r.started_at,
        r.finished_at.as_deref().unwrap_or("(not finished)"),
        r.env.host_cpu_model,
        r.env.kvm_flavour,
        r.env.kernel,
        load(&r.load_start),
        load(&r.load_end),
        if r.complete { "" } else { " **PARTIAL: the bench was stopped.**" }
    );
    let _ = writeln!(
        s,
        "Every figure: mean ± 95% Student-t half-width over repeats (`(n=1)`: a single value). \
         Ratios: ratio of means with a Fieller 95% interval.\n"
    );

    s += "## Goals\n\n| goal | met | numbers |\n|---|---|---|\n";
    for g in &r.goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(s, "| {} | {met} | {} |", g.goal, g.detail);
    }

    s += "\n## 1. Mechanism costs through the ABI\n\n| figure | value | unit | notes |\n|---|---|---|---|\n";
    let _ = writeln!(
        s,
        "| MMIO doorbell round trip | {} | us | {} exits per run, 1 vCPU on 1 host CPU |",
        opt(&r.mmio_exit_us, 2),
        p.doorbell_iterations
    );
    let _ =
        writeln!(s, "| kick store (ioeventfd) | {} | us | as many stores, nothing waits |", opt(&r.kick_store_us, 2));
    let _ = writeln!(
        s,
        "| disabled race window | {} | ns per call | `race_window(Handoff)` off, minus an empty loop (4M calls) |",
        opt(&r.disabled_window_ns, 3)
    );
    s += &kw_row(&r.kick_wake_us, "really blocks");
    s += &kw_row(&r.kick_wake_tuned_us, "VMM poll wins, kick through the ioeventfd");
    s += &kw_row(&r.kick_wake_flag_us, "VMM poll wins, kick through the poll flag");
    s += &kw_row(&r.kick_wake_guest_poll_us, "guest poll wins");
    let _ = writeln!(
        s,
        "\nKick -> wake: 2 vCPUs on 2 host CPUs, {} round trips per run; the kicker waits 200 us after the \
         peer announces its wait, so the peer is really blocked: a halt poll only wins if it is longer than \
         that, hence the tuned values ({} us in the VMM, {} ns in the guest). A guest poll that wins costs no exit and, \
         as the kicker sees the target polling, no kick store either. Percentiles are the guest histogram's bucket lower bounds \
         (a quarter of a power of two: 4 us wide at 16 us, 16 us wide at 64 us).\n",
        p.ping_pong_iterations, p.tuned_halt_poll_us, p.tuned_guest_poll_ns
    );
    if let Some(w) = &r.wake_legs {
        s += "### The legs of an exit and of a won VMM poll\n\n\
              Each leg is timed on the side that sees both of its ends, from TSC stamps: the guest's before and \
              after its store, the VMM's when its thread saw the exit or the kick and just before its next \
              `KVM_RUN`. The kicker's own kick overlaps the next leg (it is not on the waiter's path). Mean over \
              repeats of each run's p50 / p99 (bucket lower bounds) and exact mean, us.\n\n\
              | path | leg | p50 | p99 | mean | timed |\n|---|---|---|---|---|---|\n";
        s += &legs_rows("PING exit (doorbells)", &w.exit);
        s += &legs_rows("won VMM poll, ioeventfd", &w.vmm_poll);
        s += &legs_rows("won VMM poll, poll flag", &w.vmm_poll_flag);
        match w.tsc_offset_us {
            Some((lo, hi)) => {
                let _ = writeln!(
                    s,
                    "\nOne clock: over {} PING exits, host TSC - guest TSC lies in [{lo:.2}, {hi:.2}] us (each VMM \
                     stamp falls between the guest's reads around its exit; the bounds are as wide as the shortest \
                     exit halves, and a KVM TSC offset would put them hours away).\n",
                    w.tsc_offset_samples
                );
            }
            None => s += "\nThe clock offset was not measured.\n\n",
        }
    }

    let _ = writeln!(
        s,
        "## 2./3. Lock throughput (guest) and the same code on host threads\n\n\
         Torture on 1 lock, cs {} ns, think {} ns, {} ms per run, {} repeats. Random stalls: per-vCPU Poisson, \
         mean interval {} us, mean stall {} us (exponential). Host threads: the same lock code and torture loop on \
         as many threads as vCPUs, confined to as many host CPUs (futex pv_wait/pv_kick, no yielding while spinning). \
         guest/host is acquisitions/s of the VM over the host threads.\n",
        p.cs_ns, p.think_ns, p.duration_ms, p.repeats, p.stall_interval_us, p.stall_us
    );
    s += "| variant | vCPUs | host CPUs | stalls | acq/s | latency p50 ns | latency p99 ns | blocking waits / 1000 acq | ok | host-thread acq/s | guest/host |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for t in &r.throughput {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} |",
            t.variant,
            t.vcpus,
            t.host_cpus,
            t.stalls,
            opt(&t.acq_per_sec, 0),
            opt(&t.latency_p50_ns, 0),
            opt(&t.latency_p99_ns, 0),
            opt(&t.blocked_waits_per_kacq, 2),
            t.ok_runs,
            t.runs,
            opt(&t.host_acq_per_sec, 0),
            ratio_cell(&t.guest_over_host)
        );
    }
    s += "\n### Ratios\n\n| ratio | value [95% interval] | numerator | denominator |\n|---|---|---|---|\n";
    for (k, v) in &r.ratios {
        let _ = writeln!(s, "| `{k}` | {} | {} | {} |", v.show(3), v.num.show(2), v.den.show(2));
    }
    let _ = writeln!(
        s,
        "\n`{RATIO_PV_OVER_TICKET}`: acquisitions/s at 8 vCPUs on 2 host CPUs, no injected stalls; \
         `{RATIO_PV_OVER_TICKET_STALLS}`: the same with random stalls; \
         `qspinlock_uncontended_guest_over_host`: ns per acquire+release (1 vCPU / 1 thread, cs = think = 0).\n"
    );
    if !r.poll_cost.is_empty() {
        let _ = writeln!(
            s,
            "### What polling costs\n\npv-upstream torture (cs {} ns, think {} ns, {} ms per run) on {} host CPUs, polls of {} ns \
             (guest) or {} us (VMM halt poll), both forced on under overcommit. Each of {} repeats runs the three \
             modes back to back (reversed on odd repeats); ratio: geometric mean over repeats of acq/s over the \
             no-poll run of the same repeat, 95% interval over those pair ratios.\n\n\
             | vCPUs | overcommit | poll | acq/s | over no poll (paired) | polls won | ok |\n|---|---|---|---|---|---|---|",
            p.cs_ns,
            p.think_ns,
            if p.pair_ms > 0 { p.pair_ms } else { p.duration_ms },
            super::poll::POLL_COST_HOST_CPUS,
            p.poll_cost_ns,
            p.poll_cost_ns / 1000,
            p.pair_repeats
        );
        for row in &r.poll_cost {
            let _ = writeln!(
                s,
                "| {} | {}x | {} | {} | {} | {} | {}/{} |",
                row.vcpus,
                row.vcpus / row.host_cpus.max(1),
                row.mode.name(),
                opt(&row.acq_per_sec, 0),
                ratio_cell(&row.over_no_poll),
                row.won_fraction.map(|f| format!("{:.1}%", f * 100.0)).unwrap_or_else(|| "-".into()),
                row.ok_runs,
                row.runs
            );
        }
        s += "\n";
    }
    if let Some(u) = &r.uncontended {
        let _ = writeln!(
            s,
            "Uncontended qspinlock, ns per acquisition (the torture loop's owner mark, counter and \
             clock reads included on both sides; the host thread reads the clock through clock_gettime, \
             the guest with rdtsc): guest {}, host thread {}, guest/host {}.\n",
            u.guest_ns.show(2),
            u.host_ns.show(2),
            u.guest_over_host.show(3)
        );
    }

    if let Some(k) = &r.kernel {
        let _ = writeln!(
            s,
            "Kernel build (`--kernel-tree`, Linux {}) beside pv-upstream, in this run:\n\n\
             | figure | kernel-pv | pv-upstream | kernel-pv / pv-upstream |\n|---|---|---|---|\n\
             | uncontended ns per acquisition (1 vCPU, cs = think = 0) | {} | {} | {} |\n\
             | contended acq/s, 8 vCPUs / 2 host CPUs (4x overcommit; ratio paired by repeat) | {} | {} | {} |\n",
            k.version,
            k.uncontended_kernel_ns.show(1),
            k.uncontended_rust_ns.show(1),
            k.uncontended_ratio.show(3),
            k.contended_kernel_aps.map(|x| x.show(0)).unwrap_or_else(|| "-".into()),
            k.contended_rust_aps.map(|x| x.show(0)).unwrap_or_else(|| "-".into()),
            k.contended_ratio.map(|x| x.show(2)).unwrap_or_else(|| "-".into()),
        );
    }

    if let Some(o) = &r.overhead {
        let _ = writeln!(
            s,
            "## Bookkeeping overhead\n\n{} on 1 vCPU / 1 host CPU, cs {} ns, think {} ns, {} ms per run; every kind \
             runs once per repeat, back to back. The dedicated loops run the same critical section and think time \
             with none of the torture's checks (owner marks, counters, latency timestamps, lock picks, phases).\n\n\
             | loop | ns per acquisition | acq/s | over the dedicated loop |\n|---|---|---|---|",
            o.variant, p.overhead_cs_ns, p.overhead_think_ns, p.overhead_ms
        );
        for row in &o.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                row.kind.name(),
                opt(&row.ns_per_iter, 1),
                opt(&row.acq_per_sec, 0),
                ratio_cell(&row.over_lock_loop)
            );
        }
        let _ = writeln!(
            s,
            "\nTrace ring (default `trace_entries`) cost: torture without / with tracing = {}.\n",
            ratio_cell(&o.no_trace_over_trace)
        );
    }
    if let Some(sw) = &r.sweep {
        let slope = |x: &Option<super::sweep::Slope>| x.map(|x| x.show(3)).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "## Cost growth with the vCPU count\n\npv-upstream torture on {} host CPUs, {} ms per run. Boot: VM \
             creation to the first guest instruction; vCPU setup: the part of it spent creating and setting up the \
             vCPUs one after the other. CPU: user + system time of the process per vCPU per second of run. \
             Peak RSS: `VmHWM`, reset before each run.\n\n\
             | vCPUs | boot ms | vCPU setup ms | kick setup ms | acq/s | CPU ms per vCPU-s | peak RSS MiB | ok |\n|---|---|---|---|---|---|---|---|",
            super::sweep::SWEEP_HOST_CPUS,
            p.sweep_ms
        );
        for row in &sw.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {}/{} |",
                row.vcpus,
                opt(&row.boot_ms, 2),
                opt(&row.vcpu_setup_ms, 2),
                opt(&row.kick_setup_ms, 2),
                opt(&row.acq_per_sec, 0),
                opt(&row.cpu_ms_per_vcpu_s, 0),
                opt(&row.peak_rss_mib, 1),
                row.ok_runs,
                row.runs
            );
        }
        let _ = writeln!(
            s,
            "\nSlopes (least squares over every ok run, 95% interval): boot {} ms per vCPU, vCPU setup {} ms per \
             vCPU, kick setup {} ms per vCPU, peak RSS {} MiB per vCPU.\n",
            slope(&sw.boot_slope_ms),
            slope(&sw.vcpu_setup_slope_ms),
            slope(&sw.kick_setup_slope_ms),
            slope(&sw.rss_slope_mib)
        );
    }
    let _ = writeln!(
        s,
        "## 4. Time to detect (random mode, the reproducer's default variant)\n\n\
         | reproducer | variant | detected | median s | range s | budget s |\n|---|---|---|---|---|---|"
    );
    for d in &r.time_to_detect {
        let range = match (d.min_s, d.max_s) {
            (Some(a), Some(b)) => format!("{a:.2} .. {b:.2}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {}/{} | {} | {range} | {:.1} |",
            d.repro,
            d.variant,
            d.detected,
            d.seeds,
            d.median_s.map(|m| format!("{m:.2}")).unwrap_or_else(|| "-".into()),
            d.budget_s
        );
    }
    if !r.not_ok.is_empty() {
        s += "\n## Runs that did not end ok (left out of the means)\n\n";
        for n in &r.not_ok {
            let _ = writeln!(s, "- {n}");
        }
    }
    let mut plots = String::new();
    for &h in &p.host_cpus {
        let _ = write!(plots, "![throughput, {h} host CPUs](throughput_{h}host.svg)\n\n");
    }
    s += "\n## Plots\n\n";
    s += &plots;
    s += "![guest over host](guest_over_host.svg)\n";
    s
}

use crate::report::plots::{svg as titled_svg, PlotResult};

/// An SVG of `size` drawn by `draw` (shared with the report's plots: a
/// drawing error becomes an SVG that says so).
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> PlotResult,
) -> String {
    titled_svg(size, "bench", draw)
}

pub fn throughput_svg(r: &BenchResult, host_cpus: u32) -> String {
    let rows: Vec<&ThroughputRow> =
        r.throughput.iter().filter(|t| t.host_cpus == host_cpus && t.acq_per_sec.is_some()).collect();
    let (mut lo, mut hi) = (f64::MAX, 1.0f64);
    for t in &rows {
        let a = t.acq_per_sec.expect("filtered");
        let h = a.ci95.unwrap_or(0.0);
        lo = lo.min((a.mean - h).max(a.mean / 10.0).max(1.0));
        hi = hi.max(a.mean + h);
    }
    if rows.is_empty() {
        (lo, hi) = (1.0, 10.0);
    }
    let xmax = r.plan.vcpus.iter().copied().max().unwrap_or(1) as f64;
    let title = format!("Throughput vs vCPUs on {host_cpus} host CPU(s) (dashed: random stalls)");
    svg((800, 520), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title.as_str(), ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0.5..xmax + 0.5, (lo / 1.5..hi * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("vCPUs")
            .y_desc("acquisitions/s (log), mean ± 95%")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        for (i, v) in r.plan.variants.iter().enumerate() {
            let c = variant_color(i);
            for stalls in ["none", "random"] {
                let pts: Vec<(f64, f64, f64)> = rows
                    .iter()
                    .filter(|t| &t.variant == v && t.stalls == stalls)
                    .filter_map(|t| t.acq_per_sec.map(|a| (t.vcpus as f64, a.mean, a.ci95.unwrap_or(0.0))))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                let line = pts.iter().map(|p| (p.0, p.1));
                if stalls == "none" {
                    chart
                        .draw_series(LineSeries::new(line, c.stroke_width(2)))?
                        .label(v.name())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
                } else {
                    chart.draw_series(DashedLineSeries::new(line, 6, 4, c.stroke_width(2)))?;
                }
                chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled())))?;
                chart.draw_series(
                    pts.iter()
                        .filter(|p| p.2 > 0.0)
                        .map(|p| PathElement::new(vec![(p.0, (p.1 - p.2).max(lo / 1.5)), (p.0, p.1 + p.2)], c)),
                )?;
            }
        }
        if !rows.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}

/// Guest over host-thread acquisitions/s per point (no stalls), one
/// horizontal bar each (log scale), with the Fieller interval; the line at
/// 1 is "no overhead".
pub fn guest_host_svg(r: &BenchResult) -> String {
    let bars: Vec<(String, usize, Ratio)> = r
        .throughput
        .iter()
        .filter_map(|t| {
            let ratio = t.guest_over_host?;
            let ci = r.plan.variants.iter().position(|v| v == &t.variant).unwrap_or(0);
            Some((format!("{} {}/{}", t.variant, t.vcpus, t.host_cpus), ci, ratio))
        })
        .filter(|b| b.2.value > 0.0)
        .collect();
    let (mut lo, mut hi) = (1.0f64, 1.0f64);
    for (_, _, x) in &bars {
        lo = lo.min(x.ci95_lo.unwrap_or(x.value).max(x.value / 100.0).max(1e-4));
        hi = hi.max(x.ci95_hi.unwrap_or(x.value).min(x.value * 100.0));
    }
    let (lo, hi) = (lo / 1.5, hi * 1.5);
    let n = bars.len().max(1);
    let height = (n as u32 * 18 + 120).clamp(300, 2000);
    svg((900, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Guest / host-thread acquisitions/s (no stalls; bars: Fieller 95%)", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(170)
            .build_cartesian_2d((lo..hi).log_scale(), -0.5..n as f64 - 0.5)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 1e-6 && i >= 0.0 {
                    bars.get(i as usize).map(|b| b.0.clone()).unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("guest / host (log)")
            .x_label_formatter(&|v| format!("{v:.2}"))
            .draw()?;
        for (i, (_, ci, x)) in bars.iter().enumerate() {
            let c = variant_color(*ci);
            let y = i as f64;
            chart.draw_series(std::iter::once(Rectangle::new([(lo, y - 0.35), (x.value, y + 0.35)], c.filled())))?;
            if let (Some(l), Some(h)) = (x.ci95_lo, x.ci95_hi) {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(l.max(lo), y), (h.min(hi), y)],
                    BLACK.stroke_width(1),
                )))?;
            }
        }
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(1.0, -0.5), (1.0, n as f64 - 0.5)],
            BLACK.stroke_width(1),
        )))?;
        Ok(())
    })
}
