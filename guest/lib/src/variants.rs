//! The guest's table of lock variants: for each [`Variant`] of the ABI
//! registry, the code that runs it (its [`LockAlgorithm`], which
//! [`crate::system::LockSystem`] dispatches to) and what it is, for `pvlock
//! list variants` and reports: summary, source (commit or thread), the
//! release it first shipped in and how that was checked, and the race
//! windows its code calls.
//!
//! Adding a variant is one entry here (its implementation and metadata),
//! one line in the ABI's `variant_registry!` and its module: the generated
//! dispatch `match` is exhaustive, so the compiler names a registry line
//! without an entry here.
//!
//! The windows listed are exactly the [`Window`]s the variant's lock and
//! unlock code passes to [`crate::Platform::race_window`] (a unit test
//! checks that a run reaches no other). `critical-section` is called by the
//! torture workload around every critical section, for every variant, so
//! it is not listed here.

use crate::pv::hashval::Hashval;
use crate::pv::lineage::{Flavor, Lineage};
use crate::pv::v4_2::V42;
use crate::pv::v4_3::V43;
use crate::qspinlock::Native;
use crate::simple::{Tas, Ticket};
use crate::system::{KernelTree, LockAlgorithm, LockSystem, Queued, RawLock};
use crate::Platform;
use pvlock_abi::{Variant, Window};

/// Metadata of one variant.
#[derive(Clone, Copy, Debug)]
pub struct VariantInfo {
    pub variant: Variant,
    /// One line.
    pub summary: &'static str,
    /// Commit ids or mailing-list thread the code follows.
    pub source: &'static str,
    /// Release it first shipped in ("-" if never merged).
    pub first_release: &'static str,
    /// How the release and the code were checked.
    pub verified: &'static str,
    /// Lock stealing behaviour.
    pub stealing: &'static str,
    /// Race windows the code calls.
    pub windows: &'static [Window],
}

use Window::*;

const PV_V42: &[Window] = &[Handoff, HeadHashSlow, UnlockUnhash, UnlockKick, HeadTrylock, WaitNodeRecheck];
const PV_ALL: &[Window] =
    &[Handoff, KickNodeHash, HeadHashSlow, UnlockUnhash, UnlockKick, HeadTrylock, WaitNodeRecheck];
const PV_HASHVAL: &[Window] =
    &[Handoff, KickNodeHash, HeadHashSlow, UnlockUnhash, UnlockKick, HeadTrylock, HashvalHeld, WaitNodeRecheck];

/// Declares [`VARIANTS`] (every variant's metadata, in [`Variant::ALL`]
/// order) and the dispatch from a [`Variant`] to its [`LockAlgorithm`]
/// (`lock_as` / `unlock_as`, one exhaustive `match` each, statically
/// dispatched as a hand-written `match` would be).
macro_rules! variant_table {
    ($($v:ident { lock: $imp:expr, $($field:ident: $val:expr),+ $(,)? },)*) => {
        /// Every variant, in [`Variant::ALL`] order.
        pub const VARIANTS: &[VariantInfo] = &[$(VariantInfo { variant: Variant::$v, $($field: $val),+ },)*];

        /// `spin_lock()` with `v`'s code.
        #[inline]
        pub(crate) fn lock_as<P: Platform>(v: Variant, sys: &LockSystem<'_>, p: &P, lock: &RawLock) {
            match v {
                $(Variant::$v => LockAlgorithm::lock(&$imp, sys, p, lock),)*
            }
        }

        /// `spin_unlock()` with `v`'s code.
        #[inline]
        pub(crate) fn unlock_as<P: Platform>(v: Variant, sys: &LockSystem<'_>, p: &P, lock: &RawLock) {
            match v {
                $(Variant::$v => LockAlgorithm::unlock(&$imp, sys, p, lock),)*
            }
        }
    };
}

