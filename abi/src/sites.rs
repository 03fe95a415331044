//! Sites in kernel code: every shared-memory operation a kernel build
//! performs through pvlock's stand-in headers carries a static
//! [`KernelSite`] in the module's `pvlock_sites` section (file:line,
//! function, operation, size). Mirrors `guest/kernel/include/pvlock/sites.h`
//! and `struct pvlock_site_params` of `module.h`; see
//! `docs/KERNEL-BUILDS.md` ("Sites").
//!
//! Before a run the VMM writes each site's [`KernelSite::flags`]; when the
//! kernel code reaches a site with non-zero flags it calls the guest's site
//! service with the address it touches and the value it writes, and the
//! guest acts on the flags: [`SITE_TRACK`] records the site as this vCPU's
//! last, [`SITE_HASH`] feeds the hash-table bookkeeping, [`SITE_EXIT`]
//! always exits to the VMM (a directed schedule's rule may hold there), and
//! [`SITE_STALL`] exits with [`SiteParams::prob`] drawn from the vCPU's
//! seeded stream ([`crate::seed::Stream::KernelSites`]).

/// Stall here with probability [`SiteParams::prob`] (random mode).
pub const SITE_STALL: u8 = 1;
/// Always exit here: the VMM decides (directed schedule: hold or go on).
pub const SITE_EXIT: u8 = 2;
/// A write that may create or remove a PV hash entry: checked by the guest
/// against the module's hash table (double hash, counts).
pub const SITE_HASH: u8 = 4;
/// Record this site as the vCPU's last (failure reports name it).
pub const SITE_TRACK: u8 = 8;

/// `struct pvlock_site`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSite {
    pub flags: u8,
    /// A [`SiteOp`] as u8.
    pub op: u8,
    /// Bytes the operation touches (0: a fence or a call).
    pub size: u8,
    pub reserved: u8,
    pub line: u32,
    /// `const char *`: the tree-relative `__FILE__`.
    pub file: u64,
    /// `const char *`: `__func__`.
    pub func: u64,
}

/// Offset of [`KernelSite::flags`] (what the VMM writes).
pub const SITE_FLAGS_OFFSET: u64 = 0;

/// Largest number of vCPUs [`SiteParams`] tracks (`PVLOCK_SITE_MAX_CPUS`).
pub const SITE_MAX_CPUS: usize = 64;

/// Largest PV hash table a module has storage for
/// (`PVLOCK_HASH_MAX_ENTRIES`): [`SiteParams::hash_node_site`] has one
/// slot per entry.
pub const SITE_HASH_MAX_ENTRIES: usize = 4096;

/// `struct pvlock_site_params`, in the module's memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteParams {
    /// Stall probability at a [`SITE_STALL`] site, scaled to 2^32.
    pub prob: u32,
    /// Number of sites (written by the VMM, checked by the guest).
    pub nr_sites: u32,
    /// Per vCPU: 1 + index of the last [`SITE_TRACK`] site passed, 0: none.
    pub last_site: [u32; SITE_MAX_CPUS],
    /// Per PV hash entry: the last [`SITE_HASH`] site that touched the
    /// entry's node field (pv_hash() writing it, pv_unhash() reading it),
    /// as a [`NodeSite`]; 0: none. Written by the guest, read by the VMM
    /// when it explains a stale entry: the unlock that read an entry and
    /// left it in the table is named by its kernel file:line.
    pub hash_node_site: [u32; SITE_HASH_MAX_ENTRIES],
}

impl Default for SiteParams {
    fn default() -> Self {
        Self { prob: 0, nr_sites: 0, last_site: [0; SITE_MAX_CPUS], hash_node_site: [0; SITE_HASH_MAX_ENTRIES] }
    }
}

/// One [`SiteParams::hash_node_site`] slot: the vCPU and the site index,
/// packed into a u32 (`cpu << 24 | (index + 1)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSite {
    pub cpu: u32,
    pub site: u32,
}

impl NodeSite {
    /// Site indices a slot can hold (24 bits, less the 0 of "none").
    pub const MAX_SITES: u32 = (1 << 24) - 1;

    /// The slot value; None when the site or vCPU does not fit.
    pub const fn pack(self) -> Option<u32> {
        if self.site >= Self::MAX_SITES || self.cpu > 0xff {
            return None;
        }
        Some(self.cpu << 24 | (self.site + 1))
    }

    /// A slot value back; None for an empty slot.
    pub const fn unpack(v: u32) -> Option<Self> {
        match v & 0xff_ffff {
            0 => None,
            s => Some(Self { cpu: v >> 24, site: s - 1 }),
        }
    }
}

