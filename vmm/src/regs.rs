//! A vCPU's general registers as records carry them: a plain copy of
//! `kvm_regs` that serializes, renders like the register block of a kernel
//! oops, and can be made up in tests.

use kvm_bindings::kvm_regs;
use serde::Serialize;

/// RIP, RSP, flags and the sixteen general registers of one vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GeneralRegs {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rflags: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl From<&kvm_regs> for GeneralRegs {
    fn from(r: &kvm_regs) -> Self {
        Self {
            rip: r.rip,
            rsp: r.rsp,
            rbp: r.rbp,
            rflags: r.rflags,
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
        }
    }
}

impl GeneralRegs {
    /// The registers in the layout of an x86-64 oops, three per line.
    pub fn render(&self) -> String {
        let rows: [[(&str, u64); 3]; 6] = [
            [("RIP", self.rip), ("RSP", self.rsp), ("EFLAGS", self.rflags)],
            [("RAX", self.rax), ("RBX", self.rbx), ("RCX", self.rcx)],
            [("RDX", self.rdx), ("RSI", self.rsi), ("RDI", self.rdi)],
            [("RBP", self.rbp), ("R08", self.r8), ("R09", self.r9)],
            [("R10", self.r10), ("R11", self.r11), ("R12", self.r12)],
            [("R13", self.r13), ("R14", self.r14), ("R15", self.r15)],
        ];
        let mut s = String::new();
        for row in rows {
            let cells: Vec<String> = row.iter().map(|(n, v)| format!("{n}: {v:016x}")).collect();
            s += &cells.join(" ");
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_renders_every_register() {
        let k = kvm_regs { rip: 0x40_1234, rsp: 0x3ff_ff00, rbp: 0x3ff_ff40, r15: 0xdead, ..Default::default() };
        let g = GeneralRegs::from(&k);
        assert_eq!((g.rip, g.rsp, g.rbp, g.r15), (0x40_1234, 0x3ff_ff00, 0x3ff_ff40, 0xdead));
        let text = g.render();
        assert!(text.starts_with("RIP: 0000000000401234 RSP: 0000000003ffff00"), "{text}");
        assert!(text.contains("R15: 000000000000dead"), "{text}");
        assert_eq!(text.lines().count(), 6);
    }
}
