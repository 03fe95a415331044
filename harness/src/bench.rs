//! `pvlock bench`: the testbed's own benchmark, built from the ordinary run
//! pieces ([`run_one`], [`run_repro`], the host-thread platform).
//!
//! 1. Mechanism costs through our ABI: the MMIO doorbell round trip, a kick
//!    store (ioeventfd), kick -> wake latency with `halt_poll_us` 0 and a
//!    tuned value, the cost of a disabled race window.
//! 2. Lock throughput and latency against vCPUs x host CPUs per variant,
//!    without and with random injected stalls.
//! 3. The same lock code on host threads (no VM), same thread counts: the
//!    guest/host ratio, and the uncontended `qspinlock` acquire+release.
//! 4. Median time-to-detect per reproducer over seeds.
//!
//! Every figure is measured over repeats and reported with its spread
//! ([`Spread`]); ratios carry a Fieller interval ([`stats::ratio_of_means`]).
//! Repeats are the outer loop, so slow drifts in the host's load spread over
//! every point instead of biasing one.
//!
//! Results go to `OUT/bench/<UTC stamp>/`: `bench.json` (rewritten after
//! every measurement, with the raw samples), `runs.jsonl` (every VM
//! record), and at the end `report.md` and SVG plots, which are pure
//! functions of `bench.json` ([`render`]).

// One module per measurement family: each owns its sample and summary
// types, runs its jobs (`run_*`) and states its goals (`goals`). A new
// family adds a module here, its `Job` variants, a `Samples` field, one arm
// in `run_job`, and its summary in `summarize` / `goals`.
pub mod detect;
pub mod host;
pub mod kernel;
pub mod render;
pub mod stats;
pub mod throughput;
pub mod wake;

pub use detect::{DetectRow, DetectSample};
pub use host::{HostSample, Uncontended, UncontendedSample};
pub use kernel::{KernelBench, KernelSample};
pub use throughput::{GuestSample, ThroughputRow};
pub use wake::{DoorbellSample, KickWake, PingPongSample};

use crate::config::RunConfig;
use crate::output::{append_line, write_atomic};
use crate::record::{now_utc, Record};
use crate::report::EnvInfo;
use crate::runner::run_one;
use anyhow::{Context, Result};
use pvlock_abi::Variant;
use pvlock_vmm::StopHandle;
use serde::{Deserialize, Serialize};
use stats::{Ratio, Spread};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const BENCH_SCHEMA_VERSION: u32 = 1;

/// The ratio named by the issue: acquisitions/s of `pv-upstream` over
/// `ticket` at 8 vCPUs on 2 host CPUs (4x overcommit), no injected stalls.
pub const RATIO_PV_OVER_TICKET: &str = "pv-upstream_over_ticket_4x";
/// The same with random injected stalls.
pub const RATIO_PV_OVER_TICKET_STALLS: &str = "pv-upstream_over_ticket_4x_stalls";
/// Uncontended `qspinlock` acquire+release, ns, guest over host thread.
pub const RATIO_UNCONTENDED: &str = "qspinlock_uncontended_guest_over_host";

/// Options of one `pvlock bench` invocation.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub quick: bool,
    /// Results go to `out/bench/<stamp>/`.
    pub out: PathBuf,
    /// Also write `bench.json` here.
    pub json: Option<PathBuf>,
    /// Print a line per measurement on stderr.
    pub progress: bool,
    /// Also measure this kernel tree's `kernel-pv` against `pv-upstream`.
    pub kernel_tree: Option<PathBuf>,
}

