//! Guest-physical memory layout. The guest is identity mapped, so every
//! guest-physical address below is also the guest-virtual address the guest
//! code uses.
//!
//! ```text
//! 0x0000_0000  unused (null page stays unmapped in spirit: nothing lives here)
//! 0x0000_1000  page tables: PML4, PDPT, 4 page directories (2 MiB pages, 4 GiB)
//! 0x0010_0000  BootBlock (VMM writes parameters; guest writes its table addresses)
//! 0x0020_0000  VcpuBlock[MAX_VCPUS], VCPU_BLOCK_SIZE each
//! 0x0040_0000  guest ELF image (.text first, then data and .bss)
//! ...          free RAM (the guest's lock arena lives in .bss)
//! top of RAM   per-vCPU stacks, STACK_SIZE each, vCPU 0 highest
//! 0xD000_0000  MMIO doorbells (not RAM: a store exits to the VMM)
//! ```

/// Page size of the guest mappings (2 MiB pages in the page directories).
pub const HUGE_PAGE: u64 = 2 << 20;
/// Guest-physical address of the PML4.
pub const PML4_GPA: u64 = 0x1000;
/// Guest-physical address of the PDPT.
pub const PDPT_GPA: u64 = 0x2000;
/// Guest-physical address of the first of [`NR_PAGE_DIRS`] page directories.
pub const PD_GPA: u64 = 0x3000;
/// One page directory maps 1 GiB; four map the low 4 GiB, RAM and MMIO.
pub const NR_PAGE_DIRS: u64 = 4;
/// Everything the page tables map: `0 .. MAPPED_LIMIT`.
pub const MAPPED_LIMIT: u64 = NR_PAGE_DIRS << 30;

/// Guest-physical address of the [`crate::BootBlock`].
pub const BOOT_BLOCK_GPA: u64 = 0x10_0000;
/// Guest-physical address of vCPU 0's [`crate::VcpuBlock`].
pub const VCPU_BLOCKS_GPA: u64 = 0x20_0000;
/// Bytes reserved per vCPU block (the struct is checked to fit).
pub const VCPU_BLOCK_SIZE: u64 = 0x4000;
/// Where the guest ELF is linked (`guest/bin/link.ld` must agree).
pub const GUEST_IMAGE_GPA: u64 = 0x40_0000;
/// Stack bytes per vCPU.
pub const STACK_SIZE: u64 = 0x1_0000;

/// Smallest RAM the VMM accepts: image, blocks and a few stacks.
pub const MIN_RAM_BYTES: u64 = 16 << 20;
/// Largest RAM: must stay below the MMIO window.
pub const MAX_RAM_BYTES: u64 = MMIO_BASE;

/// First doorbell address. Nothing at or above this is RAM.
pub const MMIO_BASE: u64 = 0xD000_0000;
/// Bytes of the doorbell window.
pub const MMIO_SIZE: u64 = 0x1_0000;

/// Guest-physical address of vCPU `cpu`'s block.
pub const fn vcpu_block_gpa(cpu: u32) -> u64 {
    VCPU_BLOCKS_GPA + cpu as u64 * VCPU_BLOCK_SIZE
}

/// Initial stack pointer of vCPU `cpu` in a VM with `ram_bytes` of RAM.
pub const fn stack_top(ram_bytes: u64, cpu: u32) -> u64 {
    ram_bytes - cpu as u64 * STACK_SIZE
}

const _: () = assert!(VCPU_BLOCKS_GPA + crate::MAX_VCPUS as u64 * VCPU_BLOCK_SIZE <= GUEST_IMAGE_GPA);
const _: () = assert!(core::mem::size_of::<crate::VcpuBlock>() as u64 <= VCPU_BLOCK_SIZE);
const _: () = assert!(core::mem::size_of::<crate::BootBlock>() as u64 <= VCPU_BLOCKS_GPA - BOOT_BLOCK_GPA);
const _: () = assert!(PD_GPA + NR_PAGE_DIRS * 0x1000 <= BOOT_BLOCK_GPA);
const _: () = assert!(MMIO_BASE + MMIO_SIZE <= MAPPED_LIMIT);

/// Most mutexes of a mutex-torture run (the guest's static array).
pub const MAX_MUTEXES: usize = 64;
