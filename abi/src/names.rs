//! Named values shared by the harness (names in configs and records), the
//! guest (dispatch on ids) and the VMM (reports): lock variants, race
//! windows, workloads, guest phases and panic kinds.
//!
//! Each is declared once with [`named!`]: its id (what crosses the ABI in
//! the boot block or a doorbell) and its name (what configs, JSON and the
//! terminal say). With the `serde` feature every one (de)serializes as its
//! name, so the VMM and the harness hold the typed value end to end and
//! decode a string exactly once, at the edge.

/// Declares a `#[repr(u32)]` enum with its ids and names: `ALL`, `NAMES`,
/// `name()`, `from_u32()`, `from_name()`, and serde as the name.
macro_rules! named {
    ($(#[$m:meta])* $ty:ident { $($(#[$vm:meta])* $v:ident = $id:literal, $name:literal;)* }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $ty { $($(#[$vm])* $v = $id,)* }

        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$v,)*];
            /// Every name, in declaration order (for "one of: ..." errors).
            pub const NAMES: &'static [&'static str] = &[$($name,)*];
            /// The name in configs, records and reports.
            pub const fn name(self) -> &'static str {
                match self { $($ty::$v => $name,)* }
            }
            /// The value of an id read from the ABI (guest memory, a doorbell).
            pub const fn from_u32(v: u32) -> Option<$ty> {
                match v { $($id => Some($ty::$v),)* _ => None }
            }
            /// The value of a name read from a config or the command line.
            pub fn from_name(s: &str) -> Option<$ty> {
                match s { $($name => Some($ty::$v),)* _ => None }
            }
        }

        impl core::fmt::Display for $ty {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }

        #[cfg(feature = "serde")]
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct NameVisitor;
                impl serde::de::Visitor<'_> for NameVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        f.write_str(concat!("a ", stringify!($ty), " name"))
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$ty, E> {
                        $ty::from_name(s).ok_or_else(|| E::unknown_variant(s, $ty::NAMES))
                    }
                }
                d.deserialize_str(NameVisitor)
            }
        }
    };
}

/// What kind of lock a variant is: decides which checks and detectors
/// apply (a property of the variant, not of the order of its id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariantKind {
    /// No paravirt slow path (ticket, test-and-set, native qspinlock).
    Native,
    /// A paravirt qspinlock: pv_wait / pv_kick and the PV hash table.
    Pv,
    /// A deliberately broken PV variant: a self-test of the testbed.
    Mutant,
}