/// What one invocation measures. Plain data, stored in `bench.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub quick: bool,
    /// Repeats of every throughput point and host-thread point.
    pub repeats: u32,
    /// Repeats of each mechanism measurement and of the uncontended pair.
    pub mech_repeats: u32,
    /// Exits and kick stores timed per doorbells run.
    pub doorbell_iterations: u64,
    /// Round trips per ping-pong run.
    pub ping_pong_iterations: u64,
    /// The "tuned" halt poll, us. The ping-pong kicker waits 200 us before
    /// kicking (so that the peer really blocks): a poll shorter than that
    /// never wins, so the tuned value must exceed it.
    pub tuned_halt_poll_us: u64,
    pub vcpus: Vec<u32>,
    pub host_cpus: Vec<u32>,
    pub variants: Vec<Variant>,
    /// (vCPUs, host CPUs) points also run with random stalls.
    pub stall_points: Vec<(u32, u32)>,
    /// Guest-timed run length of throughput and host-thread runs, ms.
    pub duration_ms: u64,
    pub cs_ns: u32,
    pub think_ns: u32,
    /// Random stalls: mean interval per vCPU and mean length, us.
    pub stall_interval_us: u64,
    pub stall_us: u64,
    /// Run length of each uncontended guest / host run, ms.
    pub uncontended_ms: u64,
    pub repros: Vec<String>,
    pub seeds: u64,
    pub detect_budget_ms: u64,
    /// `--kernel-tree`: its `kernel-pv` is measured beside `pv-upstream`
    /// (uncontended, and contended at 8 vCPUs on 2 host CPUs).
    #[serde(default)]
    pub kernel_tree: Option<String>,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        let variants = vec![Variant::Ticket, Variant::Tas, Variant::Qspinlock, Variant::PvV48, Variant::PvUpstream];
        if quick {
            Plan {
                quick,
                repeats: 2,
                mech_repeats: 3,
                doorbell_iterations: 500,
                ping_pong_iterations: 200,
                tuned_halt_poll_us: 500,
                vcpus: vec![1, 2, 4, 8],
                host_cpus: vec![2],
                variants,
                stall_points: vec![(8, 2)],
                duration_ms: 200,
                cs_ns: 500,
                think_ns: 1000,
                stall_interval_us: 5000,
                stall_us: 500,
                uncontended_ms: 200,
                repros: vec!["double-hash".into()],
                seeds: 2,
                detect_budget_ms: 3000,
                kernel_tree: None,
            }
        } else {
            let (vcpus, host_cpus) = (vec![1, 2, 4, 8, 16], vec![1, 2]);
            let stall_points = host_cpus.iter().flat_map(|&h| vcpus.iter().map(move |&v| (v, h))).collect();
            Plan {
                quick,
                repeats: 3,
                mech_repeats: 8,
                doorbell_iterations: 3000,
                ping_pong_iterations: 1500,
                tuned_halt_poll_us: 500,
                vcpus,
                host_cpus,
                variants,
                stall_points,
                duration_ms: 500,
                cs_ns: 500,
                think_ns: 1000,
                stall_interval_us: 5000,
                stall_us: 500,
                uncontended_ms: 300,
                repros: crate::repro::catalog().iter().map(|r| r.name.to_string()).collect(),
                seeds: 5,
                detect_budget_ms: 4000,
                kernel_tree: None,
            }
        }
    }

    /// Every measurement, in run order: mechanism costs, then the
    /// throughput sweep and the host-thread runs repeat by repeat, then the
    /// uncontended pairs, then the reproducers.
    pub fn jobs(&self) -> Vec<Job> {
        let mut jobs = Vec::new();
        for rep in 0..self.mech_repeats {
            jobs.push(Job::Doorbells { rep });
            for halt_poll_us in [0, self.tuned_halt_poll_us] {
                jobs.push(Job::PingPong { halt_poll_us, rep });
            }
        }
        for rep in 0..self.repeats {
            for &h in &self.host_cpus {
                for &v in &self.vcpus {
                    for variant in &self.variants {
                        let p = Point { variant: *variant, vcpus: v, host_cpus: h };
                        jobs.push(Job::Guest { point: p.clone(), stalls: false, rep });
                        if self.stall_points.contains(&(v, h)) {
                            jobs.push(Job::Guest { point: p.clone(), stalls: true, rep });
                        }
                        jobs.push(Job::Host { point: p, rep });
                    }
                }
            }
        }
        for rep in 0..self.mech_repeats {
            jobs.push(Job::Uncontended { rep });
        }
        if self.kernel_tree.is_some() {
            for rep in 0..self.mech_repeats {
                for variant in kernel::KERNEL_PAIR {
                    jobs.push(Job::Kernel { variant, contended: false, rep });
                }
            }
            for rep in 0..self.repeats {
                for variant in kernel::KERNEL_PAIR {
                    jobs.push(Job::Kernel { variant, contended: true, rep });
                }
            }
        }
        for r in &self.repros {
            for i in 0..self.seeds {
                jobs.push(Job::Detect { repro: r.clone(), seed: 1 + i });
            }
        }
        jobs
    }
}

