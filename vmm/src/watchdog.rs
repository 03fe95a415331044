//! Explaining hangs: a state dump of every vCPU, its lock and node, the PV
//! hash entries of that lock and the last trace events, and a
//! classification of the missed wakeup.
//!
//! Everything here reads guest memory through bounds-checked accessors: a
//! corrupted guest produces a strange report, never a VMM crash.

use crate::vcpu::Shared;
use pvlock_abi::{GuestPhase, HashEntry, VcpuBlock, VmmCounter};
use serde::{Deserialize, Serialize};
use std::mem::offset_of;
use std::sync::atomic::Ordering;

/// Why a waiter will never be woken (best judgement from memory). Records
/// spell it in kebab case; the aliases read records written before the
/// class was typed (which spelled it as the Rust name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissedWakeupClass {
    /// Queue head waits on the locked byte, but the byte is not the slow
    /// value (the unlocker takes the fast path and kicks nobody), or no
    /// hash entry names its node.
    #[serde(alias = "WaiterNotHashed")]
    WaiterNotHashed,
    /// The lock's first hash entry (what the unlocker finds) names another
    /// vCPU's node.
    #[serde(alias = "HashEntryPointsAtOtherVcpu")]
    HashEntryPointsAtOtherVcpu,
    /// More than one hash entry for one lock: one of them is stale.
    #[serde(alias = "StaleEntry")]
    StaleEntry,
    /// A kick to this vCPU was dropped by the `lost-if-not-waiting` contract.
    #[serde(alias = "KickLostByContract")]
    KickLostByContract,
    /// Every vCPU that has not finished is blocked in a wait.
    #[serde(alias = "PlainDeadlock")]
    PlainDeadlock,
    #[serde(alias = "Unknown")]
    Unknown,
}

impl MissedWakeupClass {
    /// Every class.
    pub const ALL: &'static [MissedWakeupClass] = &[
        Self::WaiterNotHashed,
        Self::HashEntryPointsAtOtherVcpu,
        Self::StaleEntry,
        Self::KickLostByContract,
        Self::PlainDeadlock,
        Self::Unknown,
    ];

    /// The record spelling (as serde writes it).
    pub const fn name(self) -> &'static str {
        match self {
            Self::WaiterNotHashed => "waiter-not-hashed",
            Self::HashEntryPointsAtOtherVcpu => "hash-entry-points-at-other-vcpu",
            Self::StaleEntry => "stale-entry",
            Self::KickLostByContract => "kick-lost-by-contract",
            Self::PlainDeadlock => "plain-deadlock",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for MissedWakeupClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) fn phase_name<S: serde::Serializer>(p: &Option<GuestPhase>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.map(GuestPhase::name).unwrap_or("?"))
}

/// One vCPU as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VcpuState {
    pub cpu: u32,
    /// None: the guest wrote a phase id the VMM does not know ("?").
    #[serde(serialize_with = "phase_name")]
    pub phase: Option<GuestPhase>,
    pub blocked_ms: Option<f64>,
    pub wait_gpa: Option<u64>,
    pub stalled: bool,
    pub in_interrupt: u32,
    pub lock: u64,
    pub node: u64,
    pub node_state: Option<u8>,
    pub last_events: Vec<String>,
}

/// The lock a blocked vCPU waits for.
#[derive(Debug, Clone, Serialize)]
pub struct LockState {
    pub addr: u64,
    pub word: u32,
    pub locked: u8,
    pub pending: bool,
    pub tail_cpu: Option<u32>,
    pub tail_idx: u32,
    pub owner_field: u32,
    /// Hash entries for this lock: (slot, node, node's cpu).
    pub hash_entries: Vec<(u64, u64, Option<u32>)>,
    /// With more than one entry, on a kernel build: who last touched each
    /// entry's node, with the kernel's file:line (the unlock that read a
    /// stale entry and left it names the bug's site).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry_sites: Vec<String>,
}

/// The report of one detected hang / missed wakeup.
#[derive(Debug, Clone, Serialize)]
pub struct HangReport {
    /// The vCPU the report is about.
    pub blocked_cpu: u32,
    /// It was blocked in a wait (false: it was running guest code).
    pub blocked: bool,
    /// Torture locks whose word is not 0 (held, queued, or slow), decoded.
    pub busy_locks: Vec<LockState>,
    pub class: MissedWakeupClass,
    pub detail: String,
    pub lock: Option<LockState>,
    pub vcpus: Vec<VcpuState>,
}

fn node_cpu(sh: &Shared, node: u64) -> Option<u32> {
    let boot = sh.boot();
    sh.layout.node.cpu_of(boot.nodes_gpa, boot.node_stride, node, sh.cfg.vcpus)
}

