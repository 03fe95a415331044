//! Mutex torture in the guest: one task per vCPU (`guest/lib/src/sleeping`),
//! the mutex variant of `lock.mutex` with its `wait_lock` a spinlock of
//! `lock.variant`. Storage is static guest memory, published in the boot
//! block like the spinlock torture's, so the VMM's owner-mark reads
//! (holder stalls), count checks, PV hash and node dumps work unchanged.

use crate::cpu::GuestCpu;
use crate::rt;
use core::sync::atomic::Ordering;
use pvlock_abi::doorbell::{self, PanicKind};
use pvlock_abi::{MutexVariant, MAX_VCPUS};
use pvlock_guest_lib::sleeping::torture::{MutexTorture, MutexTortureLock, MAX_MUTEXES};
use pvlock_guest_lib::sleeping::{MutexSystem, TaskSlot, Tasks};
use pvlock_guest_lib::torture::{Observer, Violation};
use pvlock_guest_lib::{HashSlot, LockSystem, PerCpuNodes, MAX_HASH_BITS};

/// The `wait_lock`s' MCS / PV nodes.
static NODES: [PerCpuNodes; MAX_VCPUS] = [const { PerCpuNodes::new() }; MAX_VCPUS];
/// The `wait_lock`s' PV hash table.
static HASH: [HashSlot; 1 << MAX_HASH_BITS] = [const { HashSlot::new() }; 1 << MAX_HASH_BITS];
/// One task per vCPU.
static TASKS: [TaskSlot; MAX_VCPUS] = [const { TaskSlot::new() }; MAX_VCPUS];
/// The torture mutexes.
static MUTEXES: [MutexTortureLock; MAX_MUTEXES] = [const { MutexTortureLock::new() }; MAX_MUTEXES];

struct GuestObserver<'a>(&'a GuestCpu);

impl Observer for GuestObserver<'_> {
    fn violation(&self, v: &Violation) {
        self.0.fail(PanicKind::MutualExclusion, format_args!("mutex torture: {v}"))
    }
}

pub fn run(me: &GuestCpu) -> u64 {
    let boot = rt::boot();
    let Some(flavor) = MutexVariant::from_u32(boot.lock.mutex) else {
        me.fail(PanicKind::Panic, format_args!("unknown mutex variant id {} (lock.mutex)", boot.lock.mutex))
    };
    let nr = boot.nr_vcpus;
    let cfg = crate::torture::lock_config(me, boot);
    let hash_bits = cfg.hash_bits;
    let spin_sys = LockSystem::new(cfg, &NODES[..nr as usize], &HASH[..1 << hash_bits]);
    let sys = MutexSystem::new(flavor, &spin_sys, Tasks::new(&TASKS[..nr as usize]));
    let stop = rt::boot_field(&boot.stop_request);
    let torture = match MutexTorture::new(&sys, &MUTEXES, boot.torture, boot.tsc_khz, stop) {
        Ok(t) => t,
        Err(e) => me.fail(PanicKind::Panic, format_args!("mutex torture parameters: {e}")),
    };
    if me.id() == 0 {
        rt::boot_field(&boot.locks_gpa).store(MUTEXES.as_ptr() as u64, Ordering::Relaxed);
        rt::boot_field(&boot.lock_stride).store(core::mem::size_of::<MutexTortureLock>() as u64, Ordering::Relaxed);
        rt::boot_field(&boot.nr_locks).store(boot.torture.nr_locks as u64, Ordering::Relaxed);
        rt::boot_field(&boot.hash_gpa).store(HASH.as_ptr() as u64, Ordering::Relaxed);
        rt::boot_field(&boot.hash_entries).store(1 << hash_bits, Ordering::Relaxed);
        rt::boot_field(&boot.nodes_gpa).store(NODES.as_ptr() as u64, Ordering::Relaxed);
        rt::boot_field(&boot.node_stride).store((core::mem::size_of::<PerCpuNodes>() / 4) as u64, Ordering::Relaxed);
    }
    let start = rt::boot_field(&boot.start_tsc).load(Ordering::Acquire).max(rt::rdtsc());
    let torture = if boot.torture.max_acquisitions == 0 {
        torture.with_deadline(start + rt::ns_to_cycles(boot.duration_ms * 1_000_000))
    } else {
        torture
    };
    let recursive = boot.lock.flags & pvlock_abi::boot::LOCK_FLAG_MUTEX_RECURSIVE != 0;
    if recursive && nr < 2 {
        me.fail(PanicKind::Panic, format_args!("lock.mutex_recursive needs 2 vCPUs (vCPU 1 sends the fatal signal)"))
    }
    if recursive && me.id() == 0 {
        return recursive_lock(me, &sys, &MUTEXES[0], boot.tsc_khz);
    }
    let torture = if recursive { torture.without_first_lock() } else { torture };
    if boot.lock.mutex_slice_ns != 0 {
        // lock.mutex_slice_us: as if another task were runnable on every
        // CPU, the tick ending a spin that outlasts the slice.
        TASKS[me.id() as usize].set_slice(rt::ns_to_cycles(boot.lock.mutex_slice_ns as u64));
    }
    let obs = GuestObserver(me);
    // SAFETY: this vCPU's own block; the Platform methods touch it field by
    // field through the raw pointer, never this field (as in torture.rs).
    let latency = unsafe { &mut *core::ptr::addr_of_mut!((*me.block_ptr()).latency) };
    let r = torture.run(me, &obs, latency);
    let b = me.block();
    b.acquisitions = r.acquisitions;
    b.max_wait_ns = r.max_wait_ns;
    // The spinlock torture's timing view: lock increments (what the VMM
    // compares with the plain counters), no irq locks, no handlers.
    pvlock_abi::vcpu::TortureTiming { lock_acquisitions: r.acquisitions, ..Default::default() }.store(&mut b.timing);
    if recursive && me.id() == 1 {
        // The run is over: the fatal signal that ends task 0's (correctly)
        // blocked recursive mutex_lock_killable().
        sys.tasks().kill(me, 0);
    }
    doorbell::DONE_OK
}

/// Task 0 of `lock.mutex_recursive`: `mutex_lock(&a); mutex_lock(&a);` as
/// in e274795ea7b7's description. The second lock must block until the
/// fatal signal; a spurious wakeup (`hypervisor.spurious_wakeup_prob`)
/// that lets it return 0 is the bug (v4.10's `owner == current` hand-off).
fn recursive_lock(me: &GuestCpu, sys: &MutexSystem<'_, '_>, l: &MutexTortureLock, tsc_khz: u64) -> u64 {
    // A 1 ms time slice: spinning on ourselves (the owner is on CPU) ends
    // in need_resched() and a sleep, as the tick would end it.
    TASKS[0].set_slice(tsc_khz);
    sys.lock(me, &l.mutex);
    if sys.lock_killable(me, &l.mutex).is_ok() {
        me.fail(
            PanicKind::Bug,
            format_args!(
                "recursive mutex_lock: task 0 locked mutex {:#x} it already held (a spurious wakeup took its own hand-off)",
                l.mutex.addr()
            ),
        )
    }
    sys.unlock(me, &l.mutex);
    let b = me.block();
    b.acquisitions = 1;
    // No critical section ran: the plain counter of mutex 0 was not
    // bumped, so the count check expects no increments from this task.
    pvlock_abi::vcpu::TortureTiming::default().store(&mut b.timing);
    doorbell::DONE_OK
}
