//! The mutex family on host threads with the futex platform (pv_wait on
//! the task's state byte is a futex sleep, bounded by `wait_timeout`, whose
//! expiry is a spurious wakeup): exclusion and exact counts for every
//! flavor on several `wait_lock` variants, and the two hand-off bugs of the
//! mutex history shown on their buggy flavor and absent on the fixes.
#![cfg(not(loom))]

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use pvlock_abi::{GuestPhase, LatencyHistogram, LockEvent, TortureParams, TraceEvent, Variant, Window};
use pvlock_guest_lib::host::{FutexPlatform, HostConfig, HostMachine};
use pvlock_guest_lib::sleeping::mutex::FLAG_HANDOFF;
use pvlock_guest_lib::sleeping::torture::{check_quiescent, counts, MutexTorture, MutexTortureLock};
use pvlock_guest_lib::sleeping::{Interrupted, Mutex, MutexFlavor, MutexSystem, TaskSlot, Tasks};
use pvlock_guest_lib::torture::NoObserver;
use pvlock_guest_lib::{default_hash_bits, HashSlot, LockConfig, LockSystem, PerCpuNodes, Platform, WaitOn};

const ACQ: u64 = if cfg!(debug_assertions) { 300 } else { 1500 };

fn machine(threads: u32, seed: u64) -> HostMachine {
    machine_with(threads, seed, Duration::from_millis(2))
}

fn machine_with(threads: u32, seed: u64, wait_timeout: Duration) -> HostMachine {
    HostMachine::new(HostConfig { nr_cpus: threads, seed, wait_timeout, yield_every: 64 })
}

struct Storage {
    nodes: Vec<PerCpuNodes>,
    hash: Vec<HashSlot>,
    tasks: Vec<TaskSlot>,
}

fn storage(threads: u32) -> Storage {
    Storage {
        nodes: (0..threads).map(|_| PerCpuNodes::new()).collect(),
        hash: (0..1usize << default_hash_bits(threads)).map(|_| HashSlot::new()).collect(),
        tasks: (0..threads).map(|_| TaskSlot::new()).collect(),
    }
}

/// `threads` tasks torture `nr_locks` mutexes; returns (acquisitions,
/// per-lock count sum, summed events).
fn torture(flavor: MutexFlavor, wait_lock: Variant, threads: u32, nr_locks: u32) -> (u64, u64, Vec<u64>) {
    let st = storage(threads);
    let cfg = LockConfig { variant: wait_lock, spin_threshold: 64, hash_bits: default_hash_bits(threads) };
    let spin = LockSystem::new(cfg, &st.nodes, &st.hash);
    let sys = MutexSystem::new(flavor, &spin, Tasks::new(&st.tasks));
    let locks: Vec<MutexTortureLock> = (0..nr_locks).map(|_| MutexTortureLock::new()).collect();
    let stop = AtomicU64::new(0);
    let params = TortureParams {
        nr_locks,
        nest: 1,
        cs_ns: 2000,
        think_ns: 500,
        irq_prob: 0,
        irq_max_depth: 0,
        max_acquisitions: ACQ,
    };
    let m = machine(threads, 0x6d75 ^ flavor as u64);
    let t = MutexTorture::new(&sys, &locks, params, HostMachine::tsc_khz(), &stop).expect("parameters");
    let mut acq = 0;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|cpu| {
                let (t, m) = (&t, &m);
                s.spawn(move || {
                    let p = m.platform(cpu);
                    let mut lat = LatencyHistogram::default();
                    t.run(&p, &NoObserver, &mut lat)
                })
            })
            .collect();
        for h in hs {
            let r = h.join().expect("a task panicked");
            assert!(r.violation.is_none(), "{}: {:?}", flavor.name(), r.violation);
            acq += r.acquisitions;
        }
    });
    check_quiescent(&locks, wait_lock)
        .unwrap_or_else(|(i, o, c)| panic!("{}: mutex {i} left owner {o:#x} count {c}", flavor.name()));
    let sum = counts(&locks).sum();
    (acq, sum, m.total_events().to_vec())
}