variant_table! {
    Ticket {
        lock: Ticket,
        summary: "FIFO ticket spinlock (x86's lock before qspinlock), no PV slow path",
        source: "314cdbefd1fd \"x86: FIFO ticket spinlocks\"",
        first_release: "v2.6.25 (x86 default until v4.2)",
        verified: "not checked against a tree (baseline only)",
        stealing: "none (FIFO)",
        windows: &[],
    },
    Tas {
        lock: Tas,
        summary: "test-and-test-and-set fallback virt_spin_lock(): what a guest without PV spinlocks runs",
        source: "2aa79af64263 \"locking/qspinlock: Revert to test-and-set on hypervisors\"; arch/x86/include/asm/qspinlock.h",
        first_release: "v4.2",
        verified: "code checked against upstream arch/x86/include/asm/qspinlock.h",
        stealing: "always (unfair)",
        windows: &[],
    },
    Qspinlock {
        lock: Queued(Native),
        summary: "native queued spinlock: pending bit, then MCS queue (today's qspinlock.c)",
        source: "a33fda35e3a7 (v4.2) as restructured since; upstream kernel/locking/qspinlock.c",
        first_release: "v4.2",
        verified: "slow path checked against a v6.x tree",
        stealing: "none (the slow path's trylock needs an all-zero word)",
        windows: &[],
    },
    PvV42 {
        lock: Queued(V42),
        summary: "first PV qspinlock: owner kicks a halted successor, head hashes itself, unlock kicks a halted head",
        source: "a23db284fe0d + b92b8b35a2e3 + 93edc8bd7750 (the file just before 75d2270280686)",
        first_release: "v4.2",
        verified: "no v4.2 tree in the index: reconstructed from the commits and the v4.4 file; \
                   release from the commits' merge window (v4.2-rc1); its event counters are the \
                   model's (the kernel had no PV lock statistics before 45e898b73562, v4.5)",
        stealing: "none",
        windows: PV_V42,
    },
    PvV43 {
        lock: Queued(V43),
        summary: "vcpu_hashed: the owner hashes a halted successor instead of kicking it; kick only at unlock",
        source: "75d2270280686 \"locking/pvqspinlock: Only kick CPU at unlock time\" (posted 2015-07-11)",
        first_release: "v4.3",
        verified: "code checked against a v4.4.60 tree (unchanged v4.3-v4.4); v4.3, not v4.2: posted \
                   after v4.2-rc1 closed the merge window, queued in tip for the next one \
                   (no v4.2/v4.3 tree in the index to read directly); its event counters are the \
                   model's (the kernel had no PV lock statistics before 45e898b73562, v4.5)",
        stealing: "none",
        windows: PV_ALL,
    },
    PvV45 {
        lock: Queued(Lineage(Flavor::V45)),
        summary: "head sets pending, one steal at slow-path entry, wait-early; head writes vcpu_halted: double hash (R1)",
        source: "1c4941fd53af (limited stealing) + cd0272fab785 (wait early) + 45e898b73562 (stats): the v4.5 release",
        first_release: "v4.5",
        verified: "lock code checked against a stored tree of the v4.5-v4.7 lock logic; counters and hash_64() \
                   are v4.5's (v4.6 added pv_lock_slowpath and the 689de1d6ca95 hash multiplier)",
        stealing: "one attempt at slow-path entry when locked and pending are clear",
        windows: PV_ALL,
    },
    PvV48 {
        lock: Queued(Lineage(Flavor::V48)),
        summary: "v4.7 + \"Fix double hash race\": the head writes vcpu_hashed before pv_wait",
        source: "229ce631574761870a2ac938845fadbd07f35caa (v4.8-rc2) on the v4.7 file: the v4.8 release",
        first_release: "v4.8",
        verified: "diff read (one line on top of v4.7); counters as v4.6-v4.8 (wait_again/spurious_wakeup \
                   separated only in v4.9); later relaxed orderings not included",
        stealing: "one attempt at slow-path entry when locked and pending are clear",
        windows: PV_ALL,
    },
    PvRehash2016 {
        lock: Queued(Lineage(Flavor::Rehash2016)),
        summary: "v4.8 + a kicked-then-stolen head re-hashes and sets _Q_SLOW_VAL before waiting again (R3)",
        source: "\"[PATCH v2 2/5] locking/pvqspinlock: Fix missed PV wakeup problem\" (July 2016); \
                 rule reconstructed on pv-v4.8's lock with the July 2016 tip counters, see pv/lineage.rs",
        first_release: "- (not merged)",
        verified: "patch text not available: reconstruction",
        stealing: "one attempt at slow-path entry when locked and pending are clear",
        windows: PV_ALL,
    },
    PvHashval2016 {
        lock: Queued(Hashval),
        summary: "_Q_HASH_VAL=3 marks hashing in progress, _Q_SLOW_VAL=7, node/head x running/halted states",
        source: "Peter Zijlstra's reply (2016-07-15) in the \"Fix missed PV wakeup problem\" thread; \
                 base: the July 2016 tip file (v4.7 + 229ce6315747 + the v4.9 stats split); see pv/hashval.rs",
        first_release: "- (not merged)",
        verified: "diff read up to the start of __pv_queued_spin_unlock_slowpath(); the rest of the unlock \
                   reconstructed; the diff's own gap (a node state left node_halted) kept",
        stealing: "one attempt at slow-path entry when locked and pending are clear",
        windows: PV_HASHVAL,
    },
    PvUpstream {
        lock: Queued(Lineage(Flavor::Upstream)),
        summary: "today's PV qspinlock: hybrid unfair trylock, smp_mb__before_atomic + relaxed cmpxchg in pv_kick_node",
        source: "kernel/locking/qspinlock_paravirt.h (v6.x); 11752adb68a3 (hybrid), 89340d0935c9 (wait-early on state only)",
        first_release: "v6.x (hybrid trylock since 11752adb68a3, release not checked; the one-shot steal before it)",
        verified: "code checked against v6.x trees",
        stealing: "hybrid: newcomers keep trying while a queue exists and pending is clear",
        windows: PV_ALL,
    },
    MutantNoStoreMb {
        lock: Queued(Lineage(Flavor::NoStoreMb)),
        summary: "upstream without the full barrier between pv_wait_node's halted store and locked re-check (R5)",
        source: "mutant of pv-upstream",
        first_release: "- (self-test)",
        verified: "-",
        stealing: "hybrid",
        windows: PV_ALL,
    },
    MutantSlowBeforeHash {
        lock: Queued(Lineage(Flavor::SlowBeforeHash)),
        summary: "upstream whose head sets _Q_SLOW_VAL before its hash insert (pv_unhash BUG)",
        source: "mutant of pv-upstream",
        first_release: "- (self-test)",
        verified: "-",
        stealing: "hybrid",
        windows: PV_ALL,
    },
    MutantHaltedHead {
        lock: Queued(Lineage(Flavor::HaltedHead)),
        summary: "upstream with v4.5's vcpu_halted head write (R1 in an otherwise upstream lock)",
        source: "mutant of pv-upstream",
        first_release: "- (self-test)",
        verified: "-",
        stealing: "hybrid",
        windows: PV_ALL,
    },
    KernelPv {
        lock: KernelTree,
        summary: "a kernel tree's own __pv_queued_spin_lock_slowpath + __pv_queued_spin_unlock, compiled unmodified",
        source: "lock.kernel_tree (+ lock.kernel_patches): kernel/locking/qspinlock.c of that tree",
        first_release: "the tree's (its Makefile)",
        verified: "it is the tree's code; layouts built: docs/KERNEL-BUILDS.md",
        stealing: "the tree's",
        windows: &[],
    },
    KernelNative {
        lock: KernelTree,
        summary: "a kernel tree's own native_queued_spin_lock_slowpath and native unlock, compiled unmodified",
        source: "lock.kernel_tree (+ lock.kernel_patches): kernel/locking/qspinlock.c of that tree",
        first_release: "the tree's (its Makefile)",
        verified: "it is the tree's code; layouts built: docs/KERNEL-BUILDS.md",
        stealing: "the tree's",
        windows: &[],
    },
}

