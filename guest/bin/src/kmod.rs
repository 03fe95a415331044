//! Binding the kernel-lock module (a kernel tree's own `qspinlock.c`, built
//! by the harness and loaded by the VMM at [`KMOD_GPA`]): vCPU 0 checks
//! its descriptor and initialises it once; every lock and unlock of a
//! kernel variant then goes through [`KernelLock`], which runs the tree's
//! slow paths with this vCPU's platform.
//!
//! The module calls back through [`KmodServices`] with no context, as the
//! kernel calls pv_wait()/pv_kick(): the platform of the call is found in
//! [`CURRENT`], one slot per vCPU, which [`KernelLock`] points at the
//! caller's platform for the duration of each call (saving and restoring
//! the previous one, so a simulated interrupt's nested lock is served by
//! the interrupt's platform and the interrupted one is back afterwards).

use crate::{held_locks, rt};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use pvlock_abi::doorbell::{self, PanicKind};
use pvlock_abi::kmod::{
    self, KmodDescriptor, KmodInit, KmodServices, KmodSlowpath, KmodUnlock, KERNEL_WARNINGS_PRINTED, KERNEL_WARNING_PREFIX,
    KMOD_GPA, KMOD_MAGIC, KMOD_VERSION,
};
use pvlock_abi::sites::{
    KernelSite, NodeSite, SiteOp, SiteParams, SITE_EXIT, SITE_HASH, SITE_HASH_MAX_ENTRIES, SITE_STALL, SITE_TRACK,
};
use pvlock_abi::{GuestPhase, LockEvent, VcpuBlock, MAX_VCPUS, STACK_SIZE};
use pvlock_guest_lib::{ExternalLock, Platform, RawLock, WaitOn};

/// Which of the tree's slow paths a kernel variant runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// `__pv_queued_spin_lock_slowpath` + `__pv_queued_spin_unlock`.
    Pv,
    /// `native_queued_spin_lock_slowpath` + the native unlock.
    Native,
}

/// The module's entry points for one path.
pub struct KernelLock {
    slowpath: KmodSlowpath,
    unlock: KmodUnlock,
    desc: &'static KmodDescriptor,
}

/// The module's descriptor, once checked.
fn descriptor() -> &'static KmodDescriptor {
    // SAFETY: the VMM loads the module image at KMOD_GPA (identity mapped,
    // RAM) before any vCPU runs, and nothing writes its descriptor after;
    // `bind` checks the magic, version and size before anything else is read.
    unsafe { &*(KMOD_GPA as *const KmodDescriptor) }
}

/// Set by vCPU 0 once the module is initialised (1) or refused (2).
static STATE: AtomicU32 = AtomicU32::new(0);

/// Per vCPU: a pointer to the `&dyn Platform` the current module call runs
/// for (null outside one).
static CURRENT: [AtomicPtr<()>; MAX_VCPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_VCPUS];

static SERVICES: KmodServices = KmodServices {
    pv_wait: svc_pv_wait,
    pv_kick: svc_pv_kick,
    vcpu_is_preempted: svc_vcpu_is_preempted,
    cpu_relax: svc_cpu_relax,
    bug: svc_bug,
    warn: svc_warn,
    sched_clock_ns: svc_sched_clock_ns,
    site: svc_site,
};

