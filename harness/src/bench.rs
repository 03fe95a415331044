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

pub mod kernel_detect;
pub mod render;
pub mod stats;

use crate::config::RunConfig;
use crate::output::{append_line, write_atomic};
use crate::record::{now_utc, Record};
use crate::report::EnvInfo;
use crate::repro::{find, run_repro, Mode};
use crate::runner::run_one;
use crate::stats::Percentiles;
use anyhow::{Context, Result};
use pvlock_abi::{TortureParams, Variant, Workload};
use pvlock_guest_lib::host::{run_torture, HostRunSpec};
use pvlock_guest_lib::{default_hash_bits, LockConfig, DEFAULT_SPIN_THRESHOLD};
use pvlock_vmm::RunStatus;
use pvlock_vmm::StopHandle;
use serde::{Deserialize, Serialize};
use stats::{median, ratio_of_means, Ratio, Spread};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bumped when a field of [`BenchResult`] changes meaning or is removed.
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
                for variant in KERNEL_PAIR {
                    jobs.push(Job::Kernel { variant, contended: false, rep });
                }
            }
            for rep in 0..self.repeats {
                for variant in KERNEL_PAIR {
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

    /// The throughput run of `point`.
    pub fn guest_config(&self, point: &Point, stalls: bool, rep: u32) -> RunConfig {
        let mut rc = RunConfig {
            name: "bench".into(),
            workload: Workload::Torture,
            vcpus: point.vcpus,
            host_cpus: point.host_cpus,
            seed: 1 + rep as u64,
            duration_ms: self.duration_ms,
            timeout_ms: self.duration_ms + 60_000,
            ..Default::default()
        };
        rc.lock.variant = point.variant;
        rc.torture.locks = 1;
        rc.torture.cs_ns = self.cs_ns;
        rc.torture.think_ns = self.think_ns;
        // As configs/overcommit-sweep.toml: a missed wakeup is counted and
        // rescued, not the end of the run.
        rc.hypervisor.rescue = true;
        rc.hypervisor.stall_timeout_ms = 500;
        if stalls {
            rc.preempt.random_mean_interval_us = self.stall_interval_us;
            rc.preempt.random_stall_us = self.stall_us;
        }
        rc
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

/// The kernel build and the Rust variant it is measured against.
const KERNEL_PAIR: [Variant; 2] = [Variant::PvUpstream, Variant::KernelPv];

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

/// One `Job::Kernel` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelSample {
    pub variant: Variant,
    pub contended: bool,
    pub ok: bool,
    pub acq_per_sec: f64,
}

/// `kernel-pv` of `plan.kernel_tree` against `pv-upstream`, in one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelBench {
    /// The tree's version (its Makefile).
    pub version: String,
    /// ns per uncontended acquire+release, torture loop included.
    pub uncontended_kernel_ns: Spread,
    pub uncontended_rust_ns: Spread,
    /// kernel-pv over pv-upstream, ns.
    pub uncontended_ratio: Ratio,
    /// Acquisitions/s at 8 vCPUs on 2 host CPUs.
    pub contended_kernel_aps: Option<Spread>,
    pub contended_rust_aps: Option<Spread>,
    pub contended_ratio: Option<Ratio>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoorbellSample {
    /// Mean MMIO doorbell round trip, us.
    pub mmio_exit_us: f64,
    /// Mean kick store (ioeventfd), us.
    pub kick_store_us: f64,
    /// Disabled race window, ns per call.
    pub disabled_window_ns: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingPongSample {
    pub halt_poll_us: u64,
    /// Kick -> wake of this run, ns (histogram bucket lower bounds).
    pub kick_wake_ns: Percentiles,
    pub ok: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestSample {
    #[serde(flatten)]
    pub point: Point,
    pub stalls: bool,
    pub ok: bool,
    pub status: RunStatus,
    pub acq_per_sec: f64,
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    /// Blocking waits (pv_wait that blocked the vCPU thread) per 1000
    /// acquisitions.
    pub blocked_waits_per_kacq: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    #[serde(flatten)]
    pub point: Point,
    /// No violation, panic or hang.
    pub ok: bool,
    pub acq_per_sec: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UncontendedSample {
    /// ns per acquire+release (with the torture loop around it), guest.
    pub guest_ns: f64,
    pub host_ns: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectSample {
    pub repro: String,
    pub variant: Variant,
    pub seed: u64,
    pub detected: bool,
    pub time_to_detect_s: Option<f64>,
}

/// Kick -> wake latency over repeats, us. `p50`/`p99` are the means over
/// repeats of each run's percentile, `max` the largest of any run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KickWake {
    pub halt_poll_us: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub p50_spread: Spread,
    pub p99_spread: Spread,
    pub max_spread: Spread,
    /// Round trips over all repeats.
    pub count: u64,
}

/// One row of the throughput table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThroughputRow {
    pub variant: Variant,
    pub vcpus: u32,
    pub host_cpus: u32,
    /// `none` or `random` (injected stalls).
    pub stalls: String,
    /// Acquisitions/s over the ok runs.
    pub acq_per_sec: Option<Spread>,
    pub latency_p50_ns: Option<Spread>,
    pub latency_p99_ns: Option<Spread>,
    pub blocked_waits_per_kacq: Option<Spread>,
    pub ok_runs: usize,
    pub runs: usize,
    /// The same lock code on as many host threads (no stalls rows only).
    pub host_acq_per_sec: Option<Spread>,
    /// Guest acquisitions/s over host-thread acquisitions/s.
    pub guest_over_host: Option<Ratio>,
}

/// Uncontended `qspinlock`: 1 vCPU on 1 host CPU against 1 host thread on
/// 1 host CPU, `cs_ns = think_ns = 0`, ns per acquisition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Uncontended {
    pub guest_ns: Spread,
    pub host_ns: Spread,
    pub guest_over_host: Ratio,
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
        let (line, bad) = run_job(&plan, job, elf, stop, &mut samples, &dir.join("runs.jsonl"))?;
        if let Some(b) = bad {
            not_ok.push(b);
        }
        if opts.progress {
            eprintln!("[{:>3}/{} {:>5.1} s] {line}", i + 1, jobs.len(), t0.elapsed().as_secs_f64());
        }
        write(&samples, &not_ok, false)?;
    }
    if let (Some(tree), false) = (&opts.kernel_tree, stop.is_stopped()) {
        let rows = kernel_detect::measure(&plan, tree, elf, stop, |l| eprintln!("{l}"))?;
        write_atomic(&dir.join("kernel_detect.json"), &serde_json::to_vec_pretty(&rows)?)?;
        write_atomic(&dir.join("kernel_detect.md"), kernel_detect::markdown(&rows).as_bytes())?;
    }
    let aborted = stop.is_stopped();
    let result = write(&samples, &not_ok, !aborted)?;
    for (name, body) in render::files(&result) {
        write_atomic(&dir.join(name), body.as_bytes())?;
    }
    Ok(BenchOutcome { dir, result, aborted })
}

/// Runs one job, adds its sample; returns a progress line and, for a run
/// that did not end ok, what it was.
fn run_job(
    plan: &Plan,
    job: &Job,
    elf: &[u8],
    stop: &StopHandle,
    s: &mut Samples,
    jsonl: &Path,
) -> Result<(String, Option<String>)> {
    let vm = |rc: &RunConfig, key: &str| -> Result<Record> {
        rc.validate().map_err(|e| anyhow::anyhow!("bench config {e}"))?;
        let rec = run_one(rc, key, elf, stop)?;
        append_line(jsonl, &serde_json::to_string(&rec)?)?;
        Ok(rec)
    };
    let bad =
        |rec: &Record, what: &str| (!rec.status.is_ok()).then(|| format!("{what}: {} ({})", rec.status, rec.summary));
    Ok(match job {
        Job::Doorbells { rep } => {
            let rc = RunConfig {
                name: "bench-doorbells".into(),
                workload: Workload::Doorbells,
                vcpus: 1,
                host_cpus: 1,
                seed: 1 + *rep as u64,
                iterations: plan.doorbell_iterations,
                ..Default::default()
            };
            let rec = vm(&rc, &format!("rep={rep}"))?;
            let t = &rec.timing;
            let what = format!("doorbells rep {rep}");
            let line = format!(
                "{what}: MMIO exit {:.2} us, kick store {:.2} us, disabled window {:.3} ns",
                t.mmio_exit_us.unwrap_or(f64::NAN),
                t.kick_store_us.unwrap_or(f64::NAN),
                t.disabled_window_ns.unwrap_or(f64::NAN)
            );
            if let (true, Some(m), Some(k)) = (rec.status.is_ok(), t.mmio_exit_us, t.kick_store_us) {
                s.doorbells.push(DoorbellSample {
                    mmio_exit_us: m,
                    kick_store_us: k,
                    disabled_window_ns: t.disabled_window_ns,
                });
            }
            (line, bad(&rec, &what))
        }
        Job::PingPong { halt_poll_us, rep } => {
            let mut rc = RunConfig {
                name: "bench-ping-pong".into(),
                workload: Workload::PingPong,
                vcpus: 2,
                host_cpus: 2,
                seed: 1 + *rep as u64,
                iterations: plan.ping_pong_iterations,
                ..Default::default()
            };
            rc.hypervisor.halt_poll_us = *halt_poll_us;
            let rec = vm(&rc, &format!("halt_poll_us={halt_poll_us},rep={rep}"))?;
            let k = rec.timing.kick_wake_ns.unwrap_or_default();
            let what = format!("ping-pong halt_poll_us={halt_poll_us} rep {rep}");
            let line = format!("{what}: kick -> wake p50 {} ns, p99 {} ns, max {} ns", k.p50, k.p99, k.max);
            let ok = rec.status.is_ok() && k.count > 0;
            s.ping_pong.push(PingPongSample { halt_poll_us: *halt_poll_us, kick_wake_ns: k, ok });
            (line, bad(&rec, &what))
        }
        Job::Guest { point, stalls, rep } => {
            let rc = plan.guest_config(point, *stalls, *rep);
            let st = if *stalls { "random stalls" } else { "no stalls" };
            let key = format!(
                "variant={},vcpus={},host_cpus={},stalls={stalls},rep={rep}",
                point.variant, point.vcpus, point.host_cpus
            );
            let rec = vm(&rc, &key)?;
            let waits = rec.vmm.get("waits_blocked").copied().unwrap_or(0) as f64;
            let what = format!("guest {} {}v/{}h {st} rep {rep}", point.variant, point.vcpus, point.host_cpus);
            let line = format!("{what}: {:.0} acq/s [{}]", rec.acquisitions_per_sec, rec.status);
            s.guest.push(GuestSample {
                point: point.clone(),
                stalls: *stalls,
                ok: rec.status.is_ok(),
                status: rec.status,
                acq_per_sec: rec.acquisitions_per_sec,
                latency_p50_ns: rec.latency_ns.p50,
                latency_p99_ns: rec.latency_ns.p99,
                blocked_waits_per_kacq: if rec.acquisitions > 0 { waits * 1e3 / rec.acquisitions as f64 } else { 0.0 },
            });
            (line, bad(&rec, &what))
        }
        Job::Host { point, rep } => {
            let variant = point.variant;
            let torture = TortureParams {
                nr_locks: 1,
                nest: 1,
                cs_ns: plan.cs_ns,
                think_ns: plan.think_ns,
                irq_prob: 0,
                irq_max_depth: 0,
                max_acquisitions: 0,
            };
            let (acq_per_sec, ok) =
                host_torture(variant, torture, point.vcpus, point.host_cpus, plan.duration_ms, *rep)?;
            let what = format!("host {} {} threads/{}h rep {rep}", point.variant, point.vcpus, point.host_cpus);
            s.host.push(HostSample { point: point.clone(), ok, acq_per_sec });
            let line = format!("{what}: {acq_per_sec:.0} acq/s{}", if ok { "" } else { " [NOT CLEAN]" });
            (line, (!ok).then(|| format!("{what}: not clean")))
        }
        Job::Uncontended { rep } => {
            let mut rc = RunConfig {
                name: "bench-uncontended".into(),
                workload: Workload::Torture,
                vcpus: 1,
                host_cpus: 1,
                seed: 1 + *rep as u64,
                duration_ms: plan.uncontended_ms,
                ..Default::default()
            };
            rc.lock.variant = Variant::Qspinlock;
            rc.torture.cs_ns = 0;
            rc.torture.think_ns = 0;
            let rec = vm(&rc, &format!("rep={rep}"))?;
            let torture = TortureParams {
                nr_locks: 1,
                nest: 1,
                cs_ns: 0,
                think_ns: 0,
                irq_prob: 0,
                irq_max_depth: 0,
                max_acquisitions: 0,
            };
            let (host_aps, host_ok) = host_torture(Variant::Qspinlock, torture, 1, 1, plan.uncontended_ms, *rep)?;
            let (g, h) = (1e9 / rec.acquisitions_per_sec, 1e9 / host_aps);
            let what = format!("uncontended qspinlock rep {rep}");
            if rec.status.is_ok() && host_ok && g.is_finite() && h.is_finite() {
                s.uncontended.push(UncontendedSample { guest_ns: g, host_ns: h });
            }
            (format!("{what}: guest {g:.1} ns, host thread {h:.1} ns per acquisition"), bad(&rec, &what))
        }
        Job::Kernel { variant, contended, rep } => {
            let point = Point { variant: *variant, vcpus: 8, host_cpus: 2 };
            let mut rc = if *contended {
                plan.guest_config(&point, false, *rep)
            } else {
                let mut rc = RunConfig {
                    name: "bench-uncontended".into(),
                    workload: Workload::Torture,
                    vcpus: 1,
                    host_cpus: 1,
                    seed: 1 + *rep as u64,
                    duration_ms: plan.uncontended_ms,
                    ..Default::default()
                };
                rc.lock.variant = *variant;
                rc.torture.cs_ns = 0;
                rc.torture.think_ns = 0;
                rc
            };
            rc.lock.kernel_tree = plan.kernel_tree.as_ref().map(PathBuf::from);
            let key = format!("variant={variant},contended={contended},rep={rep}");
            let rec = vm(&rc, &key)?;
            let what = format!("{} {variant} rep {rep}", if *contended { "contended 8v/2h" } else { "uncontended" });
            s.kernel.push(KernelSample {
                variant: *variant,
                contended: *contended,
                ok: rec.status == "ok",
                acq_per_sec: rec.acquisitions_per_sec,
            });
            let line = if *contended {
                format!("{what}: {:.0} acq/s [{}]", rec.acquisitions_per_sec, rec.status)
            } else {
                format!("{what}: {:.1} ns per acquisition [{}]", 1e9 / rec.acquisitions_per_sec, rec.status)
            };
            (line, bad(&rec, &what))
        }
        Job::Detect { repro, seed } => {
            let r = find(repro)?;
            let res =
                run_repro(&r, r.default_variant, Mode::Random, 1, *seed, plan.detect_budget_ms, elf, stop, |_| {})?;
            let o = res.runs.first().context("run_repro returned no run")?;
            s.detect.push(DetectSample {
                repro: repro.clone(),
                variant: r.default_variant,
                seed: *seed,
                detected: o.detected,
                time_to_detect_s: o.time_to_detect_s,
            });
            let line = format!(
                "detect {repro} on {} seed {seed}: {}",
                r.default_variant,
                o.time_to_detect_s.map(|t| format!("detected in {t:.2} s")).unwrap_or_else(|| "not detected".into())
            );
            (line, None)
        }
    })
}

/// Lock torture on `threads` host threads confined to the first
/// `host_cpus` CPUs this process may use (the threads inherit the mask of
/// the thread that spawns them; unlike the VMM's one-CPU-per-vCPU pinning,
/// they may move between those CPUs). `yield_every = 0`: spinning threads
/// never yield, as spinning vCPUs do not. Returns (acquisitions/s, clean).
fn host_torture(
    variant: Variant,
    torture: TortureParams,
    threads: u32,
    host_cpus: u32,
    duration_ms: u64,
    rep: u32,
) -> Result<(f64, bool)> {
    let lock = LockConfig { variant, spin_threshold: DEFAULT_SPIN_THRESHOLD, hash_bits: default_hash_bits(threads) };
    let mut spec = HostRunSpec::new(lock, torture, threads);
    spec.seed = 1 + rep as u64;
    spec.duration = Duration::from_millis(duration_ms);
    spec.yield_every = 0;
    spec.watchdog = Duration::from_millis(duration_ms + 30_000);
    let run = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("pvlock-bench-host".into())
            .spawn_scoped(s, || {
                confine_to_first(host_cpus as usize);
                run_torture(&spec)
            })
            .expect("spawn the host-run thread")
            .join()
    });
    let run = match run {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => anyhow::bail!("host torture parameters: {e}"),
        Err(_) => anyhow::bail!("the host torture thread panicked"),
    };
    Ok((run.acquisitions() as f64 / (duration_ms as f64 / 1e3), run.is_clean()))
}