/// One throughput point.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Point {
    pub variant: Variant,
    pub vcpus: u32,
    pub host_cpus: u32,
}

/// One measurement.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    Doorbells {
        rep: u32,
    },
    PingPong {
        halt_poll_us: u64,
        rep: u32,
    },
    Guest {
        point: Point,
        stalls: bool,
        rep: u32,
    },
    Host {
        point: Point,
        rep: u32,
    },
    Uncontended {
        rep: u32,
    },
    /// `kernel-pv` or `pv-upstream`: uncontended (1 vCPU, cs = think = 0)
    /// or contended (the throughput point at 8 vCPUs on 2 host CPUs).
    Kernel {
        variant: Variant,
        contended: bool,
        rep: u32,
    },
    Detect {
        repro: String,
        seed: u64,
    },
}

/// Raw per-run values, everything the summary is computed from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    pub doorbells: Vec<DoorbellSample>,
    pub ping_pong: Vec<PingPongSample>,
    pub guest: Vec<GuestSample>,
    pub host: Vec<HostSample>,
    pub uncontended: Vec<UncontendedSample>,
    pub detect: Vec<DetectSample>,
    #[serde(default)]
    pub kernel: Vec<KernelSample>,
}

/// A goal of the issue and whether this invocation met it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub goal: String,
    /// `None`: not measured.
    pub met: Option<bool>,
    pub detail: String,
}

/// `bench.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub schema_version: u32,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub env: EnvInfo,
    /// /proc/loadavg (1, 5, 15 min) at the start and the end.
    pub load_start: Option<[f64; 3]>,
    pub load_end: Option<[f64; 3]>,
    pub plan: Plan,
    pub complete: bool,
    pub mmio_exit_us: Option<Spread>,
    pub kick_store_us: Option<Spread>,
    pub disabled_window_ns: Option<Spread>,
    /// Kick -> wake with `halt_poll_us = 0`.
    pub kick_wake_us: Option<KickWake>,
    /// Kick -> wake with `plan.tuned_halt_poll_us`.
    pub kick_wake_tuned_us: Option<KickWake>,
    pub throughput: Vec<ThroughputRow>,
    pub uncontended: Option<Uncontended>,
    /// With `--kernel-tree`: the kernel build beside pv-upstream.
    #[serde(default)]
    pub kernel: Option<KernelBench>,
    pub time_to_detect: Vec<DetectRow>,
    pub ratios: BTreeMap<String, Ratio>,
    pub goals: Vec<Goal>,
    /// Runs that did not end ok (their values are left out of the means).
    pub not_ok: Vec<String>,
    pub samples: Samples,
}

/// Where one invocation wrote its results.
pub struct BenchOutcome {
    pub dir: PathBuf,
    pub result: BenchResult,
    pub aborted: bool,
}

/// `pvlock bench`: runs the bench (Ctrl-C stops it with a partial
/// result), prints report.md and where the results are. Exit code 1 when
/// stopped.
pub fn command(opts: &BenchOptions, elf: &[u8]) -> Result<i32> {
    let stop = StopHandle::new();
    let s = stop.clone();
    let _ = ctrlc::set_handler(move || {
        eprintln!("pvlock: stopping (Ctrl-C); the partial results will be written");
        s.stop();
    });
    let o = run_bench(opts, elf, &stop)?;
    print!("{}", render::markdown(&o.result));
    println!("\nresults: {}{}", o.dir.display(), if o.aborted { " (ABORTED: partial)" } else { "" });
    Ok(if o.aborted { 1 } else { 0 })
}