impl KernelLock {
    /// Binds the module for `path`; vCPU 0 initialises it, the others wait
    /// for that. Fails the run (panic record) when no usable module is there.
    pub fn bind(cpu: u32, path: KernelPath) -> Self {
        let d = descriptor();
        seed_sites(cpu);
        if cpu == 0 {
            let boot = rt::boot();
            if d.magic != KMOD_MAGIC || d.version != KMOD_VERSION || d.size as usize != size_of::<KmodDescriptor>() {
                STATE.store(2, Ordering::Release);
                panic!(
                    "no kernel-lock module at {KMOD_GPA:#x} (magic {:#x}, version {}, size {}): \
                     a kernel variant needs one (--kernel-tree)",
                    d.magic, d.version, d.size
                );
            }
            // SAFETY: the descriptor's init is the module's
            // pvlock_kmod_init, whose C signature KmodInit mirrors.
            let init: KmodInit = unsafe { core::mem::transmute::<u64, KmodInit>(d.init) };
            let ram_top = boot.ram_mib as u64 * 1024 * 1024;
            let rc = init(&SERVICES, boot.nr_vcpus, ram_top, STACK_SIZE.trailing_zeros());
            if rc != 0 {
                STATE.store(2, Ordering::Release);
                panic!("kernel-lock module init failed ({rc}): {}", kmod::init_error(rc));
            }
            // Publish the tree's hash table where the VMM reads one: its
            // entries are {lock, node} pointer pairs, as ours are.
            // SAFETY: init has set both variables; they are the module's.
            let (table, bits) = unsafe { (*(d.hash_table_var as *const u64), *(d.hash_bits_var as *const u32)) };
            rt::boot_field(&boot.hash_gpa).store(table, Ordering::Relaxed);
            rt::boot_field(&boot.hash_entries).store(1 << bits, Ordering::Relaxed);
            // And its nodes, for the VMM's node -> vCPU mapping: CPU c's
            // qnodes are at qnodes + __per_cpu_offset[c], the per-CPU
            // copies one fixed stride apart, so `(node - nodes_gpa) /
            // node_stride / 4` is the CPU of any of its nodes.
            // SAFETY: init filled __per_cpu_offset[0..nr_cpus_max].
            let off = |c: usize| unsafe { *((d.per_cpu_offset as *const u64).add(c)) };
            if d.nr_cpus_max >= 2 {
                let stride = off(1) - off(0);
                rt::boot_field(&boot.nodes_gpa).store(d.qnodes + off(0), Ordering::Relaxed);
                rt::boot_field(&boot.node_stride).store(stride / 4, Ordering::Relaxed);
            }
            STATE.store(1, Ordering::Release);
        } else {
            while STATE.load(Ordering::Acquire) == 0 {
                core::hint::spin_loop();
            }
            if STATE.load(Ordering::Acquire) != 1 {
                // vCPU 0 is reporting why; wait for the VMM to stop us.
                loop {
                    core::hint::spin_loop();
                }
            }
        }
        let (slowpath, unlock) = match path {
            KernelPath::Pv => (d.pv_slowpath, d.pv_unlock),
            KernelPath::Native => (d.native_slowpath, d.native_unlock),
        };
        // SAFETY: the descriptor's entries are the module's functions with
        // the C signatures KmodSlowpath / KmodUnlock mirror.
        unsafe {
            Self {
                slowpath: core::mem::transmute::<u64, KmodSlowpath>(slowpath),
                unlock: core::mem::transmute::<u64, KmodUnlock>(unlock),
                desc: d,
            }
        }
    }
}

/// Runs `f` with `p` as this vCPU's current platform.
fn with_platform<R>(p: &dyn Platform, f: impl FnOnce() -> R) -> R {
    let cpu = p.cpu() as usize;
    let slot: &dyn Platform = p;
    let here = &slot as *const &dyn Platform as *mut ();
    // Plain (relaxed) load and store, no locked RMW: only this vCPU
    // touches its slot (here and in the services, called from within `f`
    // on the same vCPU), so nothing races; this runs on every unlock.
    let prev = CURRENT[cpu].load(Ordering::Relaxed);
    CURRENT[cpu].store(here, Ordering::Relaxed);
    let r = f();
    CURRENT[cpu].store(prev, Ordering::Relaxed);
    r
}

