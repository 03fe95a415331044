//! The guest's workloads, dispatched on `BootBlock::workload`. Each returns
//! the status for the DONE doorbell.

use crate::cpu::GuestCpu;
use crate::rt;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use pvlock_abi::doorbell;
use pvlock_abi::{Leg, Window};
use pvlock_abi::Workload;
use pvlock_guest_lib::{Platform, WaitOn};

pub fn run(w: Workload, cpu: u32) -> u64 {
    let me = GuestCpu::new(cpu);
    match w {
        Workload::Smoke => smoke(&me),
        Workload::Torture => crate::torture::run(&me),
        Workload::MutexTorture => crate::mutex_torture::run(&me),
        Workload::PageWake => crate::page_wake::run(&me),
        Workload::Fault => fault(&me),
        Workload::BadPointer => bad_pointer(&me),
        Workload::WaitForever => wait_forever(&me),
        Workload::Panic => {
            let two = core::hint::black_box(2);
            assert_eq!(two + 2, 5, "self-test: a guest assertion on vCPU {}", cpu);
            doorbell::DONE_OK
        }
        Workload::PingPong => ping_pong(&me),
        Workload::Doorbells => doorbells(&me),
        Workload::PreemptProbe => preempt_probe(&me),
        Workload::SpinForever if cpu == 0 => spin_forever(),
        Workload::SpinForever => doorbell::DONE_OK,
        Workload::DoorbellFuzz => doorbell_fuzz(&me),
        Workload::LockLoop => crate::torture::run_loop(&me, true),
        Workload::EmptyLoop => crate::torture::run_loop(&me, false),
    }
}

// ---------------------------------------------------------- spin-forever --

/// Self-test of the watchdog's dump: spins without a single exit, so only
/// the registers and a frame-pointer walk can say where this vCPU is. The
/// harness test looks for this function and the loop marked below (its
/// header line or the next, the body).
#[inline(never)]
fn spin_forever() -> u64 {
    let flag = AtomicU32::new(0);
    while flag.load(Ordering::Relaxed) == 0 {
        // spin-forever-loop: the line above and the line below.
        core::hint::spin_loop();
    }
    doorbell::DONE_CHECK_FAILED
}

// ---------------------------------------------------------------- smoke --

/// The smoke lock: a test-and-set byte whose waiters back off into
/// pv_wait and are kicked by the unlocker.
static SMOKE_LOCK: AtomicU8 = AtomicU8::new(0);
/// Bit n set: vCPU n is (about to be) waiting for SMOKE_LOCK.
static SMOKE_WAITERS: AtomicU64 = AtomicU64::new(0);

fn smoke_lock(me: &GuestCpu) {
    loop {
        for _ in 0..256 {
            if SMOKE_LOCK.load(Ordering::Relaxed) == 0 && SMOKE_LOCK.swap(1, Ordering::Acquire) == 0 {
                return;
            }
            core::hint::spin_loop();
        }
        // Announce, then wait only while the lock is still held. The SeqCst
        // RMW here and the unlocker's SeqCst swap + load of SMOKE_WAITERS
        // form a Dekker pair: either the unlocker sees our bit and kicks, or
        // our checked wait sees the byte already 0 and returns.
        SMOKE_WAITERS.fetch_or(1 << me.id(), Ordering::SeqCst);
        me.pv_wait(WaitOn::NodeState(&SMOKE_LOCK), 1);
        SMOKE_WAITERS.fetch_and(!(1 << me.id()), Ordering::SeqCst);
    }
}

fn smoke_unlock(me: &GuestCpu) {
    SMOKE_LOCK.swap(0, Ordering::SeqCst);
    let mut waiters = SMOKE_WAITERS.load(Ordering::SeqCst);
    while waiters != 0 {
        let cpu = waiters.trailing_zeros();
        waiters &= waiters - 1;
        me.pv_kick(cpu);
    }
}

fn smoke(me: &GuestCpu) -> u64 {
    let boot = rt::boot();
    let atomic = rt::boot_field(&boot.atomic_counter);
    let plain = &boot.plain_counter as *const u64 as *mut u64;
    let cs_cycles = rt::ns_to_cycles(boot.torture.cs_ns as u64);
    for _ in 0..boot.iterations {
        atomic.fetch_add(1, Ordering::Relaxed);
        smoke_lock(me);
        // SAFETY: under SMOKE_LOCK: the only access to the plain counter.
        // Plain (non-atomic) read-modify-write on purpose: a broken lock
        // loses updates, and the VMM's check of the total catches it.
        unsafe { plain.write_volatile(plain.read_volatile() + 1) };
        // Hold the lock a while (torture.cs_ns), so that under overcommit
        // the host deschedules holders and waiters really back off.
        let t = rt::rdtsc();
        while rt::rdtsc().wrapping_sub(t) < cs_cycles {
            core::hint::spin_loop();
        }
        smoke_unlock(me);
        me.block().acquisitions += 1;
    }
    doorbell::DONE_OK
}

