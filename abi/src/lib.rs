//! The guest/VMM ABI of pvlock.
//!
//! One definition, compiled by both sides: the VMM (`pvlock-vmm`) and the
//! bare-metal guest (`guest/bin`, `guest/lib`). Modelled on the KVM
//! selftests' "ucall" library: a fixed memory layout, a handful of MMIO
//! doorbells, and fixed-size `#[repr(C)]` records in guest memory that the
//! VMM reads at any time.
//!
//! Every structure here is plain data (integers and byte arrays) so that the
//! VMM can read and write it through `vm-memory` without trusting the guest.
//! The guest accesses the fields it races on through `core::sync::atomic`
//! views of the same addresses (`AtomicU64::from_ptr`).
//!
//! See `docs/ABI.md` for the prose version of this file.
#![no_std]

pub mod boot;
pub mod doorbell;
pub mod events;
pub mod kmod;
pub mod layout;
pub mod lockword;
pub mod names;
pub mod seed;
pub mod sites;
pub mod vcpu;

pub use boot::{BootBlock, HashEntry, HypervisorParams, LockParams, TortureParams, WindowParams};
pub use events::{LockEvent, VmmCounter, NR_LOCK_EVENTS, NR_VMM_COUNTERS};
pub use layout::*;
pub use names::{
    FreedObject, GuestPhase, MutexVariant, PageWakeVariant, PanicKind, Variant, VariantKind, WakeStep, Window,
    Workload, NR_WINDOWS,
};
pub use vcpu::{AssertRecord, LatencyHistogram, Leg, LegTiming, TraceEntry, TraceEvent, UafRecord, VcpuBlock, NR_LEGS};

/// Most pages of the page-wake workload (`torture.locks`).
pub const MAX_PAGES: usize = 16;

/// Bumped whenever a structure, constant or doorbell meaning changes.
pub const ABI_VERSION: u32 = 4;

/// Written by the VMM into [`BootBlock::magic`]; the guest refuses to run
/// without it (it would be reading garbage parameters).
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"PVLOCK01");

/// Largest number of vCPUs a VM may have. The MCS tail encoding allows 16K;
/// 64 keeps the per-vCPU blocks in one 1 MiB region.
pub const MAX_VCPUS: usize = 64;