/// The platform of the module call running on this vCPU.
fn current() -> &'static dyn Platform {
    let cpu = rt::current_cpu() as usize;
    let p = CURRENT.get(cpu).map_or(core::ptr::null_mut(), |s| s.load(Ordering::Relaxed));
    if p.is_null() {
        panic!("kernel-lock module called back outside a lock operation on vCPU {cpu}");
    }
    // SAFETY: `with_platform` stored a pointer to a `&dyn Platform` on its
    // own stack frame, which is live until it restores the slot, and every
    // callback runs inside it on the same vCPU. The 'static lifetime never
    // leaves the callback that uses it.
    unsafe { *(p as *const &'static dyn Platform) }
}

impl ExternalLock for KernelLock {
    fn lock(&self, p: &dyn Platform, lock: &RawLock) {
        // The fast path is ours, as in queued_spin_lock(): 0 -> locked.
        let (cpu, addr) = (p.cpu(), lock.addr() as u64);
        let val = match lock.val.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return held_locks::begin(cpu, addr, true),
            Err(v) => v,
        };
        held_locks::begin(cpu, addr, false);
        // What the VMM's watchdog reads while we wait: the lock and the
        // node the slow path is about to take (qnodes[count] of this CPU).
        p.set_phase(GuestPhase::Spinning, lock.addr(), self.next_node(p.cpu()));
        let ptr = lock as *const RawLock as *mut u32;
        with_platform(p, || (self.slowpath)(ptr, val));
    }

    fn unlock(&self, p: &dyn Platform, lock: &RawLock) {
        held_locks::end(p.cpu(), lock.addr() as u64);
        let ptr = lock as *const RawLock as *mut u32;
        with_platform(p, || (self.unlock)(ptr));
    }
}

impl KernelLock {
    /// Address of the node `cpu`'s next slow path will use (0 past
    /// `MAX_NODES`, where the tree spins without a node).
    fn next_node(&self, cpu: u32) -> usize {
        let d = self.desc;
        // SAFETY: init filled __per_cpu_offset; cpu < nr_vcpus <= nr_cpus_max;
        // node 0's count of this CPU is only written by this CPU (in the
        // slow path, which is not running on it now: we are in a fast path
        // or an interrupt's, and the count is only read).
        unsafe {
            let base = d.qnodes + *((d.per_cpu_offset as *const u64).add(cpu as usize));
            let count = core::ptr::read_volatile((base + d.mcs_count_off as u64) as *const i32);
            if count < 0 || count as u32 >= d.max_nodes {
                return 0;
            }
            (base + count as u64 * d.qnode_size as u64) as usize
        }
    }
}

// SAFETY: KernelLock holds two function pointers and the (read-only)
// descriptor; the module code is written for concurrent callers (it is a
// spinlock).
unsafe impl Sync for KernelLock {}

/// Adds this vCPU's kernel event counters into its block under the
/// kernel's names (ours are the same names, `lock_events_list.h`).
pub fn collect_events(cpu: u32, block: *mut VcpuBlock) {
    if STATE.load(Ordering::Acquire) != 1 {
        return;
    }
    let d = descriptor();
    if d.lockevents == 0 || d.lockevent_names == 0 {
        return;
    }
    // SAFETY: init filled __per_cpu_offset; cpu < nr_vcpus <= nr_cpus_max.
    let off = unsafe { *((d.per_cpu_offset as *const u64).add(cpu as usize)) };
    for i in 0..d.nr_lockevents as usize {
        // SAFETY: the names array has nr_lockevents NUL-terminated strings,
        // and this vCPU's counters are its per-CPU copy of `lockevents`.
        let (name, count) = unsafe {
            let name = *((d.lockevent_names as *const *const u8).add(i));
            (c_str(name), *((d.lockevents + off) as *const u64).add(i))
        };
        if let Some(ev) = LockEvent::ALL.iter().find(|e| e.name() == name) {
            // SAFETY: this vCPU's own block, field-wise.
            unsafe { (*block).events[ev.index()] += count };
        }
    }
}

/// Site `index` of the bound module: (function, file, line), for reports.
pub(crate) fn site_location(index: u32) -> Option<(&'static str, &'static str, u32)> {
    if STATE.load(Ordering::Acquire) != 1 {
        return None;
    }
    let d = descriptor();
    let site = d.sites_start + index as u64 * d.site_size as u64;
    if d.site_size == 0 || site + d.site_size as u64 > d.sites_end {
        return None;
    }
    // SAFETY: a descriptor inside the module's site table (checked range);
    // its strings are __func__ and __FILE__.
    unsafe {
        let s = core::ptr::read_volatile(site as *const KernelSite);
        Some((c_str(s.func as *const u8), c_str(s.file as *const u8), s.line))
    }
}

