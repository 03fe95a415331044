//! Reading the guest's per-vCPU trace rings (ABI 2: `BootBlock::trace_gpa`,
//! `trace_len`; `VcpuBlock::trace_head`) back in time order.

use crate::guest_mem::GuestRam;
use pvlock_abi::{TraceEntry, TraceEvent, VcpuBlock, Window};
use std::mem::{offset_of, size_of};

/// One vCPU's trace, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuTrace {
    pub cpu: u32,
    pub entries: Vec<TraceEntry>,
    /// Older events the ring overwrote (0: the trace is the whole run).
    pub lost: u64,
}

/// Where the rings are, as the VMM placed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    pub gpa: u64,
    pub len: u64,
}

impl RingLayout {
    pub fn ring_gpa(&self, cpu: u32) -> u64 {
        pvlock_abi::vcpu::trace_ring_gpa(self.gpa, self.len, cpu)
    }
}

fn head(ram: &GuestRam, cpu: u32) -> u64 {
    ram.read_u64(pvlock_abi::vcpu_block_gpa(cpu) + offset_of!(VcpuBlock, trace_head) as u64).unwrap_or(0)
}

fn parse(bytes: &[u8]) -> TraceEntry {
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    TraceEntry {
        tsc: u64_at(offset_of!(TraceEntry, tsc)),
        lock: u64_at(offset_of!(TraceEntry, lock)),
        event: u16::from_le_bytes([bytes[16], bytes[17]]),
        arg: u16::from_le_bytes([bytes[18], bytes[19]]),
        value: u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes")),
    }
}

/// The last `max` events of `cpu` (all the ring holds if `max` is larger),
/// oldest first. A ring outside RAM reads as empty.
pub fn read(ram: &GuestRam, rings: RingLayout, cpu: u32, max: u64) -> VcpuTrace {
    const _: () = assert!(size_of::<TraceEntry>() == 24);
    if rings.len == 0 || !rings.len.is_power_of_two() {
        return VcpuTrace { cpu, ..Default::default() };
    }
    let head = head(ram, cpu);
    let n = head.min(rings.len).min(max);
    let first = head - n;
    let Ok(bytes) = ram.read_bytes(rings.ring_gpa(cpu), rings.len * 24) else {
        return VcpuTrace { cpu, ..Default::default() };
    };
    let entries = (first..head)
        .map(|i| {
            let slot = (i & (rings.len - 1)) as usize * 24;
            parse(&bytes[slot..slot + 24])
        })
        .collect();
    VcpuTrace { cpu, entries, lost: first }
}

/// One event for a human: `tsc=... name lock=... arg=... val=...`, with
/// window names spelled out.
pub fn render_entry(e: &TraceEntry) -> String {
    let ev = TraceEvent::from_u16(e.event);
    let name = ev.map(|t| t.name()).unwrap_or("?");
    let arg = match ev {
        Some(TraceEvent::Window | TraceEvent::WindowResume) => {
            Window::ALL.get(e.arg as usize).map(|w| w.name().to_string()).unwrap_or_else(|| e.arg.to_string())
        }
        _ => e.arg.to_string(),
    };
    format!("tsc={} {name} lock={:#x} arg={arg} val={}", e.tsc, e.lock, e.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_entry(ram: &GuestRam, gpa: u64, e: TraceEntry) {
        ram.write_pod(gpa, &e).unwrap();
    }

    #[test]
    fn a_wrapped_ring_reads_back_oldest_first_and_counts_what_it_lost() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let rings = RingLayout { gpa: 0x80_0000, len: 4 };
        // vCPU 1 wrote 6 events: 0..6; the ring keeps 2..6.
        for i in 0..6u64 {
            let slot = rings.ring_gpa(1) + (i % 4) * 24;
            write_entry(&ram, slot, TraceEntry { tsc: 100 + i, lock: 0x40, event: 2, arg: 0, value: i as u32 });
        }
        let head_gpa = pvlock_abi::vcpu_block_gpa(1) + offset_of!(VcpuBlock, trace_head) as u64;
        ram.write_u64(head_gpa, 6).unwrap();
        let t = read(&ram, rings, 1, u64::MAX);
        assert_eq!(t.lost, 2);
        assert_eq!(t.entries.iter().map(|e| e.tsc).collect::<Vec<_>>(), vec![102, 103, 104, 105]);
        let last2 = read(&ram, rings, 1, 2);
        assert_eq!(last2.entries.iter().map(|e| e.value).collect::<Vec<_>>(), vec![4, 5]);
        // vCPU 0 wrote nothing; tracing off reads as empty.
        assert!(read(&ram, rings, 0, 10).entries.is_empty());
        assert!(read(&ram, RingLayout { gpa: 0, len: 0 }, 1, 10).entries.is_empty());
    }

    #[test]
    fn renders_window_names() {
        let e = TraceEntry { tsc: 5, lock: 0, event: TraceEvent::Window as u16, arg: Window::ALL[0] as u16, value: 0 };
        assert!(render_entry(&e).contains(Window::ALL[0].name()), "{}", render_entry(&e));
    }
}
