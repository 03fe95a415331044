//! Lock torture in the guest: the lock library's workload on this vCPU,
//! with the lock system's storage in static guest memory, published in the
//! boot block so the VMM can read locks, nodes and the PV hash table.

use crate::cpu::GuestCpu;
use crate::kmod::{KernelLock, KernelPath};
use crate::rt;
use core::sync::atomic::Ordering;
use pvlock_abi::doorbell::{self, PanicKind};
use pvlock_abi::{BootBlock, Variant, MAX_VCPUS};
use pvlock_guest_lib::torture::{Observer, Torture, TortureLock, TortureResult, Violation, MAX_LOCKS};
use pvlock_guest_lib::{
    default_hash_bits, HashSlot, LockConfig, LockSystem, PerCpuNodes, Platform, DEFAULT_SPIN_THRESHOLD, MAX_HASH_BITS,
};

/// Per-CPU MCS / PV nodes (4 nesting levels each).
static NODES: [PerCpuNodes; MAX_VCPUS] = [const { PerCpuNodes::new() }; MAX_VCPUS];
/// The PV hash table at its largest; a run uses the first `1 << hash_bits`.
static HASH: [HashSlot; 1 << MAX_HASH_BITS] = [const { HashSlot::new() }; 1 << MAX_HASH_BITS];
/// Torture locks, then the simulated-interrupt lock sets.
static LOCKS: [TortureLock; MAX_LOCKS] = [const { TortureLock::new() }; MAX_LOCKS];

struct GuestObserver<'a>(&'a GuestCpu);

impl Observer for GuestObserver<'_> {
    fn violation(&self, v: &Violation) {
        // Two owners at once: stop the VM now, with both CPUs in the message
        // and, on a kernel build, the kernel file:line where each took it.
        let owners = crate::held_locks::Owners { lock: LOCKS[v.lock].raw.addr() as u64, cpus: [Some(v.cpu), v.other] };
        self.0.fail(PanicKind::MutualExclusion, format_args!("{v}{owners}"))
    }
    // Field-wise through the raw pointer: the run holds `&mut` to the
    // block's latency histogram while it calls these.
    fn progress(&self, r: &TortureResult, now: u64) {
        let b = self.0.block_ptr();
        // SAFETY: this vCPU's own block; raw places, no reference to the
        // whole block.
        unsafe {
            (*b).acquisitions = r.acquisitions;
            (*b).heartbeat_tsc = now;
        }
    }
    fn irq_depth(&self, depth: u32) {
        // SAFETY: as in `progress`.
        unsafe { (*self.0.block_ptr()).irq_depth = depth };
    }
}

/// The spinlock the boot block asks for (variant, spin threshold, hash
/// size, defaults resolved); a value the VMM should never have sent is a
/// guest panic naming it. The mutex torture's `wait_lock` uses it too.
pub(crate) fn lock_config(me: &GuestCpu, boot: &BootBlock) -> LockConfig {
    let Some(variant) = Variant::from_u32(boot.lock.variant) else {
        me.fail(PanicKind::Panic, format_args!("unknown lock variant id {}", boot.lock.variant))
    };
    let hash_bits = if boot.lock.hash_bits == 0 { default_hash_bits(boot.nr_vcpus) } else { boot.lock.hash_bits };
    if !(2..=MAX_HASH_BITS).contains(&hash_bits) {
        me.fail(PanicKind::Panic, format_args!("hash_bits {hash_bits} out of range 2..={MAX_HASH_BITS}"))
    }
    let spin = if boot.lock.spin_threshold == 0 { DEFAULT_SPIN_THRESHOLD } else { boot.lock.spin_threshold };
    LockConfig { variant, spin_threshold: spin, hash_bits }
}

/// `lock-loop` / `empty-loop`: the torture's critical section and think
/// time around the configured lock (or nothing) and nothing else; the
/// iteration count is reported as acquisitions.
pub fn run_loop(me: &GuestCpu, with_lock: bool) -> u64 {
    let boot = rt::boot();
    let cfg = lock_config(me, boot);
    if matches!(cfg.variant, Variant::KernelPv | Variant::KernelNative) {
        me.fail(PanicKind::Panic, format_args!("lock-loop runs the Rust variants only"))
    }
    let sys = LockSystem::new(cfg, &NODES[..boot.nr_vcpus as usize], &HASH[..1 << cfg.hash_bits]);
    let start = rt::boot_field(&boot.start_tsc).load(Ordering::Acquire).max(rt::rdtsc());
    let deadline = start + rt::ns_to_cycles(boot.duration_ms * 1_000_000);
    let clock = pvlock_guest_lib::torture::Clock { tsc_khz: boot.tsc_khz };
    let lock = with_lock.then_some((&sys, &LOCKS[0].raw));
    let (n, _) = pvlock_guest_lib::torture::lock_loop(me, lock, clock, &boot.torture, deadline, rt::boot_field(&boot.stop_request));
    me.block().acquisitions = n;
    doorbell::DONE_OK
}