/// A NUL-terminated string of the module's (its text is ASCII).
///
/// # Safety
/// `p` must point at a NUL-terminated string that stays in place.
unsafe fn c_str(p: *const u8) -> &'static str {
    if p.is_null() {
        return "?";
    }
    let mut n = 0;
    // SAFETY: the caller promises a terminator.
    while unsafe { *p.add(n) } != 0 && n < 256 {
        n += 1;
    }
    // SAFETY: n bytes are readable (see above).
    let bytes = unsafe { core::slice::from_raw_parts(p, n) };
    core::str::from_utf8(bytes).unwrap_or("?")
}

extern "C" fn svc_pv_wait(ptr: *mut u8, val: u8) {
    // SAFETY: the kernel passes the address of a byte of guest memory (a
    // node's state or a lock's locked byte) that stays valid while it waits;
    // only its address and an atomic load are used.
    let byte = unsafe { &*(ptr as *const core::sync::atomic::AtomicU8) };
    current().pv_wait(WaitOn::NodeState(byte), val);
}

extern "C" fn svc_pv_kick(cpu: i32) {
    current().pv_kick(cpu as u32);
}

extern "C" fn svc_vcpu_is_preempted(cpu: i64) -> bool {
    current().vcpu_is_preempted(cpu as u32)
}

extern "C" fn svc_cpu_relax() {
    let p = current();
    p.cpu_relax();
    p.maybe_interrupt();
}

extern "C" fn svc_bug(file: *const u8, line: u32, msg: *const u8) -> ! {
    let cpu = rt::current_cpu();
    collect_events(cpu, rt::vcpu_block(cpu));
    // SAFETY: the module passes __FILE__ and a string literal.
    let (file, msg) = unsafe { (c_str(file), c_str(msg)) };
    rt::report_failure(cpu, PanicKind::Bug, file, line, format_args!("kernel {msg} at {file}:{line}"))
}

/// Warnings seen per vCPU (`KERNEL_WARNINGS_PRINTED` of them are printed).
static WARNINGS: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];

extern "C" fn svc_warn(file: *const u8, line: u32, msg: *const u8) {
    // The kernel's WARN prints its splat and carries on; so does the
    // guest: one console line the harness reads back as a warning record
    // with the kernel's file:line (the run's verdict then fails its
    // `no_kernel_warnings` check, but every other check still runs).
    let cpu = rt::current_cpu();
    let n = WARNINGS[cpu as usize % MAX_VCPUS].fetch_add(1, Ordering::Relaxed) + 1;
    // SAFETY: as in svc_bug.
    let (file, msg) = unsafe { (c_str(file), c_str(msg)) };
    if n <= KERNEL_WARNINGS_PRINTED {
        rt::console_fmt(format_args!("{KERNEL_WARNING_PREFIX}cpu={cpu} at {file}:{line}: {}\n", msg.trim_end()));
    } else if n == KERNEL_WARNINGS_PRINTED + 1 {
        rt::console_fmt(format_args!(
            "{KERNEL_WARNING_PREFIX}cpu={cpu} at {file}:{line}: further warnings of this vCPU not printed\n"
        ));
    }
}

extern "C" fn svc_sched_clock_ns() -> u64 {
    rt::cycles_to_ns(rt::rdtsc())
}

/// Per vCPU: the state of its site stream (`Stream::KernelSites`), seeded
/// by `bind`.
static SITE_RNG: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// Per vCPU: hash-table slots probed (lock-slot cmpxchgs) since its last
/// insert, for `hash_max_probe`.
static HASH_PROBES: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

/// Seeds this vCPU's site stream from the run seed.
fn seed_sites(cpu: u32) {
    let seed = pvlock_abi::seed::stream_seed(rt::boot().seed, pvlock_abi::seed::Stream::KernelSites(cpu));
    SITE_RNG[cpu as usize].store(seed, Ordering::Relaxed);
}

/// Adds `n` to lock event `ev` of vCPU `cpu` (its own block).
fn count(cpu: u32, ev: LockEvent, n: u64) {
    // SAFETY: the calling vCPU's own block, one field as a raw place (the
    // torture loop may hold a reference to another field of it).
    unsafe { (*rt::vcpu_block(cpu)).events[ev.index()] += n };
}