/// Restricts the calling thread to the first `n` CPUs it may use now.
fn confine_to_first(n: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most sizeof(cpu_set_t) bytes into it; pid 0 is this thread.
    unsafe {
        let mut cur: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut cur) != 0 {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let allowed = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &cur));
        for c in allowed.take(n.max(1)) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// /proc/loadavg's three averages.
pub fn load_avg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn kick_wake(samples: &[PingPongSample], halt_poll_us: u64) -> Option<KickWake> {
    let runs: Vec<&Percentiles> =
        samples.iter().filter(|p| p.ok && p.halt_poll_us == halt_poll_us).map(|p| &p.kick_wake_ns).collect();
    let us = |f: fn(&Percentiles) -> u64| -> Vec<f64> { runs.iter().map(|p| f(p) as f64 / 1e3).collect() };
    let (p50, p99, max) = (Spread::of(&us(|p| p.p50))?, Spread::of(&us(|p| p.p99))?, Spread::of(&us(|p| p.max))?);
    Some(KickWake {
        halt_poll_us,
        p50: p50.mean,
        p99: p99.mean,
        max: max.max,
        p50_spread: p50,
        p99_spread: p99,
        max_spread: max,
        count: runs.iter().map(|p| p.count).sum(),
    })
}

/// The summary: a pure function of the plan and the raw samples.
pub fn summarize(plan: &Plan, s: &Samples) -> BenchResult {
    let col = |f: fn(&DoorbellSample) -> Option<f64>| -> Vec<f64> { s.doorbells.iter().filter_map(f).collect() };
    let mut throughput = Vec::new();
    for &h in &plan.host_cpus {
        for &v in &plan.vcpus {
            for variant in &plan.variants {
                let p = Point { variant: *variant, vcpus: v, host_cpus: h };
                for stalls in [false, true] {
                    let runs: Vec<&GuestSample> =
                        s.guest.iter().filter(|g| g.point == p && g.stalls == stalls).collect();
                    if runs.is_empty() {
                        continue;
                    }
                    let ok: Vec<&GuestSample> = runs.iter().copied().filter(|g| g.ok).collect();
                    let of = |f: fn(&GuestSample) -> f64| Spread::of(&ok.iter().map(|g| f(g)).collect::<Vec<_>>());
                    let guest: Vec<f64> = ok.iter().map(|g| g.acq_per_sec).collect();
                    let host: Vec<f64> = if stalls {
                        Vec::new()
                    } else {
                        s.host.iter().filter(|x| x.point == p && x.ok).map(|x| x.acq_per_sec).collect()
                    };
                    throughput.push(ThroughputRow {
                        variant: *variant,
                        vcpus: v,
                        host_cpus: h,
                        stalls: if stalls { "random" } else { "none" }.into(),
                        acq_per_sec: Spread::of(&guest),
                        latency_p50_ns: of(|g| g.latency_p50_ns as f64),
                        latency_p99_ns: of(|g| g.latency_p99_ns as f64),
                        blocked_waits_per_kacq: of(|g| g.blocked_waits_per_kacq),
                        ok_runs: ok.len(),
                        runs: runs.len(),
                        host_acq_per_sec: Spread::of(&host),
                        guest_over_host: ratio_of_means(&guest, &host),
                    });
                }
            }
        }
    }
    let acq = |variant: Variant, stalls: bool| -> Vec<f64> {
        s.guest
            .iter()
            .filter(|g| g.ok && g.point.variant == variant && g.point.vcpus == 8 && g.point.host_cpus == 2)
            .filter(|g| g.stalls == stalls)
            .map(|g| g.acq_per_sec)
            .collect()
    };
    let mut ratios = BTreeMap::new();
    for (name, stalls) in [(RATIO_PV_OVER_TICKET, false), (RATIO_PV_OVER_TICKET_STALLS, true)] {
        if let Some(r) = ratio_of_means(&acq(Variant::PvUpstream, stalls), &acq(Variant::Ticket, stalls)) {
            ratios.insert(name.to_string(), r);
        }
    }
    let g: Vec<f64> = s.uncontended.iter().map(|u| u.guest_ns).collect();
    let h: Vec<f64> = s.uncontended.iter().map(|u| u.host_ns).collect();
    let uncontended = match (Spread::of(&g), Spread::of(&h), ratio_of_means(&g, &h)) {
        (Some(guest_ns), Some(host_ns), Some(r)) => {
            ratios.insert(RATIO_UNCONTENDED.to_string(), r);
            Some(Uncontended { guest_ns, host_ns, guest_over_host: r })
        }
        _ => None,
    };
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
        kick_wake_us: kick_wake(&s.ping_pong, 0),
        kick_wake_tuned_us: kick_wake(&s.ping_pong, plan.tuned_halt_poll_us),
        throughput,
        uncontended,
        kernel: kernel_bench(plan, s),
        time_to_detect,
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

/// The goals against this result, each with the numbers behind it.
/// The kernel build's numbers beside pv-upstream's, if they were measured.
fn kernel_bench(plan: &Plan, s: &Samples) -> Option<KernelBench> {
    let tree = plan.kernel_tree.as_ref()?;
    let pick = |variant: Variant, contended: bool| -> Vec<f64> {
        s.kernel
            .iter()
            .filter(|k| k.ok && k.variant == variant && k.contended == contended && k.acq_per_sec > 0.0)
            .map(|k| if contended { k.acq_per_sec } else { 1e9 / k.acq_per_sec })
            .collect()
    };
    let (kn, rn) = (pick(Variant::KernelPv, false), pick(Variant::PvUpstream, false));
    let (kc, rc) = (pick(Variant::KernelPv, true), pick(Variant::PvUpstream, true));
    let version = crate::kernel::Tree::open(Path::new(tree)).map(|t| t.version).unwrap_or_else(|_| "?".into());
    Some(KernelBench {
        version,
        uncontended_kernel_ns: Spread::of(&kn)?,
        uncontended_rust_ns: Spread::of(&rn)?,
        uncontended_ratio: ratio_of_means(&kn, &rn)?,
        contended_kernel_aps: Spread::of(&kc),
        contended_rust_aps: Spread::of(&rc),
        contended_ratio: ratio_of_means(&kc, &rc),
    })
}

pub fn goals(r: &BenchResult) -> Vec<Goal> {
    let mut out = Vec::new();
    let mmio = r.mmio_exit_us.map(|m| format!("; MMIO exit round trip {} us", m.show(1))).unwrap_or_default();
    let kw = |k: &Option<KickWake>| k.as_ref().map(|k| format!("{} us", k.p50_spread.show(1)));
    let best = [&r.kick_wake_us, &r.kick_wake_tuned_us].into_iter().flatten().map(|k| k.p50).reduce(f64::min);
    out.push(Goal {
        goal: "kick -> wake p50 <= 20 us".into(),
        met: best.map(|b| b <= 20.0),
        detail: format!(
            "p50 with halt_poll_us=0: {}; with halt_poll_us={} (> the ping-pong's 200 us pre-kick wait): {}{mmio}. \
             Values are histogram bucket lower bounds (buckets a quarter of a power of two wide: 16.4 us at 64 us).",
            kw(&r.kick_wake_us).unwrap_or_else(|| "not measured".into()),
            r.plan.tuned_halt_poll_us,
            kw(&r.kick_wake_tuned_us).unwrap_or_else(|| "not measured".into()),
        ),
    });
    let ratio = r.ratios.get(RATIO_PV_OVER_TICKET);
    let tp = |v: Variant, n: u32| r.row(v, n, 2, "none").and_then(|x| x.acq_per_sec).map(|s| s.show(0));
    out.push(Goal {
        goal: "pv-upstream >= 10x ticket throughput at 4x overcommit (8 vCPUs, 2 host CPUs)".into(),
        met: ratio.map(|x| x.value >= 10.0),
        detail: match ratio {
            Some(x) => format!(
                "ratio {} (Fieller 95%), worst case over repeats min(pv-upstream)/max(ticket) {:.1}; \
                 pv-upstream {} acq/s, ticket {} acq/s; ticket at 2 vCPUs/2 host CPUs (no overcommit) {} acq/s",
                x.show(1),
                x.num.min / x.den.max,
                x.num.show(0),
                x.den.show(0),
                tp(Variant::Ticket, 2).unwrap_or_else(|| "-".into())
            ),
            None => "not measured".into(),
        },
    });
    out.push(Goal {
        goal: "guest qspinlock uncontended acquire+release within 1.2x of a host thread".into(),
        met: r.uncontended.as_ref().map(|u| u.guest_over_host.value <= 1.2),
        detail: match &r.uncontended {
            Some(u) => format!(
                "guest {} ns, host thread {} ns per acquisition (torture loop included); guest/host {}",
                u.guest_ns.show(2),
                u.host_ns.show(2),
                u.guest_over_host.show(3)
            ),
            None => "not measured".into(),
        },
    });
    if r.plan.kernel_tree.is_some() {
        out.push(Goal {
            goal: "kernel-pv uncontended acquire+release within 1.2x of pv-upstream in the guest".into(),
            met: r.kernel.as_ref().map(|k| k.uncontended_ratio.value <= 1.2),
            detail: match &r.kernel {
                Some(k) => format!(
                    "Linux {}: kernel-pv {} ns, pv-upstream {} ns per acquisition (torture loop included); \
                     ratio {}; contended at 8 vCPUs / 2 host CPUs: kernel-pv {} acq/s, pv-upstream {} acq/s",
                    k.version,
                    k.uncontended_kernel_ns.show(1),
                    k.uncontended_rust_ns.show(1),
                    k.uncontended_ratio.show(3),
                    k.contended_kernel_aps.map(|x| x.show(0)).unwrap_or_else(|| "-".into()),
                    k.contended_rust_aps.map(|x| x.show(0)).unwrap_or_else(|| "-".into()),
                ),
                None => "not measured".into(),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
