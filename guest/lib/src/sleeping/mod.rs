//! Sleeping locks on the testbed: a task model (one task per vCPU; sleeping
//! is pv_wait on the task's state byte, waking is the state store plus
//! pv_kick), the OSQ, the kernel mutex in its releases, and an rtmutex model
//! of the seed fix. Generic over [`crate::Platform`], so the same code runs
//! in the guest, on host threads and under loom.

pub mod mutex;
pub mod osq;
pub mod rtmutex;
pub mod task;
pub mod torture;

pub use mutex::{AcquirePath, Interrupted, Mutex, MutexFlavor, MutexSystem};
pub use task::{TaskSlot, Tasks, TASK_RUNNING, TASK_UNINTERRUPTIBLE};
