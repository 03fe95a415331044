//! Guest RAM, the identity page tables, and bounds-checked access to the
//! ABI records. Every guest address that comes from the guest is checked
//! here once (`check_range`) before anything is read or written.

use pvlock_abi::{BootBlock, HashEntry, VcpuBlock, HUGE_PAGE, MAPPED_LIMIT, NR_PAGE_DIRS, PDPT_GPA, PD_GPA, PML4_GPA};
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
/// User page: the guest runs at CPL3, so U/S is set at every level.
const PTE_USER: u64 = 1 << 2;
/// 2 MiB page in a page-directory entry.
const PTE_HUGE: u64 = 1 << 7;

/// The entries of the identity map of `0..MAPPED_LIMIT` with 2 MiB user
/// pages, as `(guest address, value)` pairs: one PML4 entry, one PDPT entry
/// per GiB, 512 PD entries per GiB. MMIO (above RAM) is mapped too, so that
/// guest stores there reach KVM as MMIO exits instead of page faults.
pub fn identity_page_tables() -> Vec<(u64, u64)> {
    let flags = PTE_PRESENT | PTE_WRITE | PTE_USER;
    let mut out = vec![(PML4_GPA, PDPT_GPA | flags)];
    for gib in 0..NR_PAGE_DIRS {
        let pd = PD_GPA + gib * 0x1000;
        out.push((PDPT_GPA + gib * 8, pd | flags));
        for i in 0..512u64 {
            let phys = (gib << 30) + i * HUGE_PAGE;
            out.push((pd + i * 8, phys | flags | PTE_HUGE));
        }
    }
    debug_assert_eq!(NR_PAGE_DIRS << 30, MAPPED_LIMIT);
    out
}

/// A guest address range that is not inside guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRam {
    pub gpa: u64,
    pub len: u64,
    pub ram: u64,
}

impl fmt::Display for OutOfRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest range {:#x}+{:#x} is outside guest RAM (0..{:#x})", self.gpa, self.len, self.ram)
    }
}

/// Plain-old-data ABI records: integers and arrays of integers only, so any
/// byte pattern is a valid value.
///
/// # Safety
/// Implement only for `#[repr(C)]` types whose every field is an integer
/// or an array of such.
pub unsafe trait Pod: Copy + Default {}
// SAFETY: all four are #[repr(C)] structs of integers / integer arrays
// (pvlock-abi), asserted by the ABI's layout tests.
unsafe impl Pod for BootBlock {}
// SAFETY: as above.
unsafe impl Pod for VcpuBlock {}
// SAFETY: as above.
unsafe impl Pod for HashEntry {}
// SAFETY: as above.
unsafe impl Pod for pvlock_abi::TraceEntry {}
// SAFETY: as above.
unsafe impl Pod for pvlock_abi::AssertRecord {}
// SAFETY: as above: #[repr(C)] integers only (4 x u32 + 2 x u32 + u64, no padding).
unsafe impl Pod for pvlock_abi::UafRecord {}
// SAFETY: repr(C), integers only.
unsafe impl Pod for pvlock_abi::kmod::KmodDescriptor {}
// SAFETY: repr(C), integers only.
unsafe impl Pod for pvlock_abi::sites::KernelSite {}

/// Guest RAM: one slot at guest address 0.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
}

