//! How cost grows with the vCPU count: pv-upstream torture at 2..64 vCPUs
//! on 2 host CPUs; per run the boot time (VM creation to the first guest
//! instruction) and its per-vCPU setup part, throughput, the process's CPU
//! time per vCPU and per second of run, and the peak RSS. A linear fit of
//! boot time against vCPUs gives the per-vCPU slope with its interval.

use super::{not_ok, Goal, JobCtx, JobOutcome, Plan, Point, Samples};
use crate::stats::t95;
use crate::stats::Estimate;
use anyhow::Result;
use pvlock_abi::Variant;
use serde::{Deserialize, Serialize};

/// Host CPUs of every sweep point.
pub const SWEEP_HOST_CPUS: u32 = 2;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepSample {
    pub vcpus: u32,
    pub ok: bool,
    pub boot_us: Option<f64>,
    pub vcpu_setup_us: Option<f64>,
    #[serde(default)]
    pub kick_setup_us: Option<f64>,
    pub acq_per_sec: f64,
    /// User + system CPU time of this process during the run (the VMM's
    /// threads; a vCPU's guest time counts as its thread's), ms.
    pub cpu_ms: Option<f64>,
    /// Wall time of the run, ms.
    pub wall_ms: f64,
    /// Peak resident set of the process during the run, KiB (`VmHWM`,
    /// reset before the run through `/proc/self/clear_refs`).
    pub peak_rss_kib: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    pub vcpus: u32,
    pub host_cpus: u32,
    pub boot_ms: Option<Estimate>,
    pub vcpu_setup_ms: Option<Estimate>,
    #[serde(default)]
    pub kick_setup_ms: Option<Estimate>,
    pub acq_per_sec: Option<Estimate>,
    /// CPU ms per vCPU per second of wall time (1000 = the vCPU's thread
    /// was busy all the time).
    pub cpu_ms_per_vcpu_s: Option<Estimate>,
    pub peak_rss_mib: Option<Estimate>,
    pub ok_runs: usize,
    pub runs: usize,
}

/// Least-squares line of a figure against vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slope {
    /// Per vCPU, in the figure's unit.
    pub slope: f64,
    /// 95% half-width of the slope (Student t, n - 2 degrees of freedom).
    pub ci95: Option<f64>,
    pub intercept: f64,
    pub n: usize,
}

impl Slope {
    pub fn fit(xy: &[(f64, f64)]) -> Option<Slope> {
        let n = xy.len();
        if n < 2 {
            return None;
        }
        let nf = n as f64;
        let mx = xy.iter().map(|p| p.0).sum::<f64>() / nf;
        let my = xy.iter().map(|p| p.1).sum::<f64>() / nf;
        let sxx: f64 = xy.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if sxx == 0.0 {
            return None;
        }
        let sxy: f64 = xy.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let slope = sxy / sxx;
        let intercept = my - slope * mx;
        let ci95 = (n > 2).then(|| {
            let rss: f64 = xy.iter().map(|p| (p.1 - intercept - slope * p.0).powi(2)).sum();
            t95(n - 2) * (rss / (nf - 2.0) / sxx).sqrt()
        });
        Some(Slope { slope, ci95, intercept, n })
    }

    pub fn show(&self, prec: usize) -> String {
        match self.ci95 {
            Some(h) => format!("{:.p$} ± {:.p$}", self.slope, h, p = prec),
            None => format!("{:.p$} (n={})", self.slope, self.n, p = prec),
        }
    }
}

/// The sweep's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub rows: Vec<SweepRow>,
    /// Boot time, ms per vCPU.
    pub boot_slope_ms: Option<Slope>,
    /// Per-vCPU setup time, ms per vCPU.
    pub vcpu_setup_slope_ms: Option<Slope>,
    /// Kick eventfd setup and registration, ms per vCPU.
    #[serde(default)]
    pub kick_setup_slope_ms: Option<Slope>,
    /// Peak RSS, MiB per vCPU.
    pub rss_slope_mib: Option<Slope>,
}

/// User + system CPU time of this process, ms.
fn process_cpu_ms() -> Option<f64> {
    // SAFETY: a zeroed rusage is a valid out-parameter; getrusage writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to `ru`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    Some(ms(ru.ru_utime) + ms(ru.ru_stime))
}

