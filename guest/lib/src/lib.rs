//! pvlock's lock library: the queued spinlock with its paravirt slow paths
//! in every variant pvlock compares, the baselines, and the lock-torture
//! workload. `no_std`; generic over [`Platform`], so the very same code runs
//! in the bare-metal guest, on host threads (`std` feature, tests) and under
//! `loom` (`RUSTFLAGS="--cfg loom"`).
#![cfg_attr(not(any(test, feature = "std", loom)), no_std)]

pub mod external;
pub mod hash;
#[cfg(all(feature = "std", not(loom)))]
pub mod host;
pub mod node;
pub mod platform;
mod pv;
mod qspinlock;
mod simple;
pub mod sleeping;
pub mod sync;
pub mod system;
#[cfg(all(test, not(loom)))]
mod testing;
pub mod torture;
pub mod variants;
pub mod word;

pub use external::ExternalLock;
pub use platform::{Platform, WaitOn};
pub use system::{
    default_hash_bits, HashSlot, LockConfig, LockSystem, PerCpuNodes, RawLock, DEFAULT_SPIN_THRESHOLD, MAX_HASH_BITS,
};
