//! The watchdog's classifier on made-up machine states: guest memory laid
//! out by hand (boot block, vCPU blocks, a lock word, hash entries, nodes)
//! and wait channels marked blocked, no KVM.

use crate::config::MachineConfig;
use crate::guest_mem::GuestRam;
use crate::hypervisor::WaitChannel;
use crate::preempt::PreemptState;
use crate::trace::RingLayout;
use crate::vcpu::Shared;
use crate::watchdog::{explain, explain_running, is_definite_missed_wakeup, is_provably_lost, MissedWakeupClass};
use pvlock_abi::boot::{lock_layout, node_layout};
use pvlock_abi::{BootBlock, GuestPhase, HashEntry, Variant, VcpuBlock, VmmCounter, BOOT_BLOCK_GPA};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const LOCK: u64 = 0x80_0000;
const HASH: u64 = 0x90_0000;
const NODES: u64 = 0xa0_0000;
const NODE_STRIDE: u64 = 64;
const SLOW: u32 = 3;

fn node(cpu: u32, idx: u64) -> u64 {
    NODES + (cpu as u64 * 4 + idx) * NODE_STRIDE
}

/// Two vCPUs running pv-v4.8 over one lock; nothing blocked yet.
fn machine() -> Shared {
    let cfg = MachineConfig {
        vcpus: 2,
        lock: crate::LockConfig { variant: Variant::PvV48, ..Default::default() },
        ..Default::default()
    };
    let ram = GuestRam::new(16 << 20).unwrap();
    let boot = BootBlock {
        nr_vcpus: 2,
        locks_gpa: LOCK,
        lock_stride: 64,
        nr_locks: 1,
        hash_gpa: HASH,
        hash_entries: 16,
        nodes_gpa: NODES,
        node_stride: NODE_STRIDE,
        ..Default::default()
    };
    ram.write_pod(BOOT_BLOCK_GPA, &boot).unwrap();
    for c in 0..2 {
        ram.write_u32(node(c, 0) + node_layout::CPU, c).unwrap();
    }
    let layout = cfg.layout();
    Shared {
        cfg,
        ram,
        stop: AtomicBool::new(false),
        run_start: Instant::now(),
        channels: (0..2).map(|_| WaitChannel::new().unwrap()).collect(),
        exits: (0..2).map(|_| AtomicU64::new(0)).collect(),
        console: Mutex::new(Default::default()),
        may_poll: false,
        poll_flag: false,
        preempt: PreemptState::new(2, 0),
        kick_timer: None,
        layout,
        rescued: Mutex::new(crate::report::BoundedLog::new(crate::report::limits::RESCUE_REPORTS)),
        rescued_by_class: Mutex::new(Default::default()),
        hash_occupancy: Mutex::new(Default::default()),
        trace_rings: RingLayout { gpa: 0, len: 0 },
    }
}

fn set_vcpu(sh: &Shared, cpu: u32, phase: GuestPhase, lock: u64, node: u64) {
    let b = VcpuBlock { phase: phase as u32, cur_lock: lock, cur_node: node, alive: 1, ..Default::default() };
    sh.ram.write_pod(pvlock_abi::vcpu_block_gpa(cpu), &b).unwrap();
}

fn block(sh: &Shared, cpu: u32, on: u64) {
    let ch = &sh.channels[cpu as usize];
    ch.blocked_since_us.store(1, Ordering::Release);
    ch.wait_gpa.store(on, Ordering::Relaxed);
}

fn lock_word(sh: &Shared, word: u32, owner: u32) {
    sh.ram.write_u32(LOCK + lock_layout::WORD, word).unwrap();
    sh.ram.write_u32(LOCK + lock_layout::OWNER, owner).unwrap();
}

fn hash(sh: &Shared, slot: u64, node: u64) {
    sh.ram.write_pod(HASH + slot * 16, &HashEntry { lock: LOCK, node }).unwrap();
}

/// vCPU 0 is the queue head, blocked on the locked byte.
fn head_waits(sh: &Shared) {
    set_vcpu(sh, 0, GuestPhase::Waiting, LOCK, node(0, 0));
    block(sh, 0, LOCK);
}

