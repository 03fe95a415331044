//! Lock torture in the guest: glue between the lock library's workload and
//! this vCPU's platform.

use crate::cpu::GuestCpu;

pub fn run(me: &GuestCpu) -> u64 {
    me.fail(
        pvlock_abi::doorbell::PanicKind::Panic,
        format_args!("the torture workload is not built into this guest yet"),
    )
}
