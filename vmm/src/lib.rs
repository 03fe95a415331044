//! pvlock's VMM: boots the bare-metal guest on KVM and is the hypervisor
//! half of the paravirt spinlock protocol (pv_wait / pv_kick), with
//! deliberate vCPU preemption and a watchdog.
//!
//! Layering (as rust-vmm's vmm-reference): a plain-data [`MachineConfig`]
//! is turned by [`Machine::run`] into live KVM objects in a fixed order —
//! check `/dev/kvm`, create the VM, guest memory, page tables, ELF, boot
//! block, vCPUs, ioeventfds — then the vCPU threads run until every vCPU is
//! done, something fails, the watchdog fires or the run is stopped.

pub mod config;
pub mod cpu_state;
pub mod elf;
pub mod error;
pub mod exit;
pub mod guest_mem;
pub mod hypervisor;
pub mod machine;
pub mod preempt;
pub mod regs;
pub mod report;
pub mod signal;
pub mod sites;
pub mod supervise;
pub mod symbolize;
pub mod trace;
pub mod vcpu;
pub mod vcpu_dump;
pub mod watchdog;
#[cfg(test)]
mod watchdog_tests;

pub use config::{
    HoldAt, HoldRule, HoldUntil, HoldWhen, HolderStalls, HypervisorConfig, InvalidValue, KernelFlavour, KickContract,
    LockConfig, MachineConfig, PreemptConfig, RandomStalls, SiteMode, StallDist, TortureConfig, WaitContract,
};
pub use error::{MachineError, RunError};
pub use machine::{host_cpus_available, Machine, StopHandle};
pub use preempt::{HoldOutcome, HoldRelease};
pub use report::{FailureKind, GuestFailure, RunReport, RunStatus, VcpuReport};
pub use watchdog::MissedWakeupClass;