/// Every PV hash entry in use: (slot, entry), read through the layout.
pub fn hash_entries_in_use(sh: &Shared) -> Vec<(u64, HashEntry)> {
    let boot = sh.boot();
    let e = sh.layout.hash_entry;
    if boot.hash_gpa == 0 || boot.hash_entries > MAX_HASH_ENTRIES {
        return Vec::new();
    }
    let Ok(bytes) = sh.ram.read_bytes(boot.hash_gpa, boot.hash_entries * e.size) else { return Vec::new() };
    let field = |slot: &[u8], off: u64| {
        let off = off as usize;
        slot.get(off..off + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0)
    };
    bytes
        .chunks_exact(e.size as usize)
        .enumerate()
        .map(|(i, slot)| (i as u64, HashEntry { lock: field(slot, e.lock), node: field(slot, e.node) }))
        .filter(|(_, h)| h.lock != 0)
        .collect()
}

/// Largest PV hash table the VMM reads (a corrupted boot block cannot
/// make it read more).
pub const MAX_HASH_ENTRIES: u64 = 1 << 16;

fn lock_state(sh: &Shared, addr: u64) -> Option<LockState> {
    let w = sh.layout.word;
    let word = sh.ram.read_u32(addr + sh.layout.torture_lock.word).ok()?;
    let hash_entries: Vec<(u64, u64, Option<u32>)> = hash_entries_in_use(sh)
        .into_iter()
        .filter(|(_, e)| e.lock == addr)
        .map(|(i, e)| (i, e.node, node_cpu(sh, e.node)))
        .collect();
    let tail = w.tail(word);
    let entry_sites = if sh.cfg.sites.is_some() && hash_entries.len() > 1 {
        hash_entries.iter().filter_map(|(slot, _, _)| crate::sites::describe_hash_node_site(&sh.ram, *slot)).collect()
    } else {
        Vec::new()
    };
    Some(LockState {
        addr,
        word,
        locked: w.locked(word),
        pending: w.pending(word),
        tail_cpu: tail.map(|t| t.cpu),
        tail_idx: tail.map(|t| t.idx).unwrap_or(0),
        owner_field: sh.ram.read_u32(addr + sh.layout.torture_lock.owner).unwrap_or(0),
        hash_entries,
        entry_sites,
    })
}

fn trace_tail(sh: &Shared, cpu: u32, n: u64) -> Vec<String> {
    crate::trace::read(&sh.ram, sh.trace_rings, cpu, n).entries.iter().map(crate::trace::render_entry).collect()
}

