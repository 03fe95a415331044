//! The page-wake workload in the guest: page locks and page waits over the
//! wait queues of `guest/lib/src/sleeping/{waitqueue,page}.rs`, in the
//! `lock.page_wake` variant, with queue locks of `lock.variant`. One task
//! per vCPU; a task exits after each page wait that queued and a new one
//! takes its vCPU after `torture.think_ns`. Pages: `torture.locks`.

use crate::cpu::GuestCpu;
use crate::rt;
use core::sync::atomic::Ordering;
use pvlock_abi::doorbell::{self, PanicKind};
use pvlock_abi::{PageWakeVariant, MAX_VCPUS};
use pvlock_guest_lib::sleeping::page::{check_quiescent, Page, PageSystem, PageWakeRun, MAX_PAGES};
use pvlock_guest_lib::sleeping::waitqueue::{TaskLife, WaitFrame, WaitQueueHead, WaitQueues};
use pvlock_guest_lib::sleeping::{TaskSlot, Tasks};
use pvlock_guest_lib::torture::Clock;
use pvlock_guest_lib::{HashSlot, LockSystem, PerCpuNodes, MAX_HASH_BITS};

/// The queue locks' MCS / PV nodes.
static NODES: [PerCpuNodes; MAX_VCPUS] = [const { PerCpuNodes::new() }; MAX_VCPUS];
/// The queue locks' PV hash table.
static HASH: [HashSlot; 1 << MAX_HASH_BITS] = [const { HashSlot::new() }; 1 << MAX_HASH_BITS];
/// One task per vCPU.
static TASKS: [TaskSlot; MAX_VCPUS] = [const { TaskSlot::new() }; MAX_VCPUS];
/// The tasks' lifetimes.
static LIVES: [TaskLife; MAX_VCPUS] = [const { TaskLife::new() }; MAX_VCPUS];
/// Each task's wait frame (its stack's `struct wait_page_queue`).
static FRAMES: [WaitFrame; MAX_VCPUS] = [const { WaitFrame::new() }; MAX_VCPUS];
static PAGES: [Page; MAX_PAGES] = [const { Page::new() }; MAX_PAGES];
static QUEUES: [WaitQueueHead; MAX_PAGES] = [const { WaitQueueHead::new() }; MAX_PAGES];
/// vCPUs finished (the last one checks that everything is quiescent).
static FINISHED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

pub fn run(me: &GuestCpu) -> u64 {
    let boot = rt::boot();
    let Some(variant) = PageWakeVariant::from_u32(boot.lock.page_wake) else {
        me.fail(PanicKind::Panic, format_args!("unknown page-wake variant id {} (lock.page_wake)", boot.lock.page_wake))
    };
    let nr = boot.nr_vcpus as usize;
    let nr_pages = boot.torture.nr_locks as usize;
    if nr_pages == 0 || nr_pages > MAX_PAGES {
        me.fail(PanicKind::Panic, format_args!("page-wake: torture.locks = {nr_pages}, must be 1..={MAX_PAGES}"))
    }
    let cfg = crate::torture::lock_config(me, boot);
    let spin_sys = LockSystem::new(cfg, &NODES[..nr], &HASH[..1 << cfg.hash_bits]);
    let wq = WaitQueues::new(&spin_sys, Tasks::new(&TASKS[..nr]), &FRAMES[..nr], &LIVES[..nr]);
    let sys = PageSystem { wq, variant, pages: &PAGES[..nr_pages], queues: &QUEUES[..nr_pages] };
    if me.id() == 0 {
        rt::boot_field(&boot.hash_gpa).store(HASH.as_ptr() as u64, Ordering::Relaxed);
        rt::boot_field(&boot.hash_entries).store(1 << cfg.hash_bits, Ordering::Relaxed);
        rt::boot_field(&boot.nodes_gpa).store(NODES.as_ptr() as u64, Ordering::Relaxed);
        rt::boot_field(&boot.node_stride).store((core::mem::size_of::<PerCpuNodes>() / 4) as u64, Ordering::Relaxed);
    }
    let start = rt::boot_field(&boot.start_tsc).load(Ordering::Acquire).max(rt::rdtsc());
    let clock = Clock { tsc_khz: boot.tsc_khz };
    let run = PageWakeRun {
        sys: &sys,
        nr_pages,
        cs_cycles: clock.ns_to_cycles(boot.torture.cs_ns as u64),
        think_cycles: clock.ns_to_cycles(boot.torture.think_ns as u64),
        clock,
        stop: rt::boot_field(&boot.stop_request),
        deadline: (boot.torture.max_acquisitions == 0)
            .then(|| start + rt::ns_to_cycles(boot.duration_ms * 1_000_000)),
        max_ops: boot.torture.max_acquisitions,
    };
    let r = run.run(me);
    let b = me.block();
    b.acquisitions = r.locks + r.waits;
    if FINISHED.fetch_add(1, Ordering::AcqRel) + 1 == nr as u32 {
        if let Err(page) = check_quiescent(&sys, nr_pages) {
            me.fail(PanicKind::Bug, format_args!("page-wake: page {page} still locked or with waiters after the run"))
        }
    }
    doorbell::DONE_OK
}