/// How the guest chooses stalls at [`SITE_STALL`] sites
/// (`preempt.site_mode`), in the boot block's [`SiteSchedule::mode`].
pub const SITE_MODE_RANDOM: u32 = 0;
/// PCT change points (`preempt.site_mode = "pct"`): see [`pct_change_point`].
pub const SITE_MODE_PCT: u32 = 1;
/// Largest `preempt.pct_depth`.
pub const PCT_MAX_DEPTH: u32 = 8;

/// Stall choice at sites beyond [`SiteParams::prob`]: written by the VMM
/// into the boot block (`BootBlock::site_schedule`), read by the guest's
/// site service. All zero: today's uniform random choice, unbounded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteSchedule {
    /// [`SITE_MODE_RANDOM`] or [`SITE_MODE_PCT`].
    pub mode: u32,
    /// PCT: the bug depth d; each trial has d - 1 change points.
    pub pct_depth: u32,
    /// k: site executions of one vCPU per trial (the guest numbers its
    /// own executions of stall-enabled sites 1, 2, ...; execution s is step
    /// `(s - 1) % k + 1` of trial `(s - 1) / k`). 0: one trial, the run.
    /// Random mode uses it only to group stalls for the interleaving count.
    pub steps: u64,
    /// The preemption bound: at most this many site stalls per run, over
    /// all vCPUs (0: unbounded). Directed holds are not counted.
    pub max_stalls: u64,
}

/// The doorbell value of a stall-or-hold exit at site `index` taken in
/// trial `trial` (the VMM groups stalls by trial): the index in the low
/// 32 bits, the trial in the high 32 (wrapping).
pub const fn site_exit_value(index: u32, trial: u64) -> u64 {
    index as u64 | (trial << 32)
}

/// The site index and the trial of a [`site_exit_value`].
pub const fn site_exit_decode(value: u64) -> (u32, u32) {
    (value as u32, (value >> 32) as u32)
}

/// PCT change point `i` (0 <= i < depth - 1) of trial `trial`: the vCPU
/// (of `nr_vcpus`) and the step (1..=`steps`) at which it stalls. A pure
/// function of the run's [`crate::seed::Stream::SitePct`] seed, so every
/// vCPU computes the same points without sharing state, and the harness
/// can say afterwards which points a seed chose. The vCPU and the step are
/// uniform and independent (multiply-shift of two 32-bit halves of one
/// splitmix64 draw; bias below 2^-32 * max(n, k)).
pub const fn pct_change_point(pct_seed: u64, trial: u64, i: u32, nr_vcpus: u32, steps: u64) -> (u32, u64) {
    let x = crate::seed::splitmix64(
        pct_seed ^ crate::seed::splitmix64(trial.wrapping_mul(PCT_MAX_DEPTH as u64) + i as u64),
    );
    let cpu = ((x >> 32) * nr_vcpus as u64) >> 32;
    let k = if steps == 0 || steps > u32::MAX as u64 { u32::MAX as u64 } else { steps };
    let step = 1 + (((x & 0xffff_ffff) * k) >> 32);
    (cpu as u32, step)
}

macro_rules! site_ops {
    ($($(#[$m:meta])* $v:ident = $n:literal, $name:literal;)*) => {
        /// The operation a site performs (`PVL_OP_*`).
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum SiteOp {
            $($(#[$m])* $v = $n,)*
        }

        impl SiteOp {
            pub const ALL: &'static [SiteOp] = &[$(SiteOp::$v,)*];
            /// The name used in site patterns and listings.
            pub const fn name(self) -> &'static str {
                match self {
                    $(SiteOp::$v => $name,)*
                }
            }
            pub fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $($n => Some(SiteOp::$v),)*
                    _ => None,
                }
            }
            pub fn from_name(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|o| o.name() == s)
            }
        }
    };
}

