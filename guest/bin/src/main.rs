//! The pvlock guest: a freestanding 64-bit program that every vCPU enters at
//! `_start` with `rdi` = its index and `rsp` = its own stack (set by the
//! VMM), at CPL3 with identity-mapped user pages. See `pvlock_abi` for the
//! layout and doorbells.
#![no_std]
#![no_main]

pub mod cpu;
mod kmod;
mod mem;
mod mutex_torture;
mod page_wake;
pub mod rt;
mod torture;
mod workloads;

use core::sync::atomic::Ordering;
use pvlock_abi::{doorbell, Workload, ABI_VERSION, BOOT_MAGIC};

core::arch::global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    // The VMM points rsp at the top of this vCPU's stack; keep the SysV
    // alignment (rsp + 8 is 16-byte aligned at a function's first insn).
    "    and rsp, -16",
    "    call {main}",
    "2:  ud2",
    "    jmp 2b",
    main = sym guest_main,
);

extern "C" fn guest_main(cpu: u64) -> ! {
    let cpu = cpu as u32;
    let entry_tsc = rt::rdtsc();
    let boot = rt::boot();
    if boot.magic != BOOT_MAGIC || boot.abi_version != ABI_VERSION {
        panic!("boot block magic {:#x} / ABI {} (guest speaks ABI {})", boot.magic, boot.abi_version, ABI_VERSION);
    }
    // SAFETY: vCPU `cpu` is the only writer of its own block.
    let block = unsafe { &mut *rt::vcpu_block(cpu) };
    block.timing[pvlock_abi::vcpu::ENTRY_TSC_SLOT] = entry_tsc;
    block.alive = 1;
    block.phase = pvlock_abi::GuestPhase::Running as u32;

    let Some(workload) = Workload::from_u32(boot.workload) else {
        panic!("unknown workload id {}", boot.workload);
    };
    cpu::publish_poll_states();
    start_barrier(boot.nr_vcpus as u64);
    let status = workloads::run(workload, cpu);
    block.phase = pvlock_abi::GuestPhase::Done as u32;
    rt::ring(doorbell::DONE, status);
    // A vCPU that rang DONE is not resumed; spin if it is.
    loop {
        core::hint::spin_loop();
    }
}

/// All vCPUs start their workload together: lock races need contenders.
/// The last to arrive records the start time.
fn start_barrier(n: u64) {
    let boot = rt::boot();
    let started = rt::boot_field(&boot.started);
    if started.fetch_add(1, Ordering::AcqRel) + 1 == n {
        rt::boot_field(&boot.start_tsc).store(rt::rdtsc(), Ordering::Release);
    }
    while started.load(Ordering::Acquire) < n {
        core::hint::spin_loop();
    }
}
