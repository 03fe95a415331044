//! Kicking a vCPU thread out of `KVM_RUN` (Firecracker's pattern): the
//! controller sets `kvm_run.immediate_exit`, issues a release fence, then
//! sends a real-time signal. If the thread is inside `KVM_RUN` the signal
//! makes it return `EINTR`; if it is outside, `immediate_exit` makes the
//! next `KVM_RUN` return `EINTR` at once, so the request is never lost.

use std::sync::atomic::{fence, AtomicU8, Ordering};
use std::sync::Once;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Pairs with the release fence in `kick_thread`: the interrupted thread
    // sees immediate_exit = 1 when KVM_RUN returns.
    fence(Ordering::Acquire);
}

/// Installs the handler once per process (before any vCPU thread starts).
pub fn install_kick_handler() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = register_signal_handler(kick_signal(), handle_kick).map_err(|e| e.to_string());
    });
    res
}

/// `immediate_exit` of one vCPU's `kvm_run`, shared with the controller.
#[derive(Clone, Copy)]
pub struct ImmediateExit(pub *const AtomicU8);
// SAFETY: the pointer targets the vCPU's mmapped kvm_run, which stays mapped
// until the VcpuFd is dropped; vCPU threads hand their VcpuFd back through
// the join handle, and the machine drops them only after joining.
unsafe impl Send for ImmediateExit {}
// SAFETY: as above; all accesses are atomic.
unsafe impl Sync for ImmediateExit {}

impl ImmediateExit {
    pub fn set(&self) {
        // SAFETY: see the Send impl: the mapping outlives every kick.
        unsafe { (*self.0).store(1, Ordering::Relaxed) };
    }
    pub fn clear(&self) {
        // SAFETY: as above.
        unsafe { (*self.0).store(0, Ordering::Relaxed) };
    }
}

/// Kicks thread `thread` out of `KVM_RUN`.
pub fn kick_thread(exit: ImmediateExit, thread: libc::pthread_t) {
    exit.set();
    // Pairs with the acquire fence in the handler.
    fence(Ordering::Release);
    // SAFETY: `thread` is a vCPU thread that has not been joined yet (the
    // machine kicks only before joining), so the pthread_t is valid.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
