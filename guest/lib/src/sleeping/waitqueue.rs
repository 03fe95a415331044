//! A wait queue in the kernel's shape (include/linux/wait.h,
//! kernel/sched/wait.c, include/linux/list.h), with the lifetimes of the
//! waiter's stack frame and task made visible.
//!
//! * The queue head is a spinlock of the run's variant ([`RawLock`] through
//!   the [`LockSystem`]) and a doubly linked list.
//! * An entry (`struct wait_queue_entry` inside `struct wait_page_queue`)
//!   lives in the waiter's stack frame: here a per-CPU [`WaitFrame`] slot,
//!   because one task runs per CPU and one wait is live per task, so the
//!   slot is exactly the frame the next wait of that task reuses (a late
//!   write by a waker lands in the next wait's entry, as on a real stack).
//! * List links are node ids, not pointers: 0 is the queue's head, `cpu + 1`
//!   that CPU's frame (an entry is on at most one queue).
//! * Lifetimes: a frame and a task carry a tag, `generation << 1 | LIVE`.
//!   When the wait returns, the frame is poisoned (tag not live, fields
//!   [`POISON`]); when the task exits, its tag goes not live, and a later
//!   "fork" on that CPU gives it the next generation. A waker takes the
//!   tag with its reference (under the queue lock, while the entry is
//!   linked, so the object is live) and every later access compares it: a
//!   mismatch is a use-after-free ([`Platform::use_after_free`]) naming the
//!   waker, the owner, the object and the waker's [`WakeStep`].
//!
//! The check is made before each access; an access racing with the owner's
//! poisoning in the same few instructions can pass unseen. The reproducers
//! hold the waker for milliseconds, so this never decides their outcome.

use super::task::Tasks;
use crate::sync::atomic::{AtomicU32, Ordering};
use crate::{LockSystem, Platform, RawLock};
use core::fmt;
use pvlock_abi::{FreedObject, TraceEvent, UafRecord, WakeStep};

/// `WQ_FLAG_EXCLUSIVE` (include/linux/wait.h).
pub const WQ_FLAG_EXCLUSIVE: u32 = 0x01;
/// `WQ_FLAG_WOKEN`.
pub const WQ_FLAG_WOKEN: u32 = 0x02;
/// `WQ_FLAG_CUSTOM` (5ef64cc8987a: the page lock hand-off request).
pub const WQ_FLAG_CUSTOM: u32 = 0x08;
/// `WQ_FLAG_DONE` (5ef64cc8987a: the waker took the bit for the waiter).
pub const WQ_FLAG_DONE: u32 = 0x10;

/// What a returned frame's fields hold (the kernel's `POISON_FREE` byte).
pub const POISON: u32 = 0x6b6b_6b6b;
/// The live bit of a lifetime tag.
const LIVE: u32 = 1;
/// Node id of a queue's head.
pub const HEAD: u32 = 0;

/// One CPU's wait frame: `struct wait_page_queue` (the entry plus the
/// page key) as it sits on the waiter's stack.
#[repr(C, align(64))]
pub struct WaitFrame {
    /// Lifetime tag.
    pub life: AtomicU32,
    /// `wait->flags`.
    pub flags: AtomicU32,
    /// `wait->private`: the task (its CPU + 1).
    pub private: AtomicU32,
    /// `wait->func`: which wake function (the run's page-wake variant id).
    pub func: AtomicU32,
    /// `wait->entry.next` (node id).
    pub next: AtomicU32,
    /// `wait->entry.prev` (node id).
    pub prev: AtomicU32,
    /// `wait_page->page` (page index + 1).
    pub page: AtomicU32,
    /// `wait_page->bit_nr`.
    pub bit_nr: AtomicU32,
}

