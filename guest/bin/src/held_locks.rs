//! Where each vCPU took the kernel-build locks it holds, so that a
//! mutual-exclusion violation names, for both owners, the kernel's
//! file:line that made it the owner (as lockdep's held-lock stack names
//! the acquisition point).
//!
//! A lock call claims a slot of its vCPU for the lock; while the tree's
//! slow path runs, every tracked site that writes the lock's locked byte
//! with `_Q_LOCKED_VAL` (clear_pending_set_locked(), set_locked(), the
//! head's cmpxchg of the whole word, a trylock, the PV head's
//! `WRITE_ONCE(lock->locked, _Q_LOCKED_VAL)`) becomes the slot's site; the
//! last one before the call returns is where the lock was taken. The fast
//! path is ours (`queued_spin_lock()`'s cmpxchg in `kmod.rs`). The unlock
//! frees the slot.
//!
//! Only the owning vCPU writes its slots; another vCPU reads them, racily,
//! only to word a failure report.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use pvlock_abi::MAX_VCPUS;

/// Locks one vCPU can hold or be taking at once: the torture's nest plus
/// the simulated-interrupt depths, with room to spare. A lock call beyond
/// it is simply not recorded.
const HELD_MAX: usize = 16;

/// A slot's site: none seen yet (slow path in progress, or sites off).
const NO_SITE: u32 = 0;
/// A slot's site: taken by the fast path (ours).
const FAST_PATH: u32 = u32::MAX;

struct Held {
    /// The lock's address; 0: a free slot.
    lock: AtomicU64,
    /// [`NO_SITE`], [`FAST_PATH`] or 1 + the site index.
    site: AtomicU32,
}

static HELD: [[Held; HELD_MAX]; MAX_VCPUS] =
    [const { [const { Held { lock: AtomicU64::new(0), site: AtomicU32::new(NO_SITE) } }; HELD_MAX] }; MAX_VCPUS];

fn slots(cpu: u32) -> Option<&'static [Held; HELD_MAX]> {
    HELD.get(cpu as usize)
}

/// vCPU `cpu` starts taking `lock` (`fast`: its fast path already did).
pub fn begin(cpu: u32, lock: u64, fast: bool) {
    let Some(s) = slots(cpu) else { return };
    // Relaxed: only this vCPU writes its slots; readers only word reports.
    if let Some(h) = s.iter().find(|h| h.lock.load(Ordering::Relaxed) == 0) {
        h.site.store(if fast { FAST_PATH } else { NO_SITE }, Ordering::Relaxed);
        h.lock.store(lock, Ordering::Relaxed);
    }
}

/// A tracked site `index` of vCPU `cpu` writes `val` at `addr`: if that
/// sets the locked byte of a lock this vCPU is taking, it is the site that
/// took it (so far).
pub fn note_write(cpu: u32, index: u32, addr: u64, val: u64, q_locked_val: u8) {
    // The locked byte is the lock word's lowest (little endian): a write at
    // the word's address, of any width, whose low byte is _Q_LOCKED_VAL.
    if val & 0xff != q_locked_val as u64 {
        return;
    }
    let Some(s) = slots(cpu) else { return };
    if let Some(h) = s.iter().find(|h| h.lock.load(Ordering::Relaxed) == addr) {
        h.site.store(index + 1, Ordering::Relaxed);
    }
}

/// vCPU `cpu` released `lock`.
pub fn end(cpu: u32, lock: u64) {
    let Some(s) = slots(cpu) else { return };
    if let Some(h) = s.iter().find(|h| h.lock.load(Ordering::Relaxed) == lock) {
        h.lock.store(0, Ordering::Relaxed);
    }
}

/// Where one vCPU took `lock`, for a report.
enum TakenAt {
    NotRecorded,
    FastPath,
    SlowPathNoSite,
    Site(u32),
}

fn taken_at(cpu: u32, lock: u64) -> TakenAt {
    let Some(h) = slots(cpu).and_then(|s| s.iter().find(|h| h.lock.load(Ordering::Relaxed) == lock)) else {
        return TakenAt::NotRecorded;
    };
    match h.site.load(Ordering::Relaxed) {
        FAST_PATH => TakenAt::FastPath,
        NO_SITE => TakenAt::SlowPathNoSite,
        s => TakenAt::Site(s - 1),
    }
}

/// "; where each took lock L: cpu 3 at F() FILE:LINE, cpu 1 ..." for the
/// vCPUs of a violation on `lock`; nothing when no vCPU has a record (a
/// Rust variant, which does not come through the module).
pub struct Owners {
    pub lock: u64,
    pub cpus: [Option<u32>; 2],
}

impl fmt::Display for Owners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus = || self.cpus.iter().flatten().map(|&c| (c, taken_at(c, self.lock)));
        if cpus().all(|(_, t)| matches!(t, TakenAt::NotRecorded)) {
            return Ok(());
        }
        write!(f, "; where each took it:")?;
        for (i, (cpu, t)) in cpus().enumerate() {
            write!(f, "{} cpu {cpu} ", if i == 0 { "" } else { "," })?;
            match t {
                TakenAt::NotRecorded => write!(f, "not recorded (it no longer holds the lock)")?,
                TakenAt::FastPath => write!(f, "in the fast path (pvlock's queued_spin_lock cmpxchg)")?,
                TakenAt::SlowPathNoSite => write!(f, "in the slow path (no tracked site set the locked byte)")?,
                TakenAt::Site(index) => match crate::kmod::site_location(index) {
                    Some((func, file, line)) => write!(f, "at {func}() {file}:{line}")?,
                    None => write!(f, "at site {index}")?,
                },
            }
        }
        Ok(())
    }
}
