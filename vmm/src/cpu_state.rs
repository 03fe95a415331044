//! Initial register state of a vCPU: 64-bit long mode at CPL3 with paging,
//! the one setup that runs guest code natively on these hosts
//! (`../shared/HOST-KVM-NOTES.md`) and an ordinary 64-bit user-mode guest
//! on VMX/SVM hosts.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use pvlock_abi::PML4_GPA;

/// CR0: PE | MP | ET | NE | WP | AM | PG.
pub const CR0: u64 = 0x8005_0033;
/// CR4: PAE | OSFXSR | OSXMMEXCPT | FSGSBASE (the host target's `core`
/// assumes SSE, so OSFXSR must be set).
pub const CR4: u64 = 0x1_0620;
/// EFER: SCE | LME | LMA.
pub const EFER: u64 = 0x501;
/// User code selector (GDT index 6, RPL 3).
pub const USER_CS: u16 = 0x33;
/// User data selector (GDT index 5, RPL 3).
pub const USER_DS: u16 = 0x2b;

fn segment(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 3,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Applies the CPL3 long-mode state to `sregs` (as read from the vCPU, so
/// fields this function does not own keep KVM's values).
pub fn setup_sregs(sregs: &mut kvm_sregs) {
    sregs.cs = segment(USER_CS, 11, 1, 0);
    let data = segment(USER_DS, 3, 0, 1);
    sregs.ss = data;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    // A busy 64-bit TSS so that VMX entry checks pass on real hosts; the
    // guest never takes an interrupt, so its contents are never used.
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: 0x40,
        type_: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cr0 = CR0;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = CR4;
    sregs.efer = EFER;
}

/// General registers: entry point, stack, and the vCPU index in `rdi`.
pub fn initial_regs(entry: u64, stack_top: u64, cpu: u32) -> kvm_regs {
    kvm_regs { rip: entry, rsp: stack_top, rdi: cpu as u64, rflags: 0x2, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64bit_user() {
        let mut s = kvm_sregs::default();
        setup_sregs(&mut s);
        assert_eq!((s.cs.l, s.cs.dpl, s.cs.db, s.cs.selector & 3), (1, 3, 0, 3));
        assert_eq!(s.ss.dpl, 3);
        assert_eq!(s.efer & 0x400, 0x400, "LMA set");
        assert_eq!(s.cr0 & 0x8000_0001, 0x8000_0001, "PG and PE set");
    }

    #[test]
    fn regs_carry_cpu_index() {
        let r = initial_regs(0x40_0000, 0x100_0000, 5);
        assert_eq!((r.rip, r.rsp, r.rdi, r.rflags), (0x40_0000, 0x100_0000, 5, 2));
    }
}
