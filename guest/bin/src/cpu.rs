//! One vCPU's view of the machine: the guest's [`Platform`] for the lock
//! library. pv_wait / pv_kick go to the VMM through doorbells; statistics
//! and the trace ring go to this vCPU's block, which the VMM reads.

use crate::rt;
use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};
use pvlock_abi::boot::{POLL_IDLE, POLL_KICKED, POLL_POLLING};
use pvlock_abi::doorbell::{self, PanicKind};
use pvlock_abi::{GuestPhase, LockEvent, TraceEntry, TraceEvent, VcpuBlock, Window};
use pvlock_guest_lib::{Platform, WaitOn};

/// A vCPU's poll state, one cache line each (the kicker writes its
/// target's line; nothing else shares it). Polled by the guest's own poll
/// (`guest_poll`) and, while the vCPU is in its wait exit, by the VMM's halt
/// poll (`hypervisor.halt_poll_flag`): the vCPU is in at most one of them.
#[repr(align(64))]
struct PollState(AtomicU32);
const _: () = assert!(core::mem::size_of::<PollState>() as u64 == pvlock_abi::boot::POLL_STATE_STRIDE);

#[allow(clippy::declare_interior_mutable_const)] // only the array initialiser
const POLL_INIT: PollState = PollState(AtomicU32::new(POLL_IDLE));
/// Per-vCPU poll state, shared by all vCPUs and the VMM (guest RAM, its
/// address published in the boot block).
static POLL: [PollState; pvlock_abi::MAX_VCPUS] = [POLL_INIT; pvlock_abi::MAX_VCPUS];

/// Tells the VMM where the poll states are (every vCPU stores the same
/// value before the start barrier).
pub fn publish_poll_states() {
    rt::boot_field(&rt::boot().poll_state_gpa).store(POLL.as_ptr() as u64, Ordering::Release);
}

pub struct GuestCpu {
    cpu: u32,
    nr_cpus: u32,
    block: *mut VcpuBlock,
    rng: Cell<u64>,
    /// Windows that may stall (bit per `Window` id), copied from the boot block.
    window_mask: u64,
    window_prob: u64,
    window_always: bool,
    stop_on_double_hash: bool,
    /// This vCPU's trace ring (null: tracing off) and `trace_len - 1`.
    trace_ring: *mut TraceEntry,
    trace_mask: u64,
    /// Guest-side poll before the exiting wait, TSC cycles (0: off).
    poll_cycles: u64,
    /// A kick may find its target polling: the guest's poll is on, or the
    /// VMM's halt poll publishes its polling state.
    kick_may_find_poller: bool,
}

impl GuestCpu {
    pub fn new(cpu: u32) -> Self {
        let boot = rt::boot();
        // A seeded xorshift per vCPU: repeatable choices per seed, the same
        // stream the host platform's CPU `cpu` draws.
        let seed = pvlock_abi::seed::stream_seed(boot.seed, pvlock_abi::seed::Stream::LockCpu(cpu));
        Self {
            cpu,
            nr_cpus: boot.nr_vcpus,
            block: rt::vcpu_block(cpu),
            rng: Cell::new(seed),
            window_mask: boot.windows.enabled_mask,
            window_prob: boot.windows.prob as u64,
            window_always: boot.windows.always != 0,
            stop_on_double_hash: boot.lock.flags & pvlock_abi::boot::LOCK_FLAG_STOP_ON_DOUBLE_HASH != 0,
            // The VMM checked that the rings lie in RAM below the stacks
            // and that trace_len is a power of two.
            trace_ring: if boot.trace_len.is_power_of_two() && boot.trace_gpa != 0 {
                pvlock_abi::vcpu::trace_ring_gpa(boot.trace_gpa, boot.trace_len, cpu) as *mut TraceEntry
            } else {
                core::ptr::null_mut()
            },
            trace_mask: boot.trace_len.wrapping_sub(1),
            poll_cycles: rt::ns_to_cycles(boot.hypervisor.guest_poll_ns as u64),
            kick_may_find_poller: boot.hypervisor.guest_poll_ns != 0 || boot.hypervisor.vmm_poll_flag != 0,
        }
    }

    pub fn id(&self) -> u32 {
        self.cpu
    }

    /// This vCPU's block as a raw pointer, for field-wise access while
    /// part of it is mutably borrowed (see the Platform methods).
    pub fn block_ptr(&self) -> *mut VcpuBlock {
        self.block
    }

