//! The page wait queues on host threads (futex platform; a futex sleep is
//! bounded by `wait_timeout`, whose expiry is a spurious wakeup), directed:
//! CPU 0 locks page 0; CPU 1 waits for it unlocked and sleeps; CPU 0
//! unlocks and is held at `page-wake-between` until CPU 1's task has
//! exited (at most 300 ms). The RFC's waker then wakes a freed task (a
//! use-after-free BUG naming both CPUs); every other variant keeps CPU 1
//! queued until the waker lets go (the hold ends by its timeout) and
//! finishes clean.
#![cfg(not(loom))]

use std::cell::Cell;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use pvlock_abi::{GuestPhase, LockEvent, PageWakeVariant, TraceEvent, Variant, Window};
use pvlock_guest_lib::host::{FutexPlatform, HostConfig, HostMachine};
use pvlock_guest_lib::sleeping::page::{check_quiescent, Page, PageSystem};
use pvlock_guest_lib::sleeping::waitqueue::{TaskLife, WaitFrame, WaitQueueHead, WaitQueues};
use pvlock_guest_lib::sleeping::{TaskSlot, Tasks};
use pvlock_guest_lib::{default_hash_bits, HashSlot, LockConfig, LockSystem, PerCpuNodes, Platform, WaitOn};

const HOLD: Duration = Duration::from_millis(300);

/// The futex platform with the VMM's directed hold: the first arrival at
/// `page-wake-between` waits for `exited` (set by another CPU's arrival at
/// `page-task-exit`) or [`HOLD`]; `released_by_exit` says which.
struct Directed<'a> {
    inner: FutexPlatform<'a>,
    held: Cell<bool>,
    exited: &'a AtomicBool,
    released_by_exit: &'a AtomicBool,
}

impl Platform for Directed<'_> {
    fn cpu(&self) -> u32 {
        self.inner.cpu()
    }
    fn nr_cpus(&self) -> u32 {
        self.inner.nr_cpus()
    }
    fn pv_wait(&self, on: WaitOn<'_>, val: u8) {
        self.inner.pv_wait(on, val)
    }
    fn pv_kick(&self, cpu: u32) {
        self.inner.pv_kick(cpu)
    }
    fn vcpu_is_preempted(&self, cpu: u32) -> bool {
        self.inner.vcpu_is_preempted(cpu)
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
        match w {
            Window::PageTaskExit => self.exited.store(true, SeqCst),
            Window::PageWakeBetween if !self.held.replace(true) => {
                let t = Instant::now();
                while !self.exited.load(SeqCst) && t.elapsed() < HOLD {
                    std::thread::sleep(Duration::from_micros(200));
                }
                self.released_by_exit.store(self.exited.load(SeqCst), SeqCst);
            }
            _ => {}
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

/// Outcome: (CPU 0's panic message if any, the hold ended by the exit).
fn directed_wake(variant: PageWakeVariant) -> (Option<String>, bool) {
    let m =
        HostMachine::new(HostConfig { nr_cpus: 2, seed: 1, wait_timeout: Duration::from_millis(2), yield_every: 64 });
    let nodes: Vec<PerCpuNodes> = (0..2).map(|_| PerCpuNodes::new()).collect();
    let hash: Vec<HashSlot> = (0..1usize << default_hash_bits(2)).map(|_| HashSlot::new()).collect();
    let tasks: Vec<TaskSlot> = (0..2).map(|_| TaskSlot::new()).collect();
    let lives: Vec<TaskLife> = (0..2).map(|_| TaskLife::new()).collect();
    let frames: Vec<WaitFrame> = (0..2).map(|_| WaitFrame::new()).collect();
    let pages = [Page::new()];
    let queues = [WaitQueueHead::new()];
    let cfg = LockConfig { variant: Variant::PvUpstream, spin_threshold: 64, hash_bits: default_hash_bits(2) };
    let spin = LockSystem::new(cfg, &nodes, &hash);
    let sys = PageSystem {
        wq: WaitQueues::new(&spin, Tasks::new(&tasks), &frames, &lives),
        variant,
        pages: &pages,
        queues: &queues,
    };
    let (exited, released_by_exit, locked) = (AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false));
    let platform = |cpu| Directed {
        inner: m.platform(cpu),
        held: Cell::new(false),
        exited: &exited,
        released_by_exit: &released_by_exit,
    };
    let (waker, waiter) = std::thread::scope(|s| {
        let waker = s.spawn(|| {
            let p = platform(0);
            sys.lock_page(&p, 0);
            locked.store(true, SeqCst);
            // Let CPU 1 queue and sleep.
            std::thread::sleep(Duration::from_millis(20));
            sys.unlock_page(&p, 0);
        });
        let waiter = s.spawn(|| {
            let p = platform(1);
            while !locked.load(SeqCst) {
                std::thread::yield_now();
            }
            assert!(sys.wait_on_page_locked(&p, 0), "page 0 was locked: the wait must queue");
            sys.wq.task_exit(&p);
            p.race_window(Window::PageTaskExit);
            sys.wq.task_fork(&p);
        });
        (waker.join(), waiter.join())
    });
    let msg = waker.err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    });
    if msg.is_none() {
        assert!(waiter.is_ok(), "{}: the waiter failed", variant.name());
        assert_eq!(check_quiescent(&sys, 1), Ok(()), "{}: page or queue left busy", variant.name());
    }
    (msg, released_by_exit.load(SeqCst))
}

#[test]
fn the_rfc_waker_wakes_a_task_that_has_exited() {
    let (msg, by_exit) = directed_wake(PageWakeVariant::Rfc2020);
    assert!(by_exit, "the waiter returned and exited while the waker was held");
    let msg = msg.expect("the waker must be stopped by the use-after-free BUG");
    assert!(msg.contains("use-after-free: cpu 0 touched the task of cpu 1"), "{msg}");
    assert!(msg.contains("wake-task"), "{msg}");
}

#[test]
fn the_mutant_reads_private_from_a_returned_frame() {
    let (msg, by_exit) = directed_wake(PageWakeVariant::MutantDelBeforePrivate);
    assert!(by_exit);
    let msg = msg.expect("use-after-free");
    assert!(msg.contains("touched the wait-entry of cpu 1") && msg.contains("read-private"), "{msg}");
}

#[test]
fn the_other_orders_keep_the_waiter_queued_until_the_waker_lets_go() {
    for v in
        [PageWakeVariant::V5_7, PageWakeVariant::OlegWoken, PageWakeVariant::Rewrite2a9127, PageWakeVariant::Upstream]
    {
        let (msg, by_exit) = directed_wake(v);
        assert_eq!(msg, None, "{}", v.name());
        assert!(!by_exit, "{}: the waiter exited while its waker was held", v.name());
    }
}