/// Runs the bench and writes its results; `Err` only when a machine could
/// not be built or a file not written.
pub fn run_bench(opts: &BenchOptions, elf: &[u8], stop: &StopHandle) -> Result<BenchOutcome> {
    let mut plan = Plan::new(opts.quick);
    plan.kernel_tree = opts.kernel_tree.as_ref().map(|t| t.display().to_string());
    let dir = opts.out.join("bench").join(now_utc().replace(['-', ':'], ""));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let env = EnvInfo::collect();
    let started_at = now_utc();
    let load_start = load_avg();
    let jobs = plan.jobs();
    let mut samples = Samples::default();
    let mut not_ok = Vec::new();
    let t0 = Instant::now();
    let jsonl = dir.join("runs.jsonl");
    let cx = JobCtx { plan: &plan, elf, stop, jsonl: &jsonl };
    let write = |samples: &Samples, not_ok: &[String], done: bool| -> Result<BenchResult> {
        let mut r = summarize(&plan, samples);
        r.started_at = started_at.clone();
        r.env = env.clone();
        r.load_start = load_start;
        r.not_ok = not_ok.to_vec();
        if done {
            r.finished_at = Some(now_utc());
            r.load_end = load_avg();
            r.complete = true;
        }
        let body = serde_json::to_vec_pretty(&r)?;
        write_atomic(&dir.join("bench.json"), &body)?;
        if let Some(p) = &opts.json {
            write_atomic(p, &body)?;
        }
        Ok(r)
    };
    for (i, job) in jobs.iter().enumerate() {
        if stop.is_stopped() {
            break;
        }
        let (line, bad) = run_job(&cx, job, &mut samples)?;
        if let Some(b) = bad {
            not_ok.push(b);
        }
        if opts.progress {
            eprintln!("[{:>3}/{} {:>5.1} s] {line}", i + 1, jobs.len(), t0.elapsed().as_secs_f64());
        }
        write(&samples, &not_ok, false)?;
    }
    let aborted = stop.is_stopped();
    let result = write(&samples, &not_ok, !aborted)?;
    for (name, body) in render::files(&result) {
        write_atomic(&dir.join(name), body.as_bytes())?;
    }
    Ok(BenchOutcome { dir, result, aborted })
}

/// What every job gets: the plan, the guest, the stop handle and the
/// file every VM record is appended to.
pub struct JobCtx<'a> {
    pub plan: &'a Plan,
    pub elf: &'a [u8],
    pub stop: &'a StopHandle,
    pub jsonl: &'a Path,
}

impl JobCtx<'_> {
    /// Runs one VM and appends its record to `runs.jsonl`.
    pub fn vm(&self, rc: &RunConfig, key: &str) -> Result<Record> {
        rc.validate().map_err(|e| anyhow::anyhow!("bench config {e}"))?;
        let rec = run_one(rc, key, self.elf, self.stop)?;
        append_line(self.jsonl, &serde_json::to_string(&rec)?)?;
        Ok(rec)
    }
}

/// A job's progress line and, for a run that did not end ok, what it was.
pub type JobOutcome = (String, Option<String>);

/// `what: status (summary)` for a run that did not end ok.
pub fn not_ok(rec: &Record, what: &str) -> Option<String> {
    (!rec.status.is_ok()).then(|| format!("{what}: {} ({})", rec.status, rec.summary))
}

/// Runs one job and adds its sample.
fn run_job(cx: &JobCtx<'_>, job: &Job, s: &mut Samples) -> Result<JobOutcome> {
    match job {
        Job::Doorbells { rep } => wake::run_doorbells(cx, *rep, s),
        Job::PingPong { halt_poll_us, rep } => wake::run_ping_pong(cx, *halt_poll_us, *rep, s),
        Job::Guest { point, stalls, rep } => throughput::run_guest(cx, point, *stalls, *rep, s),
        Job::Host { point, rep } => host::run_host(cx, point, *rep, s),
        Job::Uncontended { rep } => host::run_uncontended(cx, *rep, s),
        Job::Kernel { variant, contended, rep } => kernel::run_kernel(cx, *variant, *contended, *rep, s),
        Job::Detect { repro, seed } => detect::run_detect(cx, repro, *seed, s),
    }
}