// ----------------------------------------------------------- self-tests --

fn fault(me: &GuestCpu) -> u64 {
    if me.id() == 0 {
        // SAFETY: deliberately faults (#UD). With no event delivery set up
        // the fault becomes a triple fault, which the VMM must report.
        unsafe { core::arch::asm!("ud2") };
    }
    doorbell::DONE_OK
}

fn bad_pointer(me: &GuestCpu) -> u64 {
    if me.id() == 0 {
        // A console message "at" an address far outside guest RAM: the VMM
        // must report an ABI error, not read it.
        rt::ring(doorbell::CONSOLE, doorbell::console_value(0xBAD0_0000_0000, 64));
    }
    doorbell::DONE_OK
}

static NEVER: AtomicU8 = AtomicU8::new(7);

fn wait_forever(me: &GuestCpu) -> u64 {
    if me.id() == 0 {
        loop {
            me.pv_wait(WaitOn::NodeState(&NEVER), 7);
        }
    }
    doorbell::DONE_OK
}

// ------------------------------------------------------ timing workloads --

/// Ping-pong flag per direction: 0 = idle, 1 = kicked. `SENT_TSC` holds the
/// TSC just before the kick.
static PING_FLAG: [AtomicU8; 2] = [AtomicU8::new(0), AtomicU8::new(0)];
static PING_SENT_TSC: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static PING_READY: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

/// vCPUs 0 and 1 take turns: one waits in pv_wait on its flag, the other
/// sets the flag and kicks; the woken side records kick -> wake latency in
/// its latency histogram (ns). Other vCPUs idle.
fn ping_pong(me: &GuestCpu) -> u64 {
    let id = me.id() as usize;
    if id > 1 || rt::boot().nr_vcpus < 2 {
        return doorbell::DONE_OK;
    }
    let peer = 1 - id;
    let iters = rt::boot().iterations;
    for i in 0..iters {
        // Alternate roles: on even rounds vCPU 0 kicks, on odd rounds vCPU 1.
        let kicker = (i % 2) as usize;
        if id == kicker {
            // Wait until the peer announced it is about to wait, and give it
            // time to block in the VMM (otherwise we time a remembered kick).
            while PING_READY[peer].load(Ordering::Acquire) as u64 != i + 1 {
                core::hint::spin_loop();
            }
            let t = rt::rdtsc();
            while rt::rdtsc() - t < rt::ns_to_cycles(200_000) {
                core::hint::spin_loop();
            }
            let sent = rt::rdtsc();
            PING_SENT_TSC[peer].store(sent, Ordering::Relaxed);
            PING_FLAG[peer].store(1, Ordering::Release);
            me.pv_kick(peer as u32);
            record_leg(me, Leg::KickStore, rt::rdtsc().saturating_sub(sent));
        } else {
            // The VMM stamps the kick it sees and its KVM_RUN after it when
            // the wait did not block (a won halt poll); a wait that blocked,
            // or that the guest's own poll caught, leaves them zero.
            clear_vmm_stamps(me);
            PING_READY[id].store(i as u32 + 1, Ordering::Release);
            let mut resumed = 0;
            while PING_FLAG[id].load(Ordering::Acquire) == 0 {
                me.pv_wait(WaitOn::NodeState(&PING_FLAG[id]), 0);
                resumed = rt::rdtsc();
            }
            let sent = PING_SENT_TSC[id].load(Ordering::Relaxed);
            let lat = rt::cycles_to_ns(rt::rdtsc().saturating_sub(sent));
            PING_FLAG[id].store(0, Ordering::Relaxed);
            let (saw, resume) = vmm_stamps(me);
            // A won VMM poll or a blocked wait: kicker -> VMM -> KVM_RUN ->
            // here, on one clock (the doorbells workload checks that).
            if saw >= sent && resume >= saw && resumed >= resume {
                record_leg(me, Leg::KickSeen, saw - sent);
                record_leg(me, Leg::VmmTurnaround, resume - saw);
                record_leg(me, Leg::Resume, resumed - resume);
            }
            let b = me.block();
            b.latency.record(lat);
            b.acquisitions += 1;
        }
    }
    doorbell::DONE_OK
}

