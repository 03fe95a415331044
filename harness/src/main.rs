//! `pvlock`: run paravirt spinlock experiments on KVM.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pvlock::compare::{compare, CompareOptions};
use pvlock::config::{Experiment, Overrides};
use pvlock::output::Destination;
use pvlock::record::Record;
use pvlock::runner::{run_one_with_report, GUEST_ELF};
use pvlock_abi::{MutexVariant, PageWakeVariant, Variant, Window};
use pvlock_vmm::{HoldRelease, StopHandle};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "pvlock", version = pvlock::version(), about = "A KVM testbed for paravirtual spinlocks")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every run of a config (a matrix runs point by point) and print a summary.
    Run(RunArgs),
    /// List variants, race windows, workloads, repros, or a kernel build's sites.
    List {
        /// `variants`, `windows`, `workloads`, `repros` or `sites` (needs --kernel-tree).
        what: String,
        #[command(flatten)]
        kernel: KernelArgs,
        /// Kernel flavour of the build whose sites are listed (`x86`, `generic`).
        #[arg(long, default_value = "x86")]
        kernel_flavour: String,
    },
    /// Provoke a known race (`pvlock list repros`) over several seeds and report detection.
    Repro(ReproArgs),
    /// Run a config's matrix into OUT/<name>/<UTC time>/: runs.jsonl, report.md, summary.csv, plots.
    Compare(CompareArgs),
    /// Re-render report.md, summary.csv and plots/ from DIR/runs.jsonl; print the main table.
    Report {
        /// Result directory (holds runs.jsonl).
        dir: PathBuf,
        /// Write report.md, summary.csv and plots/ here instead of into DIR
        /// (for a read-only DIR; without it report.md is printed).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Benchmark the testbed: mechanism costs, lock throughput vs vCPUs x host
    /// CPUs, guest vs host threads, time to detect; into OUT/bench/<UTC time>/.
    Bench {
        /// Small matrix and short runs (well under a minute).
        #[arg(long)]
        quick: bool,
        /// Also write bench.json here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Where result directories go.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Also measure this kernel tree's kernel-pv against pv-upstream
        /// (uncontended, and contended at 4x overcommit).
        #[arg(long)]
        kernel_tree: Option<PathBuf>,
    },
    /// Merge the shards of one matrix (`compare --shard`) into one result
    /// directory and render its report; partial if runs are missing.
    Merge(pvlock::scale_cli::MergeArgs),
    /// Write (and with --submit, submit) a Slurm job array of shards plus
    /// the jobs that merge them.
    Slurm(pvlock::scale_cli::SlurmArgs),
    /// How many runs of how many are in, per shard.
    Status(pvlock::scale_cli::StatusArgs),
    /// Compare two result directories group by group (Welch's t-test at 95%).
    Diff {
        /// Baseline result directory.
        dir_a: PathBuf,
        /// New result directory.
        dir_b: PathBuf,
    },
}

#[derive(clap::Args)]
struct ReproArgs {
    /// Reproducer name; omit with --all.
    name: Option<String>,
    /// Every reproducer against every PV variant and mutant: the outcome matrix.
    #[arg(long)]
    all: bool,
    /// Lock variant (default: the reproducer's own); for a mutex
    /// reproducer, the mutexes' wait_lock.
    #[arg(long, value_parser = parse_variant)]
    variant: Option<Variant>,
    /// Mutex variant of a mutex reproducer (default: the reproducer's own).
    #[arg(long, value_parser = parse_mutex_variant)]
    mutex: Option<MutexVariant>,
    /// Page wake path of a page-wake reproducer (default: the
    /// reproducer's own; `pvlock list variants`); --variant is then the
    /// queue lock.
    #[arg(long, value_parser = parse_page_wake_variant)]
    page_wake: Option<PageWakeVariant>,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    seeds: u64,
    /// Seed of the first run; run i gets seed_base + i (all within 0..=2^63-1).
    #[arg(long, default_value_t = 1, value_parser = seed_parser())]
    seed_base: u64,
    /// Per-seed time budget, seconds.
    #[arg(long, default_value_t = 30.0)]
    budget_s: f64,
    /// `random` (seeded stalls at the race's windows) or `directed` (forced interleaving).
    #[arg(long, default_value = "random")]
    mode: String,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the event trace (Chrome trace-event JSON, opens in Perfetto UI)
    /// of the first seed that detected the race (the last seed if none did).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Kernel tree whose own qspinlock code the reproducer's kernel form
    /// runs on (variant kernel-pv); repeat for several trees. With --all:
    /// adds each tree's columns (unpatched, and with each reproducer's own
    /// bug patch from configs/kernel-bugs/) to the outcome matrix.
    #[arg(long = "kernel-tree")]
    kernel_trees: Vec<PathBuf>,
    /// A unified diff (-p1) applied to a private copy of each tree's files;
    /// repeat for several, applied in order.
    #[arg(long = "kernel-patch")]
    kernel_patches: Vec<PathBuf>,
    /// With --all and --kernel-tree: only the kernel columns.
    #[arg(long)]
    kernel_only: bool,
    /// Rebuild kernel modules even when the build cache has them.
    #[arg(long)]
    rebuild: bool,
    /// Write the outcome (results.json, matrix.md, env.json) into a new
    /// directory under this one, named by the time (e.g. results/repro-kernel).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Experiment config (TOML).
    config: PathBuf,
    /// Shrink durations and repeats for a first look in a few minutes.
    #[arg(long)]
    quick: bool,
    /// Where result directories go.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Runs at once (1..=16). Concurrent VMs share the host CPUs: keep 1 for numbers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    jobs: u16,
    /// Run only shard K of N (1-based) of the matrix: runs i with
    /// i mod N = K - 1, with the unsharded run's seeds; `pvlock merge`
    /// puts the shards back together.
    #[arg(long, value_name = "K/N")]
    shard: Option<pvlock::shard::Shard>,
    #[command(flatten)]
    kernel: KernelArgs,
}