#[test]
fn every_flavor_keeps_exclusion_and_counts_on_several_wait_locks() {
    for &flavor in MutexFlavor::ALL.iter().filter(|f| !f.is_mutant()) {
        for wait_lock in [Variant::Qspinlock, Variant::PvUpstream, Variant::Ticket] {
            let (acq, sum, ev) = torture(flavor, wait_lock, 4, 2);
            assert_eq!(acq, 4 * ACQ, "{} on {}", flavor.name(), wait_lock.name());
            assert_eq!(sum, acq, "{} on {}: lost updates", flavor.name(), wait_lock.name());
            // Contended enough that tasks really slept and were woken.
            // Contended: tasks slept and were woken, or spun for the mutex.
            let slept = ev[LockEvent::MutexSleep.index()] > 0 && ev[LockEvent::MutexWake.index()] > 0;
            assert!(
                slept || ev[LockEvent::MutexOptLock.index()] > 0,
                "{} on {}: no contention",
                flavor.name(),
                wait_lock.name()
            );
            eprintln!(
                "{:<16} on {:<12} fast {:>5} opt {:>5} optfail {:>5} slow {:>5} sleep {:>5} wake {:>5} spurious {:>5} handoff {:>4}",
                flavor.name(),
                wait_lock.name(),
                ev[LockEvent::MutexFastpath.index()],
                ev[LockEvent::MutexOptLock.index()],
                ev[LockEvent::MutexOptFail.index()],
                ev[LockEvent::MutexSlowpath.index()],
                ev[LockEvent::MutexSleep.index()],
                ev[LockEvent::MutexWake.index()],
                ev[LockEvent::MutexSpuriousWakeup.index()],
                ev[LockEvent::MutexHandoff.index()],
            );
        }
    }
}

/// e274795ea7b7 ("locking/mutex: Fix mutex handoff", v4.11): in v4.10 a
/// waiter accepted a hand-off whenever `owner == current`. A task that
/// (wrongly) locks a mutex it holds blocks, as it must, until a spurious
/// wakeup makes it first, sets HANDOFF, sees itself as the owner and
/// "acquires" the mutex a second time. From v4.11 the pickup needs
/// `MUTEX_FLAG_PICKUP`, which only `__mutex_handoff()` sets, so the task
/// stays blocked until the fatal signal ends `mutex_lock_killable()`.
fn recursive_lock(flavor: MutexFlavor) -> Result<(), Interrupted> {
    let st = storage(2);
    let cfg = LockConfig { variant: Variant::Qspinlock, spin_threshold: 64, hash_bits: default_hash_bits(2) };
    let spin = LockSystem::new(cfg, &st.nodes, &st.hash);
    let sys = MutexSystem::new(flavor, &spin, Tasks::new(&st.tasks));
    let mutex = Mutex::new();
    let m = machine(2, 7);
    // A time slice (1 ms) so that spinning on ourselves ends in a sleep, as
    // the tick would end it in the kernel.
    st.tasks[0].set_slice(HostMachine::tsc_khz());
    std::thread::scope(|s| {
        let me = s.spawn(|| {
            let p = m.platform(0);
            sys.lock(&p, &mutex);
            let r = sys.lock_killable(&p, &mutex);
            sys.unlock(&p, &mutex);
            r
        });
        s.spawn(|| {
            let p = m.platform(1);
            // 100 ms: dozens of 2 ms futex timeouts (spurious wakeups).
            std::thread::sleep(Duration::from_millis(100));
            sys.tasks().kill(&p, 0);
        });
        me.join().expect("task 0 panicked")
    })
}

#[test]
fn v4_10_recursive_lock_takes_its_own_handoff_and_v4_11_does_not() {
    assert_eq!(recursive_lock(MutexFlavor::V4_10), Ok(()), "mutex-v4.10 must 'acquire' the mutex it holds");
    for f in [MutexFlavor::V5_12, MutexFlavor::V5_13, MutexFlavor::V4_9] {
        assert_eq!(recursive_lock(f), Err(Interrupted), "{}: must stay blocked until killed", f.name());
    }
    // Finding, confirmed (results/findings/20261201-upstream-recursive-handoff.md):
    // since ad90880dc962 (v5.15) __mutex_trylock_common() sets HANDOFF with
    // a cmpxchg that keeps the owner, and reports success when that owner
    // is current: the recursive lock "succeeds" again after a spurious
    // wakeup, as in v4.10.
    assert_eq!(recursive_lock(MutexFlavor::Upstream), Ok(()), "mutex-upstream: the v4.10 behaviour is back");
}