/// The variant registry: [`named!`] plus each variant's [`VariantKind`].
/// Adding a variant is its line here, its module in `guest/lib/src/pv/`
/// and its entry (code and metadata) in the guest's variant table,
/// `guest/lib/src/variants.rs`, whose generated dispatch `match` makes the
/// compiler name a line here without an entry there.
macro_rules! variant_registry {
    ($(#[$m:meta])* $ty:ident { $($(#[$vm:meta])* $v:ident = $id:literal, $name:literal, $kind:ident;)* }) => {
        named! { $(#[$m])* $ty { $($(#[$vm])* $v = $id, $name;)* } }

        impl $ty {
            /// What kind of lock this is.
            pub const fn kind(self) -> VariantKind {
                match self { $($ty::$v => VariantKind::$kind,)* }
            }
        }
    };
}

variant_registry! {
    /// The lock algorithms the guest can run. Sources and releases are in
    /// `guest/lib/src/variants.rs` (`pvlock list variants`).
    Variant {
        Ticket = 1, "ticket", Native;
        Tas = 2, "tas", Native;
        Qspinlock = 3, "qspinlock", Native;
        PvV42 = 10, "pv-v4.2", Pv;
        PvV43 = 11, "pv-v4.3", Pv;
        PvV45 = 12, "pv-v4.5", Pv;
        PvV48 = 13, "pv-v4.8", Pv;
        PvRehash2016 = 14, "pv-rehash-2016", Pv;
        PvHashval2016 = 15, "pv-hashval-2016", Pv;
        PvUpstream = 16, "pv-upstream", Pv;
        MutantNoStoreMb = 20, "mutant-no-store-mb", Mutant;
        MutantSlowBeforeHash = 21, "mutant-slow-before-hash", Mutant;
        MutantHaltedHead = 22, "mutant-halted-head", Mutant;
        /// A kernel tree's own `__pv_queued_spin_lock_slowpath` +
        /// `__pv_queued_spin_unlock`, built from `lock.kernel_tree`.
        KernelPv = 30, "kernel-pv", Pv;
        /// A kernel tree's own `native_queued_spin_lock_slowpath`.
        KernelNative = 31, "kernel-native", Native;
    }
}

impl Variant {
    /// Uses pv_wait / pv_kick and the PV hash table.
    pub const fn is_pv(self) -> bool {
        matches!(self.kind(), VariantKind::Pv | VariantKind::Mutant)
    }
    /// A deliberately broken self-test, not a historical variant.
    pub const fn is_mutant(self) -> bool {
        matches!(self.kind(), VariantKind::Mutant)
    }
    /// Runs a kernel tree's own code (the kernel-lock module built by the
    /// harness), not one of our reconstructions.
    pub const fn is_kernel(self) -> bool {
        matches!(self, Self::KernelPv | Self::KernelNative)
    }
}

named! {
    /// Race windows: points in the lock code where stalling one vCPU opens a
    /// known race (`../shared/PV-LOCK-BACKGROUND.md`, "Where the races live").
    Window {
        /// New owner between the MCS hand-off store and `pv_kick_node()`'s
        /// state cmpxchg (R1, double hash).
        Handoff = 0, "handoff";
        /// `pv_kick_node()` between a successful state cmpxchg and its
        /// `_Q_SLOW_VAL` write / hash insert (R3).
        KickNodeHash = 1, "kick-node-hash";
        /// Queue head between its hash insert and setting `_Q_SLOW_VAL`.
        HeadHashSlow = 2, "head-hash-slow";
        /// Unlocker between `pv_unhash()` and the release store.
        UnlockUnhash = 3, "unlock-unhash";
        /// Unlocker between the release store and `pv_kick()` (R2).
        UnlockKick = 4, "unlock-kick";
        /// Kicked queue head before its trylock (R2).
        HeadTrylock = 5, "head-trylock";
        /// A hasher while `locked == _Q_HASH_VAL` (R4).
        HashvalHeld = 6, "hashval-held";
        /// `pv_wait_node()` between its state store and its `locked` re-check.
        WaitNodeRecheck = 7, "wait-node-recheck";
        /// Lock holder inside its critical section (used by `holder` stalls).
        CriticalSection = 8, "critical-section";
        /// Mutex waiter between setting `MUTEX_FLAG_HANDOFF` with
        /// `__mutex_set_flag()` on a mutex that was unlocked at that moment
        /// and its own trylock (v4.10..v5.15): a steal here clears the flag
        /// (the 048661a1f963 starvation; ad90880dc962 closed the window).
        MutexHandoffSet = 9, "mutex-handoff-set";
        /// Page waker (`wake_page_function()`) between the unlink of a
        /// waiter's entry and the wakeup of its task, in the variant's order:
        /// after `list_del_init()` in Linus's July 2020 RFC (the waiter may
        /// see its entry unlinked, return and exit: the use-after-free Oleg
        /// pointed out); after the wakeup, before the unlink, in the others
        /// (the waiter then needs the queue lock to leave).
        PageWakeBetween = 10, "page-wake-between";
        /// Page waker between the wakeup and the `WQ_FLAG_WOKEN` store
        /// (the mutant that drops the `wmb()` of Oleg's proposal: the flag
        /// becomes visible after the wakeup).
        PageWakeBeforeWoken = 11, "page-wake-before-woken";
        /// A page waiter's task has returned from its wait and exited (its
        /// stack frame and task poisoned): a marker for `until` rules.
        PageTaskExit = 12, "page-task-exit";
        /// A task has just taken an unlocked mutex whose owner word carried
        /// the first waiter's `MUTEX_FLAG_HANDOFF` request (it is not that
        /// waiter): the steal of 048661a1f963 / ad90880dc962. Raised after
        /// the taking cmpxchg, before the critical section.
        MutexHandoffStolen = 13, "mutex-handoff-stolen";
        /// The mutex's first waiter is about to `schedule()` in the wait
        /// loop: a marker for `until` rules.
        MutexFirstSleeps = 14, "mutex-first-sleeps";
    }
}

named! {
    /// The page wait / wake paths (`wait_on_page_bit_common()` and
    /// `wake_page_function()`, mm/filemap.c), named by source; code and
    /// sources in `guest/lib/src/sleeping/page.rs`. The wait queue's lock
    /// is a spinlock of the run's [`Variant`].
    PageWakeVariant {
        /// v4.10..v5.7 (PageWaiters, 62906027091f): the
        /// `autoremove_wake_function()` path; waiters re-queue at the tail.
        V5_7 = 1, "page-wake-v5.7";
        /// Linus's RFC of 2020-07-22 ("mm: silence soft lockups from
        /// unlock_page"): reads `wait->private`, `list_del_init()`, then
        /// wakes the task, which may have exited.
        Rfc2020 = 2, "page-wake-rfc-2020-07";
        /// Oleg Nesterov's reply: `WQ_FLAG_WOKEN`, `wmb()`, then
        /// `autoremove_wake_function()`.
        OlegWoken = 3, "page-wake-oleg-woken";
        /// 2a9127fcf229 "mm: rewrite wait_on_page_bit_common() logic"
        /// (v5.8): WOKEN, wake, `list_del_init_careful()` last; the waker
        /// takes the bit for an exclusive waiter (strictly fair).
        Rewrite2a9127 = 4, "page-wake-2a9127fcf229";
        /// 5ef64cc8987a (v5.9-rc5, 2020-09-13) and the folio versions since: the
        /// store-release of WOKEN|DONE, lock hand-off after
        /// `sysctl_page_lock_unfairness` steals.
        Upstream = 5, "page-wake-upstream";
        /// Mutant: the RFC with `list_del_init()` before reading
        /// `wait->private` (the order its own comment forbids).
        MutantDelBeforePrivate = 20, "mutant-page-del-before-private";
        /// Mutant: Oleg's proposal without its `wmb()`: the WOKEN store
        /// lands after the wakeup (a weakly ordered CPU may): lost wakeup.
        MutantWokenAfterWake = 21, "mutant-page-woken-after-wake";
    }
}

impl PageWakeVariant {
    /// A deliberately broken self-test, not a historical variant.
    pub const fn is_mutant(self) -> bool {
        (self as u32) >= 20
    }
}

named! {
    /// What a use-after-free record says was freed.
    FreedObject {
        /// A wait-queue entry on a waiter's stack (its frame returned).
        WaitEntry = 1, "wait-entry";
        /// A task that exited (and may have been reused).
        Task = 2, "task";
    }
}

named! {
    /// The page waker's step that touched a freed object.
    WakeStep {
        /// Walking the queue (`list_for_each_entry_safe`).
        Walk = 1, "walk";
        /// Reading `wait->private` (the task).
        ReadPrivate = 2, "read-private";
        /// Writing `wait->flags` (`WQ_FLAG_WOKEN`).
        SetFlags = 3, "set-flags";
        /// `wake_up_state()` / `try_to_wake_up()` of the task.
        WakeTask = 4, "wake-task";
        /// `list_del_init()` of the entry.
        ListDel = 5, "list-del";
    }
}

named! {
    /// The sleeping-lock (mutex) variants, named by release; sources in
    /// `guest/lib/src/sleeping/mutex.rs` (`pvlock list variants`). Their
    /// `wait_lock` is a spinlock of the run's [`Variant`].
    MutexVariant {
        V2_6_28 = 1, "mutex-v2.6.28";
        V4_9 = 2, "mutex-v4.9";
        V4_10 = 3, "mutex-v4.10";
        V5_12 = 4, "mutex-v5.12";
        V5_13 = 5, "mutex-v5.13";
        Upstream = 6, "mutex-upstream";
        MutantRelaxedFastpath = 20, "mutant-mutex-relaxed-fastpath";
    }
}

impl MutexVariant {
    /// A deliberately broken self-test, not a historical variant.
    pub const fn is_mutant(self) -> bool {
        (self as u32) >= 20
    }
}

impl Window {
    /// This window's bit in [`crate::WindowParams::enabled_mask`].
    pub const fn bit(self) -> u64 {
        1 << self as u32
    }
}

/// Number of race windows; window ids are `0..NR_WINDOWS`.
pub const NR_WINDOWS: usize = Window::ALL.len();

named! {
    /// What the guest runs. Chosen by the VMM; the guest dispatches on it.
    Workload {
        /// Shared atomic counter plus a plain counter under a test-and-set lock
        /// that backs off with wait/kick; the VMM checks both totals.
        Smoke = 1, "smoke";
        /// Lock torture over a chosen lock variant (`guest/lib/src/torture.rs`).
        Torture = 2, "torture";
        /// Self-test: vCPU 0 executes `ud2` (a fault that becomes a triple fault).
        Fault = 3, "fault";
        /// Self-test: vCPU 0 rings the console doorbell with an address outside RAM.
        BadPointer = 4, "bad-pointer";
        /// Self-test: vCPU 0 waits on a byte nobody will ever change or kick.
        WaitForever = 5, "wait-forever";
        /// Self-test: vCPU 0 fails an assertion (panic doorbell).
        Panic = 6, "panic";
        /// Ping-pong between vCPU 0 and 1 through wait/kick, to time kick -> wake.
        PingPong = 7, "ping-pong";
        /// Doorbell round trips (exit cost) and kick stores, timed by the guest.
        Doorbells = 8, "doorbells";
        /// vCPU 0 stalls at the `critical-section` window while the others
        /// watch every vCPU's `vcpu_is_preempted()`; see
        /// [`crate::vcpu::PreemptProbeTiming`].
        PreemptProbe = 9, "preempt-probe";
        /// Fuzz of the doorbell ABI: each vCPU makes `iterations` seeded random
        /// MMIO accesses (addresses in and around the doorbells, widths 1..8,
        /// values random or shaped like real requests, a few reads, a few
        /// stores into the records the VMM reads). The VMM must end every run
        /// with a record within its timeout.
        DoorbellFuzz = 10, "doorbell-fuzz";
        /// Mutex torture (`guest/lib/src/sleeping`): one task per vCPU takes
        /// `lock.mutex` mutexes whose `wait_lock` is `lock.variant`.
        MutexTorture = 11, "mutex-torture";
        /// Self-test: vCPU 0 spins forever in one function without an exit
        /// (the watchdog must say where: function and source line).
        SpinForever = 12, "spin-forever";
        /// Page lock and page wait queues (`guest/lib/src/sleeping/page.rs`):
        /// tasks lock a page or wait for it unlocked, in the
        /// `lock.page_wake` variant; waiters' entries and tasks are poisoned
        /// when they return / exit, so a waker's late access is reported.
        PageWake = 13, "page-wake";
        /// Bookkeeping baseline: each vCPU runs `lock.variant`'s lock and
        /// unlock around the torture's critical section and think time, with
        /// none of the torture's checks (`torture::lock_loop`).
        LockLoop = 14, "lock-loop";
        /// The same loop with no lock at all.
        EmptyLoop = 15, "empty-loop";
    }
}

named! {
    /// What the vCPU is doing right now, written by the guest's lock code.
    GuestPhase {
        Booting = 0, "booting";
        /// Outside any lock (think time, workload bookkeeping).
        Running = 1, "running";
        /// In the lock's fast path or spinning outside the queue.
        Spinning = 2, "spinning";
        /// Queued in the MCS queue behind another waiter.
        Queued = 3, "queued";
        /// Queue head spinning on the lock word.
        Head = 4, "head";
        /// Inside `pv_wait()` (blocked in the VMM, or about to be).
        Waiting = 5, "waiting";
        /// Holding the lock (critical section).
        Holding = 6, "holding";
        /// In the unlock path.
        Unlocking = 7, "unlocking";
        /// Workload finished.
        Done = 8, "done";
    }
}

named! {
    /// What a [`crate::doorbell::PANIC`] doorbell reports (its value). The
    /// names are the `what` of a recorded guest panic.
    PanicKind {
        /// A Rust panic in the guest (assertion, bounds check...).
        Panic = 1, "panic";
        /// A lock-algorithm BUG(): `pv_hash` found no free slot, `pv_unhash`
        /// did not find the lock, or another "cannot happen".
        Bug = 2, "BUG";
        /// Two vCPUs inside the same critical section.
        MutualExclusion = 3, "mutual-exclusion violation";
        /// Another vCPU touched a poisoned wait entry or task; the typed
        /// record is in the vCPU block's `uaf` field.
        UseAfterFree = 4, "use-after-free";
    }
}

impl PanicKind {
    /// The kind a PANIC doorbell's 64-bit value names.
    pub const fn from_u64(v: u64) -> Option<Self> {
        if v > u32::MAX as u64 {
            return None;
        }
        Self::from_u32(v as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for v in Variant::ALL {
            assert_eq!(Variant::from_u32(*v as u32), Some(*v));
            assert_eq!(Variant::from_name(v.name()), Some(*v));
        }
        for (i, w) in Window::ALL.iter().enumerate() {
            assert_eq!(*w as usize, i, "window ids must be dense");
            assert_eq!(Window::from_name(w.name()), Some(*w));
        }
        for w in Workload::ALL {
            assert_eq!(Workload::from_u32(*w as u32), Some(*w));
            assert_eq!(Workload::from_name(w.name()), Some(*w));
        }
        for (i, p) in GuestPhase::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
        }
        assert_eq!(PanicKind::from_u64(3), Some(PanicKind::MutualExclusion));
        assert_eq!(PanicKind::from_u64(1 << 32 | 3), None);
    }

    #[test]
    fn kind_not_id_order_decides_pv() {
        // Every kind is represented and mutants are PV locks.
        assert!(Variant::ALL.iter().any(|v| v.kind() == VariantKind::Native));
        for v in Variant::ALL {
            assert_eq!(v.is_pv(), v.kind() != VariantKind::Native, "{v}");
            assert!(!v.is_mutant() || v.is_pv(), "{v}");
        }
        assert!(!Variant::Qspinlock.is_pv() && Variant::PvV42.is_pv() && Variant::MutantHaltedHead.is_mutant());
    }
}
