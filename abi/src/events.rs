//! Event counters. Lock events use the names of Linux's
//! `kernel/locking/lock_events_list.h` (ad53fa10fa9e, v5.2; formerly qstat),
//! plus a few of ours; VMM counters are the hypervisor half's.

macro_rules! counters {
    ($(#[$m:meta])* $ty:ident, $n:ident { $($(#[$vm:meta])* $v:ident = $name:literal,)* }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $ty { $($(#[$vm])* $v,)* }

        impl $ty {
            /// Every counter, in index order.
            pub const ALL: &'static [$ty] = &[$($ty::$v,)*];
            /// The counter's name in reports and JSON.
            pub const fn name(self) -> &'static str {
                match self { $($ty::$v => $name,)* }
            }
            pub const fn index(self) -> usize { self as usize }
        }

        /// Number of counters of this kind.
        pub const $n: usize = $ty::ALL.len();
    };
}

counters! {
    /// Per-vCPU lock events, counted by the guest's lock code.
    LockEvent, NR_LOCK_EVENTS {
        /// Slots probed by `pv_hash()` inserts, the first one included (as
        /// Linux counts it: hops / inserts is 1.0 without collisions).
        PvHashHops = "pv_hash_hops",
        /// `pv_kick()` issued by the unlock slow path.
        PvKickUnlock = "pv_kick_unlock",
        /// A waiter's `pv_wait()` ended by a kick (Linux: the wakeups that
        /// `pv_latency_wake` is measured over).
        PvKickWake = "pv_kick_wake",
        /// Cycles spent in `pv_kick()` by the unlocker (sum).
        PvLatencyKick = "pv_latency_kick",
        /// Cycles from a kick to the kicked vCPU running again (sum).
        PvLatencyWake = "pv_latency_wake",
        /// Locks taken by a stealer (trylock outside the queue order).
        PvLockStealing = "pv_lock_stealing",
        /// A `pv_wait()` returned with nothing changed.
        PvSpuriousWakeup = "pv_spurious_wakeup",
        /// The queue head woke but had to wait again.
        PvWaitAgain = "pv_wait_again",
        /// `pv_wait_early()` cut a queued waiter's spin short.
        PvWaitEarly = "pv_wait_early",
        /// The queue head called `pv_wait()`.
        PvWaitHead = "pv_wait_head",
        /// A queued waiter called `pv_wait()`.
        PvWaitNode = "pv_wait_node",
        /// The native slow path used the pending bit.
        LockPending = "lock_pending",
        /// Native: went to the MCS queue (the `queue:` label). PV: a
        /// queue head entered `pv_wait_head_or_lock()` (the kernel's
        /// `pv_lock_slowpath`, v4.6 on; not counted by `pv-v4.5`, nor for a
        /// waiter that stole the lock before queueing).
        LockSlowpath = "lock_slowpath",
        /// MCS node index 1 used (nested slow path).
        LockUseNode2 = "lock_use_node2",
        /// MCS node index 2 used.
        LockUseNode3 = "lock_use_node3",
        /// MCS node index 3 used.
        LockUseNode4 = "lock_use_node4",
        /// All four MCS nodes were in use: spun without queueing.
        LockNoNode = "lock_no_node",
        /// Ours: a head kicked by the unlock path that then lost the lock to a stealer.
        KickedButStolen = "kicked_but_stolen",
        /// Ours: a `pv_hash()` insert for a lock already in the table.
        DoubleHash = "double_hash",
        /// Ours: `pv_hash()` inserts.
        HashInserts = "hash_inserts",
        /// Ours: `pv_unhash()` removals.
        HashRemoves = "hash_removes",
        /// Ours: the longest probe sequence of any insert (max, not a sum).
        HashMaxProbe = "hash_max_probe",
        /// Ours: simulated interrupt handlers run inside a slow path.
        SimIrqs = "sim_irqs",
        /// Ours: race windows at which the guest chose to stall.
        WindowStalls = "window_stalls",
        /// Sleeping locks (`guest/lib/src/sleeping`). The kernel keeps no
        /// lock events for the mutex; these are ours, named after the
        /// rwsem's (`rwsem_opt_lock`, `rwsem_sleep_*`) in lock_events_list.h.
        /// Mutex taken by the fast path (`__mutex_trylock_fast()`, count 1 -> 0).
        MutexFastpath = "mutex_fastpath",
        /// Mutex taken while optimistically spinning (OSQ head or waiter-spinner).
        MutexOptLock = "mutex_opt_lock",
        /// Optimistic spinning gave up (owner off CPU / preempted / need_resched).
        MutexOptFail = "mutex_opt_fail",
        /// Spinning stopped because `vcpu_is_preempted()` said the owner's vCPU is preempted.
        MutexSpinBreakPreempted = "mutex_spin_break_preempted",
        /// Cycles spent in `mutex_spin_on_owner()` (sum).
        MutexSpinCycles = "mutex_spin_cycles",
        /// Cycles of that spinning during which the owner's vCPU was preempted: wasted (sum).
        MutexSpinPreemptedCycles = "mutex_spin_preempted_cycles",
        /// `schedule()` calls in the mutex slow path (the task slept: pv_wait).
        MutexSleep = "mutex_sleep",
        /// `schedule()` returned with the task still not woken (spurious wakeup).
        MutexSpuriousWakeup = "mutex_spurious_wakeup",
        /// `wake_up_process()` by a mutex unlock that found the task sleeping.
        MutexWake = "mutex_wake",
        /// Unlocks that handed the mutex to the top waiter (`__mutex_handoff()`).
        MutexHandoff = "mutex_handoff",
        /// Cycles from `__mutex_handoff()` to the new owner picking the mutex up (sum).
        MutexHandoffCycles = "mutex_handoff_cycles",
        /// Acquisitions through the wait list (slow path, after queueing).
        MutexSlowpath = "mutex_slowpath",
        /// Ours, a maximum over one `mutex_lock()`: wakeups as the first
        /// waiter after which the waiter went on waiting with no hand-off
        /// request standing (the mutex owned by another task, neither
        /// HANDOFF nor PICKUP set). Bounded (about 1) where the first waiter
        /// re-requests HANDOFF on each wakeup; grows without bound where a
        /// lost request is never renewed (before 048661a1f963).
        MutexFirstWakeNoHandoffMax = "mutex_first_wake_no_handoff_max",
        /// rtmutex acquisitions through `try_to_take_rt_mutex()` (slow path).
        RtMutexSlowpath = "rtmutex_slowpath",
        /// Ours: guest-side polls before the exiting wait (`hypervisor.
        /// guest_poll_ns`) that ended with a kick or the byte changed.
        GuestPollsWon = "guest_polls_won",
        /// Ours: guest-side polls that timed out and went on to exit.
        GuestPollsLost = "guest_polls_lost",
        /// Ours: cycles spent in guest-side polls, won or lost (sum).
        GuestPollCycles = "guest_poll_cycles",
        /// Ours: kicks delivered through the polling target's shared flag,
        /// without the kick store (the `TIF_POLLING_NRFLAG` idea: a waker
        /// that sees its target polling needs no IPI).
        KicksToPoller = "kicks_to_poller",
        /// Page wait queues (`guest/lib/src/sleeping/page.rs`), ours.
        /// `wake_up_page_bit()` calls (an `unlock_page()` that saw PG_waiters).
        PageWakeCalls = "page_wake_calls",
        /// Entries queued when a wake walk started (sum; / calls = the
        /// waiters an unlock found).
        PageWakeQueued = "page_wake_queued",
        /// Entries the wake walks visited (wake function calls).
        PageWakeVisits = "page_wake_visits",
        /// Tasks the wake walks woke (`try_to_wake_up()` found them sleeping).
        PageWakeWoken = "page_wake_woken",
        /// Cycles inside the walk, queue lock held (sum).
        PageWakeLoopCycles = "page_wake_loop_cycles",
        /// The longest single walk, cycles (max, not a sum).
        PageWakeLoopMaxCycles = "page_wake_loop_max_cycles",
        /// Waits that re-queued their entry (v5.8: woken, lost the bit).
        PageWaitRequeue = "page_wait_requeue",
        /// `wait_on_page_bit_common()` calls that queued an entry.
        PageWaits = "page_waits",
        /// Tasks that exited after a page wait (and were reused later).
        PageTaskExits = "page_task_exits",
    }
}