impl WaitFrame {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            life: AtomicU32::new(0),
            flags: AtomicU32::new(POISON),
            private: AtomicU32::new(POISON),
            func: AtomicU32::new(POISON),
            next: AtomicU32::new(POISON),
            prev: AtomicU32::new(POISON),
            page: AtomicU32::new(POISON),
            bit_nr: AtomicU32::new(POISON),
        }
    }
    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self {
            life: AtomicU32::new(0),
            flags: AtomicU32::new(POISON),
            private: AtomicU32::new(POISON),
            func: AtomicU32::new(POISON),
            next: AtomicU32::new(POISON),
            prev: AtomicU32::new(POISON),
            page: AtomicU32::new(POISON),
            bit_nr: AtomicU32::new(POISON),
        }
    }
}

#[cfg(not(loom))]
impl Default for WaitFrame {
    fn default() -> Self {
        Self::new()
    }
}

/// One CPU's task lifetime (the task itself is the [`super::TaskSlot`]).
pub struct TaskLife {
    pub life: AtomicU32,
}

impl TaskLife {
    /// A live task of generation 0.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { life: AtomicU32::new(LIVE) }
    }
    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { life: AtomicU32::new(LIVE) }
    }
}

#[cfg(not(loom))]
impl Default for TaskLife {
    fn default() -> Self {
        Self::new()
    }
}

/// `struct wait_queue_head`: its lock and the list head.
#[repr(C, align(64))]
pub struct WaitQueueHead {
    pub lock: RawLock,
    next: AtomicU32,
    prev: AtomicU32,
    /// Entries on the list (ours, for the wake-up statistics; under the
    /// lock).
    len: AtomicU32,
}

impl WaitQueueHead {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self { lock: RawLock::new(), next: AtomicU32::new(HEAD), prev: AtomicU32::new(HEAD), len: AtomicU32::new(0) }
    }
    #[cfg(loom)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { lock: RawLock::new(), next: AtomicU32::new(HEAD), prev: AtomicU32::new(HEAD), len: AtomicU32::new(0) }
    }

    /// Address of the queue lock (for phases and traces).
    pub fn addr(&self) -> usize {
        &self.lock as *const RawLock as usize
    }

    /// Entries queued now (under the lock).
    pub fn len(&self) -> u32 {
        self.len.load(Ordering::Relaxed)
    }

    /// Nothing queued (for the end-of-run check).
    pub fn is_empty(&self) -> bool {
        self.next.load(Ordering::Relaxed) == HEAD
    }
}

#[cfg(not(loom))]
impl Default for WaitQueueHead {
    fn default() -> Self {
        Self::new()
    }
}

/// A waker's reference to an entry: its node id and the tag it had when
/// the waker reached it on the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef {
    pub id: u32,
    pub tag: u32,
}

impl EntryRef {
    /// The CPU whose frame it is.
    pub fn owner(self) -> u32 {
        self.id - 1
    }
}

/// A waker's reference to a task (what `wait->private` held).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRef {
    pub cpu: u32,
    pub tag: u32,
}

/// [`UafRecord`] for messages (the Platform's default, a BUG).
pub struct UafDisplay<'a>(pub &'a UafRecord);

impl fmt::Display for UafDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let object = FreedObject::from_u32(r.object).map_or("?", |o| o.name());
        let step = WakeStep::from_u32(r.step).map_or("?", |s| s.name());
        write!(
            f,
            "use-after-free: cpu {} touched the {object} of cpu {} at {:#x} (step {step}; tag then {:#x}, now {:#x})",
            r.waker, r.owner, r.addr, r.tag_then, r.tag_now
        )
    }
}

/// The wait queues of a run: the spinlocks, the tasks, the CPUs' frames and
/// task lifetimes.
pub struct WaitQueues<'s, 'a> {
    pub spin: &'s LockSystem<'a>,
    pub tasks: Tasks<'s>,
    frames: &'s [WaitFrame],
    lives: &'s [TaskLife],
}

impl<'s, 'a> WaitQueues<'s, 'a> {
    pub fn new(spin: &'s LockSystem<'a>, tasks: Tasks<'s>, frames: &'s [WaitFrame], lives: &'s [TaskLife]) -> Self {
        Self { spin, tasks, frames, lives }
    }

