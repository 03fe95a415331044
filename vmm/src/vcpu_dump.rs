//! Where every vCPU is: registers, a frame-pointer backtrace symbolized to
//! function and source line, phase, lock, node and trace. Taken once the
//! vCPU threads have left KVM_RUN (the registers are those of the last
//! exit: for a vCPU that spun without exits, where the stop kick found it).
//!
//! The guest is built with frame pointers (`guest/bin/.cargo/config.toml`):
//! `[rbp]` is the caller's rbp and `[rbp + 8]` the return address. The walk
//! reads guest memory through bounds-checked accessors and stays inside the
//! vCPU's own stack, so a corrupted stack ends the walk, never the VMM.

use crate::guest_mem::GuestRam;
use crate::regs::GeneralRegs;
use crate::symbolize::{SourceFrame, Symbolizer};
use crate::trace::{render_entry, RingLayout};
use pvlock_abi::boot::node_layout;
use pvlock_abi::{GuestPhase, VcpuBlock, STACK_SIZE};
use serde::Serialize;

/// Deepest backtrace taken (the guest's call chains are short).
pub const MAX_FRAMES: usize = 48;
/// Trace events a dump carries per vCPU.
pub const DUMP_TRACE_EVENTS: u64 = 32;

/// One frame of the walk: the address and, once symbolized, its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackFrame {
    /// RIP for frame 0, a return address for the callers.
    pub pc: u64,
    /// Innermost (inlined) first; empty until symbolized or when unknown.
    pub source: Vec<SourceFrame>,
}

/// One vCPU at the end of a run that did not end well.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcpuDump {
    pub cpu: u32,
    /// None when the registers could not be read (the thread never came
    /// back from KVM_RUN).
    pub regs: Option<GeneralRegs>,
    pub backtrace: Vec<StackFrame>,
    /// The first frame in lock or workload code, skipping the runtime's
    /// doorbell/failure helpers and the Rust library: where it "is".
    pub location: Option<SourceFrame>,
    pub phase: String,
    pub lock: u64,
    pub node: u64,
    pub node_state: Option<u8>,
    pub in_interrupt: u32,
    pub acquisitions: u64,
    /// The last trace events, oldest first.
    pub trace: Vec<String>,
}

/// The return-address chain from `regs`, inside `stack_lo..stack_hi`.
/// Frame 0 is RIP itself.
pub fn walk_frames(ram: &GuestRam, regs: &GeneralRegs, stack_lo: u64, stack_hi: u64) -> Vec<u64> {
    let mut pcs = vec![regs.rip];
    let mut fp = regs.rbp;
    while pcs.len() < MAX_FRAMES {
        if fp < stack_lo || fp.saturating_add(16) > stack_hi || !fp.is_multiple_of(8) {
            break;
        }
        let (Ok(next), Ok(ret)) = (ram.read_u64(fp), ram.read_u64(fp + 8)) else { break };
        if ret == 0 {
            break;
        }
        pcs.push(ret);
        // Frames grow down, so the caller's frame is above ours.
        if next <= fp {
            break;
        }
        fp = next;
    }
    pcs
}

/// Dumps vCPU `cpu` of a VM with `ram_bytes` of RAM.
pub fn capture(ram: &GuestRam, rings: RingLayout, cpu: u32, regs: Option<GeneralRegs>) -> VcpuDump {
    let b: VcpuBlock = ram.read_pod(pvlock_abi::vcpu_block_gpa(cpu)).unwrap_or_default();
    let top = pvlock_abi::stack_top(ram.size(), cpu);
    let backtrace = regs
        .map(|r| walk_frames(ram, &r, top - STACK_SIZE, top))
        .unwrap_or_default()
        .into_iter()
        .map(|pc| StackFrame { pc, source: Vec::new() })
        .collect();
    VcpuDump {
        cpu,
        regs,
        backtrace,
        location: None,
        phase: GuestPhase::from_u32(b.phase).map(|p| p.name()).unwrap_or("?").to_string(),
        lock: b.cur_lock,
        node: b.cur_node,
        node_state: (b.cur_node != 0).then(|| ram.read_u8(b.cur_node + node_layout::STATE).ok()).flatten(),
        in_interrupt: b.irq_depth,
        acquisitions: b.acquisitions,
        trace: crate::trace::read(ram, rings, cpu, DUMP_TRACE_EVENTS).entries.iter().map(render_entry).collect(),
    }
}