/// vCPU 0 times `iterations` exits through the PING doorbell and as many
/// kick stores (to itself: its eventfd counts them; nothing waits), then
/// the cost of a disabled race window: `WINDOW_LOOPS` calls of
/// `race_window(Handoff)` (disabled unless the run enables it) against an
/// identical loop without the call.
/// Results: [`pvlock_abi::vcpu::DoorbellsTiming`].
fn doorbells(me: &GuestCpu) -> u64 {
    /// Long enough (a few ms) that the two rdtsc reads around a loop and
    /// the loop's own overhead are small next to a per-call difference of
    /// about a nanosecond.
    const WINDOW_LOOPS: u64 = 1 << 22;
    if me.id() != 0 {
        return doorbell::DONE_OK;
    }
    let n = rt::boot().iterations.max(1);
    let t0 = rt::rdtsc();
    for i in 0..n {
        rt::ring(doorbell::PING, i);
    }
    let t1 = rt::rdtsc();
    for _ in 0..n {
        me.pv_kick(0);
    }
    let t2 = rt::rdtsc();
    time_exit_legs(me, n);
    let t2w = rt::rdtsc();
    // `black_box(me)` in both loops: the compiler must reload the window
    // mask through the reference on every call (as the lock code does, the
    // mask being a field of its platform), and cannot hoist the disabled
    // check out of the loop or drop either loop.
    for _ in 0..WINDOW_LOOPS {
        core::hint::black_box(me).race_window(Window::Handoff);
    }
    let t3 = rt::rdtsc();
    let window_loop_ns = rt::cycles_to_ns(t3 - t2w);
    for _ in 0..WINDOW_LOOPS {
        core::hint::black_box(me);
    }
    let t4 = rt::rdtsc();
    pvlock_abi::vcpu::DoorbellsTiming {
        exits_ns: rt::cycles_to_ns(t1 - t0),
        kick_stores_ns: rt::cycles_to_ns(t2 - t1),
        iterations: n,
        window_loop_ns,
        empty_loop_ns: rt::cycles_to_ns(t4 - t3),
        window_loops: WINDOW_LOOPS,
    }
    .store(&mut me.block().timing);
    doorbell::DONE_OK
}

/// `n` more PING exits, each split at the VMM's stamps into the way in
/// (guest store -> VMM sees the exit), the VMM's turnaround and the way back
/// (`KVM_RUN` -> the next guest instruction), with bounds on host TSC minus
/// guest TSC: a stamp taken between two guest reads lies between them if
/// both sides read one clock.
fn time_exit_legs(me: &GuestCpu, n: u64) {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for i in 0..n {
        clear_vmm_stamps(me);
        let before = rt::rdtsc();
        rt::ring(doorbell::PING, i);
        let after = rt::rdtsc();
        let (saw, resume) = vmm_stamps(me);
        if saw == 0 || resume < saw {
            continue;
        }
        lo = lo.max(saw.wrapping_sub(after) as i64);
        hi = hi.min(saw.wrapping_sub(before) as i64);
        record_leg(me, Leg::ExitEntry, saw.saturating_sub(before));
        record_leg(me, Leg::VmmTurnaround, resume - saw);
        record_leg(me, Leg::Resume, after.saturating_sub(resume));
        // SAFETY: this vCPU's block, a raw place (see GuestCpu::event).
        unsafe { (*me.block_ptr()).legs.offset_samples += 1 };
    }
    // SAFETY: as above.
    unsafe {
        (*me.block_ptr()).legs.offset_lo = lo;
        (*me.block_ptr()).legs.offset_hi = hi;
    }
}

/// Zeroes the VMM's stamps of this vCPU (it writes them only while this
/// vCPU is in an exit, so no access races with this one).
fn clear_vmm_stamps(me: &GuestCpu) {
    let b = me.block_ptr();
    // SAFETY: this vCPU's block; volatile because the VMM writes these
    // fields during the exits between this store and the reads.
    unsafe {
        core::ptr::addr_of_mut!((*b).legs.vmm_saw_tsc).write_volatile(0);
        core::ptr::addr_of_mut!((*b).legs.vmm_resume_tsc).write_volatile(0);
    }
}

