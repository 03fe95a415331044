//! The platform the lock code runs on: the guest (MMIO doorbells to the
//! VMM), host threads (futex-based wait/kick, for tests and the guest/host
//! comparison), or loom (park/unpark).
//!
//! One value of this trait is one CPU's view: `cpu()` is the caller. All
//! methods take `&self`; implementations keep per-CPU state inside.

use crate::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use pvlock_abi::{GuestPhase, LockEvent, TraceEvent, Window};

pub trait Platform {
    /// The calling CPU's id, `0..nr_cpus()`.
    fn cpu(&self) -> u32;
    /// Number of CPUs that may take locks.
    fn nr_cpus(&self) -> u32;

    /// pv_wait(): block this CPU while the byte `on` equals `val`, until a
    /// pv_kick(). May return spuriously; callers re-check. Whether the check
    /// happens (KVM) or not (pSeries proposal) is the hypervisor contract's
    /// business.
    fn pv_wait(&self, on: WaitOn<'_>, val: u8);
    /// pv_kick(): wake `cpu` from pv_wait(), or make its next pv_wait()
    /// return at once (remembered kick, KVM's contract).
    fn pv_kick(&self, cpu: u32);
    /// Whether `cpu`'s vCPU is currently preempted by the hypervisor.
    fn vcpu_is_preempted(&self, cpu: u32) -> bool;

    /// A monotonic cycle counter (TSC in the guest).
    fn cycles(&self) -> u64;
    /// Nanoseconds per 1024 cycles (for latency histograms).
    fn ns_per_kcycle(&self) -> u64 {
        1024
    }
    /// The next value of this CPU's seeded random stream.
    fn random(&self) -> u64;
    /// One spin-wait iteration (`pause`; a yield under loom).
    fn cpu_relax(&self);

    /// A named race window was reached: the guest may stall here (exit to
    /// the VMM) according to the run's window parameters. A disabled window
    /// must cost one load and a predictable branch.
    fn race_window(&self, w: Window);

    /// Called at slow-path spin points (queued, head, before pv_wait): the
    /// torture workload may run a simulated interrupt handler that takes
    /// another lock, nesting as a kernel's softirq/hardirq/NMI would.
    fn maybe_interrupt(&self) {}

    /// Count a lock event on this CPU. Tracks its caller through every
    /// wrapper (torture, interrupts): a platform that stops the run on an
    /// event (`stop_on_double_hash`) names the lock code's line.
    #[track_caller]
    fn event(&self, ev: LockEvent, n: u64);
    /// Raise a "max" statistic (e.g. the hash's longest probe).
    fn event_max(&self, ev: LockEvent, v: u64);
    /// Record what this CPU is doing, for the VMM's hang reports.
    fn set_phase(&self, phase: GuestPhase, lock: usize, node: usize);
    /// Append to this CPU's trace ring.
    fn trace(&self, ev: TraceEvent, lock: usize, arg: u16, value: u32);

    /// A "cannot happen" in the lock algorithm (BUG()). Never returns.
    /// Every implementation tracks its caller: the report names the lock
    /// code's file and line.
    #[track_caller]
    fn bug(&self, msg: core::fmt::Arguments<'_>) -> !;

    /// Another CPU's poisoned wait entry or task was touched (the page
    /// wait queues' lifetime check, `sleeping::waitqueue`). Never returns.
    /// The guest reports the typed record to the VMM; elsewhere a BUG.
    #[track_caller]
    fn use_after_free(&self, r: &pvlock_abi::UafRecord) -> ! {
        self.bug(format_args!("{}", crate::sleeping::waitqueue::UafDisplay(r)))
    }
}

/// The byte a pv_wait() watches. The kernel passes a `u8 *`; here the lock
/// word's locked byte is named through its 32-bit word, because under loom
/// (and in portable Rust) a byte of an `AtomicU32` cannot be borrowed as an
/// `AtomicU8`. On x86 (little endian) the locked byte is at the word's own
/// address, so `addr()` is what the guest sends to the VMM.
#[derive(Clone, Copy)]
pub enum WaitOn<'a> {
    /// A PV node's state byte (`pv_wait_node()`).
    NodeState(&'a AtomicU8),
    /// The locked byte (bits 0-7) of a lock word (`pv_wait_head_or_lock()`).
    LockedByte(&'a AtomicU32),
}

impl WaitOn<'_> {
    /// Address of the watched byte.
    pub fn addr(&self) -> usize {
        match self {
            WaitOn::NodeState(b) => *b as *const AtomicU8 as usize,
            WaitOn::LockedByte(w) => *w as *const AtomicU32 as usize,
        }
    }

    /// Current value of the watched byte.
    pub fn load(&self) -> u8 {
        match self {
            WaitOn::NodeState(b) => b.load(Ordering::Acquire),
            WaitOn::LockedByte(w) => w.load(Ordering::Acquire) as u8,
        }
    }
}