#[test]
fn head_waiting_on_a_lock_that_is_not_slow_is_not_hashed() {
    let sh = machine();
    head_waits(&sh);
    lock_word(&sh, 1, 0); // locked = 1, nobody owns: the unlock took the fast path
    let r = explain(&sh, 0);
    assert_eq!(r.class, MissedWakeupClass::WaiterNotHashed, "{}", r.detail);
    assert!(r.blocked && is_definite_missed_wakeup(&r));
}

#[test]
fn slow_lock_without_an_entry_is_not_hashed() {
    let sh = machine();
    head_waits(&sh);
    lock_word(&sh, SLOW, 0);
    let r = explain(&sh, 0);
    assert_eq!(r.class, MissedWakeupClass::WaiterNotHashed);
    assert!(r.detail.contains("no hash entry"), "{}", r.detail);
}

#[test]
fn two_entries_for_one_lock_are_a_stale_entry() {
    let sh = machine();
    head_waits(&sh);
    lock_word(&sh, SLOW, 0);
    hash(&sh, 3, node(0, 0));
    hash(&sh, 4, node(1, 0));
    let r = explain(&sh, 0);
    assert_eq!(r.class, MissedWakeupClass::StaleEntry, "{}", r.detail);
    assert_eq!(r.lock.as_ref().unwrap().hash_entries.len(), 2);
    assert!(is_definite_missed_wakeup(&r) && is_provably_lost(&r));
}

#[test]
fn the_entry_naming_another_vcpu_is_classified() {
    let sh = machine();
    head_waits(&sh);
    lock_word(&sh, SLOW, 0);
    hash(&sh, 3, node(1, 0));
    let r = explain(&sh, 0);
    assert_eq!(r.class, MissedWakeupClass::HashEntryPointsAtOtherVcpu, "{}", r.detail);
    assert_eq!(r.lock.as_ref().unwrap().hash_entries[0].2, Some(1));
}

#[test]
fn a_correctly_hashed_head_of_an_owned_lock_is_not_lost() {
    let sh = machine();
    head_waits(&sh);
    lock_word(&sh, SLOW, 2); // vCPU 1 owns it and will unlock
    hash(&sh, 3, node(0, 0));
    let r = explain(&sh, 0);
    assert_eq!(r.class, MissedWakeupClass::Unknown, "{}", r.detail);
    assert!(!is_definite_missed_wakeup(&r) && !is_provably_lost(&r));
}

#[test]
fn a_dropped_kick_is_the_contract() {
    let sh = machine();
    head_waits(&sh);
    lock_word(&sh, SLOW, 2);
    hash(&sh, 3, node(0, 0));
    sh.channels[0].counters.add(VmmCounter::KicksDropped, 1);
    let r = explain(&sh, 0);
    assert_eq!(r.class, MissedWakeupClass::KickLostByContract);
    assert!(is_provably_lost(&r) && !is_definite_missed_wakeup(&r));
}

#[test]
fn queued_waiters_all_blocked_are_a_plain_deadlock() {
    let sh = machine();
    for c in 0..2 {
        let n = node(c, 0);
        set_vcpu(&sh, c, GuestPhase::Waiting, LOCK, n);
        block(&sh, c, n + node_layout::STATE);
    }
    lock_word(&sh, 1, 0);
    let r = explain(&sh, 1);
    assert_eq!(r.class, MissedWakeupClass::PlainDeadlock, "{}", r.detail);
    assert!(is_provably_lost(&r));
}

#[test]
fn a_vcpu_that_spins_is_dumped_even_with_no_lock_busy() {
    let sh = machine();
    set_vcpu(&sh, 0, GuestPhase::Running, 0, 0);
    set_vcpu(&sh, 1, GuestPhase::Done, 0, 0);
    let r = explain_running(&sh, 0);
    assert!(!r.blocked && r.busy_locks.is_empty() && r.lock.is_none());
    assert_eq!(r.vcpus.len(), 2);
    assert_eq!((r.vcpus[0].phase, r.vcpus[1].phase), (Some(GuestPhase::Running), Some(GuestPhase::Done)));
    assert!(r.render().contains("unfinished, not blocked: vCPU 0"));
}

#[test]
fn a_waiter_on_an_unrelated_byte_is_unknown() {
    let sh = machine();
    set_vcpu(&sh, 0, GuestPhase::Waiting, 0, 0);
    block(&sh, 0, 0x12_3456);
    let r = explain(&sh, 0);
    assert_eq!(r.class, MissedWakeupClass::Unknown);
    assert!(r.detail.contains("0x123456"), "{}", r.detail);
}