counters! {
    /// Per-vCPU counters kept by the VMM's pv_wait / pv_kick implementation.
    VmmCounter, NR_VMM_COUNTERS {
        /// Wait doorbells received.
        Waits = "waits",
        /// Checked waits that returned at once because the byte had changed.
        WaitsValueChanged = "waits_value_changed",
        /// Waits that returned at once because a remembered kick was pending.
        WaitsKickPending = "waits_kick_pending",
        /// Waits that blocked the vCPU thread.
        WaitsBlocked = "waits_blocked",
        /// Kicks this vCPU received (eventfd signals consumed).
        KicksReceived = "kicks_received",
        /// Kicks dropped by the "lost-if-not-waiting" contract.
        KicksDropped = "kicks_dropped",
        /// Wakeups injected by `spurious_wakeup_prob`.
        SpuriousWakeups = "spurious_wakeups",
        /// Waits ended by the periodic simulated interrupt.
        InterruptWakeups = "interrupt_wakeups",
        /// Waits whose kick arrived while halt polling.
        PollsWon = "polls_won",
        /// Of those, kicks taken through the vCPU's poll state word
        /// (`halt_poll_flag`): the kicker skipped the kick store.
        PollFlagKicks = "poll_flag_kicks",
        /// Stalls injected by the preemption engine.
        Stalls = "stalls",
        /// Total microseconds this vCPU was stalled.
        StalledUs = "stalled_us",
        /// Microseconds this vCPU spent blocked in waits.
        WaitingUs = "waiting_us",
        /// Missed wakeups rescued by `--rescue`.
        Rescues = "rescues",
        /// With `--rescue`: waits longer than the stall timeout that the
        /// watchdog could not prove lost (left waiting).
        LongWaits = "long_waits",
    }
}

impl LockEvent {
    /// A maximum (combined over vCPUs by `max`), not a count (summed).
    pub const fn is_max(self) -> bool {
        matches!(self, LockEvent::HashMaxProbe | LockEvent::MutexFirstWakeNoHandoffMax)
    }
}
