//! The guest runtime: doorbells, console, clock, per-vCPU blocks, panics.
//!
//! The guest runs at CPL3 with every page a user page (see
//! `../shared/HOST-KVM-NOTES.md`): no interrupts, no `hlt`, no port I/O.
//! Everything that needs the VMM is an 8-byte store to a doorbell.

use core::fmt::{self, Write};
use core::sync::atomic::AtomicU64;
use pvlock_abi::doorbell::{self, PanicKind};
use pvlock_abi::{BootBlock, VcpuBlock, BOOT_BLOCK_GPA, STACK_SIZE};

/// Stores `value` to the doorbell at `addr`.
#[inline(always)]
pub fn ring(addr: u64, value: u64) {
    // SAFETY: `addr` is one of the ABI's doorbell addresses: mapped by the
    // VMM's page tables, backed by no RAM, so the store exits to the VMM
    // (or signals an ioeventfd) and touches no guest memory.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// The boot block the VMM filled in before start.
pub fn boot() -> &'static BootBlock {
    // SAFETY: the VMM maps RAM at BOOT_BLOCK_GPA (identity mapped) and
    // wrote a BootBlock there before any vCPU ran; the guest only reads the
    // VMM-written part through this reference and updates the guest-written
    // fields through `boot_field()` atomics.
    unsafe { &*(BOOT_BLOCK_GPA as *const BootBlock) }
}

/// An atomic view of a guest-written `u64` field of the boot block.
pub fn boot_field(f: &u64) -> &AtomicU64 {
    // SAFETY: the field is 8-byte aligned inside the boot block, which lives
    // for the whole run; every racing access goes through this view.
    unsafe { AtomicU64::from_ptr(f as *const u64 as *mut u64) }
}

/// This vCPU's block.
pub fn vcpu_block(cpu: u32) -> *mut VcpuBlock {
    pvlock_abi::vcpu_block_gpa(cpu) as *mut VcpuBlock
}

/// The calling vCPU's index, derived from its stack pointer: the VMM gives
/// vCPU n the stack ending at `ram - n * STACK_SIZE` (pvlock_abi::stack_top).
/// Used where no context is at hand (the panic handler).
pub fn current_cpu() -> u32 {
    let rsp: u64;
    // SAFETY: reads the stack pointer; no memory access, no flags.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    let ram = boot().ram_mib as u64 * 1024 * 1024;
    (ram.saturating_sub(rsp) / STACK_SIZE) as u32
}

/// The TSC (shared by all vCPUs: the host's).
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc is allowed at CPL3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Converts TSC cycles to nanoseconds.
pub fn cycles_to_ns(cycles: u64) -> u64 {
    let khz = boot().tsc_khz.max(1);
    ((cycles as u128 * 1_000_000) / khz as u128) as u64
}

/// Converts nanoseconds to TSC cycles.
pub fn ns_to_cycles(ns: u64) -> u64 {
    ((ns as u128 * boot().tsc_khz as u128) / 1_000_000) as u64
}

/// A fixed buffer that formats text without allocating; overflow truncates.
pub struct FmtBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> FmtBuf<N> {
    pub const fn new() -> Self {
        Self { buf: [0; N], len: 0 }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Write for FmtBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes bytes to the VMM console (one exit).
pub fn console_bytes(b: &[u8]) {
    if !b.is_empty() {
        ring(doorbell::CONSOLE, doorbell::console_value(b.as_ptr() as u64, b.len() as u64));
    }
}

pub fn console_fmt(args: fmt::Arguments<'_>) {
    let mut buf = FmtBuf::<512>::new();
    let _ = buf.write_fmt(args);
    console_bytes(buf.as_bytes());
}

/// `println!` for the guest: formats on the stack, one console exit.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::rt::console_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Reports a failure to the VMM through the assert record of vCPU `cpu` and
/// the panic doorbell. The VMM stops the whole VM; this never returns.
pub fn report_failure(cpu: u32, kind: PanicKind, file: &str, line: u32, msg: fmt::Arguments<'_>) -> ! {
    let mut text = FmtBuf::<400>::new();
    let _ = text.write_fmt(msg);
    // SAFETY: each vCPU writes only its own block; the VMM reads it after
    // the doorbell below, i.e. after these stores (the MMIO exit serializes).
    let rec = unsafe { &mut (*vcpu_block(cpu)).assert };
    let f = file.as_bytes();
    let flen = f.len().min(rec.file.len());
    rec.file[..flen].copy_from_slice(&f[f.len() - flen..]);
    rec.file_len = flen as u32;
    rec.line = line;
    let m = text.as_bytes();
    rec.msg[..m.len()].copy_from_slice(m);
    rec.msg_len = m.len() as u32;
    ring(doorbell::PANIC, kind as u64);
    // The VMM does not resume a vCPU after a panic doorbell; if it ever did,
    // spin rather than run on in a broken state.
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line) = info.location().map(|l| (l.file(), l.line())).unwrap_or(("?", 0));
    report_failure(current_cpu(), PanicKind::Panic, file, line, format_args!("{}", info.message()))
}

/// The precompiled `core` of the host target is built for unwinding and so
/// references the personality routine; with `panic = "abort"` nothing ever
/// unwinds, so it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
