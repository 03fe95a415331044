//! The task model: one task per vCPU (the guest has no scheduler).
//!
//! * `set_current_state(TASK_UNINTERRUPTIBLE)` is a store to the task's state
//!   byte followed by a full barrier (`smp_store_mb()`, as the kernel's).
//! * `schedule()` with a sleeping state is `pv_wait()` on that byte: the vCPU
//!   halts (as the idle loop would) while the byte still says "sleeping".
//!   Whether the wait is checked, whether a kick is remembered, spurious and
//!   interrupt wakeups: all the `[hypervisor]` contract of the run, unchanged.
//!   A `pv_wait()` that returns with the byte unchanged is a spurious wakeup,
//!   which every kernel sleeper must tolerate (it re-checks its condition).
//! * `wake_up_process()` is `try_to_wake_up()`'s essence: a full barrier,
//!   the state check, the store of `TASK_RUNNING`, then `pv_kick()`.
//! * "on CPU" (`task->on_cpu`) is 0 only while the task is inside
//!   `schedule()`; whether its vCPU is running is `vcpu_is_preempted()`, the
//!   VMM's flag, exactly as `owner_on_cpu()` combines them in the kernel.
//! * `need_resched()`: with one task per vCPU nothing else is ever runnable,
//!   so it is false, except (a) a fatal signal was sent (the reproducers'
//!   way out of a self-deadlock) or (b) the run sets a time slice
//!   ([`TaskSlot::set_slice`]): a task that spins longer than the slice sees
//!   `need_resched()`, as if the tick had found another runnable task.
//!
//! The barrier pairs (include/linux/sched.h, "set_current_state() ... wakeup"):
//! ```text
//!   sleeper                          waker
//!   state = UNINTERRUPTIBLE          CONDITION = 1
//!   smp_mb()          <------->      smp_mb()   (ttwu: smp_mb__after_spinlock)
//!   if (!CONDITION) schedule()       if (state != RUNNING) state = RUNNING; kick
//! ```

use crate::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use crate::{Platform, WaitOn};
use pvlock_abi::LockEvent;

/// `TASK_RUNNING` (include/linux/sched.h).
pub const TASK_RUNNING: u8 = 0;
/// `TASK_UNINTERRUPTIBLE` (include/linux/sched.h).
pub const TASK_UNINTERRUPTIBLE: u8 = 2;

/// One task: its scheduler state and the per-task parts of the sleeping
/// locks (the OSQ node is per CPU in the kernel; one task per CPU here).
#[repr(align(64))]
pub struct TaskSlot {
    /// `task->__state`; the byte `schedule()` pv_waits on.
    pub state: AtomicU8,
    /// `task->on_cpu`: 0 while inside `schedule()`.
    pub on_cpu: AtomicU8,
    /// A fatal signal is pending (`fatal_signal_pending()`).
    pub killed: AtomicU8,
    /// `TIF_NEED_RESCHED` set from outside (by a kill).
    resched: AtomicU8,
    /// Cycles a spinner may spin before `need_resched()`; 0 = never.
    slice: AtomicU64,
    /// When the task last left `schedule()` (start of its slice).
    slice_start: AtomicU64,
    /// Wait-list link: the next waiter's cpu + 1 (0: none). Only under the
    /// mutex's `wait_lock`.
    pub(crate) wait_next: AtomicU32,
    /// The OSQ node (`osq_node`, per CPU).
    pub(crate) osq: super::osq::OsqNode,
}

