//! The page-lock wake race of the seed (July 2020, "mm: silence soft
//! lockups from unlock_page") under loom: CPU 0 locks the page and unlocks
//! it (the waker); CPU 1 waits for it unlocked and, if it queued, its task
//! exits (the waiter). Every step the race needs is a loom-visible atomic:
//! the waker's unlink (`next`/`prev` stores), the waiter's
//! `list_empty_careful()` loads, the frame's poisoning and the task's exit
//! (`life` stores), and the waker's lifetime checks (`life` loads) before
//! each access. Linus's RFC wakes a task that has exited (the waiter never
//! slept: it saw its entry unlinked before `schedule()` and returned); the
//! mutant reads `wait->private` from a returned frame; the paths that keep
//! the entry until the waker is done stay clean at the same bound.
//!
//! The platform yields at the race windows ([`YIELD_AT_WINDOWS`]): without
//! that, loom never runs the waiter inside the waker's window, at any
//! preemption bound or none (its SC fences order the two threads' accesses
//! in every execution it tries; see the static's comment). The yield is
//! where the VMM preempts the waker in the KVM runs.
#![cfg(loom)]

mod loom_sleeping_support;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom_sleeping_support::{model, panics, YIELD_AT_WINDOWS};
use pvlock_abi::{PageWakeVariant, Variant};
use pvlock_guest_lib::sleeping::page::{check_quiescent, Page, PageSystem};
use pvlock_guest_lib::sleeping::waitqueue::{TaskLife, WaitFrame, WaitQueueHead, WaitQueues};
use pvlock_guest_lib::sleeping::{TaskSlot, Tasks};
use pvlock_guest_lib::{HashSlot, LockConfig, LockSystem, PerCpuNodes};

/// Preemption bound. The RFC is caught at 2 (the waiter preempted after
/// queueing; the waker's yield at `page-wake-between` runs it), the paths
/// that keep the entry are clean at 2, 3 and 4; 4 takes about a second.
const PREEMPTIONS: usize = 4;

struct World {
    nodes: Vec<PerCpuNodes>,
    hash: Vec<HashSlot>,
    tasks: Vec<TaskSlot>,
    lives: Vec<TaskLife>,
    frames: Vec<WaitFrame>,
    pages: [Page; 1],
    queues: [WaitQueueHead; 1],
    done: AtomicU32,
}

fn page_model(variant: PageWakeVariant) {
    YIELD_AT_WINDOWS.store(true, std::sync::atomic::Ordering::Relaxed);
    model(
        2,
        PREEMPTIONS,
        false,
        || World {
            nodes: (0..2).map(|_| PerCpuNodes::new()).collect(),
            hash: (0..4).map(|_| HashSlot::new()).collect(),
            tasks: (0..2).map(|_| TaskSlot::new()).collect(),
            lives: (0..2).map(|_| TaskLife::new()).collect(),
            frames: (0..2).map(|_| WaitFrame::new()).collect(),
            pages: [Page::new()],
            queues: [WaitQueueHead::new()],
            done: AtomicU32::new(0),
        },
        move |w, p| {
            // The queue lock: the test-and-set spinlock keeps the model
            // small (the qspinlocks have their own models).
            let spin = LockSystem::new(
                LockConfig { variant: Variant::Tas, spin_threshold: 1, hash_bits: 2 },
                &w.nodes,
                &w.hash,
            );
            let sys = PageSystem {
                wq: WaitQueues::new(&spin, Tasks::new(&w.tasks), &w.frames, &w.lives),
                variant,
                pages: &w.pages,
                queues: &w.queues,
            };
            if pvlock_guest_lib::Platform::cpu(p) == 0 {
                sys.lock_page(p, 0);
                sys.unlock_page(p, 0);
                // Both done (the waiter reads the queue without its lock:
                // the check belongs after both).
                while w.done.load(Ordering::Acquire) == 0 {
                    loom::thread::yield_now();
                }
                assert_eq!(check_quiescent(&sys, 1), Ok(()), "{variant}: page or queue left busy");
            } else {
                if sys.wait_on_page_locked(p, 0) {
                    // do_exit() right after the wait: the task is freed.
                    sys.wq.task_exit(p);
                    sys.wq.task_fork(p);
                }
                w.done.store(1, Ordering::Release);
            }
        },
    );
}

#[test]
fn rfc_wakes_a_task_that_has_exited() {
    let msg = panics(|| page_model(PageWakeVariant::Rfc2020));
    assert!(msg.contains("use-after-free: cpu 0 touched the task of cpu 1"), "{msg}");
    assert!(msg.contains("wake-task"), "{msg}");
}

#[test]
fn mutant_reads_private_from_a_returned_frame() {
    let msg = panics(|| page_model(PageWakeVariant::MutantDelBeforePrivate));
    assert!(msg.contains("use-after-free: cpu 0 touched the wait-entry of cpu 1"), "{msg}");
}

#[test]
fn v5_7_autoremove_is_clean() {
    page_model(PageWakeVariant::V5_7);
}

#[test]
fn oleg_woken_is_clean() {
    page_model(PageWakeVariant::OlegWoken);
}

#[test]
fn rewrite_2a9127fcf229_is_clean() {
    page_model(PageWakeVariant::Rewrite2a9127);
}

#[test]
fn upstream_is_clean() {
    page_model(PageWakeVariant::Upstream);
}