/// /proc/loadavg's three averages.
pub fn load_avg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The summary: a pure function of the plan and the raw samples.
pub fn summarize(plan: &Plan, s: &Samples) -> BenchResult {
    let col = |f: fn(&DoorbellSample) -> Option<f64>| -> Vec<f64> { s.doorbells.iter().filter_map(f).collect() };
    let mut ratios = BTreeMap::new();
    throughput::ratios(s, &mut ratios);
    let uncontended = host::uncontended(s, &mut ratios);
    let mut r = BenchResult {
        schema_version: BENCH_SCHEMA_VERSION,
        started_at: String::new(),
        finished_at: None,
        env: EnvInfo::default(),
        load_start: None,
        load_end: None,
        plan: plan.clone(),
        complete: false,
        mmio_exit_us: Spread::of(&col(|d| Some(d.mmio_exit_us))),
        kick_store_us: Spread::of(&col(|d| Some(d.kick_store_us))),
        disabled_window_ns: Spread::of(&col(|d| d.disabled_window_ns)),
        kick_wake_us: wake::kick_wake(&s.ping_pong, 0),
        kick_wake_tuned_us: wake::kick_wake(&s.ping_pong, plan.tuned_halt_poll_us),
        throughput: throughput::rows(plan, s),
        uncontended,
        kernel: kernel::kernel_bench(plan, s),
        time_to_detect: detect::rows(plan, s),
        ratios,
        goals: Vec::new(),
        not_ok: Vec::new(),
        samples: s.clone(),
    };
    r.goals = goals(&r);
    r
}

impl BenchResult {
    /// The throughput row of a point.
    pub fn row(&self, variant: Variant, vcpus: u32, host_cpus: u32, stalls: &str) -> Option<&ThroughputRow> {
        self.throughput
            .iter()
            .find(|r| r.variant == variant && r.vcpus == vcpus && r.host_cpus == host_cpus && r.stalls == stalls)
    }
}