    /// This vCPU's block. Only this vCPU writes it; the VMM reads it.
    #[allow(clippy::mut_from_ref)]
    pub fn block(&self) -> &mut VcpuBlock {
        // SAFETY: the block is this vCPU's alone (see `rt::vcpu_block`), and
        // GuestCpu is not Sync, so no two references are used concurrently.
        unsafe { &mut *self.block }
    }

    /// Reports a failure of kind `kind` and stops the VM. The record names
    /// the caller's file and line (`#[track_caller]` through `bug()` too):
    /// a BUG in the lock code names the lock code's line, not this one.
    #[track_caller]
    pub fn fail(&self, kind: PanicKind, msg: core::fmt::Arguments<'_>) -> ! {
        let at = core::panic::Location::caller();
        rt::report_failure(self.cpu, kind, at.file(), at.line(), msg)
    }
}

impl Platform for GuestCpu {
    fn cpu(&self) -> u32 {
        self.cpu
    }

    fn nr_cpus(&self) -> u32 {
        self.nr_cpus
    }

    fn pv_wait(&self, on: WaitOn<'_>, val: u8) {
        if self.poll_cycles != 0 && self.guest_poll(on, val) {
            return;
        }
        // One exit: the VMM re-reads the byte (checked wait) and blocks this
        // vCPU until a kick, per the run's hypervisor contract.
        rt::ring(doorbell::WAIT, doorbell::wait_value(on.addr() as u64, val));
    }

    fn pv_kick(&self, cpu: u32) {
        // A target in its guest poll, or in the VMM's halt poll with
        // `halt_poll_flag`, takes the kick through its flag: no store, no
        // eventfd (kernel/sched/core.c `set_nr_if_polling()`: a waker that
        // sees TIF_POLLING_NRFLAG sets need_resched and sends no IPI).
        // SeqCst pairs with the poller's store and swap (`guest_poll`, and
        // the VMM's `WaitChannel::poll`): either this CAS sees POLLING and
        // the poller's final swap sees KICKED, or the poller has left
        // (IDLE) and the store below is remembered for the wait that
        // follows (the exit, or the VMM's blocking half).
        if self.kick_may_find_poller {
            if let Some(st) = POLL.get(cpu as usize) {
                if st.0.compare_exchange(POLL_POLLING, POLL_KICKED, Ordering::SeqCst, Ordering::Relaxed).is_ok() {
                    self.event(LockEvent::KicksToPoller, 1);
                    return;
                }
            }
        }
        // An ioeventfd store: signals `cpu`'s eventfd in the kernel, no exit.
        rt::ring(doorbell::kick_addr(cpu), 1);
    }

    fn vcpu_is_preempted(&self, cpu: u32) -> bool {
        if cpu >= self.nr_cpus {
            return false;
        }
        // SAFETY: reading another vCPU's `preempted` word, which only the VMM
        // writes; a volatile read of an aligned u32 cannot tear.
        unsafe { core::ptr::read_volatile(&(*rt::vcpu_block(cpu)).preempted) != 0 }
    }

    fn cycles(&self) -> u64 {
        rt::rdtsc()
    }

    fn ns_per_kcycle(&self) -> u64 {
        rt::cycles_to_ns(1024).max(1)
    }

    fn random(&self) -> u64 {
        let x = pvlock_abi::seed::next_draw(self.rng.get());
        self.rng.set(x);
        x
    }

    fn cpu_relax(&self) {
        core::hint::spin_loop();
    }

    #[inline(always)]
    fn race_window(&self, w: Window) {
        // Disabled window: one load of a register-resident mask and a branch.
        if self.window_mask & (1 << w as u32) == 0 {
            return;
        }
        self.window_hit(w);
    }

    // The Platform methods touch the block field by field through the raw
    // pointer, never as one `&mut VcpuBlock`: the torture run holds a
    // `&mut` to the block's latency histogram across these calls.
    // Tracks its caller (as the trait says): a stop_on_double_hash BUG
    // names the lock code's line, the pv_hash() that counted it.
    fn event(&self, ev: LockEvent, n: u64) {
        // SAFETY: this vCPU's block (only this vCPU writes it); a raw place,
        // so no reference to the whole block is created.
        unsafe { (*self.block).events[ev.index()] += n };
        if ev == LockEvent::DoubleHash && self.stop_on_double_hash {
            // SAFETY: as above.
            let lock = unsafe { (*self.block).cur_lock };
            // The hash table traces a double insert after counting it;
            // stopping here would lose that last, telling event.
            self.trace(TraceEvent::Hash, lock as usize, u16::MAX, 1);
            self.bug(format_args!(
                "double hash: pv_hash() inserted a second entry for lock {lock:#x} (stop_on_double_hash)"
            ))
        }
    }

