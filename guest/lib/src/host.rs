//! Host threads as CPUs: a [`Platform`] whose pv_wait / pv_kick are Linux
//! futexes, for tests and for comparing the lock code on the host with the
//! guest. Linux only.
//!
//! # The hypervisor contract it implements
//! KVM's: a *checked* wait and a *remembered* kick. A futex watches a
//! 32-bit word, not the byte the lock code waits on, so every CPU sleeps on
//! its own 32-bit kick word instead:
//!
//! ```text
//!   pv_wait(on, val)                       pv_kick(cpu)
//!   if *on != val: return  (checked)       kick[cpu] = 1      (remembered)
//!   if swap(kick, 0) == 1: return          futex_wake(kick[cpu])
//!   futex_wait(kick, 0, timeout)
//!   swap(kick, 0)          (consume)
//! ```
//!
//! In NMI context (the innermost simulated interrupt level) `kvm_wait()`
//! returns at once without halting; [`crate::torture::IrqPlatform`] does
//! that before it calls this platform, so only waits outside NMI context
//! reach the table above.
//!
//! The lock code changes the watched byte before it kicks, so a kick that
//! lands after the byte check is either seen by the swap or makes the
//! futex's own check (`kick == 0`, done by the kernel under its hash-bucket
//! lock) fail; no wakeup is lost. A kick left pending is consumed by the
//! next wait, which returns at once: a nested (simulated interrupt) wait
//! can eat the kick meant for the waiter it interrupted, as on KVM.
//!
//! Every sleep is bounded ([`HostConfig::wait_timeout`]): an algorithm that
//! loses a wakeup (a mutant) is counted in [`WaitStats::timeouts`] and
//! carries on as if a timer interrupt had ended the halt, instead of hanging
//! the test. [`WaitStats::suspected_lost`] counts the timeouts after which
//! the watched byte had changed without a kick.
//!
//! A BUG() in the lock code ([`Platform::bug`]) panics the calling thread and
//! aborts the machine: every other CPU panics at its next spin or wait
//! check, so no thread spins forever behind a dead one.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pvlock_abi::{GuestPhase, LatencyHistogram, LockEvent, TortureParams, TraceEvent, Window};
use pvlock_abi::{NR_LOCK_EVENTS, NR_WINDOWS};

use crate::system::{HashSlot, LockConfig, LockSystem, PerCpuNodes};
use crate::torture::{self, Observer, ParamError, Torture, TortureLock, TortureResult, VerifyReport, Violation};
use crate::{Platform, WaitOn};

/// Parameters of a [`HostMachine`].
#[derive(Clone, Copy, Debug)]
pub struct HostConfig {
    /// Number of CPUs (threads) that will take locks.
    pub nr_cpus: u32,
    /// Base seed; CPU `n` derives its own random stream from it.
    pub seed: u64,
    /// Longest single futex sleep in `pv_wait()`.
    pub wait_timeout: Duration,
    /// `cpu_relax()` yields the thread every this many calls (0: never), so
    /// that more threads than cores still make progress.
    pub yield_every: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self { nr_cpus: 4, seed: 1, wait_timeout: Duration::from_millis(20), yield_every: 64 }
    }
}

/// pv_wait / pv_kick statistics of one CPU (or summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitStats {
    /// `pv_wait()` calls.
    pub waits: u64,
    /// Returned at once: the watched byte had already changed.
    pub value_changed: u64,
    /// Returned at once: a remembered kick was pending (and was consumed).
    pub kick_pending: u64,
    /// Went to sleep on the futex.
    pub blocked: u64,
    /// Sleeps ended by a kick.
    pub kicked: u64,
    /// Sleeps ended by the timeout with no kick.
    pub timeouts: u64,
    /// Timeouts after which the watched byte differed from the expected
    /// value: most likely a lost wakeup.
    pub suspected_lost: u64,
    /// Sleeps ended with neither a kick nor the timeout (signals).
    pub spurious: u64,
    /// `pv_kick()` calls made by this CPU.
    pub kicks_sent: u64,
}

impl core::ops::AddAssign for WaitStats {
    fn add_assign(&mut self, o: Self) {
        self.waits += o.waits;
        self.value_changed += o.value_changed;
        self.kick_pending += o.kick_pending;
        self.blocked += o.blocked;
        self.kicked += o.kicked;
        self.timeouts += o.timeouts;
        self.suspected_lost += o.suspected_lost;
        self.spurious += o.spurious;
        self.kicks_sent += o.kicks_sent;
    }
}