/// The goals against this result, each with the numbers behind it,
/// family by family.
pub fn goals(r: &BenchResult) -> Vec<Goal> {
    let mut out = Vec::new();
    wake::goals(r, &mut out);
    throughput::goals(r, &mut out);
    host::goals(r, &mut out);
    kernel::goals(r, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;
    use pvlock_vmm::RunStatus;

    fn guest(variant: Variant, vcpus: u32, stalls: bool, acq: f64, ok: bool) -> GuestSample {
        GuestSample {
            point: Point { variant, vcpus, host_cpus: 2 },
            stalls,
            ok,
            status: if ok { RunStatus::Ok } else { RunStatus::Hang },
            acq_per_sec: acq,
            latency_p50_ns: 100,
            latency_p99_ns: 1000,
            blocked_waits_per_kacq: 0.0,
        }
    }

    fn pp(halt_poll_us: u64, p50: u64, max: u64) -> PingPongSample {
        PingPongSample { halt_poll_us, kick_wake_ns: Percentiles { count: 10, p50, p99: max, max }, ok: true }
    }

    #[test]
    fn quick_plan_is_small_and_ordered() {
        let p = Plan::new(true);
        let jobs = p.jobs();
        // 3 x (doorbells + 2 ping-pongs); 2 x 4 x 5 x (guest + host) + 2 x 5 stalls; 3 pairs; 2 seeds.
        assert_eq!(jobs.len(), 9 + 80 + 10 + 3 + 2);
        assert_eq!(jobs[0], Job::Doorbells { rep: 0 });
        assert!(p.tuned_halt_poll_us > 200, "a tuned poll must outlast the ping-pong's 200 us pre-kick wait");
        let rc = p.guest_config(&Point { variant: Variant::Ticket, vcpus: 8, host_cpus: 2 }, true, 1);
        assert!(rc.validate().is_ok());
        assert_eq!(rc.preempt.random_mean_interval_us, p.stall_interval_us);
        assert!(Plan::new(false).jobs().len() > jobs.len());
    }

    #[test]
    fn kernel_pair_is_measured_only_with_a_tree() {
        let mut p = Plan::new(true);
        assert!(!p.jobs().iter().any(|j| matches!(j, Job::Kernel { .. })));
        p.kernel_tree = Some("/nonexistent".into());
        let n = p.jobs().iter().filter(|j| matches!(j, Job::Kernel { .. })).count();
        assert_eq!(n as u32, 2 * (p.mech_repeats + p.repeats));
        let k = |variant: Variant, contended: bool, aps: f64| KernelSample {
            variant,
            contended,
            ok: true,
            acq_per_sec: aps,
        };
        let s = Samples {
            kernel: vec![
                k(Variant::KernelPv, false, 4e6),
                k(Variant::KernelPv, false, 5e6),
                k(Variant::PvUpstream, false, 5e6),
                k(Variant::PvUpstream, false, 4e6),
                k(Variant::KernelPv, true, 1000.0),
                k(Variant::PvUpstream, true, 2000.0),
            ],
            ..Default::default()
        };
        let r = summarize(&p, &s);
        let kb = r.kernel.as_ref().expect("kernel figures");
        assert!((kb.uncontended_ratio.value - 1.0).abs() < 1e-9);
        assert_eq!(kb.contended_ratio.unwrap().value, 0.5);
        let g = r.goals.iter().find(|g| g.goal.starts_with("kernel-pv uncontended")).unwrap();
        assert_eq!(g.met, Some(true));
    }

    #[test]
    fn summary_of_made_up_samples() {
        let p = Plan::new(true);
        let s = Samples {
            doorbells: vec![
                DoorbellSample { mmio_exit_us: 30.0, kick_store_us: 3.0, disabled_window_ns: Some(0.5) },
                DoorbellSample { mmio_exit_us: 40.0, kick_store_us: 4.0, disabled_window_ns: Some(0.7) },
            ],
            ping_pong: vec![pp(0, 60_000, 200_000), pp(0, 70_000, 300_000), pp(500, 20_000, 90_000)],
            guest: vec![
                guest(Variant::PvUpstream, 8, false, 400.0, true),
                guest(Variant::PvUpstream, 8, false, 440.0, true),
                guest(Variant::Ticket, 8, false, 20.0, true),
                guest(Variant::Ticket, 8, false, 22.0, true),
                // A hung run is counted, not averaged.
                guest(Variant::Ticket, 8, false, 1e9, false),
            ],
            host: vec![HostSample {
                point: Point { variant: Variant::Ticket, vcpus: 8, host_cpus: 2 },
                ok: true,
                acq_per_sec: 10.0,
            }],
            uncontended: vec![
                UncontendedSample { guest_ns: 80.0, host_ns: 100.0 },
                UncontendedSample { guest_ns: 84.0, host_ns: 104.0 },
            ],
            detect: vec![],
            kernel: vec![],
        };
        let r = summarize(&p, &s);
        assert_eq!(r.kernel, None, "no --kernel-tree, no kernel figures");
        assert_eq!(r.mmio_exit_us.unwrap().mean, 35.0);
        assert!((r.disabled_window_ns.unwrap().mean - 0.6).abs() < 1e-12);
        let k = r.kick_wake_us.as_ref().unwrap();
        assert_eq!((k.p50, k.max, k.count), (65.0, 300.0, 20));
        assert_eq!(r.kick_wake_tuned_us.as_ref().unwrap().p50, 20.0);
        let ratio = r.ratios[RATIO_PV_OVER_TICKET];
        assert!((ratio.value - 20.0).abs() < 1e-9);
        assert!(!r.ratios.contains_key(RATIO_PV_OVER_TICKET_STALLS));
        assert!((r.ratios[RATIO_UNCONTENDED].value - 82.0 / 102.0).abs() < 1e-12);
        let t = r.row(Variant::Ticket, 8, 2, "none").unwrap();
        assert_eq!((t.ok_runs, t.runs), (2, 3));
        assert_eq!(t.host_acq_per_sec.unwrap().n, 1);
        // One host value: a ratio without an interval.
        assert!(t.guest_over_host.unwrap().ci95_lo.is_none());
        assert_eq!(r.goals.iter().map(|g| g.met).collect::<Vec<_>>(), vec![Some(true), Some(true), Some(true)]);
        let md = render::markdown(&r);
        assert!(md.contains("| `pv-upstream_over_ticket_4x` | 20.000 ["), "{md}");
        assert!(md.contains("| MMIO doorbell round trip | 35.00 ± "), "{md}");
        for (name, body) in render::files(&r) {
            assert!(!body.contains("cannot draw"), "{name}: {body}");
        }
    }
}