/// Builds the state dump and classifies why `cpu` is stuck.
pub fn explain(sh: &Shared, cpu: u32) -> HangReport {
    let now_us = sh.run_start.elapsed().as_micros() as u64;
    let mut vcpus = Vec::new();
    let mut blocks = Vec::new();
    for c in 0..sh.cfg.vcpus {
        let b: VcpuBlock = sh.ram.read_pod(pvlock_abi::vcpu_block_gpa(c)).unwrap_or_default();
        let ch = &sh.channels[c as usize];
        let since = ch.blocked_since_us.load(Ordering::Acquire);
        let node_state = (b.cur_node != 0).then(|| sh.ram.read_u8(b.cur_node + sh.layout.node.state).ok()).flatten();
        vcpus.push(VcpuState {
            cpu: c,
            phase: GuestPhase::from_u32(b.phase),
            blocked_ms: (since != 0).then(|| now_us.saturating_sub(since) as f64 / 1e3),
            wait_gpa: (since != 0).then(|| ch.wait_gpa.load(Ordering::Relaxed)),
            stalled: sh.preempt.stalled[c as usize].load(Ordering::Acquire) != 0,
            in_interrupt: b.irq_depth,
            lock: b.cur_lock,
            node: b.cur_node,
            node_state,
            last_events: trace_tail(sh, c, 8),
        });
        blocks.push(b);
    }
    let me = &blocks[cpu as usize];
    let wait_gpa = sh.channels[cpu as usize].wait_gpa.load(Ordering::Relaxed);
    let lock = (me.cur_lock != 0).then(|| lock_state(sh, me.cur_lock)).flatten();
    let my_node_state = me.cur_node + sh.layout.node.state;
    let dropped = sh.channels[cpu as usize].counters.get(VmmCounter::KicksDropped) > 0;
    let live: Vec<&VcpuState> = vcpus.iter().filter(|v| v.phase != Some(GuestPhase::Done)).collect();
    let all_blocked = !live.is_empty() && live.iter().all(|v| v.blocked_ms.is_some());

    let (class, detail) = match &lock {
        Some(l) if wait_gpa == me.cur_lock => {
            // The queue head waits on the locked byte.
            let slow = sh.layout.word.slow_val;
            // A head waiting on its lock word publishes the word as what it
            // waits on, not its node, so an entry is ours when the node it
            // names is in this vCPU's per-CPU node array.
            let mine: Vec<_> = l.hash_entries.iter().filter(|e| e.2 == Some(cpu)).collect();
            if l.hash_entries.len() > 1 {
                let mut detail =
                    format!("{} hash entries for lock {:#x}: {:x?}", l.hash_entries.len(), l.addr, l.hash_entries);
                for who in &l.entry_sites {
                    detail += &format!("; {who}");
                }
                (MissedWakeupClass::StaleEntry, detail)
            } else if l.locked != slow {
                (MissedWakeupClass::WaiterNotHashed, format!("head waits on lock {:#x} whose locked byte is {} (not _Q_SLOW_VAL {slow}): no unlock will look in the hash table", l.addr, l.locked))
            } else if l.hash_entries.is_empty() {
                (
                    MissedWakeupClass::WaiterNotHashed,
                    format!("lock {:#x} is _Q_SLOW_VAL but no hash entry names it", l.addr),
                )
            } else if mine.is_empty() {
                (
                    MissedWakeupClass::HashEntryPointsAtOtherVcpu,
                    format!(
                        "the hash entry for lock {:#x} names node {:#x} (vCPU {:?}), not this vCPU's",
                        l.addr, l.hash_entries[0].1, l.hash_entries[0].2
                    ),
                )
            } else if dropped {
                (MissedWakeupClass::KickLostByContract, "a kick to this vCPU was dropped (lost-if-not-waiting)".into())
            } else {
                (MissedWakeupClass::Unknown, "hashed, slow value set: waiting for the owner's unlock".into())
            }
        }
        _ if me.cur_node != 0 && wait_gpa == my_node_state => {
            if dropped {
                (
                    MissedWakeupClass::KickLostByContract,
                    "queued waiter; a kick to it was dropped (lost-if-not-waiting)".into(),
                )
            } else if all_blocked {
                (MissedWakeupClass::PlainDeadlock, "queued waiter; every live vCPU is blocked".into())
            } else {
                (MissedWakeupClass::Unknown, format!("queued waiter on its node state byte {my_node_state:#x}"))
            }
        }
        _ if dropped => {
            (MissedWakeupClass::KickLostByContract, "a kick to this vCPU was dropped (lost-if-not-waiting)".into())
        }
        _ if all_blocked => (MissedWakeupClass::PlainDeadlock, "every live vCPU is blocked in a wait".into()),
        _ => (MissedWakeupClass::Unknown, format!("waits on {wait_gpa:#x}, which is neither its lock nor its node")),
    };
    HangReport { blocked_cpu: cpu, blocked: true, busy_locks: busy_locks(sh), class, detail, lock, vcpus }
}

/// The dump for a vCPU that never finished but is not blocked in a wait:
/// it runs guest code (spins) or its thread is starved.
pub fn explain_running(sh: &Shared, cpu: u32) -> HangReport {
    let mut r = explain(sh, cpu);
    r.blocked = false;
    r.class = MissedWakeupClass::Unknown;
    r.detail = format!(
        "vCPU {cpu} is not blocked in a wait but has not finished: it is running guest code (spinning) or its \
         thread gets no host CPU; see its phase, its last trace events and the busy locks"
    );
    r
}

/// Every torture lock whose word is not 0.
fn busy_locks(sh: &Shared) -> Vec<LockState> {
    let boot = sh.boot();
    if boot.locks_gpa == 0 || boot.nr_locks > 4096 || boot.lock_stride < sh.layout.torture_lock.min_stride {
        return Vec::new();
    }
    (0..boot.nr_locks)
        .filter_map(|i| lock_state(sh, boot.locks_gpa + i * boot.lock_stride))
        .filter(|l| l.word != 0)
        .collect()
}

/// The lock-aware detector's test: is `cpu`, blocked now, a head whose
/// lock's state guarantees that no unlock will kick it? Only the classes
/// that cannot resolve by themselves count.
pub fn is_definite_missed_wakeup(r: &HangReport) -> bool {
    matches!(
        r.class,
        MissedWakeupClass::WaiterNotHashed
            | MissedWakeupClass::HashEntryPointsAtOtherVcpu
            | MissedWakeupClass::StaleEntry
    ) && r.lock.as_ref().is_some_and(|l| l.owner_field == 0 || l.hash_entries.len() > 1)
}

/// For `--rescue` after a stall timeout: a class that no unlock or kick
/// can resolve (the definite ones, a kick dropped by the contract, or every
/// live vCPU blocked).
pub fn is_provably_lost(r: &HangReport) -> bool {
    is_definite_missed_wakeup(r)
        || matches!(
            r.class,
            MissedWakeupClass::KickLostByContract | MissedWakeupClass::PlainDeadlock | MissedWakeupClass::StaleEntry
        )
}

