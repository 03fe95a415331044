//! pvlock's lock library: the queued spinlock with its paravirt slow paths
//! in every variant pvlock compares, the baselines, and the lock-torture
//! workload. `no_std`; generic over [`Platform`], so the very same code runs
//! in the bare-metal guest, on host threads (`std` feature, tests) and under
//! `loom` (`RUSTFLAGS="--cfg loom"`).
#![cfg_attr(not(any(test, feature = "std", loom)), no_std)]

pub mod platform;
pub mod sync;

pub use platform::{Platform, WaitOn};