/// Number of [`WaitStats`] fields, in declaration order.
const NR_WAIT_STATS: usize = 9;

/// One CPU's shared state. Written by its own thread only (except `kick`),
/// read by anyone after the run; aligned so CPUs do not share lines.
#[repr(align(128))]
struct HostCpu {
    /// 1 = a kick is pending. The futex word this CPU sleeps on.
    kick: AtomicU32,
    phase: AtomicU32,
    cur_lock: AtomicUsize,
    cur_node: AtomicUsize,
    events: [AtomicU64; NR_LOCK_EVENTS],
    window_hits: [AtomicU64; NR_WINDOWS],
    waits: [AtomicU64; NR_WAIT_STATS],
    traces: AtomicU64,
}

impl HostCpu {
    fn new() -> Self {
        Self {
            kick: AtomicU32::new(0),
            phase: AtomicU32::new(GuestPhase::Booting as u32),
            cur_lock: AtomicUsize::new(0),
            cur_node: AtomicUsize::new(0),
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            window_hits: std::array::from_fn(|_| AtomicU64::new(0)),
            waits: std::array::from_fn(|_| AtomicU64::new(0)),
            traces: AtomicU64::new(0),
        }
    }

    fn bump(&self, stat: WaitStat) {
        // Relaxed: a statistic, read after the threads are joined.
        self.waits[stat as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn wait_stats(&self) -> WaitStats {
        let g = |s: WaitStat| self.waits[s as usize].load(Ordering::Relaxed);
        WaitStats {
            waits: g(WaitStat::Waits),
            value_changed: g(WaitStat::ValueChanged),
            kick_pending: g(WaitStat::KickPending),
            blocked: g(WaitStat::Blocked),
            kicked: g(WaitStat::Kicked),
            timeouts: g(WaitStat::Timeouts),
            suspected_lost: g(WaitStat::SuspectedLost),
            spurious: g(WaitStat::Spurious),
            kicks_sent: g(WaitStat::KicksSent),
        }
    }
}

#[derive(Clone, Copy)]
enum WaitStat {
    Waits,
    ValueChanged,
    KickPending,
    Blocked,
    Kicked,
    Timeouts,
    SuspectedLost,
    Spurious,
    KicksSent,
}

/// The CPUs of a host run: their kick words, counters and phases.
pub struct HostMachine {
    cfg: HostConfig,
    cpus: Box<[HostCpu]>,
    /// The clock of `cycles()` where there is no TSC.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    epoch: Instant,
    aborted: AtomicBool,
    abort_reason: Mutex<Option<String>>,
}

impl HostMachine {
    /// The frequency of `cycles()`, to give [`Torture::new`]. On x86-64
    /// `cycles()` reads the TSC, as the guest does, so that guest/host
    /// comparisons time the lock code with the same clock (a
    /// `clock_gettime` per acquisition would dominate an uncontended
    /// lock); the TSC is calibrated once against the monotonic clock.
    /// Elsewhere it counts nanoseconds.
    pub fn tsc_khz() -> u64 {
        #[cfg(target_arch = "x86_64")]
        {
            static KHZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
            *KHZ.get_or_init(|| {
                let (t0, c0) = (Instant::now(), rdtsc());
                std::thread::sleep(Duration::from_millis(20));
                let (t1, c1) = (Instant::now(), rdtsc());
                (((c1 - c0) as f64 / (t1 - t0).as_secs_f64() / 1e3) as u64).max(1)
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            1_000_000
        }
    }

    pub fn new(cfg: HostConfig) -> Self {
        Self {
            cfg,
            cpus: (0..cfg.nr_cpus).map(|_| HostCpu::new()).collect(),
            epoch: Instant::now(),
            aborted: AtomicBool::new(false),
            abort_reason: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    pub fn nr_cpus(&self) -> u32 {
        self.cfg.nr_cpus
    }

    /// CPU `cpu`'s platform; use it on one thread only.
    pub fn platform(&self, cpu: u32) -> FutexPlatform<'_> {
        assert!(cpu < self.cfg.nr_cpus, "cpu {cpu} out of range");
        FutexPlatform {
            m: self,
            cpu,
            // The guest's vCPU `cpu` draws the same stream for the same seed.
            rng: Cell::new(pvlock_abi::seed::stream_seed(self.cfg.seed, pvlock_abi::seed::Stream::LockCpu(cpu))),
            spins: Cell::new(0),
        }
    }

    /// Make every CPU panic at its next spin or wait check (the first
    /// reason is kept). Sleepers notice within `wait_timeout`.
    pub fn abort(&self, reason: &str) {
        let mut r = self.abort_reason.lock().unwrap_or_else(|e| e.into_inner());
        r.get_or_insert_with(|| reason.to_owned());
        // Release: pairs with the Acquire in `check_abort` (the reason is
        // under the mutex anyway).
        self.aborted.store(true, Ordering::Release);
    }

    /// Why the machine was aborted, if it was.
    pub fn abort_reason(&self) -> Option<String> {
        self.abort_reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// CPU `cpu`'s lock events, indexed by [`LockEvent::index`].
    pub fn events(&self, cpu: u32) -> [u64; NR_LOCK_EVENTS] {
        std::array::from_fn(|i| self.cpus[cpu as usize].events[i].load(Ordering::Relaxed))
    }

    /// Lock events summed over the CPUs (maxima, `LockEvent::is_max`: the maximum).
    pub fn total_events(&self) -> [u64; NR_LOCK_EVENTS] {
        std::array::from_fn(|i| {
            let vals = self.cpus.iter().map(|c| c.events[i].load(Ordering::Relaxed));
            if LockEvent::ALL[i].is_max() {
                vals.max().unwrap_or(0)
            } else {
                vals.sum()
            }
        })
    }

    /// One lock event summed over the CPUs.
    pub fn event_total(&self, ev: LockEvent) -> u64 {
        self.total_events()[ev.index()]
    }

    pub fn wait_stats(&self, cpu: u32) -> WaitStats {
        self.cpus[cpu as usize].wait_stats()
    }

    pub fn total_wait_stats(&self) -> WaitStats {
        let mut s = WaitStats::default();
        for c in self.cpus.iter() {
            s += c.wait_stats();
        }
        s
    }

    /// Times each race window was reached, summed over the CPUs.
    pub fn window_hits(&self) -> [u64; NR_WINDOWS] {
        std::array::from_fn(|i| self.cpus.iter().map(|c| c.window_hits[i].load(Ordering::Relaxed)).sum())
    }

    /// Trace calls made, summed over the CPUs (entries are not kept).
    pub fn trace_calls(&self) -> u64 {
        self.cpus.iter().map(|c| c.traces.load(Ordering::Relaxed)).sum()
    }

    /// What CPU `cpu` is doing: phase, lock and node addresses.
    pub fn phase(&self, cpu: u32) -> (Option<GuestPhase>, usize, usize) {
        let c = &self.cpus[cpu as usize];
        (
            GuestPhase::from_u32(c.phase.load(Ordering::Relaxed)),
            c.cur_lock.load(Ordering::Relaxed),
            c.cur_node.load(Ordering::Relaxed),
        )
    }

    /// One line per CPU: phase, lock, node, kick word (for hang reports).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for cpu in 0..self.cfg.nr_cpus {
            let (phase, lock, node) = self.phase(cpu);
            let name = phase.map_or("?", GuestPhase::name);
            let kick = self.cpus[cpu as usize].kick.load(Ordering::Relaxed);
            let _ = writeln!(s, "cpu {cpu}: {name} lock {lock:#x} node {node:#x} kick {kick}");
        }
        s
    }
}

/// One CPU of a [`HostMachine`], used by one thread.
pub struct FutexPlatform<'a> {
    m: &'a HostMachine,
    cpu: u32,
    rng: Cell<u64>,
    spins: Cell<u32>,
}

impl FutexPlatform<'_> {
    fn me(&self) -> &HostCpu {
        &self.m.cpus[self.cpu as usize]
    }

    fn check_abort(&self) {
        if self.m.is_aborted() {
            let why = self.m.abort_reason().unwrap_or_default();
            panic!("cpu {}: run aborted: {why}", self.cpu);
        }
    }
}

impl Platform for FutexPlatform<'_> {
    fn cpu(&self) -> u32 {
        self.cpu
    }

    fn nr_cpus(&self) -> u32 {
        self.m.cfg.nr_cpus
    }

    fn pv_wait(&self, on: WaitOn<'_>, val: u8) {
        let me = self.me();
        me.bump(WaitStat::Waits);
        self.check_abort();
        // Checked wait: the caller's store to the byte happens before its
        // kick, so a kick we miss here is caught below.
        if on.load() != val {
            me.bump(WaitStat::ValueChanged);
            return;
        }
        // SeqCst: consume a remembered kick; pairs with pv_kick's store.
        if me.kick.swap(0, Ordering::SeqCst) != 0 {
            me.bump(WaitStat::KickPending);
            return;
        }
        me.bump(WaitStat::Blocked);
        let r = futex_wait(&me.kick, 0, self.m.cfg.wait_timeout);
        // Consume the kick that woke us, if any (KVM clears pv_unhalted).
        if me.kick.swap(0, Ordering::SeqCst) != 0 {
            me.bump(WaitStat::Kicked);
        } else if r == FutexWait::TimedOut {
            me.bump(WaitStat::Timeouts);
            if on.load() != val {
                me.bump(WaitStat::SuspectedLost);
            }
        } else {
            me.bump(WaitStat::Spurious);
        }
        self.check_abort();
    }

    fn pv_kick(&self, cpu: u32) {
        self.me().bump(WaitStat::KicksSent);
        let target = &self.m.cpus[cpu as usize];
        // SeqCst: pairs with the swaps in pv_wait; the futex_wait's own
        // check of the word sees it or the wake below finds the sleeper.
        target.kick.store(1, Ordering::SeqCst);
        futex_wake(&target.kick);
    }

    fn vcpu_is_preempted(&self, _cpu: u32) -> bool {
        false
    }

    fn ns_per_kcycle(&self) -> u64 {
        (1024 * 1_000_000 / HostMachine::tsc_khz()).max(1)
    }

    fn cycles(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        {
            rdtsc()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self.m.epoch.elapsed().as_nanos() as u64
        }
    }

    fn random(&self) -> u64 {
        let x = pvlock_abi::seed::next_draw(self.rng.get());
        self.rng.set(x);
        x
    }

    fn cpu_relax(&self) {
        core::hint::spin_loop();
        let every = self.m.cfg.yield_every;
        if every == 0 {
            return;
        }
        // Count down to the next yield.
        let left = self.spins.get();
        if left > 1 {
            self.spins.set(left - 1);
            return;
        }
        self.spins.set(every);
        std::thread::yield_now();
        self.check_abort();
    }

    // Counters: each CPU's are written only by its own thread, so a plain
    // load + store (no `lock` prefix) is enough, as the guest's plain `+=`
    // on its own vCPU block: the guest/host comparison then times the same
    // bookkeeping. Readers only look after the threads are joined, or
    // accept a stale value.
    fn race_window(&self, w: Window) {
        bump(&self.me().window_hits[w as usize], 1);
    }

    fn event(&self, ev: LockEvent, n: u64) {
        bump(&self.me().events[ev.index()], n);
    }

    fn event_max(&self, ev: LockEvent, v: u64) {
        let e = &self.me().events[ev.index()];
        if v > e.load(Ordering::Relaxed) {
            e.store(v, Ordering::Relaxed);
        }
    }

    fn set_phase(&self, phase: GuestPhase, lock: usize, node: usize) {
        let me = self.me();
        me.phase.store(phase as u32, Ordering::Relaxed);
        me.cur_lock.store(lock, Ordering::Relaxed);
        me.cur_node.store(node, Ordering::Relaxed);
    }

    fn trace(&self, _ev: TraceEvent, _lock: usize, _arg: u16, _value: u32) {
        bump(&self.me().traces, 1);
    }

    fn bug(&self, msg: core::fmt::Arguments<'_>) -> ! {
        let text = format!("BUG on cpu {}: {msg}", self.cpu);
        self.m.abort(&text);
        panic!("{text}");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FutexWait {
    /// Woken by FUTEX_WAKE (or the word was no longer 0).
    Woken,
    TimedOut,
    /// EINTR or another error.
    Other,
}

/// Sleep while `*word == expected`, at most `timeout`.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> FutexWait {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the aligned 32-bit word behind `word`, which
    // outlives the call, and the relative timeout from `ts`, a valid
    // timespec on our stack; the last two arguments are ignored by
    // FUTEX_WAIT. No memory is written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
            core::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == 0 {
        return FutexWait::Woken;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => FutexWait::Woken,
        Some(libc::ETIMEDOUT) => FutexWait::TimedOut,
        _ => FutexWait::Other,
    }
}

/// Wake the sleeper on `word`, if any.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key (it does
    // not dereference user memory beyond looking it up); the remaining
    // arguments are ignored by FUTEX_WAKE.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1i32,
            core::ptr::null::<libc::timespec>(),
            core::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// A lock-torture run on host threads ([`run_torture`]).
#[derive(Clone, Copy)]
pub struct HostRunSpec {
    pub lock: LockConfig,
    pub torture: TortureParams,
    /// Threads = CPUs.
    pub threads: u32,
    pub seed: u64,
    /// Longest futex sleep (a lost wakeup costs this much).
    pub wait_timeout: Duration,
    /// After this long the machine is aborted (every CPU panics) and the
    /// run reported as hung.
    pub watchdog: Duration,
    /// Stop every CPU after this long (0: only by `max_acquisitions`).
    pub duration: Duration,
    pub yield_every: u32,
}

impl HostRunSpec {
    pub fn new(lock: LockConfig, torture: TortureParams, threads: u32) -> Self {
        Self {
            lock,
            torture,
            threads,
            seed: 1,
            wait_timeout: Duration::from_millis(5),
            watchdog: Duration::from_secs(30),
            duration: Duration::ZERO,
            yield_every: 64,
        }
    }
}

/// What a host run produced.
#[derive(Debug)]
pub struct HostRun {
    /// Per CPU; a CPU whose thread panicked has a default result.
    pub results: Vec<TortureResult>,
    /// Violations reported through the observer, as they happened.
    pub violations: Vec<Violation>,
    /// Messages of threads that panicked (BUG(), aborts).
    pub panics: Vec<String>,
    /// Whether the watchdog fired.
    pub hung: bool,
    /// Per-CPU hang report taken when the watchdog fired.
    pub hang_report: Option<String>,
    pub verify: VerifyReport,
    /// Lock events summed over the CPUs.
    pub events: [u64; NR_LOCK_EVENTS],
    pub waits: WaitStats,
    /// Torture-lock waits of all CPUs, ns.
    pub latency: LatencyHistogram,
    pub elapsed: Duration,
}

impl HostRun {
    pub fn event(&self, ev: LockEvent) -> u64 {
        self.events[ev.index()]
    }

    /// Outermost acquisitions of all CPUs.
    pub fn acquisitions(&self) -> u64 {
        self.results.iter().map(|r| r.acquisitions).sum()
    }

    /// Outermost acquisitions per second of the run's own clock: the sum
    /// over CPUs divided by the longest CPU's elapsed time (each CPU times
    /// its run with `cycles()`, as a vCPU does), not by a nominal duration.
    pub fn acquisitions_per_sec(&self) -> f64 {
        let ns = self.results.iter().map(|r| r.elapsed_ns).max().unwrap_or(0);
        if ns == 0 {
            return 0.0;
        }
        self.acquisitions() as f64 * 1e9 / ns as f64
    }

    /// No violation, no panic, no hang and [`torture::verify`] clean.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty() && self.panics.is_empty() && !self.hung && self.verify.is_ok()
    }

    /// Mutual exclusion held and the counts add up (stale hash entries,
    /// panics and timeouts allowed): what a racy variant must still give.
    pub fn exclusion_held(&self) -> bool {
        use torture::Failure as F;
        self.violations.is_empty()
            && !self.verify.any(|f| matches!(f, F::MutualExclusion(_) | F::TotalCount { .. } | F::LockCount { .. }))
    }
}

struct HostObserver<'a> {
    violations: &'a Mutex<Vec<Violation>>,
    stop: &'a AtomicU64,
}

