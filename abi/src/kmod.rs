//! The kernel-lock module: a user's kernel tree's `qspinlock.c` compiled by
//! the harness into a small image the VMM loads at [`KMOD_GPA`] beside the
//! guest (see `guest/kernel/` and `docs/KERNEL-BUILDS.md`).
//!
//! The image starts with a [`KmodDescriptor`]: entry points the guest calls
//! and the tree's layout (hash table, nodes, states, counters) that the
//! guest publishes to the VMM. The guest hands the module a
//! [`KmodServices`] table (pv_wait, pv_kick, ...). Both mirror
//! `guest/kernel/include/pvlock/module.h` field for field; the module
//! stores `size_of` of its own struct, which the guest checks.

/// Guest-physical address the module image is linked at: between the guest
/// image's 2 MiB and the stacks' minimum RAM (see `layout.rs`).
pub const KMOD_GPA: u64 = 0x60_0000;
/// Largest module image (it must end before [`KMOD_LIMIT`]).
pub const KMOD_MAX_BYTES: u64 = 0x20_0000;
/// First address after the module window.
pub const KMOD_LIMIT: u64 = KMOD_GPA + KMOD_MAX_BYTES;

/// `PVLOCK_KMOD_MAGIC`: "PVLKMOD1".
pub const KMOD_MAGIC: u64 = u64::from_le_bytes(*b"PVLKMOD1");
/// `PVLOCK_KMOD_VERSION`.
pub const KMOD_VERSION: u32 = 2;

/// A kernel `WARN()` does not end the run: the guest prints one console
/// line `"{KERNEL_WARNING_PREFIX}cpu=N at FILE:LINE: MESSAGE"` and returns
/// to the kernel code, as the kernel does; the harness turns those lines
/// into the record's `kernel_warnings`.
pub const KERNEL_WARNING_PREFIX: &str = "kernel WARNING ";
/// Warnings printed per vCPU; the rest are counted in one last line
/// (a WARN in a hot loop must not flood the console).
pub const KERNEL_WARNINGS_PRINTED: u32 = 8;

/// `struct pvlock_kmod`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KmodDescriptor {
    pub magic: u64,
    pub version: u32,
    /// `sizeof(struct pvlock_kmod)` as the module was compiled.
    pub size: u32,
    /// `int init(const struct pvlock_ksvc *, u32 nr_cpus, u64 ram_top, u32 stack_shift)`.
    pub init: u64,
    /// `void native_queued_spin_lock_slowpath(struct qspinlock *, u32)`.
    pub native_slowpath: u64,
    /// `void __pv_queued_spin_lock_slowpath(struct qspinlock *, u32)`.
    pub pv_slowpath: u64,
    /// The native unlock (a release store of 0 to the locked byte).
    pub native_unlock: u64,
    /// `__pv_queued_spin_unlock` (x86: the asm callee-save version).
    pub pv_unlock: u64,
    /// Address of the `pv_lock_hash` pointer variable (valid after init).
    pub hash_table_var: u64,
    /// Address of `pv_lock_hash_bits` (u32, valid after init).
    pub hash_bits_var: u64,
    /// Address of `__per_cpu_offset[0]` (`u64` per CPU).
    pub per_cpu_offset: u64,
    /// `&qnodes[0]` in the per-CPU template: CPU c's nodes are at
    /// `qnodes + __per_cpu_offset[c]`.
    pub qnodes: u64,
    /// `&lockevents[0]` in the per-CPU template; 0 without
    /// `CONFIG_LOCK_EVENT_COUNTS`.
    pub lockevents: u64,
    /// `const char *const[nr_lockevents]`: the counters' kernel names.
    pub lockevent_names: u64,
    /// Address of the module's WARN() count (u64).
    pub warnings: u64,
    pub nr_lockevents: u32,
    /// `CONFIG_NR_CPUS`.
    pub nr_cpus_max: u32,
    pub hash_entry_size: u32,
    pub hash_entry_lock_off: u32,
    pub hash_entry_node_off: u32,
    /// `sizeof(struct qnode)`.
    pub qnode_size: u32,
    /// `MAX_NODES`.
    pub max_nodes: u32,
    pub mcs_next_off: u32,
    pub mcs_locked_off: u32,
    pub mcs_count_off: u32,
    pub pv_node_cpu_off: u32,
    pub pv_node_state_off: u32,
    /// `SPIN_THRESHOLD`.
    pub spin_threshold: u32,
    pub vcpu_running: u8,
    pub vcpu_halted: u8,
    pub vcpu_hashed: u8,
    pub q_locked_val: u8,
    pub q_slow_val: u8,
    pub q_pending_bits: u8,
    /// 1: built with arch/x86's qspinlock headers; 0: asm-generic only.
    pub flavour_x86: u8,
    pub reserved: u8,
    /// The site table: `[sites_start, sites_end)` of
    /// [`crate::sites::KernelSite`]s, `site_size` bytes each.
    pub sites_start: u64,
    pub sites_end: u64,
    /// Address of the module's [`crate::sites::SiteParams`].
    pub site_params: u64,
    pub site_size: u32,
    pub reserved2: u32,
}

impl KmodDescriptor {
    /// Number of sites in the table.
    pub fn nr_sites(&self) -> u64 {
        if self.site_size == 0 || self.sites_end < self.sites_start {
            return 0;
        }
        (self.sites_end - self.sites_start) / self.site_size as u64
    }
}

/// `struct pvlock_ksvc`: function pointers (guest C ABI).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KmodServices {
    pub pv_wait: extern "C" fn(ptr: *mut u8, val: u8),
    pub pv_kick: extern "C" fn(cpu: i32),
    pub vcpu_is_preempted: extern "C" fn(cpu: i64) -> bool,
    pub cpu_relax: extern "C" fn(),
    pub bug: extern "C" fn(file: *const u8, line: u32, msg: *const u8) -> !,
    pub warn: extern "C" fn(file: *const u8, line: u32, msg: *const u8),
    pub sched_clock_ns: extern "C" fn() -> u64,
    /// An enabled site was reached: the address it touches, the value it
    /// writes (0 for reads and fences).
    pub site: extern "C" fn(site: *mut crate::sites::KernelSite, addr: u64, val: u64),
}

/// `int init(...)` of [`KmodDescriptor::init`]: 0 or a negative reason.
pub type KmodInit = extern "C" fn(svc: *const KmodServices, nr_cpus: u32, ram_top: u64, stack_shift: u32) -> i32;
/// A slow path entry.
pub type KmodSlowpath = extern "C" fn(lock: *mut u32, val: u32);
/// An unlock entry.
pub type KmodUnlock = extern "C" fn(lock: *mut u32);

/// What a non-zero [`KmodInit`] result means.
pub fn init_error(code: i32) -> &'static str {
    match code {
        -1 => "more vCPUs than the module's CONFIG_NR_CPUS",
        -2 => "the per-CPU data is larger than the module's per-CPU area",
        _ => "unknown module init error",
    }
}

const _: () = assert!(core::mem::size_of::<KmodDescriptor>() == 208);
const _: () = assert!(core::mem::size_of::<KmodServices>() == 8 * 8);
const _: () = assert!(KMOD_GPA >= crate::GUEST_IMAGE_GPA + 0x20_0000);
const _: () = assert!(KMOD_LIMIT <= crate::MIN_RAM_BYTES / 2);