/// Stalls its CPU once at `window` (the VMM's directed window stall), and
/// answers `vcpu_is_preempted(0)` from `cpu0_preempted` (the VMM's holder
/// stall of CPU 0, set by CPU 0 itself around its critical sections).
struct StallAt<'a> {
    inner: FutexPlatform<'a>,
    window: Window,
    stall: Duration,
    done: std::cell::Cell<bool>,
    cpu0_preempted: &'a AtomicBool,
    /// Copied from `rounds` when the stall ends.
    rounds: &'a AtomicU32,
    stall_end: &'a AtomicU32,
    /// The hold ends once this is set (and `stall` has passed).
    release: &'a AtomicBool,
}

impl Platform for StallAt<'_> {
    fn cpu(&self) -> u32 {
        self.inner.cpu()
    }
    fn nr_cpus(&self) -> u32 {
        self.inner.nr_cpus()
    }
    fn pv_wait(&self, on: WaitOn<'_>, val: u8) {
        self.inner.pv_wait(on, val);
        // A halted vCPU takes a while to run again after its kick (the
        // host's wakeup path); 0.5 ms here, so that a host scheduler's
        // wakee-preempts-waker does not let the woken task beat the waker
        // to the mutex, which one task per vCPU cannot do.
        std::thread::sleep(Duration::from_micros(500));
    }
    fn pv_kick(&self, cpu: u32) {
        self.inner.pv_kick(cpu)
    }
    fn vcpu_is_preempted(&self, cpu: u32) -> bool {
        (cpu == 0 && self.cpu0_preempted.load(SeqCst)) || self.inner.vcpu_is_preempted(cpu)
    }
    fn cycles(&self) -> u64 {
        self.inner.cycles()
    }
    fn random(&self) -> u64 {
        self.inner.random()
    }
    fn cpu_relax(&self) {
        self.inner.cpu_relax()
    }
    fn race_window(&self, w: Window) {
        self.inner.race_window(w);
        if w == self.window && !self.done.replace(true) {
            // Held until the other task has stolen the mutex (a directed
            // hold), then `stall` more; at most 2 s.
            let t = Instant::now();
            while !self.release.load(SeqCst) && t.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(self.stall);
            self.stall_end.store(self.rounds.load(SeqCst), SeqCst);
        }
    }
    fn event(&self, ev: LockEvent, n: u64) {
        self.inner.event(ev, n)
    }
    fn event_max(&self, ev: LockEvent, v: u64) {
        self.inner.event_max(ev, v)
    }
    fn set_phase(&self, phase: GuestPhase, lock: usize, node: usize) {
        self.inner.set_phase(phase, lock, node)
    }
    fn trace(&self, ev: TraceEvent, lock: usize, arg: u16, value: u32) {
        self.inner.trace(ev, lock, arg, value)
    }
    fn bug(&self, msg: core::fmt::Arguments<'_>) -> ! {
        self.inner.bug(msg)
    }
}