impl Observer for HostObserver<'_> {
    fn violation(&self, v: &Violation) {
        self.violations.lock().unwrap_or_else(|e| e.into_inner()).push(*v);
        // Relaxed: a hint; the other CPUs poll it between acquisitions.
        self.stop.store(1, Ordering::Relaxed);
    }
}

/// Run lock torture on `spec.threads` host threads over a fresh lock
/// system, then [`torture::verify`] the end state. Never hangs: see
/// [`HostRunSpec::watchdog`].
pub fn run_torture(spec: &HostRunSpec) -> Result<HostRun, ParamError> {
    let threads = spec.threads.max(1);
    let nodes: Vec<PerCpuNodes> = (0..threads).map(|_| PerCpuNodes::new()).collect();
    let hash: Vec<HashSlot> = (0..1usize << spec.lock.hash_bits).map(|_| HashSlot::new()).collect();
    let sys = LockSystem::new(spec.lock, &nodes, &hash);
    let mut locks: Vec<TortureLock> = (0..torture::total_locks(&spec.torture)).map(|_| TortureLock::new()).collect();
    let machine = HostMachine::new(HostConfig {
        nr_cpus: threads,
        seed: spec.seed,
        wait_timeout: spec.wait_timeout,
        yield_every: spec.yield_every,
    });
    let stop = AtomicU64::new(0);
    let violations = Mutex::new(Vec::new());
    let finished = AtomicUsize::new(0);
    let start = Instant::now();

    let torture = Torture::new(&sys, &locks, spec.torture, HostMachine::tsc_khz(), &stop)?;
    let torture = if spec.duration.is_zero() {
        torture
    } else {
        // The deadline is in `cycles()` units (TSC cycles on x86-64), not
        // nanoseconds: a nanosecond deadline ended a run after duration /
        // (TSC GHz) and made every host acq/s computed over the nominal
        // duration that many times too small (the "host thread 2x slower
        // than the guest" of issue 20).
        let ns = spec.duration.as_nanos().min(u64::MAX as u128) as u64;
        torture.with_deadline(torture.clock().ns_to_cycles(ns) + machine.platform(0).cycles())
    };

    type CpuOut = (TortureResult, Box<LatencyHistogram>, Vec<u64>);
    let mut outs: Vec<Result<CpuOut, String>> = Vec::new();
    let mut hung = false;
    let mut hang_report = None;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|cpu| {
                let (machine, torture, stop, violations, finished) =
                    (&machine, &torture, &stop, &violations, &finished);
                std::thread::Builder::new()
                    .name(format!("pvlock-cpu{cpu}"))
                    .spawn_scoped(s, move || {
                        struct Done<'a>(&'a AtomicUsize);
                        impl Drop for Done<'_> {
                            fn drop(&mut self) {
                                self.0.fetch_add(1, Ordering::Release);
                            }
                        }
                        let _done = Done(finished);
                        let p = machine.platform(cpu);
                        let obs = HostObserver { violations, stop };
                        let mut hist = Box::<LatencyHistogram>::default();
                        let mut per_lock = vec![0u64; torture.locks().len()];
                        let r = torture.run(&p, &obs, &mut hist, &mut per_lock);
                        (r, hist, per_lock)
                    })
                    .expect("spawn a torture thread")
            })
            .collect();

        // Watchdog: wait for every thread, abort the machine if it takes
        // too long (each CPU then panics at its next spin or wait check).
        while finished.load(Ordering::Acquire) < threads as usize {
            if start.elapsed() > spec.watchdog && !hung {
                hung = true;
                hang_report = Some(machine.describe());
                stop.store(1, Ordering::Relaxed);
                machine.abort("watchdog: the run took too long (hang?)");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        outs = handles.into_iter().map(|h| h.join().map_err(|e| panic_message(e.as_ref()))).collect();
    });
    let elapsed = start.elapsed();

    let mut results = Vec::new();
    let mut per_lock = Vec::new();
    let mut panics = Vec::new();
    let mut latency = LatencyHistogram::default();
    for (cpu, o) in outs.into_iter().enumerate() {
        match o {
            Ok((r, hist, pl)) => {
                results.push(r);
                per_lock.push(pl);
                for (a, b) in latency.buckets.iter_mut().zip(hist.buckets.iter()) {
                    *a += b;
                }
            }
            Err(msg) => {
                results.push(TortureResult { cpu: cpu as u32, ..TortureResult::default() });
                panics.push(msg);
            }
        }
    }
    // A panicked CPU's increments are unknown: compare per lock only when
    // every CPU reported.
    let per_lock_refs: Vec<&[u64]> =
        if panics.is_empty() { per_lock.iter().map(Vec::as_slice).collect() } else { Vec::new() };
    let verify = torture::verify(&sys, &mut locks, &spec.torture, &results, &per_lock_refs);
    let violations = violations.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(HostRun {
        results,
        violations,
        panics,
        hung,
        hang_report,
        verify,
        events: machine.total_events(),
        waits: machine.total_wait_stats(),
        latency,
        elapsed,
    })
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "non-string panic".to_owned()
    }
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions in user mode.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Adds `n` to a counter that only the calling thread writes.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}