pub fn run(me: &GuestCpu) -> u64 {
    let boot = rt::boot();
    let nr = boot.nr_vcpus;
    let cfg = lock_config(me, boot);
    let (variant, hash_bits) = (cfg.variant, cfg.hash_bits);
    // Kernel variants run the kernel-lock module (a tree's own
    // qspinlock.c): binding it publishes the tree's hash table.
    let kernel = match variant {
        Variant::KernelPv => Some(KernelLock::bind(me.id(), KernelPath::Pv)),
        Variant::KernelNative => Some(KernelLock::bind(me.id(), KernelPath::Native)),
        _ => None,
    };
    let (nodes, hash) = (&NODES[..nr as usize], &HASH[..1 << hash_bits]);
    let sys = match &kernel {
        Some(k) => LockSystem::with_external(cfg, nodes, hash, k),
        None => LockSystem::new(cfg, nodes, hash),
    };
    let stop = rt::boot_field(&boot.stop_request);
    let torture = match Torture::new(&sys, &LOCKS, boot.torture, boot.tsc_khz, stop) {
        Ok(t) => t,
        Err(e) => me.fail(PanicKind::Panic, format_args!("torture parameters: {e}")),
    };
    if me.id() == 0 {
        // Publish where everything lives, for the VMM's checks and dumps.
        let total = pvlock_guest_lib::torture::total_locks(&boot.torture) as u64;
        rt::boot_field(&boot.locks_gpa).store(LOCKS.as_ptr() as u64, Ordering::Relaxed);
        rt::boot_field(&boot.lock_stride).store(core::mem::size_of::<TortureLock>() as u64, Ordering::Relaxed);
        rt::boot_field(&boot.nr_locks).store(total, Ordering::Relaxed);
        if kernel.is_none() {
            rt::boot_field(&boot.hash_gpa).store(HASH.as_ptr() as u64, Ordering::Relaxed);
            rt::boot_field(&boot.hash_entries).store(1 << hash_bits, Ordering::Relaxed);
            rt::boot_field(&boot.nodes_gpa).store(NODES.as_ptr() as u64, Ordering::Relaxed);
            rt::boot_field(&boot.node_stride)
                .store((core::mem::size_of::<PerCpuNodes>() / 4) as u64, Ordering::Relaxed);
        }
    }
    let start = rt::boot_field(&boot.start_tsc).load(Ordering::Acquire).max(rt::rdtsc());
    let torture = if boot.torture.max_acquisitions == 0 {
        torture.with_deadline(start + rt::ns_to_cycles(boot.duration_ms * 1_000_000))
    } else {
        torture
    };
    let obs = GuestObserver(me);
    // Record straight into the vCPU block, so that a run stopped by the VMM
    // (abort, hang, crash) still has its latency histogram.
    // SAFETY: this vCPU's own block; every other access to it during the
    // run is field-wise through the raw pointer (GuestCpu's Platform
    // methods, GuestObserver), never to this field, so this is the only
    // reference to the histogram while it lives.
    let latency = unsafe { &mut *core::ptr::addr_of_mut!((*me.block_ptr()).latency) };
    let r = torture.run(me, &obs, latency, &mut []);
    if kernel.is_some() {
        crate::kmod::collect_events(me.id(), me.block_ptr());
    }
    let b = me.block();
    b.acquisitions = r.acquisitions;
    b.max_wait_ns = r.max_wait_ns;
    // What the VMM compares with the locks' plain counters.
    pvlock_abi::vcpu::TortureTiming {
        lock_acquisitions: r.lock_acquisitions,
        irq_acquisitions: r.irq_acquisitions,
        sim_irqs: r.sim_irqs,
        max_irq_depth: r.max_irq_depth as u64,
    }
    .store(&mut b.timing);
    let _ = me.nr_cpus();
    doorbell::DONE_OK
}