/// Fills in the source of every frame and the location.
pub fn symbolize(dumps: &mut [VcpuDump], sym: &Symbolizer) {
    for d in dumps {
        for (i, f) in d.backtrace.iter_mut().enumerate() {
            // A return address is the instruction after the call: look up
            // the call itself.
            f.source = sym.frames(if i == 0 { f.pc } else { f.pc.saturating_sub(1) });
        }
        d.location = d.backtrace.iter().flat_map(|f| f.source.iter()).find(|s| !s.is_helper()).cloned();
    }
}

/// Every dump for people.
pub fn render(dumps: &[VcpuDump]) -> String {
    let mut s = String::new();
    for d in dumps {
        s += &format!(
            "vCPU {}: {} lock {:#x} node {:#x} state {:?}{} acquisitions {}\n",
            d.cpu,
            d.phase,
            d.lock,
            d.node,
            d.node_state,
            if d.in_interrupt > 0 {
                format!(", in simulated interrupt depth {}", d.in_interrupt)
            } else {
                String::new()
            },
            d.acquisitions
        );
        if let Some(l) = &d.location {
            s += &format!("  at {}\n", l.render());
        }
        match &d.regs {
            Some(r) => r.render().lines().for_each(|l| s += &format!("  {l}\n")),
            None => s += "  registers unavailable (the vCPU thread did not stop)\n",
        }
        s += "  Call Trace:\n";
        for f in &d.backtrace {
            if f.source.is_empty() {
                s += &format!("    {:#x}\n", f.pc);
            }
            for src in &f.source {
                s += &format!("    {:#x} {}\n", f.pc, src.render());
            }
        }
        if !d.trace.is_empty() {
            s += "  last events:\n";
            for e in &d.trace {
                s += &format!("    {e}\n");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_made_up_frame_chain_and_stops_at_the_stack_edges() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let hi = ram.size();
        let lo = hi - STACK_SIZE;
        // Three frames: f0 at lo+0x100 -> f1 at lo+0x200 -> f2 at lo+0x300,
        // whose saved rbp is 0 (the entry's), ending the chain.
        let (f0, f1, f2) = (lo + 0x100, lo + 0x200, lo + 0x300);
        for (fp, next, ret) in [(f0, f1, 0x40_1111u64), (f1, f2, 0x40_2222), (f2, 0, 0x40_3333)] {
            ram.write_u64(fp, next).unwrap();
            ram.write_u64(fp + 8, ret).unwrap();
        }
        let regs = GeneralRegs { rip: 0x40_0abc, rbp: f0, rsp: f0 - 0x20, ..Default::default() };
        assert_eq!(walk_frames(&ram, &regs, lo, hi), vec![0x40_0abc, 0x40_1111, 0x40_2222, 0x40_3333]);
        // A frame pointer outside the stack gives RIP alone.
        let wild = GeneralRegs { rip: 1, rbp: 0x1000, ..Default::default() };
        assert_eq!(walk_frames(&ram, &wild, lo, hi), vec![1]);
        // A loop (a frame pointing at itself) ends.
        ram.write_u64(f0, f0).unwrap();
        assert_eq!(walk_frames(&ram, &regs, lo, hi).len(), 2);
    }

    #[test]
    fn location_skips_helpers() {
        let helper =
            SourceFrame { function: "rt::ring".into(), file: "guest/bin/src/rt.rs".into(), line: 19, inlined: true };
        let lib = SourceFrame {
            function: "core::hint::spin_loop".into(),
            file: "library/core/src/hint.rs".into(),
            line: 1,
            inlined: true,
        };
        let lock = SourceFrame {
            function: "hash::insert".into(),
            file: "guest/lib/src/hash.rs".into(),
            line: 171,
            inlined: false,
        };
        assert!(helper.is_helper() && lib.is_helper() && !lock.is_helper());
    }
}