/// An enabled site of the kernel code was reached (`pvlock_abi::sites`):
/// the kernel passes the site's descriptor, the address the operation
/// touches and the value it writes. Only this vCPU's state is touched, and
/// no platform is needed: a site may also be passed outside a lock call.
extern "C" fn svc_site(site: *mut KernelSite, addr: u64, val: u64) {
    let d = descriptor();
    let cpu = rt::current_cpu();
    // SAFETY: the module passes the address of one of its site
    // descriptors (inside [sites_start, sites_end)); the flags byte is
    // written by the VMM before the run only.
    let s = unsafe { core::ptr::read_volatile(site) };
    let index = (site as u64).wrapping_sub(d.sites_start) / d.site_size.max(1) as u64;
    let params = d.site_params as *mut SiteParams;
    if s.flags & SITE_TRACK != 0 {
        // SAFETY: the module's site state; only vCPU `cpu` writes its slot,
        // the VMM reads it (a volatile aligned u32 store cannot tear).
        unsafe { core::ptr::write_volatile(&mut (*params).last_site[cpu as usize], index as u32 + 1) };
        if SiteOp::from_u8(s.op).is_some_and(SiteOp::writes) {
            held_locks::note_write(cpu, index as u32, addr, val, d.q_locked_val);
        }
    }
    if s.flags & SITE_HASH != 0 {
        hash_site(d, cpu, index as u32, &s, addr, val);
    }
    let (stall, trial) = if s.flags & SITE_STALL != 0 {
        // SAFETY: as above; `prob` is written by the VMM before the run.
        let prob = unsafe { core::ptr::read_volatile(&(*params).prob) };
        choose_stall(cpu, prob)
    } else {
        (false, 0)
    };
    if s.flags & SITE_EXIT != 0 || stall {
        // One exit: the VMM stalls here (random, PCT) or applies a
        // schedule rule; the trial groups the stalls in its record.
        rt::ring(doorbell::SITE, pvlock_abi::sites::site_exit_value(index as u32, trial));
    }
}

/// Per vCPU: its executions of stall-enabled sites so far (the PCT step
/// count; only this vCPU touches its slot: no shared line, no fence).
static SITE_STEPS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// Site stalls chosen so far by all vCPUs (`preempt.max_stalls`).
static SITE_STALLS_TAKEN: AtomicU64 = AtomicU64::new(0);

/// Whether this execution of a stall-enabled site stalls, and its trial
/// (`pvlock_abi::sites::SiteSchedule`): uniform random with `prob`, or at
/// a PCT change point; either way within the run's preemption bound.
fn choose_stall(cpu: u32, prob: u32) -> (bool, u64) {
    let sched = &rt::boot().site_schedule;
    let steps = &SITE_STEPS[cpu as usize];
    let s = steps.load(Ordering::Relaxed);
    steps.store(s + 1, Ordering::Relaxed);
    let (trial, step) = match sched.steps {
        0 => (0, s + 1),
        k => (s / k, s % k + 1),
    };
    let chosen = if sched.mode == pvlock_abi::sites::SITE_MODE_PCT {
        let seed = pvlock_abi::seed::stream_seed(rt::boot().seed, pvlock_abi::seed::Stream::SitePct);
        let n = rt::boot().nr_vcpus;
        (0..sched.pct_depth.saturating_sub(1))
            .any(|i| pvlock_abi::sites::pct_change_point(seed, trial, i, n, sched.steps) == (cpu, step))
    } else {
        let slot = &SITE_RNG[cpu as usize];
        let x = pvlock_abi::seed::next_draw(slot.load(Ordering::Relaxed));
        slot.store(x, Ordering::Relaxed);
        (x >> 32) < prob as u64
    };
    // The bound is checked only when a stall was chosen: the locked add
    // (a full fence on x86) sits next to an exit, which serialises anyway,
    // so it hides no store buffering that the run would otherwise show.
    let within_bound = || sched.max_stalls == 0 || SITE_STALLS_TAKEN.fetch_add(1, Ordering::Relaxed) < sched.max_stalls;
    (chosen && within_bound(), trial)
}

