//! Lock code that lives outside this library: in the guest, a kernel
//! tree's own `qspinlock.c` built into the kernel-lock module (see
//! `guest/kernel/` and `docs/KERNEL-BUILDS.md`). A [`crate::LockSystem`]
//! built with [`crate::LockSystem::with_external`] hands every lock and
//! unlock to it, with the calling CPU's platform, so that the torture
//! workload, its simulated interrupts and its checks stay the same.

use crate::system::RawLock;
use crate::Platform;

/// A spinlock implementation the lock system delegates to.
pub trait ExternalLock: Sync {
    /// `spin_lock()` on behalf of `p`'s CPU. May call back into `p`
    /// (pv_wait, pv_kick, spin points that run simulated interrupts, which
    /// may take another lock through the same system: re-entrant per CPU).
    fn lock(&self, p: &dyn Platform, lock: &RawLock);
    /// `spin_unlock()` on behalf of `p`'s CPU.
    fn unlock(&self, p: &dyn Platform, lock: &RawLock);
}