    fn frame<P: Platform>(&self, p: &P, id: u32) -> &'s WaitFrame {
        match id.checked_sub(1).and_then(|i| self.frames.get(i as usize)) {
            Some(f) => f,
            None => p.bug(format_args!("wait entry id {id} outside the frame table ({})", self.frames.len())),
        }
    }

    fn life<P: Platform>(&self, p: &P, cpu: u32) -> &'s TaskLife {
        match self.lives.get(cpu as usize) {
            Some(l) => l,
            None => p.bug(format_args!("task of cpu {cpu} outside the lifetime table")),
        }
    }

    fn next_of<'q>(&'q self, p: &impl Platform, q: &'q WaitQueueHead, id: u32) -> &'q AtomicU32 {
        if id == HEAD {
            &q.next
        } else {
            &self.frame(p, id).next
        }
    }

    fn prev_of<'q>(&'q self, p: &impl Platform, q: &'q WaitQueueHead, id: u32) -> &'q AtomicU32 {
        if id == HEAD {
            &q.prev
        } else {
            &self.frame(p, id).prev
        }
    }

    // ---------------------------------------------------------- lifetimes --

    /// This CPU's frame, made live for a new wait (`DEFINE_WAIT`-style
    /// initialisation; `init_wait()` with `private = current`). Returns the
    /// entry's id.
    pub fn enter_frame<P: Platform>(&self, p: &P, func: u32) -> u32 {
        let id = p.cpu() + 1;
        let f = self.frame(p, id);
        let tag = (f.life.load(Ordering::Relaxed) | LIVE).wrapping_add(2);
        f.flags.store(0, Ordering::Relaxed);
        f.private.store(id, Ordering::Relaxed);
        f.func.store(func, Ordering::Relaxed);
        f.next.store(id, Ordering::Relaxed);
        f.prev.store(id, Ordering::Relaxed);
        // Release: a waker that sees the live tag (it reaches the entry only
        // through the list, under the queue lock taken after this) sees
        // initialised fields.
        f.life.store(tag, Ordering::Release);
        trace(p, TraceEvent::PageWaitEnter, 0, p.cpu(), tag);
        id
    }

    /// The waiter returns: its frame is gone. Poisoned, so a waker that
    /// still uses it is caught.
    pub fn leave_frame<P: Platform>(&self, p: &P, id: u32) {
        let f = self.frame(p, id);
        let tag = f.life.load(Ordering::Relaxed) & !LIVE;
        f.life.store(tag, Ordering::Release);
        for w in [&f.flags, &f.private, &f.func, &f.next, &f.prev, &f.page, &f.bit_nr] {
            w.store(POISON, Ordering::Relaxed);
        }
    }

    /// The current task exits (`do_exit()`): its task is freed.
    pub fn task_exit<P: Platform>(&self, p: &P) {
        let l = self.life(p, p.cpu());
        let tag = l.life.load(Ordering::Relaxed) & !LIVE;
        l.life.store(tag, Ordering::Release);
        trace(p, TraceEvent::PageTaskExit, 0, p.cpu(), tag);
        p.event(pvlock_abi::LockEvent::PageTaskExits, 1);
    }

    /// A new task on this CPU reuses the freed one (the next generation).
    pub fn task_fork<P: Platform>(&self, p: &P) {
        let l = self.life(p, p.cpu());
        let tag = (l.life.load(Ordering::Relaxed) | LIVE).wrapping_add(2);
        l.life.store(tag, Ordering::Release);
        trace(p, TraceEvent::PageTaskFork, 0, p.cpu(), tag);
    }

    /// The waker's reference to an entry it reached on a list (under the
    /// queue lock): the entry must be live now.
    #[track_caller]
    pub fn entry_ref<P: Platform>(&self, p: &P, id: u32, step: WakeStep) -> EntryRef {
        let tag = self.frame(p, id).life.load(Ordering::Acquire);
        let r = EntryRef { id, tag };
        if tag & LIVE == 0 {
            self.report(p, FreedObject::WaitEntry, r.owner(), step, tag, tag, self.frame(p, id) as *const _ as u64);
        }
        r
    }

    /// Checks an entry reference before an access at `step`.
    #[track_caller]
    pub fn check_entry<P: Platform>(&self, p: &P, r: EntryRef, step: WakeStep) -> &'s WaitFrame {
        let f = self.frame(p, r.id);
        let now = f.life.load(Ordering::Acquire);
        if now != r.tag {
            self.report(p, FreedObject::WaitEntry, r.owner(), step, r.tag, now, f as *const _ as u64);
        }
        f
    }

    /// Reads `wait->private` at `step`: the task and its tag now.
    #[track_caller]
    pub fn read_private<P: Platform>(&self, p: &P, r: EntryRef, step: WakeStep) -> TaskRef {
        let f = self.check_entry(p, r, step);
        let v = f.private.load(Ordering::Relaxed);
        // Re-check: the value read must be from the live entry.
        self.check_entry(p, r, step);
        let cpu = match v.checked_sub(1) {
            Some(c) if (c as usize) < self.lives.len() => c,
            _ => p.bug(format_args!("wait->private = {v:#x}: not a task")),
        };
        trace(p, TraceEvent::PageReadPrivate, 0, r.owner(), cpu);
        TaskRef { cpu, tag: self.life(p, cpu).life.load(Ordering::Acquire) }
    }

    /// `wake_up_state(task, TASK_NORMAL)` on a task reference: the access
    /// to a freed task is reported. Returns whether it woke the task.
    #[track_caller]
    pub fn wake_task<P: Platform>(&self, p: &P, t: TaskRef) -> bool {
        let l = self.life(p, t.cpu);
        let now = l.life.load(Ordering::Acquire);
        if now != t.tag || now & LIVE == 0 {
            self.report(p, FreedObject::Task, t.cpu, WakeStep::WakeTask, t.tag, now, l as *const _ as u64);
        }
        let woke = self.tasks.wake_up_process(p, t.cpu);
        trace(p, TraceEvent::PageWakeTask, 0, t.cpu, woke as u32);
        if woke {
            p.event(pvlock_abi::LockEvent::PageWakeWoken, 1);
        }
        woke
    }

    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    fn report<P: Platform>(
        &self,
        p: &P,
        object: FreedObject,
        owner: u32,
        step: WakeStep,
        then: u32,
        now: u32,
        addr: u64,
    ) -> ! {
        trace(p, TraceEvent::PageUseAfterFree, 0, owner, (step as u32) << 8 | object as u32);
        p.use_after_free(&UafRecord {
            waker: p.cpu(),
            owner,
            object: object as u32,
            step: step as u32,
            tag_then: then,
            tag_now: now,
            addr,
        })
    }

    // -------------------------------------------------------------- lists --

    /// `__add_wait_queue_entry_tail()` (under the queue lock).
    pub fn add_tail<P: Platform>(&self, p: &P, q: &WaitQueueHead, id: u32) {
        let last = q.prev.load(Ordering::Relaxed);
        let f = self.frame(p, id);
        f.next.store(HEAD, Ordering::Relaxed);
        f.prev.store(last, Ordering::Relaxed);
        self.next_of(p, q, last).store(id, Ordering::Relaxed);
        q.prev.store(id, Ordering::Relaxed);
        q.len.fetch_add(1, Ordering::Relaxed);
        trace(p, TraceEvent::PageAddTail, q.addr(), id - 1, f.flags.load(Ordering::Relaxed));
    }

    /// The first entry (`list_first_entry`), or `HEAD` when empty (under
    /// the queue lock).
    pub fn first(&self, q: &WaitQueueHead) -> u32 {
        q.next.load(Ordering::Relaxed)
    }

    /// `curr->entry.next` read by a walker holding a checked reference.
    #[track_caller]
    pub fn next_checked<P: Platform>(&self, p: &P, r: EntryRef) -> u32 {
        let f = self.check_entry(p, r, WakeStep::Walk);
        f.next.load(Ordering::Relaxed)
    }

    /// `list_del_init()` / `list_del_init_careful()` of entry `id` from
    /// `q` (under the queue lock). `waker` is the reference of a waker
    /// removing another task's entry (checked at [`WakeStep::ListDel`]);
    /// `None` for the waiter removing its own.
    ///
    /// `careful` (2a9127fcf229): `prev = self` then a store-release of
    /// `next = self`, which pairs with the load-acquire of
    /// [`Self::list_empty_careful`]: a waiter that sees its entry unlinked
    /// without the lock sees every access the waker made before. Plain
    /// `INIT_LIST_HEAD()` otherwise (`next` then `prev`, relaxed).
    #[track_caller]
    pub fn list_del_init<P: Platform>(
        &self,
        p: &P,
        q: &WaitQueueHead,
        id: u32,
        waker: Option<EntryRef>,
        careful: bool,
    ) {
        if let Some(r) = waker {
            self.check_entry(p, r, WakeStep::ListDel);
            trace(p, TraceEvent::PageListDel, q.addr(), r.owner(), careful as u32);
        }
        let f = self.frame(p, id);
        let next = f.next.load(Ordering::Relaxed);
        let prev = f.prev.load(Ordering::Relaxed);
        // __list_del(): the neighbours are linked, hence live. On an entry
        // already self-linked it rewrites the entry's own fields only.
        self.prev_of(p, q, next).store(prev, Ordering::Relaxed);
        self.next_of(p, q, prev).store(next, Ordering::Relaxed);
        if next != id {
            q.len.fetch_sub(1, Ordering::Relaxed);
        }
        if careful {
            f.prev.store(id, Ordering::Relaxed);
            f.next.store(id, Ordering::Release);
        } else {
            f.next.store(id, Ordering::Relaxed);
            f.prev.store(id, Ordering::Relaxed);
        }
    }

    /// `list_empty_careful(&wait->entry)` on the caller's own entry, without
    /// the queue lock. `careful`: the load-acquire of `next` (2a9127fcf229;
    /// pairs with `list_del_init_careful()`'s store-release); before that a
    /// plain load.
    pub fn list_empty_careful<P: Platform>(&self, p: &P, id: u32, careful: bool) -> bool {
        let f = self.frame(p, id);
        let next = f.next.load(if careful { Ordering::Acquire } else { Ordering::Relaxed });
        next == id && f.prev.load(Ordering::Relaxed) == id
    }

    /// `list_empty()` of the caller's own entry, under the queue lock.
    pub fn list_empty<P: Platform>(&self, p: &P, id: u32) -> bool {
        self.frame(p, id).next.load(Ordering::Relaxed) == id
    }

    /// The caller's own frame (its flags are its to read).
    pub fn own<P: Platform>(&self, p: &P, id: u32) -> &'s WaitFrame {
        self.frame(p, id)
    }

    /// `finish_wait()`: `__set_current_state(TASK_RUNNING)`; if the entry is
    /// still (or seems) queued, remove it under the queue lock.
    pub fn finish_wait<P: Platform>(&self, p: &P, q: &WaitQueueHead, id: u32, careful: bool) {
        self.tasks.set_current_state_plain(p, super::TASK_RUNNING);
        if !self.list_empty_careful(p, id, careful) {
            self.spin.lock(p, &q.lock);
            self.list_del_init(p, q, id, None, careful);
            self.spin.unlock(p, &q.lock);
        }
    }

    /// `waitqueue_active()` (under the queue lock).
    pub fn active(&self, q: &WaitQueueHead) -> bool {
        q.next.load(Ordering::Relaxed) != HEAD
    }
}

/// A page wait-queue trace event about vCPU `cpu`'s entry or task.
pub fn trace<P: Platform>(p: &P, ev: TraceEvent, lock: usize, cpu: u32, value: u32) {
    p.trace(ev, lock, cpu as u16, value);
}