/// The VMM's stamps of the last exit it served: (saw, resume), host TSC.
fn vmm_stamps(me: &GuestCpu) -> (u64, u64) {
    let b = me.block_ptr();
    // SAFETY: as in `clear_vmm_stamps`.
    unsafe {
        (
            core::ptr::addr_of!((*b).legs.vmm_saw_tsc).read_volatile(),
            core::ptr::addr_of!((*b).legs.vmm_resume_tsc).read_volatile(),
        )
    }
}

fn record_leg(me: &GuestCpu, leg: Leg, cycles: u64) {
    let ns = rt::cycles_to_ns(cycles);
    // SAFETY: this vCPU's block, a raw place (see GuestCpu::event).
    unsafe {
        (*me.block_ptr()).legs.hist[leg as usize].record(ns);
        (*me.block_ptr()).legs.sum_ns[leg as usize] += ns;
    }
}

static PROBE_DONE: AtomicU32 = AtomicU32::new(0);
/// Watchers that have started polling.
static PROBE_WATCHING: AtomicU32 = AtomicU32::new(0);
/// Set by a watcher that saw vCPU 0's `preempted` flag.
static PROBE_SEEN: AtomicU32 = AtomicU32::new(0);
/// Most stalls vCPU 0 makes before it gives up on being seen.
const PROBE_MAX_STALLS: u32 = 64;

/// vCPU 0 reaches the `critical-section` window (the VMM stalls it there
/// when the window is enabled); the others poll vcpu_is_preempted() of
/// every vCPU until vCPU 0 is back, counting what they saw
/// ([`pvlock_abi::vcpu::PreemptProbeTiming`]).
///
/// A watcher sees a stall only if the host runs it during the stall (200
/// us by default): on a loaded host none may. So vCPU 0 starts once every
/// watcher polls, and stalls again (up to [`PROBE_MAX_STALLS`] times)
/// until one saw it; the check (only vCPU 0 ever seen preempted, and seen)
/// is the same whatever the host's load, and `vmm.stalls` says how many
/// stalls it took.
fn preempt_probe(me: &GuestCpu) -> u64 {
    let n = me.nr_cpus().min(pvlock_abi::vcpu::PreemptProbeTiming::WATCHED as u32);
    if me.id() == 0 {
        // Let the watchers start polling first (at most 1 s: a vCPU the
        // host never starts must not hang the probe).
        let t = rt::rdtsc();
        while PROBE_WATCHING.load(Ordering::Acquire) + 1 < me.nr_cpus()
            && rt::rdtsc() - t < rt::ns_to_cycles(1_000_000_000)
        {
            core::hint::spin_loop();
        }
        // The probe *is* this stall, so it is requested unconditionally. A
        // `race_window()` would exit only when the config enables the
        // critical-section window with window_prob > 0, and the defaults
        // enable no window: the check then failed on a stall that never
        // happened. The VMM stalls it for `preempt.window_stall_us`.
        for _ in 0..PROBE_MAX_STALLS {
            me.block().window_hits[Window::CriticalSection as usize] += 1;
            rt::ring(doorbell::STALL, Window::CriticalSection as u64);
            // Pairs with the watcher's Release store: a watcher that saw
            // the flag said so before this load, or on a later round.
            if PROBE_SEEN.load(Ordering::Acquire) != 0 || me.nr_cpus() == 1 {
                break;
            }
            // Give the watchers a moment before the next stall.
            let t = rt::rdtsc();
            while rt::rdtsc() - t < rt::ns_to_cycles(1_000_000) {
                core::hint::spin_loop();
            }
        }
        PROBE_DONE.store(1, Ordering::Release);
        return doorbell::DONE_OK;
    }
    PROBE_WATCHING.fetch_add(1, Ordering::Release);
    while PROBE_DONE.load(Ordering::Acquire) == 0 {
        for c in 0..n {
            if me.vcpu_is_preempted(c) {
                pvlock_abi::vcpu::PreemptProbeTiming::count_in(&mut me.block().timing, c as usize);
                if c == 0 {
                    PROBE_SEEN.store(1, Ordering::Release);
                }
            }
        }
        me.block().acquisitions += 1;
    }
    doorbell::DONE_OK
}

// ------------------------------------------------------------- ABI fuzz --