site_ops! {
    /// `READ_ONCE()`.
    ReadOnce = 0, "read_once";
    /// `WRITE_ONCE()`.
    WriteOnce = 1, "write_once";
    /// `smp_load_acquire()`, `atomic_read_acquire()`.
    LoadAcquire = 2, "load_acquire";
    /// `smp_store_release()`, `atomic_set_release()`.
    StoreRelease = 3, "store_release";
    /// `cmpxchg*()`, `try_cmpxchg*()`, `atomic_(try_)cmpxchg*()`.
    Cmpxchg = 4, "cmpxchg";
    /// `xchg*()`, `atomic_xchg*()`.
    Xchg = 5, "xchg";
    /// `atomic_add/sub/or/and/andnot()`, `atomic_fetch_*()`.
    AtomicRmw = 6, "atomic_rmw";
    /// `atomic_read()`.
    AtomicRead = 7, "atomic_read";
    /// `atomic_set()`.
    AtomicSet = 8, "atomic_set";
    /// `smp_mb()`.
    Mb = 9, "mb";
    /// `smp_rmb()` (also `smp_acquire__after_ctrl_dep()`).
    Rmb = 10, "rmb";
    /// `smp_wmb()`.
    Wmb = 11, "wmb";
    /// `smp_mb__before_atomic()`.
    MbBeforeAtomic = 12, "mb_before_atomic";
    /// `smp_mb__after_atomic()`.
    MbAfterAtomic = 13, "mb_after_atomic";
    /// `smp_store_mb()`.
    StoreMb = 14, "store_mb";
    /// One read of `smp_cond_load_*()` / `atomic_cond_read_*()`.
    CondLoad = 15, "cond_load";
    /// `pv_wait()`.
    PvWait = 16, "pv_wait";
    /// `pv_kick()`.
    PvKick = 17, "pv_kick";
}

impl SiteOp {
    /// Whether the operation stores (a [`SITE_HASH`] candidate when it
    /// stores a pointer).
    pub const fn writes(self) -> bool {
        matches!(self, SiteOp::WriteOnce | SiteOp::StoreRelease | SiteOp::Cmpxchg | SiteOp::Xchg | SiteOp::StoreMb)
    }

    /// Whether the operation is a plain load (a [`SITE_HASH`] candidate
    /// when it loads a pointer: pv_unhash() reading an entry's node).
    pub const fn loads(self) -> bool {
        matches!(self, SiteOp::ReadOnce | SiteOp::LoadAcquire)
    }
}

const _: () = assert!(core::mem::size_of::<KernelSite>() == 24);
const _: () = assert!(core::mem::size_of::<SiteSchedule>() == 24);
const _: () = assert!(core::mem::size_of::<SiteParams>() == 8 + 4 * SITE_MAX_CPUS + 4 * SITE_HASH_MAX_ENTRIES);
const _: () = assert!(SITE_MAX_CPUS >= crate::MAX_VCPUS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_sites_pack_and_unpack() {
        for ns in [NodeSite { cpu: 0, site: 0 }, NodeSite { cpu: 63, site: 59 }, NodeSite { cpu: 255, site: 1 << 20 }] {
            assert_eq!(NodeSite::unpack(ns.pack().unwrap()), Some(ns));
        }
        assert_eq!(NodeSite::unpack(0), None);
        assert_eq!(NodeSite { cpu: 256, site: 0 }.pack(), None);
        assert_eq!(NodeSite { cpu: 0, site: NodeSite::MAX_SITES }.pack(), None);
    }

    #[test]
    fn op_names_round_trip() {
        for (i, op) in SiteOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "ops are numbered in order");
            assert_eq!(SiteOp::from_name(op.name()), Some(*op));
            assert_eq!(SiteOp::from_u8(*op as u8), Some(*op));
        }
        assert_eq!(SiteOp::from_u8(SiteOp::ALL.len() as u8), None);
    }

    #[test]
    fn exit_values_round_trip() {
        assert_eq!(site_exit_decode(site_exit_value(17, 0)), (17, 0));
        assert_eq!(site_exit_decode(site_exit_value(u32::MAX, 5)), (u32::MAX, 5));
        assert_eq!(site_exit_value(17, 0), 17, "trial 0 is the plain index");
    }

    #[test]
    fn pct_change_points_are_in_range_deterministic_and_spread() {
        let (n, k) = (4u32, 50u64);
        let mut cpus = [0u32; 4];
        let mut steps = [0u32; 50];
        for trial in 0..2000u64 {
            for i in 0..3 {
                let (c, s) = pct_change_point(99, trial, i, n, k);
                assert!(c < n && (1..=k).contains(&s), "trial {trial} point {i}: ({c}, {s})");
                assert_eq!((c, s), pct_change_point(99, trial, i, n, k));
                cpus[c as usize] += 1;
                steps[s as usize - 1] += 1;
            }
        }
        // 6000 draws: each vCPU ~1500, each step ~120; far from the edges
        // of a uniform draw (counts, no timing).
        assert!(cpus.iter().all(|&c| (1300..1700).contains(&c)), "{cpus:?}");
        assert!(steps.iter().all(|&c| (60..190).contains(&c)), "{steps:?}");
        assert_ne!(pct_change_point(99, 0, 0, n, k), pct_change_point(98, 0, 0, n, k));
    }
}
