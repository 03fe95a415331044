//! The one place atomics come from: `core` normally, `loom` under
//! `cfg(loom)`, so the lock code runs unchanged under the model checker.

#[cfg(not(loom))]
pub use core::sync::atomic;

#[cfg(loom)]
pub use loom::sync::atomic;