/// Resets the process's peak RSS (`VmHWM`); false if the kernel refused.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `VmHWM` of /proc/self/status, KiB.
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn run_sweep(cx: &JobCtx<'_>, vcpus: u32, rep: u32, s: &mut Samples) -> Result<JobOutcome> {
    let plan = cx.plan;
    let point = Point { variant: Variant::PvUpstream, vcpus, host_cpus: SWEEP_HOST_CPUS };
    let mut rc = plan.guest_config(&point, false, rep);
    rc.name = "bench-sweep".into();
    rc.duration_ms = plan.sweep_ms;
    rc.timeout_ms = plan.sweep_ms + 60_000;
    let rss_reset = reset_peak_rss();
    let cpu0 = process_cpu_ms();
    let rec = cx.vm(&rc, &format!("vcpus={vcpus},rep={rep}"))?;
    let cpu_ms = cpu0.zip(process_cpu_ms()).map(|(a, b)| b - a);
    let peak = if rss_reset { peak_rss_kib() } else { None };
    let what = format!("sweep pv-upstream {vcpus}v/{SWEEP_HOST_CPUS}h rep {rep}");
    let line = format!(
        "{what}: boot {:.2} ms (vCPU setup {:.2} ms), {:.0} acq/s, CPU {:.0} ms, peak RSS {} KiB [{}]",
        rec.timing.boot_us.unwrap_or(f64::NAN) / 1e3,
        rec.timing.vcpu_setup_us.unwrap_or(f64::NAN) / 1e3,
        rec.acquisitions_per_sec,
        cpu_ms.unwrap_or(f64::NAN),
        peak.map(|k| k.to_string()).unwrap_or_else(|| "?".into()),
        rec.status
    );
    s.sweep.push(SweepSample {
        vcpus,
        ok: rec.status.is_ok(),
        boot_us: rec.timing.boot_us,
        vcpu_setup_us: rec.timing.vcpu_setup_us,
        kick_setup_us: rec.timing.kick_setup_us,
        acq_per_sec: rec.acquisitions_per_sec,
        cpu_ms,
        wall_ms: rec.duration_ms,
        peak_rss_kib: peak,
    });
    Ok((line, not_ok(&rec, &what)))
}

pub fn summary(plan: &Plan, s: &Samples) -> Option<Sweep> {
    if s.sweep.is_empty() {
        return None;
    }
    let ok: Vec<&SweepSample> = s.sweep.iter().filter(|x| x.ok).collect();
    let mut rows = Vec::new();
    for &vcpus in &plan.sweep_vcpus {
        let runs: Vec<&SweepSample> = s.sweep.iter().filter(|x| x.vcpus == vcpus).collect();
        if runs.is_empty() {
            continue;
        }
        let at: Vec<&SweepSample> = ok.iter().copied().filter(|x| x.vcpus == vcpus).collect();
        let col =
            |f: &dyn Fn(&SweepSample) -> Option<f64>| Estimate::of(&at.iter().filter_map(|x| f(x)).collect::<Vec<_>>());
        rows.push(SweepRow {
            vcpus,
            host_cpus: SWEEP_HOST_CPUS,
            boot_ms: col(&|x| x.boot_us.map(|b| b / 1e3)),
            vcpu_setup_ms: col(&|x| x.vcpu_setup_us.map(|b| b / 1e3)),
            kick_setup_ms: col(&|x| x.kick_setup_us.map(|b| b / 1e3)),
            acq_per_sec: col(&|x| Some(x.acq_per_sec)),
            cpu_ms_per_vcpu_s: col(&|x| {
                x.cpu_ms.filter(|_| x.wall_ms > 0.0).map(|c| c / x.vcpus as f64 / (x.wall_ms / 1e3))
            }),
            peak_rss_mib: col(&|x| x.peak_rss_kib.map(|k| k as f64 / 1024.0)),
            ok_runs: at.len(),
            runs: runs.len(),
        });
    }
    let fit = |f: &dyn Fn(&SweepSample) -> Option<f64>| {
        Slope::fit(&ok.iter().filter_map(|x| f(x).map(|y| (x.vcpus as f64, y))).collect::<Vec<_>>())
    };
    Some(Sweep {
        rows,
        boot_slope_ms: fit(&|x| x.boot_us.map(|b| b / 1e3)),
        vcpu_setup_slope_ms: fit(&|x| x.vcpu_setup_us.map(|b| b / 1e3)),
        kick_setup_slope_ms: fit(&|x| x.kick_setup_us.map(|b| b / 1e3)),
        rss_slope_mib: fit(&|x| x.peak_rss_kib.map(|k| k as f64 / 1024.0)),
    })
}

/// No speed goal for the sweep (it is there so that a regression in how
/// cost grows shows up); the goal line states the boot slope and how much
/// of it the per-vCPU setup explains.
pub fn goals(r: &super::BenchResult, out: &mut Vec<Goal>) {
    let Some(sw) = &r.sweep else { return };
    let (b, v, k) = (sw.boot_slope_ms, sw.vcpu_setup_slope_ms, sw.kick_setup_slope_ms);
    let explained = v.map(|v| v.slope + k.map_or(0.0, |k| k.slope));
    out.push(Goal {
        goal: "boot-time slope explained: per-vCPU setup and kick registration account for >= 80% of it".into(),
        met: b.zip(explained).filter(|(b, _)| b.slope > 0.0).map(|(b, e)| e >= 0.8 * b.slope),
        detail: format!(
            "boot {} ms per vCPU, of which vCPU setup (KVM_CREATE_VCPU, kvm_run mmap, CPUID and register \
             ioctls, serial) {} ms and kick eventfds + KVM_IOEVENTFD registration {} ms per vCPU; peak RSS {} MiB \
             per vCPU ({} vCPU counts on {SWEEP_HOST_CPUS} host CPUs)",
            b.map(|s| s.show(3)).unwrap_or_else(|| "-".into()),
            v.map(|s| s.show(3)).unwrap_or_else(|| "-".into()),
            k.map(|s| s.show(3)).unwrap_or_else(|| "-".into()),
            sw.rss_slope_mib.map(|s| s.show(3)).unwrap_or_else(|| "-".into()),
            sw.rows.len()
        ),
    });
}