/// 048661a1f963 ("locking/mutex: Fix HANDOFF condition", v5.13): until
/// then the first waiter set HANDOFF only when it *became* first. Set on an
/// unlocked mutex (the owner had just released) and then cleared by a
/// stealer's trylock, it was never requested again: a stealer that unlocks
/// and relocks at once starves the waiter for as long as it keeps going.
///
/// Directed: task 0's vCPU is reported preempted throughout (holder
/// stalls: task 1 never spins on it, it sleeps); task 0 holds, task 1 waits
/// and sleeps; task 0 unlocks and thinks 3 ms; task 1, woken, sets HANDOFF
/// on the unlocked mutex and is held at `mutex-handoff-set` until task 0
/// has stolen the mutex (its trylock clears HANDOFF), plus 5 ms; task 0
/// then runs ROUNDS of hold 4 ms / unlock / relock at once, looking at the
/// owner word before each unlock. Futex sleeps are bounded at 1 s (no
/// spurious wakeups); task 1 resumes 0.5 ms after a kick (`StallAt`).
///
/// Returns (rounds task 0 completed after the hold before task 1 got the
/// mutex, unlocks by task 0 that found HANDOFF requested meanwhile). The
/// second is the mechanism and does not depend on the host's scheduling:
/// 0 for the buggy flavor, >= 1 for the fixes unless task 1 won the mutex
/// at once.
const ROUNDS: u32 = 30;
fn stolen_rounds(flavor: MutexFlavor) -> (u32, u32) {
    let st = storage(2);
    let cfg = LockConfig { variant: Variant::Qspinlock, spin_threshold: 64, hash_bits: default_hash_bits(2) };
    let spin = LockSystem::new(cfg, &st.nodes, &st.hash);
    let sys = MutexSystem::new(flavor, &spin, Tasks::new(&st.tasks));
    let mutex = Mutex::new();
    let m = machine_with(2, 9, Duration::from_secs(1));
    let preempted = AtomicBool::new(true);
    let rounds = AtomicU32::new(0);
    let stall_end = AtomicU32::new(0);
    let held = AtomicBool::new(false);
    let stolen = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let requests = AtomicU32::new(0);
    let got = AtomicU32::new(u32::MAX);
    let hold = |d: Duration| {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let p = m.platform(0);
            sys.lock(&p, &mutex);
            held.store(true, SeqCst);
            hold(Duration::from_millis(10));
            sys.unlock(&p, &mutex);
            std::thread::sleep(Duration::from_millis(3));
            sys.lock(&p, &mutex);
            stolen.store(true, SeqCst);
            for r in 0..ROUNDS {
                hold(Duration::from_millis(4));
                rounds.store(r + 1, SeqCst);
                if !done.load(SeqCst) && mutex.owner_word() & FLAG_HANDOFF != 0 {
                    requests.fetch_add(1, SeqCst);
                }
                sys.unlock(&p, &mutex);
                sys.lock(&p, &mutex);
            }
            sys.unlock(&p, &mutex);
        });
        s.spawn(|| {
            let p = StallAt {
                inner: m.platform(1),
                window: Window::MutexHandoffSet,
                stall: Duration::from_millis(5),
                done: Default::default(),
                cpu0_preempted: &preempted,
                rounds: &rounds,
                stall_end: &stall_end,
                release: &stolen,
            };
            while !held.load(SeqCst) {
                std::thread::yield_now();
            }
            sys.lock(&p, &mutex);
            done.store(true, SeqCst);
            got.store(rounds.load(SeqCst), SeqCst);
            sys.unlock(&p, &mutex);
        });
    });
    (got.load(SeqCst).saturating_sub(stall_end.load(SeqCst)), requests.load(SeqCst))
}

#[test]
fn v5_12_handoff_condition_starves_the_first_waiter_and_v5_13_does_not() {
    let buggy: Vec<(u32, u32)> = (0..10).map(|_| stolen_rounds(MutexFlavor::V5_12)).collect();
    eprintln!("mutex-v5.12 (rounds lost, HANDOFF re-requests): {buggy:?}");
    // The mechanism, every trial: the waiter never asks again.
    assert!(buggy.iter().all(|(_, req)| *req == 0), "mutex-v5.12: HANDOFF was requested again: {buggy:?}");
    // The consequence, >= 9/10 (the host scheduler may let the waiter win
    // a relock race now and then): starved for most of the rounds.
    let starved = buggy.iter().filter(|(r, _)| *r >= ROUNDS / 2).count();
    assert!(starved >= 9, "mutex-v5.12: rounds the waiter lost: {buggy:?}");
    for f in [MutexFlavor::V5_13, MutexFlavor::Upstream] {
        let r: Vec<(u32, u32)> = (0..5).map(|_| stolen_rounds(f)).collect();
        eprintln!("{} (rounds lost, HANDOFF re-requests): {r:?}", f.name());
        assert!(r.iter().all(|(lost, req)| *lost <= 3 && (*req >= 1 || *lost <= 1)), "{}: {r:?}", f.name());
    }
}
