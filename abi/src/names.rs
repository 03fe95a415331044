//! Lock variants and race windows: ids shared by the harness (names in
//! configs), the guest (dispatch) and the VMM (reports).

macro_rules! named {
    ($(#[$m:meta])* $ty:ident { $($(#[$vm:meta])* $v:ident = $id:literal, $name:literal;)* }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $ty { $($(#[$vm])* $v = $id,)* }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$v,)*];
            pub const fn name(self) -> &'static str {
                match self { $($ty::$v => $name,)* }
            }
            pub const fn from_u32(v: u32) -> Option<$ty> {
                match v { $($id => Some($ty::$v),)* _ => None }
            }
            pub fn from_name(s: &str) -> Option<$ty> {
                match s { $($name => Some($ty::$v),)* _ => None }
            }
        }
    };
}

named! {
    /// The lock algorithms the guest can run. Sources and releases are in
    /// `guest/lib/src/variants.rs` (`pvlock list variants`).
    Variant {
        Ticket = 1, "ticket";
        Tas = 2, "tas";
        Qspinlock = 3, "qspinlock";
        PvV42 = 10, "pv-v4.2";
        PvV43 = 11, "pv-v4.3";
        PvV45 = 12, "pv-v4.5";
        PvV48 = 13, "pv-v4.8";
        PvRehash2016 = 14, "pv-rehash-2016";
        PvHashval2016 = 15, "pv-hashval-2016";
        PvUpstream = 16, "pv-upstream";
        MutantNoStoreMb = 20, "mutant-no-store-mb";
        MutantSlowBeforeHash = 21, "mutant-slow-before-hash";
        MutantHaltedHead = 22, "mutant-halted-head";
        /// A kernel tree's own `__pv_queued_spin_lock_slowpath` +
        /// `__pv_queued_spin_unlock`, built from `lock.kernel_tree`.
        KernelPv = 30, "kernel-pv";
        /// A kernel tree's own `native_queued_spin_lock_slowpath`.
        KernelNative = 31, "kernel-native";
    }
}

impl Variant {
    /// Uses pv_wait / pv_kick and the PV hash table.
    pub const fn is_pv(self) -> bool {
        !matches!(self, Self::Ticket | Self::Tas | Self::Qspinlock | Self::KernelNative)
    }
    /// A deliberately broken self-test, not a historical variant.
    pub const fn is_mutant(self) -> bool {
        matches!(self, Self::MutantNoStoreMb | Self::MutantSlowBeforeHash | Self::MutantHaltedHead)
    }
    /// Runs a kernel tree's own code (the kernel-lock module), not ours.
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
    }
}

/// Number of race windows; window ids are `0..NR_WINDOWS`.
pub const NR_WINDOWS: usize = Window::ALL.len();

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
    }
}
