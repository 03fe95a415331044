//! Shared by the sleeping-lock loom models (`loom_rtmutex`,
//! `loom_acquire_audit`): a loom platform that also classifies each lock
//! acquisition by the path that took it, and a model driver whose critical
//! section is a loom `UnsafeCell` (loom reports a "Causality violation" when
//! an acquisition does not happen-after the previous release).
//!
//! pv_wait / pv_kick are park / unpark, as in `loom_support`, with KVM's
//! remembered kick kept here rather than in loom's unpark token: loom 0.7
//! drops an unpark aimed at a thread that is in `yield_now()` (it only makes
//! it runnable), which turns "kick while the wakee still spins" into a false
//! deadlock. "Check, then park" is the checked wait.
#![allow(dead_code)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread::Thread;
use pvlock_abi::{GuestPhase, LockEvent, TraceEvent, Window};
use pvlock_guest_lib::{Platform, WaitOn};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// The model's threads and their remembered kicks. A std mutex: loom runs
/// one model thread at a time, and this bookkeeping is not modelled state.
pub struct Threads {
    threads: Vec<Option<Thread>>,
    kicked: Vec<bool>,
}

type Registry = std::sync::Arc<Mutex<Threads>>;

/// How the spinlock (qspinlock family) path of an acquisition is told:
/// from the lock events its slow path counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpinPath {
    /// No slow-path event: the fast-path cmpxchg.
    Fast,
    /// `lock_pending`: the pending bit.
    Pending,
    /// `pv_lock_stealing`: a steal (trylock outside the queue order).
    Steal,
    /// `lock_slowpath`: the queue (head) path.
    Queue,
}

/// Paths seen over all executions of the current model: (lock addr kind,
/// path id); mutex paths are `AcquirePath as u16`, spin paths 100 + SpinPath.
pub static SEEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

pub fn spin_path_id(p: SpinPath) -> u16 {
    100 + p as u16
}

/// Yield at every race window (the page-wake model sets it; the other
/// models leave it off). loom's `fence(SeqCst)` joins one global clock
/// (loom 0.7, `rt/thread.rs` `seq_cst_fence`), so in every execution where
/// a thread's SC fence runs after another's, everything before the first
/// fence happens-before everything after the second; its DPOR then sees no
/// race between those accesses and never tries the other order. A waker
/// whose `try_to_wake_up()` barrier comes after its lifetime check thus
/// always "happens before" the waiter's exit, and the interleaving with the
/// waiter running inside the waker's window is never explored, even without
/// a preemption bound. A yield at the window is a schedule point loom
/// explores without needing a race.
pub static YIELD_AT_WINDOWS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub struct LoomPlatform {
    cpu: u32,
    nr: u32,
    threads: Registry,
    relaxes: Cell<u64>,
    clock: Cell<u64>,
    /// Events of the spinlock acquisition in progress.
    pending: Cell<bool>,
    steal: Cell<bool>,
    slow: Cell<bool>,
    /// Record spin paths (off while a mutex's wait_lock is taken, so
    /// that the mutex audit records mutex paths only).
    pub record_spin: bool,
}

impl LoomPlatform {
    pub fn new(cpu: u32, nr: u32, threads: Registry, record_spin: bool) -> Self {
        threads.lock().unwrap().threads[cpu as usize] = Some(loom::thread::current());
        Self {
            cpu,
            nr,
            threads,
            relaxes: Cell::new(0),
            clock: Cell::new(0),
            pending: Cell::new(false),
            steal: Cell::new(false),
            slow: Cell::new(false),
            record_spin,
        }
    }
}

