//! Shared by the `loom_*` models: a loom platform and a model driver.
//!
//! pv_wait / pv_kick are modelled with loom's park / unpark: the unpark
//! token is KVM's remembered kick, "check the byte, then park" is the
//! checked wait (a change of the byte *without* a kick after the check
//! does not wake the parked thread, as with `hlt`). A lost wakeup shows as
//! loom's "deadlock" (every thread parked or finished). Spin loops yield
//! (`cpu_relax()` is `loom::thread::yield_now()`).
#![allow(dead_code)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread::Thread;
use pvlock_abi::{GuestPhase, LockEvent, TraceEvent, Variant, Window};
use pvlock_guest_lib::{HashSlot, LockConfig, LockSystem, PerCpuNodes, Platform, RawLock, WaitOn};
use std::sync::Mutex;

/// Registry of the model's threads, for kicks. A std mutex on purpose:
/// loom runs the model's threads one at a time on one OS thread, so it
/// never blocks, and it stays out of the modelled state.
type Registry = std::sync::Arc<Mutex<Vec<Option<Thread>>>>;

pub struct LoomPlatform {
    cpu: u32,
    nr: u32,
    threads: Registry,
    relaxes: std::cell::Cell<u64>,
}

impl LoomPlatform {
    fn new(cpu: u32, nr: u32, threads: Registry) -> Self {
        threads.lock().unwrap()[cpu as usize] = Some(loom::thread::current());
        Self { cpu, nr, threads, relaxes: std::cell::Cell::new(0) }
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
            loom::thread::park();
        }
    }
    fn pv_kick(&self, cpu: u32) {
        let t = self.threads.lock().unwrap()[cpu as usize].clone();
        t.expect("kicked a CPU that never started").unpark();
    }
    fn vcpu_is_preempted(&self, _cpu: u32) -> bool {
        false
    }
    fn cycles(&self) -> u64 {
        1
    }
    fn random(&self) -> u64 {
        4
    }
    fn cpu_relax(&self) {
        let n = self.relaxes.get() + 1;
        self.relaxes.set(n);
        if n == 3000 && std::env::var("LOOM_SPIN_DEBUG").is_ok() {
            panic!("cpu {} spins forever: {}", self.cpu, std::backtrace::Backtrace::force_capture());
        }
        // Yield on every second relax only: a spin loop still lets the
        // others run (loom needs that to make progress), but a one-round
        // spin (spin threshold 1) does not force a switch. A yield also
        // stops loom from returning values this thread read before it,
        // which would hide store buffering right after a short spin.
        if n.is_multiple_of(2) {
            loom::thread::yield_now();
        }
    }
    fn race_window(&self, _w: Window) {}
    fn event(&self, ev: LockEvent, _n: u64) {
        if ev == LockEvent::DoubleHash {
            if std::env::var("LOOM_SPIN_DEBUG").is_ok() {
                eprintln!("cpu {} double hash at {}", self.cpu, std::backtrace::Backtrace::force_capture());
            }
            panic!("double hash: a second pv_hash() entry for one lock");
        }
    }
    fn event_max(&self, _ev: LockEvent, _v: u64) {}
    fn set_phase(&self, _phase: GuestPhase, _lock: usize, _node: usize) {}
    fn trace(&self, _ev: TraceEvent, _lock: usize, _arg: u16, _value: u32) {}
    fn bug(&self, msg: core::fmt::Arguments<'_>) -> ! {
        panic!("BUG on cpu {}: {}", self.cpu, msg)
    }
}

struct World {
    nodes: Vec<PerCpuNodes>,
    hash: Vec<HashSlot>,
    lock: RawLock,
    data: UnsafeCell<u32>,
}

/// One model: `threads` CPUs each take and release one lock once; the
/// critical section touches a loom `UnsafeCell`, so loom itself checks
/// mutual exclusion and the acquire/release pairing. At the end (all
/// joined) the count is checked and no hash entry may be left.
pub fn model(variant: Variant, threads: u32, preemptions: usize) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.max_branches = 100_000;
    b.check(move || {
        let cfg = LockConfig { variant, spin_threshold: 1, hash_bits: 2 };
        let w = Arc::new(World {
            nodes: (0..threads).map(|_| PerCpuNodes::new()).collect(),
            hash: (0..4).map(|_| HashSlot::new()).collect(),
            lock: RawLock::new(),
            data: UnsafeCell::new(0),
        });
        let reg: Registry = std::sync::Arc::new(Mutex::new(vec![None; threads as usize]));
        let body = move |w: Arc<World>, reg: Registry, cpu: u32| {
            let p = LoomPlatform::new(cpu, threads, reg);
            let sys = LockSystem::new(cfg, &w.nodes, &w.hash);
            sys.lock(&p, &w.lock);
            w.data.with_mut(|d| unsafe { *d += 1 });
            sys.unlock(&p, &w.lock);
        };
        let hs: Vec<_> = (1..threads)
            .map(|cpu| {
                let (w, reg) = (w.clone(), reg.clone());
                loom::thread::spawn(move || body(w, reg, cpu))
            })
            .collect();
        body(w.clone(), reg.clone(), 0);
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(w.data.with(|d| unsafe { *d }), threads);
        let sys = LockSystem::new(cfg, &w.nodes, &w.hash);
        assert_eq!(sys.hash_in_use(), 0, "stale hash entry left");
    });
}

/// Runs `model` expecting it to fail; returns the panic message.
pub fn model_fails(variant: Variant, threads: u32, preemptions: usize) -> String {
    let r = std::panic::catch_unwind(|| model(variant, threads, preemptions));
    let e = r.expect_err("the model checker must find the bug");
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else {
        String::from("<non-string panic>")
    }
}