/// The smallest `SPIN_THRESHOLD` at which `pv_wait_early()` can fire: the
/// spin loop counts `loop` down from the threshold to 1 and looks at the
/// predecessor only when `(loop & PV_PREV_CHECK_MASK) == 0` (mask 0xff),
/// so below 256 the check never happens.
pub const WAIT_EARLY_MIN_SPIN_THRESHOLD: u32 = 256;

/// Whether `v`'s `pv_wait_node()` has `pv_wait_early()` (cd0272fab785, v4.5).
pub fn has_wait_early(v: Variant) -> bool {
    v.is_pv() && !matches!(v, Variant::PvV42 | Variant::PvV43)
}

/// Whether `v`'s lock-event counters are only the model's: the kernel of
/// its era had no PV lock statistics (`qspinlock_stat.h` came with
/// 45e898b73562 in v4.5), so there is nothing in a kernel to compare them
/// with.
pub fn counters_model_only(v: Variant) -> bool {
    matches!(v, Variant::PvV42 | Variant::PvV43)
}

/// Whether running `v` with `spin_threshold` silently loses its
/// `pv_wait_early()`: the threshold is below
/// [`WAIT_EARLY_MIN_SPIN_THRESHOLD`] (`pvlock` warns about such configs).
pub fn wait_early_disabled(v: Variant, spin_threshold: u32) -> bool {
    has_wait_early(v) && spin_threshold < WAIT_EARLY_MIN_SPIN_THRESHOLD
}

/// Metadata of `v`.
pub fn info(v: Variant) -> &'static VariantInfo {
    match VARIANTS.iter().find(|i| i.variant == v) {
        Some(i) => i,
        None => &VARIANTS[0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_metadata_in_order() {
        assert_eq!(VARIANTS.len(), Variant::ALL.len());
        for (i, v) in Variant::ALL.iter().enumerate() {
            assert_eq!(VARIANTS[i].variant, *v);
            assert_eq!(info(*v).variant, *v);
            // The kernel's code has no race-window calls in it.
            assert_eq!(!info(*v).windows.is_empty(), v.is_pv() && !v.is_kernel(), "{}", v.name());
            assert!(!info(*v).windows.contains(&Window::CriticalSection));
        }
    }

    #[test]
    fn wait_early_threshold_warning_only_where_it_matters() {
        assert!(wait_early_disabled(Variant::PvV45, 255));
        assert!(wait_early_disabled(Variant::PvUpstream, 64));
        assert!(!wait_early_disabled(Variant::PvV45, 256));
        assert!(!wait_early_disabled(Variant::PvV42, 64), "no wait-early before v4.5");
        assert!(!wait_early_disabled(Variant::Qspinlock, 1));
        assert!(counters_model_only(Variant::PvV43) && !counters_model_only(Variant::PvV45));
    }
}