/// xorshift64 step (the fuzz has its own stream: independent of the lock
/// code's choices).
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Seeded random MMIO accesses (see `Workload::DoorbellFuzz`). Weighted so
/// that a run usually goes on for a while (pings, good console messages,
/// kicks, stalls) before something ends it: an ABI violation, a guest
/// panic report with a garbage record, a DONE with a random status, a wait
/// on a random byte, or the end of `iterations`.
fn doorbell_fuzz(me: &GuestCpu) -> u64 {
    use pvlock_abi::{MMIO_BASE, MMIO_SIZE};
    let boot = rt::boot();
    // Copied first: the loop scribbles on the boot block's guest part.
    let (ram, nr_vcpus, iterations) = (boot.ram_mib as u64 * 1024 * 1024, boot.nr_vcpus, boot.iterations);
    let mut x = boot.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(me.id() as u64 + 1)) | 1;
    let doorbells = [doorbell::CONSOLE, doorbell::WAIT, doorbell::STALL, doorbell::PING];
    for _ in 0..iterations {
        let r = xorshift(&mut x);
        let pick = r & 0xff;
        let addr = match pick {
            // Real doorbells (DONE and PANIC rarely: they end the vCPU / VM).
            0..=199 => doorbells[(r >> 8) as usize % doorbells.len()],
            200 => doorbell::DONE,
            201 => doorbell::PANIC,
            // Kicks of vCPUs that exist, and rarely of ones that do not.
            202..=235 => doorbell::kick_addr((r >> 8) as u32 % nr_vcpus.clamp(1, 64)),
            236..=237 => doorbell::kick_addr(nr_vcpus.min(64) + (r >> 8) as u32 % 3),
            // Anywhere in the doorbell window, aligned or not.
            238..=240 => MMIO_BASE + (r >> 8) % MMIO_SIZE,
            // Just above it (unbacked guest memory is MMIO to KVM too).
            241 => MMIO_BASE + MMIO_SIZE + (r >> 8) % 0x1000,
            // Scribble on the records the VMM reads: the guest-published
            // part of the boot block, or this vCPU's block.
            _ => {
                let (base, first, end) = if r & 0x100 == 0 {
                    let b = core::mem::size_of::<pvlock_abi::BootBlock>() as u64;
                    (pvlock_abi::BOOT_BLOCK_GPA, core::mem::offset_of!(pvlock_abi::BootBlock, started) as u64, b)
                } else {
                    (pvlock_abi::vcpu_block_gpa(me.id()), 0, core::mem::size_of::<pvlock_abi::VcpuBlock>() as u64)
                };
                let off = first + (r >> 16) % (end - first - 8);
                let v = xorshift(&mut x);
                // SAFETY: `base + off .. + 8` lies inside the guest-written
                // part of the boot block or inside this vCPU's block (RAM,
                // identity mapped); this workload reads neither afterwards
                // (its parameters are copied to locals first).
                unsafe { core::ptr::write_unaligned((base + off) as *mut u64, v) };
                continue;
            }
        };
        let v = xorshift(&mut x);
        // Values shaped like requests half of the time: an address in or
        // near RAM, a length or byte around the limits.
        let value = match (v >> 60, addr) {
            (0..=14, doorbell::CONSOLE) => doorbell::console_value((v >> 8) % (ram + 0x1000), (v >> 40) % 4200),
            (0..=14, doorbell::WAIT) => doorbell::wait_value((v >> 8) % (ram + 0x1000), (v >> 3) as u8),
            (0..=14, doorbell::STALL) => (v >> 8) % (pvlock_abi::NR_WINDOWS as u64 + 2),
            (0..=14, doorbell::PANIC) => (v >> 8) % 5,
            _ => v,
        };
        // Mostly 8-byte stores (the others end the run at once).
        let width = match (r >> 56) & 0x3f {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        // SAFETY: every `addr` here is at or above MMIO_BASE, below the
        // mapped 4 GiB and above RAM: mapped by the VMM's page tables,
        // backed by no memory, so the access exits to the VMM (or signals
        // an ioeventfd) and touches no guest memory. Whatever it asks is
        // the VMM's to refuse.
        unsafe {
            if (r >> 44) & 0xff == 0 {
                // A read: doorbells are write-only.
                core::hint::black_box(core::ptr::read_volatile(addr as *const u64));
                continue;
            }
            match width {
                1 => core::ptr::write_volatile(addr as *mut u8, value as u8),
                2 => core::ptr::write_volatile(addr as *mut u16, value as u16),
                4 => core::ptr::write_volatile(addr as *mut u32, value as u32),
                _ => core::ptr::write_volatile(addr as *mut u64, value),
            }
        }
    }
    doorbell::DONE_OK
}
