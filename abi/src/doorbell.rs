//! MMIO doorbells: 8-byte stores from the guest to addresses outside RAM.
//!
//! Every doorbell but the kicks exits to the VMM (`KVM_EXIT_MMIO`, ~33 us
//! here). The kicks are `KVM_IOEVENTFD`s: the store signals the target
//! vCPU's eventfd inside the kernel and the kicker keeps running (~3.3 us).
//!
//! The VMM bounds-checks every guest address a doorbell carries; a bad one is
//! reported as an ABI error, never dereferenced.

use crate::layout::MMIO_BASE;

/// Console: value = `gpa | (len << 48)`; the bytes are UTF-8 text.
pub const CONSOLE: u64 = MMIO_BASE;
/// Done: value = [`DONE_OK`] or a failure code; the vCPU stops running.
pub const DONE: u64 = MMIO_BASE + 0x08;
/// Panic / BUG / assertion: the record is in the vCPU block's `assert`
/// field; value = [`PanicKind`] as u64. The whole VM stops.
pub const PANIC: u64 = MMIO_BASE + 0x10;
/// pv_wait: value = `gpa | (expected << 56)`: block this vCPU while the byte
/// at `gpa` equals `expected` (checked wait) until a kick. One exit.
pub const WAIT: u64 = MMIO_BASE + 0x18;
/// Race window reached and the guest chose to stall there:
/// value = window id. The VMM decides how long (preemption engine).
pub const STALL: u64 = MMIO_BASE + 0x20;
/// Progress ping: value = anything; used to measure the exit round trip.
pub const PING: u64 = MMIO_BASE + 0x28;
/// A kernel build's site chose to exit (`pvlock_abi::sites`): value = the
/// site's index in the module's site table. The VMM stalls or holds it.
pub const SITE: u64 = MMIO_BASE + 0x100;
/// Kicks: vCPU `n`'s eventfd is at `KICK_BASE + 8 * n`.
pub const KICK_BASE: u64 = MMIO_BASE + 0x1000;

/// Status carried by a successful [`DONE`].
pub const DONE_OK: u64 = 0;
/// [`DONE`] value when a workload check inside the guest failed
/// (details were printed on the console and recorded in the assert record).
pub const DONE_CHECK_FAILED: u64 = 1;

/// Largest console message the VMM accepts in one doorbell.
pub const CONSOLE_MAX: u64 = 4096;

pub use crate::names::PanicKind;

/// Address of vCPU `cpu`'s kick doorbell.
pub const fn kick_addr(cpu: u32) -> u64 {
    KICK_BASE + 8 * cpu as u64
}

/// Encodes a console doorbell value.
pub const fn console_value(gpa: u64, len: u64) -> u64 {
    gpa | (len << 48)
}

/// Decodes a console doorbell value into `(gpa, len)`.
pub const fn console_decode(v: u64) -> (u64, u64) {
    (v & ((1 << 48) - 1), v >> 48)
}

/// Encodes a wait doorbell value.
pub const fn wait_value(gpa: u64, expected: u8) -> u64 {
    (gpa & ((1 << 56) - 1)) | ((expected as u64) << 56)
}

/// Decodes a wait doorbell value into `(gpa, expected)`.
pub const fn wait_decode(v: u64) -> (u64, u8) {
    (v & ((1 << 56) - 1), (v >> 56) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_round_trip() {
        assert_eq!(wait_decode(wait_value(0x40_1234, 3)), (0x40_1234, 3));
        assert_eq!(wait_decode(wait_value(0xff_ffff_ffff_ffff, 0xff)), (0xff_ffff_ffff_ffff, 0xff));
    }

    #[test]
    fn console_round_trip() {
        assert_eq!(console_decode(console_value(0x40_0000, 17)), (0x40_0000, 17));
    }

    #[test]
    fn kicks_do_not_overlap_other_doorbells() {
        assert!(kick_addr(0) > PING);
        assert!(kick_addr(crate::MAX_VCPUS as u32) <= MMIO_BASE + crate::MMIO_SIZE);
    }
}