impl TaskSlot {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(TASK_RUNNING),
            on_cpu: AtomicU8::new(1),
            killed: AtomicU8::new(0),
            resched: AtomicU8::new(0),
            slice: AtomicU64::new(0),
            slice_start: AtomicU64::new(0),
            wait_next: AtomicU32::new(0),
            osq: super::osq::OsqNode::new(),
        }
    }

    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self {
            state: AtomicU8::new(TASK_RUNNING),
            on_cpu: AtomicU8::new(1),
            killed: AtomicU8::new(0),
            resched: AtomicU8::new(0),
            slice: AtomicU64::new(0),
            slice_start: AtomicU64::new(0),
            wait_next: AtomicU32::new(0),
            osq: super::osq::OsqNode::new(),
        }
    }

    /// Give the task a time slice of `cycles` (0: none, the default).
    pub fn set_slice(&self, cycles: u64) {
        self.slice.store(cycles, Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
impl Default for TaskSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// The tasks of a run, indexed by CPU.
#[derive(Clone, Copy)]
pub struct Tasks<'a> {
    pub slots: &'a [TaskSlot],
}

impl<'a> Tasks<'a> {
    pub fn new(slots: &'a [TaskSlot]) -> Self {
        Self { slots }
    }

    /// The task running on `cpu`; BUG() on a CPU outside the table.
    #[inline]
    pub fn get<P: Platform>(&self, p: &P, cpu: u32) -> &'a TaskSlot {
        match self.slots.get(cpu as usize) {
            Some(t) => t,
            None => p.bug(format_args!("task of cpu {cpu} outside the task table ({})", self.slots.len())),
        }
    }

    /// `current`.
    #[inline]
    pub fn current<P: Platform>(&self, p: &P) -> &'a TaskSlot {
        self.get(p, p.cpu())
    }

    /// `set_current_state(state)`: `smp_store_mb()`. The full barrier pairs
    /// with the one in [`Tasks::wake_up_process`].
    pub fn set_current_state<P: Platform>(&self, p: &P, state: u8) {
        self.current(p).state.store(state, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// `__set_current_state(state)`: no barrier (the caller is ordered by a
    /// lock, e.g. the mutex's `wait_lock`).
    pub fn set_current_state_plain<P: Platform>(&self, p: &P, state: u8) {
        self.current(p).state.store(state, Ordering::Relaxed);
    }

    /// `schedule()`: sleep while the state byte says so (one pv_wait; a
    /// spurious return is the caller's to handle, as in the kernel). A task
    /// already `TASK_RUNNING` (woken before it got here) just reschedules.
    pub fn schedule<P: Platform>(&self, p: &P) {
        let me = self.current(p);
        let state = me.state.load(Ordering::Relaxed);
        me.resched.store(0, Ordering::Relaxed);
        if state != TASK_RUNNING {
            p.event(LockEvent::MutexSleep, 1);
            me.on_cpu.store(0, Ordering::Release);
            p.pv_wait(WaitOn::NodeState(&me.state), state);
            // The rq lock's barriers around a context switch
            // (smp_mb__after_spinlock() in __schedule()): the woken task
            // sees everything the waker did before its wakeup.
            fence(Ordering::SeqCst);
            me.on_cpu.store(1, Ordering::Relaxed);
            if me.state.load(Ordering::Relaxed) != TASK_RUNNING {
                p.event(LockEvent::MutexSpuriousWakeup, 1);
            }
        }
        me.slice_start.store(p.cycles(), Ordering::Relaxed);
    }

    /// `wake_up_process(task of cpu)`: returns whether it was sleeping.
    pub fn wake_up_process<P: Platform>(&self, p: &P, cpu: u32) -> bool {
        let t = self.get(p, cpu);
        // try_to_wake_up(): smp_mb__after_spinlock() before reading the
        // state; pairs with set_current_state()'s smp_mb().
        fence(Ordering::SeqCst);
        if t.state.load(Ordering::Relaxed) == TASK_RUNNING {
            return false;
        }
        // Release: the wakee's pv_wait() check (an acquire load of the byte)
        // then sees what we did before; the kick wakes a halted vCPU.
        t.state.store(TASK_RUNNING, Ordering::Release);
        p.pv_kick(cpu);
        p.event(LockEvent::MutexWake, 1);
        true
    }

    /// Send `cpu`'s task a fatal signal: `killed`, `need_resched()`, and a
    /// wakeup (`signal_wake_up()`).
    pub fn kill<P: Platform>(&self, p: &P, cpu: u32) {
        let t = self.get(p, cpu);
        t.killed.store(1, Ordering::Relaxed);
        t.resched.store(1, Ordering::Relaxed);
        self.wake_up_process(p, cpu);
    }

    /// `fatal_signal_pending(current)`.
    pub fn fatal_signal_pending<P: Platform>(&self, p: &P) -> bool {
        self.current(p).killed.load(Ordering::Relaxed) != 0
    }

    /// A new time slice for the current task from now (the mutex torture
    /// gives each `mutex_lock()` one: a slice is then the spinning one lock
    /// call may do before `need_resched()`).
    pub fn begin_slice<P: Platform>(&self, p: &P) {
        self.current(p).slice_start.store(p.cycles(), Ordering::Relaxed);
    }

    /// `need_resched()`: see the module comment.
    pub fn need_resched<P: Platform>(&self, p: &P) -> bool {
        let me = self.current(p);
        if me.resched.load(Ordering::Relaxed) != 0 {
            return true;
        }
        let slice = me.slice.load(Ordering::Relaxed);
        slice != 0 && p.cycles().wrapping_sub(me.slice_start.load(Ordering::Relaxed)) > slice
    }

    /// `owner_on_cpu()` without the `vcpu_is_preempted()` half: the state
    /// before v4.10 (`owner->on_cpu`).
    pub fn on_cpu(&self, cpu: u32) -> bool {
        self.slots.get(cpu as usize).is_some_and(|t| t.on_cpu.load(Ordering::Relaxed) != 0)
    }
}