/// A pointer-sized access at a [`SITE_HASH`] site: if it touches the
/// tree's PV hash table, remember who last touched each entry's node
/// (`SiteParams::hash_node_site`: a stale entry's report names the unlock
/// that read it and left it), count inserts, removes and probes, and catch
/// a second entry for a lock at the write that would create it (the Rust
/// variants' double_hash).
fn hash_site(d: &KmodDescriptor, cpu: u32, index: u32, s: &KernelSite, addr: u64, val: u64) {
    // SAFETY: init has set both variables (STATE is 1 before any lock call).
    let (table, bits) = unsafe { (*(d.hash_table_var as *const u64), *(d.hash_bits_var as *const u32)) };
    let (size, n) = (d.hash_entry_size as u64, 1u64 << bits);
    if table == 0 || size == 0 || addr < table || addr >= table + n * size {
        return;
    }
    let slot = (addr - table) % size;
    let op = SiteOp::from_u8(s.op);
    if slot == d.hash_entry_node_off as u64
        && (op.is_some_and(SiteOp::loads) || (val != 0 && op.is_some_and(SiteOp::writes)))
    {
        let entry = ((addr - table) / size) as usize;
        if let (true, Some(v)) = (entry < SITE_HASH_MAX_ENTRIES, NodeSite { cpu, site: index }.pack()) {
            // SAFETY: the module's site state, one aligned u32 of it (entry
            // is in range); the VMM reads it after the run.
            unsafe { core::ptr::write_volatile(&mut (*(d.site_params as *mut SiteParams)).hash_node_site[entry], v) };
        }
    }
    if op.is_some_and(SiteOp::loads) {
        return;
    }
    if slot == d.hash_entry_lock_off as u64 {
        if val == 0 {
            // pv_unhash() (or the head's own unhash): WRITE_ONCE(lock, NULL).
            if op.is_some_and(SiteOp::writes) {
                count(cpu, LockEvent::HashRemoves, 1);
            }
            return;
        }
        if op != Some(SiteOp::Cmpxchg) {
            return;
        }
        // pv_hash() claims a slot for lock `val`: one probe; a second
        // entry for `val` anywhere in the table is a double hash.
        HASH_PROBES[cpu as usize].fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let e = table + i * size;
            if e == addr - slot {
                continue;
            }
            // SAFETY: an entry of the module's table (checked range), read
            // while others may write it: one aligned u64 load.
            let holder = unsafe { core::ptr::read_volatile((e + d.hash_entry_lock_off as u64) as *const u64) };
            if holder == val {
                count(cpu, LockEvent::DoubleHash, 1);
                if rt::boot().lock.flags & pvlock_abi::boot::LOCK_FLAG_STOP_ON_DOUBLE_HASH != 0 {
                    collect_events(cpu, rt::vcpu_block(cpu));
                    // SAFETY: the descriptor's strings are __FILE__ and __func__.
                    let (file, func) = unsafe { (c_str(s.file as *const u8), c_str(s.func as *const u8)) };
                    rt::report_failure(
                        cpu,
                        PanicKind::Bug,
                        file,
                        s.line,
                        format_args!(
                            "double hash: {func}() at {file}:{} writes a second hash entry for lock {val:#x} \
                             (entry {e:#x} already holds it; stop_on_double_hash)",
                            s.line
                        ),
                    );
                }
                return;
            }
        }
    } else if slot == d.hash_entry_node_off as u64 && val != 0 && op.is_some_and(SiteOp::writes) {
        // pv_hash() publishes the node of the slot it claimed: one insert.
        count(cpu, LockEvent::HashInserts, 1);
        let probes = HASH_PROBES[cpu as usize].swap(0, Ordering::Relaxed);
        // SAFETY: this vCPU's block, one field.
        unsafe {
            let m = &mut (*rt::vcpu_block(cpu)).events[LockEvent::HashMaxProbe.index()];
            *m = (*m).max(probes);
        }
    }
}