impl Platform for LoomPlatform {
    fn cpu(&self) -> u32 {
        self.cpu
    }
    fn nr_cpus(&self) -> u32 {
        self.nr
    }
    fn pv_wait(&self, on: WaitOn<'_>, val: u8) {
        if on.load() == val {
            // No loom operation between the check of the remembered kick and
            // park(): no other model thread runs in between.
            let kicked = std::mem::take(&mut self.threads.lock().unwrap().kicked[self.cpu as usize]);
            if !kicked {
                loom::thread::park();
                self.threads.lock().unwrap().kicked[self.cpu as usize] = false;
            }
        }
    }
    fn pv_kick(&self, cpu: u32) {
        let t = {
            let mut r = self.threads.lock().unwrap();
            r.kicked[cpu as usize] = true;
            r.threads[cpu as usize].clone()
        };
        t.expect("kicked a CPU that never started").unpark();
    }
    fn vcpu_is_preempted(&self, _cpu: u32) -> bool {
        false
    }
    /// Ticks on every read (no loom state): time slices expire.
    fn cycles(&self) -> u64 {
        let c = self.clock.get() + 1;
        self.clock.set(c);
        c
    }
    fn random(&self) -> u64 {
        4
    }
    fn cpu_relax(&self) {
        let n = self.relaxes.get() + 1;
        self.relaxes.set(n);
        // As loom_support: yield every second relax.
        if n.is_multiple_of(2) {
            loom::thread::yield_now();
        }
    }
    /// A yield when [`YIELD_AT_WINDOWS`] is set: loom then runs the other
    /// threads where the VMM would preempt this vCPU (see the static).
    fn race_window(&self, _w: Window) {
        if YIELD_AT_WINDOWS.load(std::sync::atomic::Ordering::Relaxed) {
            loom::thread::yield_now();
        }
    }
    fn event(&self, ev: LockEvent, _n: u64) {
        match ev {
            LockEvent::LockPending => self.pending.set(true),
            LockEvent::PvLockStealing => self.steal.set(true),
            // The queue path is told by the BecameHead trace event below, not
            // by `lock_slowpath`: that counter is era-dependent (v4.6 on),
            // so pv-v4.5 and older never count it.
            _ => {}
        }
    }
    fn event_max(&self, _ev: LockEvent, _v: u64) {}
    fn set_phase(&self, _phase: GuestPhase, _lock: usize, _node: usize) {}
    fn trace(&self, ev: TraceEvent, _lock: usize, arg: u16, _value: u32) {
        match ev {
            TraceEvent::LockEnter if arg == 0 => {
                self.pending.set(false);
                self.steal.set(false);
                self.slow.set(false);
            }
            // Every queued acquisition becomes the queue head first.
            TraceEvent::BecameHead => self.slow.set(true),
            // The mutex sends its path (>= 1); the spinlock system sends 0.
            TraceEvent::Acquired if arg != 0 => {
                SEEN.lock().unwrap().insert(arg);
            }
            TraceEvent::Acquired if self.record_spin => {
                let p = if self.steal.get() {
                    SpinPath::Steal
                } else if self.pending.get() {
                    SpinPath::Pending
                } else if self.slow.get() {
                    SpinPath::Queue
                } else {
                    SpinPath::Fast
                };
                SEEN.lock().unwrap().insert(spin_path_id(p));
            }
            _ => {}
        }
    }
    fn bug(&self, msg: core::fmt::Arguments<'_>) -> ! {
        panic!("BUG on cpu {}: {}", self.cpu, msg)
    }
}

/// Data only the lock holder touches.
pub struct Data(pub UnsafeCell<u32>);

// SAFETY: the cell is only touched inside the lock under test, and loom
// checks every access for causality: sharing it is the point of the model.
unsafe impl Sync for Data {}

impl Data {
    pub fn new() -> Self {
        Self(UnsafeCell::new(0))
    }
    /// The critical section: read-modify-write the tracked cell.
    pub fn bump(&self) {
        self.0.with_mut(|d| unsafe { *d += 1 });
    }
    pub fn get(&self) -> u32 {
        self.0.with(|d| unsafe { *d })
    }
}

/// Run `body(cpu, platform)` on `threads` loom threads (cpu 0 on the model's
/// own thread), `preemptions` bound; `setup` builds the shared world.
pub fn model<W, S, B>(threads: u32, preemptions: usize, record_spin: bool, setup: S, body: B)
where
    W: Send + Sync + 'static,
    S: Fn() -> W + Send + Sync + 'static,
    B: Fn(&W, &LoomPlatform) + Send + Sync + 'static,
{
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.max_branches = 100_000;
    let body = std::sync::Arc::new(body);
    b.check(move || {
        let w = Arc::new(setup());
        let reg: Registry = std::sync::Arc::new(Mutex::new(Threads {
            threads: vec![None; threads as usize],
            kicked: vec![false; threads as usize],
        }));
        let hs: Vec<_> = (1..threads)
            .map(|cpu| {
                let (w, reg, body) = (w.clone(), reg.clone(), body.clone());
                loom::thread::spawn(move || {
                    let p = LoomPlatform::new(cpu, threads, reg, record_spin);
                    body(&w, &p)
                })
            })
            .collect();
        let p = LoomPlatform::new(0, threads, reg.clone(), record_spin);
        body(&w, &p);
        for h in hs {
            h.join().unwrap();
        }
    });
}

/// Runs `f` expecting a panic; returns its message.
pub fn panics(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let e = std::panic::catch_unwind(f).expect_err("the model checker must find the bug");
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else {
        String::from("<non-string panic>")
    }
}
