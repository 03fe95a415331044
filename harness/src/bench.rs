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
//! ([`Estimate`]); ratios carry a Fieller interval ([`stats::ratio_of_means`]).
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
pub mod kernel_detect;
pub mod overhead;
pub mod poll;
pub mod render;
pub mod stats;
pub mod sweep;
pub mod throughput;
pub mod wake;

pub use detect::{DetectRow, DetectSample};
pub use host::{HostSample, Uncontended, UncontendedSample};
pub use kernel::{KernelBench, KernelSample};
pub use overhead::{LoopKind, Overhead, OverheadRow, OverheadSample};
pub use poll::{PollCostRow, PollCostSample, PollMode};
pub use sweep::{Sweep, SweepRow, SweepSample};
pub use throughput::{GuestSample, ThroughputRow};
pub use wake::{DoorbellSample, KickWake, PingPongMode, PingPongSample, WakeLegs};

use crate::config::RunConfig;
use crate::output::{append_line, write_atomic};
use crate::record::{now_utc, Record};
use crate::report::EnvInfo;
use crate::runner::run_one;
use crate::stats::Estimate;
use anyhow::{Context, Result};
use pvlock_abi::Variant;
use pvlock_vmm::StopHandle;
use serde::{Deserialize, Serialize};
use stats::Ratio;
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
    /// The guest poll of the "guest poll wins" ping-pong, ns: longer than
    /// the 200 us pre-kick wait, for the same reason.
    #[serde(default)]
    pub tuned_guest_poll_ns: u64,
    pub vcpus: Vec<u32>,
    pub host_cpus: Vec<u32>,
    pub variants: Vec<Variant>,
    /// (vCPUs, host CPUs) points also run with random stalls.
    pub stall_points: Vec<(u32, u32)>,
    /// vCPU counts (on 2 host CPUs) of the polling-cost runs: 1x, 2x, 4x.
    #[serde(default)]
    pub poll_cost_vcpus: Vec<u32>,
    /// The poll of the polling-cost runs, ns (guest poll; the VMM's halt
    /// poll gets the same in us): cpuidle-haltpoll's default
    /// `guest_halt_poll_ns` (200 us).
    #[serde(default)]
    pub poll_cost_ns: u64,
    /// Repeats of the paired comparisons, the polling cost and the kernel
    /// build against pv-upstream under contention (each repeat runs every
    /// side back to back: the pairs), and their guest-timed length, ms (0:
    /// as `duration_ms`).
    #[serde(default)]
    pub pair_repeats: u32,
    #[serde(default)]
    pub pair_ms: u64,
    /// vCPU counts of the cost-growth sweep (pv-upstream, 2 host CPUs).
    #[serde(default)]
    pub sweep_vcpus: Vec<u32>,
    /// Guest-timed length of each sweep run, ms.
    #[serde(default)]
    pub sweep_ms: u64,
    /// Bookkeeping overhead runs: length, critical section and think time.
    #[serde(default)]
    pub overhead_ms: u64,
    #[serde(default)]
    pub overhead_cs_ns: u32,
    #[serde(default)]
    pub overhead_think_ns: u32,
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
                tuned_guest_poll_ns: 500_000,
                vcpus: vec![1, 2, 4, 8],
                host_cpus: vec![2],
                variants,
                stall_points: vec![(8, 2)],
                poll_cost_vcpus: vec![2, 8],
                poll_cost_ns: 200_000,
                pair_repeats: 2,
                pair_ms: 200,
                sweep_vcpus: vec![2, 16, 64],
                sweep_ms: 100,
                overhead_ms: 100,
                overhead_cs_ns: 200,
                overhead_think_ns: 1000,
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
                tuned_guest_poll_ns: 500_000,
                vcpus,
                host_cpus,
                variants,
                stall_points,
                poll_cost_vcpus: vec![2, 4, 8],
                poll_cost_ns: 200_000,
                // The noisy figures of the bench (±30% per run at 4x
                // overcommit): 8 pairs of 800 ms runs, ~70 s for the
                // polling cost, ~15 s for the kernel pair.
                pair_repeats: 8,
                pair_ms: 800,
                sweep_vcpus: vec![2, 8, 16, 32, 64],
                sweep_ms: 1000,
                overhead_ms: 500,
                overhead_cs_ns: 200,
                overhead_think_ns: 1000,
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

    /// The ping-pong's wait modes: really blocks, VMM poll (eventfd), VMM
    /// poll (flag), guest poll.
    pub fn ping_pong_modes(&self) -> [PingPongMode; 4] {
        let m =
            |halt_poll_us, halt_poll_flag, guest_poll_ns| PingPongMode { halt_poll_us, halt_poll_flag, guest_poll_ns };
        [
            m(0, false, 0),
            m(self.tuned_halt_poll_us, false, 0),
            m(self.tuned_halt_poll_us, true, 0),
            m(0, false, self.tuned_guest_poll_ns),
        ]
    }

    /// Every measurement, in run order: mechanism costs, then the
    /// throughput sweep and the host-thread runs repeat by repeat, then the
    /// uncontended pairs, then the reproducers.
    pub fn jobs(&self) -> Vec<Job> {
        let mut jobs = Vec::new();
        for rep in 0..self.mech_repeats {
            jobs.push(Job::Doorbells { rep });
            // Really blocks; the VMM's poll wins (kick through the eventfd,
            // then through the poll flag, side by side); the guest's poll wins.
            for mode in self.ping_pong_modes() {
                jobs.push(Job::PingPong { mode, rep });
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
        for rep in 0..self.pair_repeats.max(1) {
            for &vcpus in &self.poll_cost_vcpus {
                for mode in poll::modes_of_repeat(rep) {
                    jobs.push(Job::PollCost { vcpus, mode, rep });
                }
            }
        }
        for rep in 0..self.repeats {
            for &vcpus in &self.sweep_vcpus {
                jobs.push(Job::Sweep { vcpus, rep });
            }
        }
        for rep in 0..self.mech_repeats {
            jobs.push(Job::Uncontended { rep });
            for kind in LoopKind::ALL {
                jobs.push(Job::Overhead { kind, rep });
            }
        }
        if self.kernel_tree.is_some() {
            for rep in 0..self.mech_repeats {
                for variant in kernel::KERNEL_PAIR {
                    jobs.push(Job::Kernel { variant, contended: false, rep });
                }
            }
            for rep in 0..self.pair_repeats.max(1) {
                for variant in kernel::KERNEL_PAIR {
                    jobs.push(Job::Kernel { variant, contended: true, rep });
                }
            }
        }
        // Time to detect on our own variants; a reproducer whose default
        // variant is a kernel build (kick-hash-forgotten) has no Rust form
        // and is measured by `kernel_detect` with `--kernel-tree`.
        let rust_form = |name: &str| crate::repro::find(name).map(|r| !r.default_variant.is_kernel()).unwrap_or(true);
        for r in self.repros.iter().filter(|r| rust_form(r)) {
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
        mode: PingPongMode,
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
    /// pv-upstream at `vcpus` on 2 host CPUs with a poll mode.
    PollCost {
        vcpus: u32,
        mode: PollMode,
        rep: u32,
    },
    /// pv-upstream at `vcpus` on 2 host CPUs: boot, CPU time, memory.
    Sweep {
        vcpus: u32,
        rep: u32,
    },
    Uncontended {
        rep: u32,
    },
    /// One side of the bookkeeping comparison (1 vCPU, 1 host CPU).
    Overhead {
        kind: LoopKind,
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
    #[serde(default)]
    pub poll_cost: Vec<PollCostSample>,
    #[serde(default)]
    pub sweep: Vec<SweepSample>,
    #[serde(default)]
    pub overhead: Vec<OverheadSample>,
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
    pub mmio_exit_us: Option<Estimate>,
    pub kick_store_us: Option<Estimate>,
    pub disabled_window_ns: Option<Estimate>,
    /// Kick -> wake with `halt_poll_us = 0`.
    pub kick_wake_us: Option<KickWake>,
    /// Kick -> wake with `plan.tuned_halt_poll_us`.
    pub kick_wake_tuned_us: Option<KickWake>,
    /// Kick -> wake with `plan.tuned_guest_poll_ns` (no VMM poll).
    #[serde(default)]
    pub kick_wake_guest_poll_us: Option<KickWake>,
    /// Kick -> wake with `plan.tuned_halt_poll_us` and `halt_poll_flag`.
    #[serde(default)]
    pub kick_wake_flag_us: Option<KickWake>,
    /// The legs of a doorbell exit and of a won VMM poll.
    #[serde(default)]
    pub wake_legs: Option<WakeLegs>,
    pub throughput: Vec<ThroughputRow>,
    /// Throughput with and without polling at 1x/2x/4x overcommit.
    #[serde(default)]
    pub poll_cost: Vec<PollCostRow>,
    /// Cost growth against the vCPU count.
    #[serde(default)]
    pub sweep: Option<Sweep>,
    /// The torture's bookkeeping against dedicated loops.
    #[serde(default)]
    pub overhead: Option<Overhead>,
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
        Job::PingPong { mode, rep } => wake::run_ping_pong(cx, *mode, *rep, s),
        Job::Guest { point, stalls, rep } => throughput::run_guest(cx, point, *stalls, *rep, s),
        Job::Host { point, rep } => host::run_host(cx, point, *rep, s),
        Job::PollCost { vcpus, mode, rep } => poll::run_poll_cost(cx, *vcpus, *mode, *rep, s),
        Job::Sweep { vcpus, rep } => sweep::run_sweep(cx, *vcpus, *rep, s),
        Job::Uncontended { rep } => host::run_uncontended(cx, *rep, s),
        Job::Overhead { kind, rep } => overhead::run_overhead(cx, *kind, *rep, s),
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
    let pp = plan.ping_pong_modes();
    let mut r = BenchResult {
        schema_version: BENCH_SCHEMA_VERSION,
        started_at: String::new(),
        finished_at: None,
        env: EnvInfo::default(),
        load_start: None,
        load_end: None,
        plan: plan.clone(),
        complete: false,
        mmio_exit_us: Estimate::of(&col(|d| Some(d.mmio_exit_us))),
        kick_store_us: Estimate::of(&col(|d| Some(d.kick_store_us))),
        disabled_window_ns: Estimate::of(&col(|d| d.disabled_window_ns)),
        kick_wake_us: wake::kick_wake(&s.ping_pong, pp[0]),
        kick_wake_tuned_us: wake::kick_wake(&s.ping_pong, pp[1]),
        kick_wake_flag_us: wake::kick_wake(&s.ping_pong, pp[2]),
        kick_wake_guest_poll_us: wake::kick_wake(&s.ping_pong, pp[3]),
        wake_legs: wake::wake_legs(s, plan.tuned_halt_poll_us),
        throughput: throughput::rows(plan, s),
        poll_cost: poll::rows(plan, s),
        sweep: sweep::summary(plan, s),
        overhead: overhead::summary(s),
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
    overhead::goals(r, &mut out);
    kernel::goals(r, &mut out);
    sweep::goals(r, &mut out);
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
        let kick_wake_ns = Percentiles { count: 10, p50, p99: max, max };
        PingPongSample { halt_poll_us, kick_wake_ns, ok: true, ..Default::default() }
    }

    #[test]
    fn quick_plan_is_small_and_ordered() {
        let p = Plan::new(true);
        let jobs = p.jobs();
        // 3 x (doorbells + 4 ping-pongs); 2 x 4 x 5 x (guest + host) + 2 x 5 stalls;
        // 2 x 2 x 3 poll costs; 2 x 3 sweep points; 3 x (pair + 5 overhead loops); 2 seeds.
        assert_eq!(jobs.len(), 15 + 80 + 10 + 12 + 6 + 18 + 2);
        // The polling-cost modes of a repeat run back to back, reversed on
        // the next repeat (the pairs of the paired ratio).
        let modes: Vec<(u32, PollMode)> = jobs
            .iter()
            .filter_map(|j| if let Job::PollCost { vcpus: 2, mode, rep } = j { Some((*rep, *mode)) } else { None })
            .collect();
        assert_eq!(
            modes,
            vec![
                (0, PollMode::None),
                (0, PollMode::Guest),
                (0, PollMode::Vmm),
                (1, PollMode::Vmm),
                (1, PollMode::Guest),
                (1, PollMode::None)
            ]
        );
        assert!(p.tuned_guest_poll_ns > 200_000, "a guest poll must outlast the 200 us pre-kick wait too");
        assert_eq!(jobs[0], Job::Doorbells { rep: 0 });
        assert!(p.tuned_halt_poll_us > 200, "a tuned poll must outlast the ping-pong's 200 us pre-kick wait");
        let rc = p.guest_config(&Point { variant: Variant::Ticket, vcpus: 8, host_cpus: 2 }, true, 1);
        assert!(rc.validate().is_ok());
        assert_eq!(rc.preempt.random_mean_interval_us, p.stall_interval_us);
        assert!(Plan::new(false).jobs().len() > jobs.len());
    }

    #[test]
    fn the_full_plan_times_detection_only_on_reproducers_with_a_rust_form() {
        // kick-hash-forgotten exists only as a kernel patch: the full bench
        // once stopped at it ("name the kernel tree").
        let jobs = Plan::new(false).jobs();
        let detect: Vec<&String> =
            jobs.iter().filter_map(|j| if let Job::Detect { repro, .. } = j { Some(repro) } else { None }).collect();
        assert!(detect.iter().any(|r| *r == "double-hash"));
        for r in detect {
            assert!(!crate::repro::find(r).unwrap().default_variant.is_kernel(), "{r}");
        }
    }

    #[test]
    fn kernel_pair_is_measured_only_with_a_tree() {
        let mut p = Plan::new(true);
        assert!(!p.jobs().iter().any(|j| matches!(j, Job::Kernel { .. })));
        p.kernel_tree = Some("/nonexistent".into());
        let n = p.jobs().iter().filter(|j| matches!(j, Job::Kernel { .. })).count();
        assert_eq!(n as u32, 2 * (p.mech_repeats + p.pair_repeats));
        let k = |variant: Variant, contended: bool, aps: f64| KernelSample {
            variant,
            contended,
            ok: true,
            acq_per_sec: aps,
            rep: 0,
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
    fn overhead_poll_cost_and_sweep_summaries() {
        let p = Plan::new(true);
        let o = |kind: LoopKind, acq_per_sec: f64| OverheadSample { kind, ok: true, acq_per_sec };
        let pc = |vcpus: u32, mode: PollMode, acq_per_sec: f64, rep: u32| PollCostSample {
            vcpus,
            mode,
            rep,
            ok: true,
            acq_per_sec,
            polls_won: 3,
            polls_lost: 1,
        };
        let sw = |vcpus: u32, boot_us: f64| SweepSample {
            vcpus,
            ok: true,
            boot_us: Some(boot_us),
            vcpu_setup_us: Some(boot_us - 1000.0),
            kick_setup_us: None,
            acq_per_sec: 1e5,
            cpu_ms: Some(200.0),
            wall_ms: 100.0,
            peak_rss_kib: Some(8192 + 64 * vcpus as u64),
        };
        let s = Samples {
            overhead: vec![
                o(LoopKind::Torture, 960.0),
                o(LoopKind::Torture, 980.0),
                o(LoopKind::LockLoop, 1000.0),
                o(LoopKind::LockLoop, 1010.0),
                o(LoopKind::TortureNoTrace, 990.0),
                o(LoopKind::TortureNoTrace, 985.0),
            ],
            poll_cost: vec![
                pc(2, PollMode::None, 100.0, 0),
                pc(2, PollMode::None, 110.0, 1),
                pc(2, PollMode::Guest, 50.0, 0),
                pc(2, PollMode::Guest, 55.0, 1),
            ],
            // boot = 1 ms + 0.15 ms per vCPU, exactly.
            sweep: p
                .sweep_vcpus
                .iter()
                .flat_map(|&v| vec![sw(v, 1000.0 + 150.0 * v as f64), sw(v, 1000.0 + 150.0 * v as f64)])
                .collect(),
            ..Default::default()
        };
        let r = summarize(&p, &s);
        let ov = r.overhead.as_ref().unwrap();
        assert!((ov.torture_over_loop.unwrap().value - 970.0 / 1005.0).abs() < 1e-12);
        let row = ov.rows.iter().find(|x| x.kind == LoopKind::LockLoop).unwrap();
        assert_eq!(row.over_lock_loop.unwrap().value, 1.0);
        let g = r.goals.iter().find(|g| g.goal.starts_with("torture bookkeeping")).unwrap();
        assert_eq!(g.met, Some(true));
        let guest = r.poll_cost.iter().find(|x| x.vcpus == 2 && x.mode == PollMode::Guest).unwrap();
        assert!((guest.over_no_poll.unwrap().value - 0.5).abs() < 1e-12);
        assert_eq!(guest.won_fraction, Some(0.75));
        let sweep = r.sweep.as_ref().unwrap();
        let slope = sweep.boot_slope_ms.unwrap();
        assert!((slope.slope - 0.15).abs() < 1e-9 && (slope.intercept - 1.0).abs() < 1e-9, "{slope:?}");
        assert!(slope.ci95.unwrap() < 1e-6, "a perfect line has no spread");
        assert_eq!(sweep.rows.len(), p.sweep_vcpus.len());
        assert_eq!(sweep.rows[0].cpu_ms_per_vcpu_s.unwrap().mean, 1000.0);
        let g = r.goals.iter().find(|g| g.goal.starts_with("boot-time slope")).unwrap();
        assert_eq!(g.met, Some(true));
        let md = render::markdown(&r);
        assert!(md.contains("## Cost growth with the vCPU count"), "{md}");
        let readme = render::readme_section(&r);
        assert!(readme.contains("| torture / dedicated loop (bookkeeping) | 0.965 ["), "{readme}");
        assert!(md.contains("### What polling costs"), "{md}");
    }

    #[test]
    fn summary_of_made_up_samples() {
        let p = Plan::new(true);
        let s = Samples {
            doorbells: vec![
                DoorbellSample {
                    mmio_exit_us: 30.0,
                    kick_store_us: 3.0,
                    disabled_window_ns: Some(0.5),
                    ..Default::default()
                },
                DoorbellSample {
                    mmio_exit_us: 40.0,
                    kick_store_us: 4.0,
                    disabled_window_ns: Some(0.7),
                    ..Default::default()
                },
            ],
            ping_pong: vec![
                pp(0, 60_000, 200_000),
                pp(0, 70_000, 300_000),
                pp(500, 20_000, 90_000),
                PingPongSample { guest_poll_ns: p.tuned_guest_poll_ns, ..pp(0, 320, 900) },
            ],
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
            ..Default::default()
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
        assert!((r.kick_wake_guest_poll_us.as_ref().unwrap().p50 - 0.32).abs() < 1e-12);
        // Guest 82 ns vs host 102 ns: within 1.2x, but the host baseline is slower.
        let met: Vec<Option<bool>> = r.goals.iter().map(|g| g.met).collect();
        assert_eq!(met, vec![Some(true), Some(true), Some(true), Some(true), Some(false)]);
        assert!(r.sweep.is_none() && r.overhead.is_none() && r.poll_cost.is_empty());
        let md = render::markdown(&r);
        assert!(md.contains("| `pv-upstream_over_ticket_4x` | 20.000 ["), "{md}");
        assert!(md.contains("| MMIO doorbell round trip | 35.00 ± "), "{md}");
        for (name, body) in render::files(&r) {
            assert!(!body.contains("cannot draw"), "{name}: {body}");
        }
    }
}