impl GuestRam {
    pub fn new(size: u64) -> Result<Self, String> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])
            .map_err(|e| format!("cannot map {size} bytes of guest RAM: {e}"))?;
        Ok(Self { mem, size })
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest address 0 (for KVM_SET_USER_MEMORY_REGION).
    pub fn host_base(&self) -> u64 {
        self.mem.get_host_address(GuestAddress(0)).expect("address 0 is in the only region") as u64
    }

    /// Checks that `gpa..gpa+len` lies inside RAM (checked arithmetic:
    /// guest-supplied values may be anything).
    pub fn check_range(&self, gpa: u64, len: u64) -> Result<(), OutOfRam> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(OutOfRam { gpa, len, ram: self.size }),
        }
    }

    pub fn write_page_tables(&self) -> Result<(), String> {
        for (gpa, val) in identity_page_tables() {
            self.write_u64(gpa, val).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    pub fn read_pod<T: Pod>(&self, gpa: u64) -> Result<T, OutOfRam> {
        let len = std::mem::size_of::<T>();
        self.check_range(gpa, len as u64)?;
        let mut v = T::default();
        // SAFETY: T is Pod (any bytes are a valid T); the slice covers
        // exactly v's bytes and is dropped before v is used.
        let bytes = unsafe { std::slice::from_raw_parts_mut(&mut v as *mut T as *mut u8, len) };
        // Range checked above, so this cannot fail on bounds.
        self.mem.read_slice(bytes, GuestAddress(gpa)).map_err(|_| OutOfRam { gpa, len: len as u64, ram: self.size })?;
        Ok(v)
    }

    pub fn write_pod<T: Pod>(&self, gpa: u64, v: &T) -> Result<(), OutOfRam> {
        let len = std::mem::size_of::<T>();
        self.check_range(gpa, len as u64)?;
        // SAFETY: reading the bytes of a Pod value.
        let bytes = unsafe { std::slice::from_raw_parts(v as *const T as *const u8, len) };
        self.mem.write_slice(bytes, GuestAddress(gpa)).map_err(|_| OutOfRam { gpa, len: len as u64, ram: self.size })
    }

    pub fn read_bytes(&self, gpa: u64, len: u64) -> Result<Vec<u8>, OutOfRam> {
        self.check_range(gpa, len)?;
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(gpa)).map_err(|_| OutOfRam { gpa, len, ram: self.size })?;
        Ok(buf)
    }

    pub fn read_u8(&self, gpa: u64) -> Result<u8, OutOfRam> {
        self.check_range(gpa, 1)?;
        self.mem.read_obj(GuestAddress(gpa)).map_err(|_| OutOfRam { gpa, len: 1, ram: self.size })
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32, OutOfRam> {
        self.check_range(gpa, 4)?;
        self.mem.read_obj(GuestAddress(gpa)).map_err(|_| OutOfRam { gpa, len: 4, ram: self.size })
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64, OutOfRam> {
        self.check_range(gpa, 8)?;
        self.mem.read_obj(GuestAddress(gpa)).map_err(|_| OutOfRam { gpa, len: 8, ram: self.size })
    }

    pub fn write_u8(&self, gpa: u64, v: u8) -> Result<(), OutOfRam> {
        self.check_range(gpa, 1)?;
        self.mem.write_obj(v, GuestAddress(gpa)).map_err(|_| OutOfRam { gpa, len: 1, ram: self.size })
    }

    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<(), OutOfRam> {
        self.check_range(gpa, 4)?;
        self.mem.write_obj(v, GuestAddress(gpa)).map_err(|_| OutOfRam { gpa, len: 4, ram: self.size })
    }

    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), OutOfRam> {
        self.check_range(gpa, 8)?;
        self.mem.write_obj(v, GuestAddress(gpa)).map_err(|_| OutOfRam { gpa, len: 8, ram: self.size })
    }

    /// An atomic view of the aligned u32 at `gpa`, for a word the guest and
    /// the VMM both update (the poll state word). None: outside RAM or
    /// misaligned (the address came from the guest).
    pub fn atomic_u32(&self, gpa: u64) -> Option<&std::sync::atomic::AtomicU32> {
        use vm_memory::VolatileMemory;
        self.check_range(gpa, 4).ok()?;
        let region = self.mem.find_region(GuestAddress(gpa))?;
        let offset = gpa.checked_sub(vm_memory::GuestMemoryRegion::start_addr(region).0)?;
        region.get_atomic_ref::<std::sync::atomic::AtomicU32>(offset as usize).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_identity_map_with_user_huge_pages() {
        let pt = identity_page_tables();
        assert_eq!(pt.len(), 1 + 4 + 4 * 512);
        assert_eq!(pt[0], (PML4_GPA, PDPT_GPA | 7));
        for &(gpa, val) in &pt[1..] {
            assert_eq!(val & 7, 7, "present, writable, user at every level: {gpa:#x}");
        }
        // The entry mapping the MMIO window maps it to itself.
        let mmio = pvlock_abi::MMIO_BASE;
        let idx = mmio >> 21;
        let pd_entry = PD_GPA + (idx / 512) * 0x1000 + (idx % 512) * 8;
        let (_, v) = pt.iter().find(|(g, _)| *g == pd_entry).copied().unwrap();
        assert_eq!(v & !0xfff, mmio & !(HUGE_PAGE - 1));
        assert_ne!(v & PTE_HUGE, 0);
    }

    #[test]
    fn range_checks_at_the_edges() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let size = 16u64 << 20;
        assert!(ram.check_range(size - 8, 8).is_ok(), "last valid bytes");
        assert!(ram.check_range(size - 7, 8).is_err(), "one byte past the end");
        assert!(ram.check_range(u64::MAX - 3, 8).is_err(), "overflowing range");
        assert!(ram.read_u64(size - 8).is_ok());
        assert!(ram.read_u8(size).is_err());
        assert_eq!(ram.read_bytes(0xBAD0_0000_0000, 64).unwrap_err().gpa, 0xBAD0_0000_0000);
    }

    #[test]
    fn pod_round_trip() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let b = BootBlock { magic: 42, nr_vcpus: 3, ..Default::default() };
        ram.write_pod(pvlock_abi::BOOT_BLOCK_GPA, &b).unwrap();
        assert_eq!(ram.read_pod::<BootBlock>(pvlock_abi::BOOT_BLOCK_GPA).unwrap(), b);
    }
}