/// The kernel-tree options of run and compare.
#[derive(clap::Args, Clone, Default)]
struct KernelArgs {
    /// Kernel tree for the kernel variants (replaces `lock.kernel_tree`).
    #[arg(long)]
    kernel_tree: Option<PathBuf>,
    /// A unified diff (-p1) applied to a private copy of the tree's files;
    /// repeat for several, applied in order (replaces `lock.kernel_patches`).
    #[arg(long = "kernel-patch")]
    kernel_patches: Vec<PathBuf>,
    /// Rebuild kernel modules even when the build cache has them.
    #[arg(long)]
    rebuild: bool,
}

impl KernelArgs {
    /// The config overrides these options give.
    fn overrides(&self) -> Overrides {
        pvlock::kernel::set_rebuild(self.rebuild);
        Overrides {
            kernel_tree: self.kernel_tree.clone(),
            kernel_patches: (!self.kernel_patches.is_empty()).then(|| self.kernel_patches.clone()),
            ..Default::default()
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Experiment config (TOML).
    config: PathBuf,
    #[arg(long)]
    vcpus: Option<u32>,
    #[arg(long)]
    host_cpus: Option<u32>,
    /// Base seed of every run (0..=2^63-1: a seed must fit a config).
    #[arg(long, value_parser = seed_parser())]
    seed: Option<u64>,
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Lock variant (`pvlock list variants`).
    #[arg(long, value_parser = parse_variant)]
    variant: Option<Variant>,
    /// Number of torture locks.
    #[arg(long)]
    locks: Option<u32>,
    /// Write the JSON record here (an array when the config has several runs).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run this guest ELF instead of the built-in one.
    #[arg(long)]
    guest_elf: Option<PathBuf>,
    #[command(flatten)]
    kernel: KernelArgs,
    /// Write the run's event trace here as Chrome trace-event JSON (opens in
    /// Perfetto UI: one track per vCPU). Raises the trace ring to a size
    /// that holds a whole short run. Needs a config with a single run.
    #[arg(long)]
    trace: Option<PathBuf>,
}

/// Seeds on the command line follow the config's rule
/// ([`pvlock::config::MAX_SEED`]).
fn seed_parser() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(0..=pvlock::config::MAX_SEED)
}

/// A variant name from the command line (the edge where names become values).
fn parse_mutex_variant(s: &str) -> Result<MutexVariant, String> {
    MutexVariant::from_name(s)
        .ok_or_else(|| format!("unknown mutex variant `{s}` (one of: {})", MutexVariant::NAMES.join(", ")))
}

fn parse_page_wake_variant(s: &str) -> Result<PageWakeVariant, String> {
    PageWakeVariant::from_name(s)
        .ok_or_else(|| format!("unknown page wake variant `{s}` (one of: {})", PageWakeVariant::NAMES.join(", ")))
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    Variant::from_name(s).ok_or_else(|| format!("unknown variant `{s}` (one of: {})", Variant::NAMES.join(", ")))
}

fn main() {
    // Die quietly on a closed stdout (`pvlock ... | head`), as Unix tools do.
    // SAFETY: restoring the default disposition of SIGPIPE before any
    // thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // One malloc arena: no 64 MiB address-space reservation per thread
    // (docs/LIMITS.md, "Memory").
    pvlock_vmm::Machine::use_one_malloc_arena();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PVLOCK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("pvlock: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<i32> {
    let cli = Cli::parse();
    match cli.cmd {
        None => default_job(),
        Some(Cmd::Run(args)) => cmd_run(args),
        Some(Cmd::List { what, kernel, kernel_flavour }) if what == "sites" => {
            list_sites(&kernel, &kernel_flavour)?;
            Ok(0)
        }
        Some(Cmd::List { what, .. }) => {
            list(&what)?;
            Ok(0)
        }
        Some(Cmd::Repro(a)) => cmd_repro(a),
        Some(Cmd::Compare(a)) => {
            let exp = Experiment::load_with(&a.config, &a.kernel.overrides())?;
            warn_config(&exp);
            // A shard checks only its own runs against the CPUs it may use
            // (compare does, naming the Slurm allocation): the matrix's
            // largest host_cpus may be another shard's.
            if a.shard.is_none() {
                exp.check_host(pvlock_vmm::host_cpus_available())?;
            }
            exp.check_kernel_sites()?;
            compare_and_print(
                &exp,
                &CompareOptions { out: a.out, quick: a.quick, jobs: a.jobs.into(), progress: true, shard: a.shard },
            )
        }
        Some(Cmd::Merge(a)) => pvlock::scale_cli::merge(a),
        Some(Cmd::Slurm(a)) => pvlock::scale_cli::slurm(a),
        Some(Cmd::Status(a)) => pvlock::scale_cli::status(a),
        Some(Cmd::Report { dir, out }) => {
            print!("{}", pvlock::report::report_command(&dir, out.as_deref())?);
            Ok(0)
        }
        Some(Cmd::Bench { quick, json, out, kernel_tree }) => {
            if let Some(p) = &json {
                // Fail on a bad --json before the benchmark, not after it.
                Destination::check("--json", p)?;
            }
            check_kernel_flags(kernel_tree.as_slice(), &[])?;
            let opts = pvlock::bench::BenchOptions { quick, out, json, progress: true, kernel_tree };
            pvlock::bench::command(&opts, GUEST_ELF)
        }
        Some(Cmd::Diff { dir_a, dir_b }) => {
            print!("{}", pvlock::report::diff_command(&dir_a, &dir_b)?);
            Ok(0)
        }
    }
}

/// `cargo run --release` with no arguments: the embedded default experiment.
fn default_job() -> Result<i32> {
    let exp =
        Experiment::parse(include_str!("../../configs/default.toml"), "configs/default.toml (embedded)", "default")?;
    println!("pvlock: the default experiment: {} runs of configs/default.toml (about two minutes)", exp.runs.len());
    compare_and_print(
        &exp,
        &CompareOptions { out: "results".into(), quick: false, jobs: 1, progress: true, shard: None },
    )
}

fn compare_and_print(exp: &Experiment, opts: &CompareOptions) -> Result<i32> {
    check_address_space(exp, opts.jobs)?;
    let stop = stop_on_signals("the partial report will be written");
    let out = compare(exp, opts, GUEST_ELF, &stop)?;
    print!("{}", pvlock::report::report_command(&out.dir, None)?);
    let runs = if out.finished == out.runs {
        format!("{} runs", out.runs)
    } else {
        format!("{} of {} runs finished", out.finished, out.runs)
    };
    let outcome = if exp.runs.iter().all(|r| r.expect.is_empty()) {
        format!("{} not ok", out.not_ok)
    } else {
        // Expected failures (`[[expect]]`) are shown, not counted; an
        // expected failure that did not happen is unexpected.
        format!("{} not ok, {} not as expected", out.not_ok, out.unexpected)
    };
    println!(
        "\n{runs}, {outcome}{}; report: {}",
        if out.aborted { " (ABORTED: partial)" } else { "" },
        out.dir.join("report.md").display()
    );
    Ok(exit_code(out.unexpected, out.aborted))
}

/// The one exit-code rule of every command (README, "Exit codes"): 0 when
/// every run ended as its config expects, 1 when one did not or the
/// command was stopped by a signal, 2 when nothing could run (usage,
/// config, KVM or output error; see `main`).
fn exit_code(unexpected: usize, stopped: bool) -> i32 {
    if unexpected > 0 || stopped {
        1
    } else {
        0
    }
}

/// Fails early and cleanly when `ulimit -v` is too small for the largest
/// run of `exp` (times `jobs` runs at once): before any thread starts, so
/// that no allocation inside the standard library can abort the process.
fn check_address_space(exp: &Experiment, jobs: usize) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for rc in &exp.runs {
        if !seen.insert((rc.vcpus, rc.ram_mib)) {
            continue;
        }
        let mut m = rc.machine();
        let jobs = jobs.clamp(1, 16) as u32;
        m.vcpus = m.vcpus.saturating_mul(jobs);
        m.ram_mib = m.ram_mib.saturating_mul(jobs);
        pvlock_vmm::Machine::check_address_space(&m)?;
    }
    Ok(())
}

/// A stop handle that SIGINT, SIGTERM and SIGHUP set (ctrlc's
/// `termination` feature): each stops the vCPUs, keeps every finished
/// record and leaves an `aborted` record and a partial report, the same
/// for a Ctrl-C, a `kill`, a closed terminal or a batch system's timeout.
fn stop_on_signals(what_happens: &'static str) -> StopHandle {
    let stop = StopHandle::new();
    let s = stop.clone();
    let _ = ctrlc::set_handler(move || {
        eprintln!("pvlock: stopping (SIGINT/SIGTERM/SIGHUP); {what_happens}");
        s.stop();
    });
    stop
}

/// Settings that are valid but probably not what the user meant, once per
/// distinct message.
fn warn_config(exp: &Experiment) {
    let mut seen = std::collections::BTreeSet::new();
    for rc in &exp.runs {
        let v = rc.lock.variant;
        let t = rc.lock.spin_threshold;
        if pvlock_guest_lib::variants::wait_early_disabled(v, t) && seen.insert((v, t)) {
            eprintln!(
                "pvlock: warning: lock.spin_threshold = {t} with {}: pv_wait_early() never fires below {} \
                 (it looks at the predecessor only when (loop & 0xff) == 0), so queued waiters never halt early",
                v.name(),
                pvlock_guest_lib::variants::WAIT_EARLY_MIN_SPIN_THRESHOLD
            );
        }
    }
}

fn cmd_run(args: RunArgs) -> Result<i32> {
    let overrides = Overrides {
        vcpus: args.vcpus,
        host_cpus: args.host_cpus,
        seed: args.seed,
        duration_ms: args.duration_ms,
        variant: args.variant,
        locks: args.locks,
        ..args.kernel.overrides()
    };
    // Overrides replace config keys before the matrix is expanded.
    let exp = Experiment::load_with(&args.config, &overrides)?;
    warn_config(&exp);
    for note in &exp.notes {
        println!("pvlock: {note}");
    }
    exp.check_host(pvlock_vmm::host_cpus_available())?;
    exp.check_kernel_sites()?;
    let elf_owned;
    let elf: &[u8] = match &args.guest_elf {
        Some(p) => {
            elf_owned = std::fs::read(p).with_context(|| format!("cannot read guest ELF {}", p.display()))?;
            &elf_owned
        }
        None => GUEST_ELF,
    };
    let mut exp = exp;
    if args.trace.is_some() {
        if exp.runs.len() != 1 {
            bail!("--trace writes the trace of one run, but this config has {} runs", exp.runs.len());
        }
        exp.runs[0].enable_trace_export();
        exp.runs[0].validate().map_err(|e| anyhow::anyhow!("--trace: {e}"))?;
    }
    // Check --json before running anything: a directory or an unwritable
    // place fails now, not after the whole matrix.
    let json = args.json.as_deref().map(|p| Destination::check("--json", p)).transpose()?;
    run_experiment(&exp, |_| {}, json.as_ref(), args.trace.as_deref(), elf)
}

fn run_experiment(
    exp: &Experiment,
    mut on_record: impl FnMut(&Record),
    json: Option<&Destination>,
    trace: Option<&std::path::Path>,
    elf: &[u8],
) -> Result<i32> {
    check_address_space(exp, 1)?;
    let stop = stop_on_signals("finished records are kept");
    let mut records = Vec::new();
    let mut unexpected = 0;
    let body = |records: &[Record]| -> Result<Vec<u8>> {
        Ok(if exp.runs.len() == 1 {
            serde_json::to_vec_pretty(&records[0])?
        } else {
            serde_json::to_vec_pretty(records)?
        })
    };
    for (i, rc) in exp.runs.iter().enumerate() {
        if stop.is_stopped() {
            break;
        }
        let key = pvlock::run_key(exp, rc);
        let (rec, report) = run_one_with_report(rc, &key, elf, &stop)?;
        if let Some(p) = trace {
            pvlock::trace_export::write_run(p, &rec, &report)?;
        }
        if !rec.as_expected() {
            unexpected += 1;
        }
        on_record(&rec);
        records.push(rec);
        if let Some(dest) = json.filter(|d| d.rewritable()) {
            // Rewritten after every run, before anything is printed: an
            // aborted matrix (or a closed stdout) still leaves a valid file
            // with every finished run.
            dest.write(&body(&records)?)?;
        }
        print_summary(i + 1, exp.runs.len(), records.last().expect("just pushed"));
    }
    if let Some(dest) = json.filter(|d| !d.rewritable() && !records.is_empty()) {
        // A pipe or tty gets one document, at the end.
        dest.write(&body(&records)?)?;
    }
    if records.len() < exp.runs.len() {
        println!("stopped: {} of {} runs finished", records.len(), exp.runs.len());
    }
    Ok(exit_code(unexpected, stop.is_stopped()))
}

fn print_summary(i: usize, n: usize, r: &Record) {
    let key = if r.run_key.is_empty() { String::new() } else { format!(" [{}]", r.run_key) };
    let expectation = match (r.expected.is_ok(), r.as_expected()) {
        (true, _) => String::new(),
        (false, true) => format!(" (expected: {})", r.expected.name()),
        (false, false) => format!(" (NOT AS EXPECTED: {} expected)", r.expected.name()),
    };
    println!("run {i}/{n} {}{key}: {}{expectation} — {}", r.name, r.status.as_str().to_uppercase(), r.summary);
    println!(
        "  {} vCPUs on {} host CPUs, variant {}, {:.0} ms wall, {} acquisitions ({:.0}/s), latency p50 {} ns p99 {} ns",
        r.vcpus,
        r.host_cpus,
        r.params.variant,
        r.duration_ms,
        r.acquisitions,
        r.acquisitions_per_sec,
        r.latency_ns.p50,
        r.latency_ns.p99
    );
    for c in &r.checks {
        println!("  [{}] {}: {}", if c.passed { "ok" } else { "FAIL" }, c.name, c.detail);
    }
    if let Some(k) = r.timing.kick_wake_ns {
        println!("  kick -> wake: p50 {} ns, p99 {} ns, max {} ns over {}", k.p50, k.p99, k.max, k.count);
    }
    if let (Some(e), Some(k)) = (r.timing.mmio_exit_us, r.timing.kick_store_us) {
        println!("  MMIO exit round trip {e:.2} us, kick store {k:.2} us");
    }
    if let Some(h) = &r.diagnosis.hang_text {
        print!("{h}");
    }
    if let Some(v) = &r.diagnosis.vcpus_text {
        print!("{}", indent(v));
    }
    if let Some(d) = &r.diagnosis.race_diagram {
        print!("{}", indent(d));
    }
    if !r.diagnosis.missed_wakeups.is_empty() {
        println!("  missed wakeups by class: {:?}", r.diagnosis.missed_wakeups);
        if let Some(s) = &r.diagnosis.real_guest_severity {
            println!("  severity {s}");
        }
    }
    if !r.diagnosis.holds.is_empty() {
        let by_cond = r.diagnosis.holds.iter().filter(|h| h.released_by == HoldRelease::Condition).count();
        println!("  directed holds: {} ({} released by their condition)", r.diagnosis.holds.len(), by_cond);
    }
    if let Some(b) = r.timing.boot_us {
        println!("  VM creation -> first guest instruction: {:.0} us", b);
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn cmd_repro(a: ReproArgs) -> Result<i32> {
    use pvlock::repro::{catalog, find, run_repro_on, KernelTarget, Mode, Repro, Target};
    let mode = match a.mode.as_str() {
        "random" => Mode::Random,
        "directed" => Mode::Directed,
        m => bail!("--mode `{m}`: expected `random` or `directed`"),
    };
    // Checked here, naming the flag: a NaN or out-of-range budget would
    // otherwise reach the run config as a bogus `duration_ms`.
    if !(a.budget_s.is_finite() && (0.1..=3600.0).contains(&a.budget_s)) {
        bail!("--budget-s {}: must be a number of seconds in 0.1..=3600", a.budget_s);
    }
    if a.seed_base.checked_add(a.seeds - 1).is_none_or(|last| last > pvlock::config::MAX_SEED) {
        bail!(
            "--seed-base {} with --seeds {}: the last seed would pass {} (seeds must fit a config)",
            a.seed_base,
            a.seeds,
            pvlock::config::MAX_SEED
        );
    }
    if !a.kernel_patches.is_empty() && a.kernel_trees.is_empty() {
        bail!("--kernel-patch needs --kernel-tree (the tree the patch applies to)");
    }
    if a.kernel_only && (a.kernel_trees.is_empty() || !a.all) {
        bail!("--kernel-only goes with --all and --kernel-tree");
    }
    check_kernel_flags(&a.kernel_trees, &a.kernel_patches)?;
    pvlock::kernel::set_rebuild(a.rebuild);
    let budget_ms = (a.budget_s * 1e3).round() as u64;
    let json = a.json.as_deref().map(|p| Destination::check("--json", p)).transpose()?;
    let kernel = |patches: Vec<PathBuf>| {
        a.kernel_trees
            .iter()
            .map(move |t| Target {
                variant: Variant::KernelPv,
                kernel: Some(KernelTarget { tree: t.clone(), patches: patches.clone() }),
            })
            .collect::<Vec<_>>()
    };
    // (reproducer, target, whether the target carries the reproducer's own bug patch)
    let mut jobs: Vec<(Repro, Target, bool)> = Vec::new();
    if a.all {
        if a.variant.is_some() || a.page_wake.is_some() {
            bail!("--all runs every variant; --variant and --page-wake go with one reproducer");
        }
        let pv: Vec<Variant> = Variant::ALL.iter().copied().filter(|v| v.is_pv() && !v.is_kernel()).collect();
        let mutexes: Vec<MutexVariant> = MutexVariant::ALL.iter().copied().filter(|m| !m.is_mutant()).collect();
        for r in catalog() {
            if r.mutex.is_some() {
                // A mutex reproducer: every mutex variant on its own wait_lock.
                if !a.kernel_only {
                    let wait_lock = Target::variant(r.default_variant);
                    jobs.extend(mutexes.iter().map(|m| (Repro { mutex: Some(*m), ..r }, wait_lock.clone(), false)));
                }
                continue;
            }
            if let Some(own) = r.page_wake {
                // A page-wake reproducer: every historical wake path, and
                // the entry's own mutant, on its own queue lock.
                if !a.kernel_only {
                    let queue_lock = Target::variant(r.default_variant);
                    let paths = PageWakeVariant::ALL.iter().copied().filter(|v| !v.is_mutant() || *v == own);
                    jobs.extend(paths.map(|v| (Repro { page_wake: Some(v), ..r }, queue_lock.clone(), false)));
                }
                continue;
            }
            if !a.kernel_only && !r.default_variant.is_kernel() {
                jobs.extend(pv.iter().map(|v| (r, Target::variant(*v), false)));
            }
            if pvlock::repro::kernel_form(r.name).is_none() {
                continue;
            }
            jobs.extend(kernel(a.kernel_patches.clone()).into_iter().map(|t| (r, t, false)));
            // The reproducer's own bug patch, unless the user brought patches.
            if let (true, Some(bug)) = (a.kernel_patches.is_empty(), pvlock::repro::bug_patch(&r)?) {
                jobs.extend(kernel(vec![bug]).into_iter().map(|t| (r, t, true)));
            }
        }
    } else {
        let Some(name) = &a.name else { bail!("name a reproducer (`pvlock list repros`) or use --all") };
        let mut r = find(name)?;
        if let Some(m) = a.mutex {
            if r.mutex.is_none() {
                bail!("--mutex {m}: `{}` is a spinlock reproducer", r.name);
            }
            r.mutex = Some(m);
        }
        if let Some(pw) = a.page_wake {
            if r.page_wake.is_none() {
                let page: Vec<&str> = catalog().iter().filter(|r| r.page_wake.is_some()).map(|r| r.name).collect();
                bail!("--page-wake {pw}: `{}` is not a page-wake reproducer (those are: {})", r.name, page.join(", "));
            }
            r.page_wake = Some(pw);
        }
        let variant = match (a.variant, a.kernel_trees.is_empty()) {
            (Some(v), _) => v,
            (None, false) => Variant::KernelPv,
            (None, true) => r.default_variant,
        };
        if variant.is_kernel() {
            if a.kernel_trees.is_empty() {
                bail!("reproducer `{}` on `{variant}`: name the kernel tree (--kernel-tree)", r.name);
            }
            jobs.extend(kernel(a.kernel_patches.clone()).into_iter().map(|t| (r, Target { variant, ..t }, false)));
        } else {
            if !a.kernel_trees.is_empty() {
                bail!("--kernel-tree applies to the kernel variants only, not `{variant}`");
            }
            jobs.push((r, Target::variant(variant), false));
        }
    }
    // Every config is checked before the first seed runs.
    for (r, t, _) in &jobs {
        pvlock::repro::config_for(r, t, mode, a.seed_base, budget_ms)?
            .validate()
            .map_err(|e| anyhow::anyhow!("reproducer config {e}"))?;
    }
    let out = a.out.as_deref().map(pvlock::repro::ResultDir::create).transpose()?;
    let command = std::iter::once("pvlock".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let stop = stop_on_signals("finished seeds are kept");
    let mut results = Vec::new();
    for (r, t, own_bug) in &jobs {
        let on = match &t.kernel {
            Some(k) => format!(
                "{} {}{}",
                t.variant,
                k.tree.display(),
                k.patches.iter().map(|p| format!(" +{}", p.display())).collect::<String>()
            ),
            None => match (r.mutex, r.page_wake) {
                (Some(m), _) => format!("{m} (wait_lock {})", t.variant),
                (None, Some(pw)) => format!("{pw} (queue lock {})", t.variant),
                (None, None) => t.variant.to_string(),
            },
        };
        eprintln!("repro {} on {} ({:?}): {} seeds x {:.1} s budget", r.name, on, mode, a.seeds, a.budget_s);
        let trace = a.trace.as_deref();
        let mut res = run_repro_on(r, t, mode, a.seeds, a.seed_base, budget_ms, GUEST_ELF, &stop, trace, |o| {
            eprintln!(
                "  seed {}: {}{}",
                o.seed,
                if o.detected { "DETECTED" } else { "clean" },
                o.evidence
                    .as_ref()
                    .map(|e| format!(" ({:.2} s): {e}", o.time_to_detect_s.unwrap_or(0.0)))
                    .unwrap_or_default()
            );
            if let Some(d) = &o.race_diagram {
                eprint!("{}", indent(d));
            }
        })?;
        if *own_bug {
            // One column for "the tree with the row's own bug patch": the
            // patch (and its sha256) is in the record and in matrix.md.
            let plain = res.kernel.as_ref().map(|k| format!("{} {} {}", t.variant, k.version, k.flavour.name()));
            res.column = format!("{} +its bug patch", plain.unwrap_or_else(|| t.variant.to_string()));
        }
        println!(
            "{} on {on} ({:?}): detected in {} of {} seeds{}",
            res.repro,
            mode,
            res.detected(),
            res.runs.len(),
            res.median_time_to_detect_s().map(|t| format!(", median time to detect {t:.2} s")).unwrap_or_default()
        );
        results.push(res);
        if let Some(o) = &out {
            o.write(&command, &results, false)?;
        }
        if stop.is_stopped() {
            break;
        }
    }
    if a.all {
        print!("{}", pvlock::repro::matrix_markdown(&results));
        print!("{}", pvlock::repro::kernel_notes(&results));
    }
    if let Some(o) = &out {
        o.write(&command, &results, !stop.is_stopped())?;
        eprintln!("outcome written to {}", o.dir.display());
    }
    if let Some(dest) = &json {
        let body = if results.len() == 1 {
            serde_json::to_vec_pretty(&results[0])?
        } else {
            serde_json::to_vec_pretty(&results)?
        };
        dest.write(&body)?;
    }
    // A detection is what a reproducer is for: its runs count as expected
    // either way; only a stop makes the exit code 1.
    Ok(exit_code(0, stop.is_stopped()))
}

/// Checks `--kernel-tree` and `--kernel-patch` values before anything runs
/// (the same checks as the config keys `lock.kernel_tree` and
/// `lock.kernel_patches`).
fn check_kernel_flags(trees: &[PathBuf], patches: &[PathBuf]) -> Result<()> {
    for p in patches {
        if let Some(why) = pvlock::config::schema::patch_problem(p) {
            bail!("--kernel-patch {}: {why}", p.display());
        }
    }
    for t in trees {
        pvlock::config::schema::check_kernel_tree(t).map_err(|e| anyhow::anyhow!("--kernel-tree {e}"))?;
    }
    Ok(())
}

/// `pvlock list sites --kernel-tree T [--kernel-patch P]...`: builds (or
/// finds in the cache) the tree's module and prints its sites.
fn list_sites(k: &KernelArgs, flavour: &str) -> Result<()> {
    let Some(tree) = &k.kernel_tree else {
        bail!("`list sites` lists a kernel build's sites: name the tree (--kernel-tree)")
    };
    let flavour = match flavour {
        "x86" => pvlock::kernel::Flavour::X86,
        "generic" => pvlock::kernel::Flavour::Generic,
        other => bail!("--kernel-flavour `{other}` is not `x86` or `generic`"),
    };
    check_kernel_flags(std::slice::from_ref(tree), &k.kernel_patches)?;
    pvlock::kernel::set_rebuild(k.rebuild);
    let lock = pvlock_vmm::LockConfig::default();
    let spec = pvlock::kernel::KernelSpec {
        tree: tree.clone(),
        patches: k.kernel_patches.clone(),
        flavour,
        nr_cpus: lock.kernel_nr_cpus(),
        lock_event_counts: lock.kernel_lock_events,
        spin_threshold: lock.spin_threshold,
        sites: true,
    };
    let b = pvlock::kernel::module_for(&spec)?;
    print!("{}", pvlock::kernel::sites::render_listing(&b));
    Ok(())
}

fn list(what: &str) -> Result<()> {
    match what {
        "repros" => {
            for r in pvlock::repro::catalog() {
                // A mutex reproducer's subject is its mutex variant (on
                // the default variant as wait_lock).
                let on = match r.mutex {
                    Some(m) => format!("{m} on {}", r.default_variant),
                    None => r.default_variant.to_string(),
                };
                println!("{:<24} {:<13} {:<30} {}", r.name, r.race, on, r.what);
                if let Some(k) = pvlock::repro::kernel_form(r.name) {
                    let bug = k.bug_patch.map(|b| format!("bug patch {}/{b}", pvlock::repro::KERNEL_BUGS_DIR));
                    println!(
                        "{:<24} kernel-pv form; {}",
                        "",
                        bug.unwrap_or_else(|| "no bug patch (today's code has not this race)".into())
                    );
                    if let Some(note) = k.note {
                        println!("{:<24} {note}", "");
                    }
                }
            }
        }
        "variants" => {
            for i in pvlock_guest_lib::variants::VARIANTS {
                let v = i.variant;
                println!("{}{}", v.name(), if v.is_mutant() { "  (mutant, a self-test)" } else { "" });
                println!("    {}", i.summary);
                println!("    source: {}; first release: {}", i.source, i.first_release);
                println!("    stealing: {}; checked: {}", i.stealing, i.verified);
                if pvlock_guest_lib::variants::has_wait_early(v) {
                    println!(
                        "    wait-early: pv_wait_node() looks at the predecessor every 256 spins; \
                         off when lock.spin_threshold < {}",
                        pvlock_guest_lib::variants::WAIT_EARLY_MIN_SPIN_THRESHOLD
                    );
                }
                if pvlock_guest_lib::variants::counters_model_only(v) {
                    println!("    counters: model-only (no PV lock statistics in the kernel before v4.5)");
                }
            }
            println!();
            println!("Sleeping locks (workload = \"mutex-torture\", lock.mutex; wait_lock = lock.variant):");
            for i in pvlock_guest_lib::sleeping::MUTEX_VARIANTS {
                let v = i.variant;
                println!("{}{}", v.name(), if v.is_mutant() { "  (mutant, a self-test)" } else { "" });
                println!("    {}", i.summary);
                println!("    source: {}; releases: {}", i.source, i.releases);
                println!("    spinning: {}; hand-off: {}; checked: {}", i.spinning, i.handoff, i.verified);
            }
            println!();
            println!("Page wake paths (workload = \"page-wake\", lock.page_wake; queue lock = lock.variant):");
            for i in pvlock_guest_lib::sleeping::page::PAGE_WAKE_VARIANTS {
                let v = i.variant;
                println!("{}{}", v.name(), if v.is_mutant() { "  (mutant, a self-test)" } else { "" });
                println!("    {}", i.summary);
                println!("    source: {}", i.source);
            }
        }
        "windows" => {
            for w in Window::ALL {
                let users: Vec<&str> = pvlock_guest_lib::variants::VARIANTS
                    .iter()
                    .filter(|i| i.windows.contains(w))
                    .map(|i| i.variant.name())
                    .collect();
                let users = if users.is_empty() { "the torture workload".to_string() } else { users.join(", ") };
                // One space at least after the longest name.
                let width = Window::ALL.iter().map(|w| w.name().len()).max().unwrap_or(0) + 2;
                println!("{:<width$}{}", w.name(), users);
            }
        }
        "workloads" => println!("{}", pvlock::config::workload_names()),
        other => bail!("unknown list `{other}` (variants, windows, workloads, repros, sites)"),
    }
    Ok(())
}