    fn event_max(&self, ev: LockEvent, v: u64) {
        // SAFETY: as in `event`.
        unsafe {
            if v > (*self.block).events[ev.index()] {
                (*self.block).events[ev.index()] = v;
            }
        }
    }

    fn set_phase(&self, phase: GuestPhase, lock: usize, node: usize) {
        let b = self.block;
        // SAFETY: as in `event`.
        unsafe {
            (*b).cur_lock = lock as u64;
            (*b).cur_node = node as u64;
            (*b).phase = phase as u32;
        }
    }

    #[inline(always)]
    fn trace(&self, ev: TraceEvent, lock: usize, arg: u16, value: u32) {
        // Tracing off: one load and a branch.
        if self.trace_ring.is_null() {
            return;
        }
        let b = self.block;
        let entry = TraceEntry { tsc: rt::rdtsc(), lock: lock as u64, event: ev as u16, arg, value };
        // SAFETY: the ring is this vCPU's alone (only it writes; the VMM
        // reads) and `head & trace_mask` is inside it; the head is a field
        // of this vCPU's block, accessed as a raw place as in `event`.
        unsafe {
            let head = (*b).trace_head;
            self.trace_ring.add((head & self.trace_mask) as usize).write(entry);
            (*b).trace_head = head + 1;
        }
    }

    #[track_caller]
    fn bug(&self, msg: core::fmt::Arguments<'_>) -> ! {
        self.fail(PanicKind::Bug, msg)
    }

    // The typed record first (the VMM decodes it for kind use-after-free),
    // then the usual assert record with the message and the caller's line.
    #[track_caller]
    fn use_after_free(&self, r: &pvlock_abi::UafRecord) -> ! {
        // SAFETY: this vCPU's block (only this vCPU writes it); a raw place.
        unsafe { (*self.block).uaf = *r };
        self.fail(
            PanicKind::UseAfterFree,
            format_args!("{}", pvlock_guest_lib::sleeping::waitqueue::UafDisplay(r)),
        )
    }
}

impl GuestCpu {
    /// The guest-side poll of `pv_wait()`: spin up to `poll_cycles` on the
    /// watched byte and on this vCPU's kicked flag. True: the wait is over
    /// (a kick arrived through the flag, or the byte changed; callers
    /// re-check either way, as after any pv_wait()). False: the poll timed
    /// out and the caller exits to the VMM; a kick that comes after the
    /// final swap finds IDLE and goes through the kick doorbell, which the
    /// VMM remembers for that exit.
    #[inline(never)]
    fn guest_poll(&self, on: WaitOn<'_>, val: u8) -> bool {
        let st = &POLL[self.cpu as usize].0;
        // SeqCst: pairs with the kicker's CAS (see pv_kick).
        st.store(POLL_POLLING, Ordering::SeqCst);
        let t0 = rt::rdtsc();
        let mut now = t0;
        let mut won = false;
        while now.wrapping_sub(t0) < self.poll_cycles {
            if st.load(Ordering::Acquire) == POLL_KICKED || on.load() != val {
                won = true;
                break;
            }
            core::hint::spin_loop();
            now = rt::rdtsc();
        }
        // Leave the polling state; a kick that raced with the timeout is
        // still ours.
        won |= st.swap(POLL_IDLE, Ordering::SeqCst) == POLL_KICKED;
        self.event(if won { LockEvent::GuestPollsWon } else { LockEvent::GuestPollsLost }, 1);
        self.event(LockEvent::GuestPollCycles, rt::rdtsc().wrapping_sub(t0));
        won
    }

    #[cold]
    fn window_hit(&self, w: Window) {
        // SAFETY: as in `event`.
        unsafe { (*self.block).window_hits[w as usize] += 1 };
        // Decide from this vCPU's seeded stream; exit only to stall: an exit
        // is itself a ~33 us preemption on these hosts.
        let stall = self.window_always || (self.random() >> 32) < self.window_prob;
        if stall {
            self.event(LockEvent::WindowStalls, 1);
            self.trace(TraceEvent::Window, 0, w as u16, 0);
            rt::ring(doorbell::STALL, w as u64);
            self.trace(TraceEvent::WindowResume, 0, w as u16, 0);
        }
    }
}