impl HangReport {
    /// The dump for humans.
    pub fn render(&self) -> String {
        let what = if self.blocked { "missed wakeup on" } else { "unfinished, not blocked:" };
        let mut s = format!("{what} vCPU {}: {}: {}\n", self.blocked_cpu, self.class, self.detail);
        for l in &self.busy_locks {
            s += &format!(
                "  busy lock {:#x}: word {:#010x} = locked {} pending {} tail cpu {:?} idx {}; owner field {}; hash entries {:x?}\n",
                l.addr, l.word, l.locked, l.pending as u8, l.tail_cpu, l.tail_idx, l.owner_field, l.hash_entries
            );
            for who in &l.entry_sites {
                s += &format!("    {who}\n");
            }
        }
        if let Some(l) = &self.lock {
            s += &format!(
                "  lock {:#x}: word {:#010x} = locked {} pending {} tail cpu {:?} idx {}; owner field {}; hash entries {:x?}\n",
                l.addr, l.word, l.locked, l.pending as u8, l.tail_cpu, l.tail_idx, l.owner_field, l.hash_entries
            );
        }
        for v in &self.vcpus {
            s += &format!(
                "  vCPU {}: {}{}{} lock {:#x} node {:#x} state {:?}{}\n",
                v.cpu,
                v.phase.map(GuestPhase::name).unwrap_or("?"),
                v.blocked_ms
                    .map(|b| format!(", blocked {b:.1} ms on {:#x}", v.wait_gpa.unwrap_or(0)))
                    .unwrap_or_default(),
                if v.stalled { ", stalled by the VMM" } else { "" },
                v.lock,
                v.node,
                v.node_state,
                if v.in_interrupt > 0 {
                    format!(", in simulated interrupt depth {}", v.in_interrupt)
                } else {
                    String::new()
                },
            );
            for e in &v.last_events {
                s += &format!("      {e}\n");
            }
        }
        s
    }
}

/// How long, in total, the host has kept this machine's vCPU threads
/// runnable but off a CPU (the run-queue delay of `/proc/self/task/TID/
/// schedstat`, summed over the vCPU threads that have started), ns.
///
/// The watchdog's timeouts are wall time; on a loaded host a vCPU thread
/// can wait hundreds of milliseconds for a CPU (seen: 300 ms at load 15 on
/// 2 CPUs), and the vCPU that would kick a waiter, or an unlocker between
/// its release and its kick, may be that thread. The stall timeout and the
/// lock-aware detector count only time in which this sum did not grow.
/// The sum over threads bounds the time in which at least one was starved
/// from above, so what is left is time in which every thread could run. 0 if
/// the host kernel has no schedstat (then the timeouts are plain wall time).
pub fn host_run_delay_ns(channels: &[crate::hypervisor::WaitChannel]) -> u64 {
    channels
        .iter()
        .map(|ch| ch.host_tid.load(Ordering::Acquire))
        .filter(|&tid| tid != 0)
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1).and_then(|d| d.parse::<u64>().ok()))
        .sum()
}

/// Some vCPU other than `except` has a kick it has not taken: its thread
/// was woken and has not run since (a starvation in progress, which
/// [`host_run_delay_ns`] books only once the thread runs).
pub fn wake_in_flight(channels: &[crate::hypervisor::WaitChannel], except: u32) -> bool {
    channels.iter().enumerate().any(|(c, ch)| c as u32 != except && ch.kick_pending())
}

/// Some vCPU thread other than `except` is starved by the host right now:
/// runnable (`R` in `/proc/self/task/TID/stat`) and given no CPU time
/// (schedstat's first field) over `window`, which this call sleeps. A
/// thread blocked in a wait or sleeping out a VMM stall is `S`, and one
/// running guest code accumulates CPU time. [`host_run_delay_ns`] books a
/// starvation only once it has ended; this sees one in progress.
pub fn starved_now(channels: &[crate::hypervisor::WaitChannel], except: u32, window: std::time::Duration) -> bool {
    let sample = || -> Vec<Option<(bool, u64)>> {
        channels
            .iter()
            .enumerate()
            .map(|(c, ch)| {
                let tid = ch.host_tid.load(Ordering::Acquire);
                if c as u32 == except || tid == 0 {
                    return None;
                }
                let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
                // The state follows the parenthesised name (which may hold spaces).
                let runnable = stat.rsplit_once(')')?.1.split_whitespace().next()? == "R";
                let sched = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
                Some((runnable, sched.split_whitespace().next()?.parse().ok()?))
            })
            .collect()
    };
    let before = sample();
    std::thread::sleep(window);
    let after = sample();
    before.iter().zip(&after).any(|(b, a)| matches!((b, a), (Some((_, t0)), Some((true, t1))) if t0 == t1))
}

/// Offset check: the preempted flag the VMM writes.
pub const PREEMPTED_OFFSET: usize = offset_of!(VcpuBlock, preempted);
