//! A vCPU thread: runs `KVM_RUN` in a loop and serves the guest's doorbells.
//!
//! The thread is a state machine ([`State`]), one method per state, as
//! Firecracker's vCPU is: `Running` (one `KVM_RUN` and the classification
//! of its exit), `Waiting` (serving a pv_wait on this thread), `Held` (a
//! directed hold at a race window), `Stalled` (deliberately preempted: not
//! running guest code), `Finished`. Each method returns the next state or
//! the [`GuestFailure`] that ends the thread. The machine controls it
//! through `Shared::stop`, its wait channel's control eventfd and the
//! immediate-exit kick (see `signal.rs`).

use crate::exit::{ExitClass, GuestRequest};
use crate::guest_mem::GuestRam;
use crate::hypervisor::{host_tsc, WaitChannel, WaitEnd};
use crate::report::GuestFailure;
use crate::MachineConfig;
use kvm_ioctls::VcpuFd;
use pvlock_abi::doorbell::PanicKind;
use pvlock_abi::{VcpuBlock, VmmCounter};
use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What vCPU threads report to the machine.
#[derive(Debug)]
pub enum VcpuEvent {
    Done {
        cpu: u32,
        status: u64,
    },
    Failed(GuestFailure),
    /// The thread is about to return (always sent last).
    Exited {
        cpu: u32,
    },
}

/// State shared by the machine and all vCPU threads.
pub struct Shared {
    pub cfg: MachineConfig,
    pub ram: GuestRam,
    pub stop: AtomicBool,
    pub run_start: Instant,
    pub channels: Vec<WaitChannel>,
    pub exits: Vec<AtomicU64>,
    pub console: Mutex<crate::report::Console>,
    /// Halt polling is allowed (not overcommitted, or told to anyway).
    pub may_poll: bool,
    /// The halt poll publishes itself in the vCPUs' poll state words.
    pub poll_flag: bool,
    pub preempt: crate::preempt::PreemptState,
    /// Delayed kick delivery (`kick_delay_us` > 0): (deliver at, target).
    pub kick_timer: Option<Mutex<std::sync::mpsc::Sender<(Instant, u32)>>>,
    /// How the guest's locks are laid out (decoding guest memory).
    pub layout: pvlock_abi::lockword::LockLayout,
    /// Missed wakeups rescued (`--rescue`): the first dumps, and every
    /// one by class.
    pub rescued: Mutex<crate::report::BoundedLog<crate::watchdog::HangReport>>,
    pub rescued_by_class: Mutex<std::collections::BTreeMap<crate::watchdog::MissedWakeupClass, u64>>,
    /// PV hash entries in use -> supervisor samples that saw that many.
    pub hash_occupancy: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Where the guest's trace rings are.
    pub trace_rings: crate::trace::RingLayout,
}

impl Shared {
    /// The boot block as it is now (guest-published fields included).
    /// Writes one of the wake-leg stamps (the `LegTiming` field at
    /// `field`) into vCPU `cpu`'s block; called by that vCPU's thread while
    /// the vCPU is in an exit, so the guest is not touching the field.
    pub fn stamp_leg(&self, cpu: u32, field: usize, tsc: u64) {
        let gpa = Self::block_gpa(cpu) + (offset_of!(VcpuBlock, legs) + field) as u64;
        let _ = self.ram.write_u64(gpa, tsc);
    }

    /// vCPU `cpu`'s poll state word, when the halt poll publishes itself
    /// there (`halt_poll_flag`) and the guest has said where the words are.
    pub fn poll_flag(&self, cpu: u32) -> Option<&std::sync::atomic::AtomicU32> {
        if !self.poll_flag {
            return None;
        }
        let field = pvlock_abi::BOOT_BLOCK_GPA + offset_of!(pvlock_abi::BootBlock, poll_state_gpa) as u64;
        let base = self.ram.read_u64(field).ok().filter(|&b| b != 0)?;
        self.ram.atomic_u32(base.checked_add(cpu as u64 * pvlock_abi::boot::POLL_STATE_STRIDE)?)
    }

    pub fn boot(&self) -> pvlock_abi::BootBlock {
        self.ram.read_pod(pvlock_abi::BOOT_BLOCK_GPA).unwrap_or_default()
    }

    /// Blocking waits begun so far by vCPUs other than `cpu` (only queue
    /// heads' waits on their lock word if `heads_only`).
    pub fn others_blocked(&self, cpu: u32, heads_only: bool) -> u64 {
        self.channels
            .iter()
            .enumerate()
            .filter(|(c, _)| *c as u32 != cpu)
            .map(|(_, ch)| {
                if heads_only {
                    ch.head_blocks.load(Ordering::Acquire)
                } else {
                    ch.counters.get(VmmCounter::WaitsBlocked)
                }
            })
            .sum()
    }

    fn block_gpa(cpu: u32) -> u64 {
        pvlock_abi::vcpu_block_gpa(cpu)
    }

    /// Whether `cpu`'s MCS successor (the `next` of the node in its vCPU
    /// block) is running: node state `vcpu_running` (0) and not blocked in
    /// a wait. False when anything is missing or out of range.
    pub fn successor_running(&self, cpu: u32) -> bool {
        let n = self.layout.node;
        let node = self.ram.read_u64(Self::block_gpa(cpu) + offset_of!(VcpuBlock, cur_node) as u64).unwrap_or(0);
        if node == 0 {
            return false;
        }
        let next = self.ram.read_u64(node + n.next).unwrap_or(0);
        if next == 0 {
            return false;
        }
        let state = self.ram.read_u8(next + n.state).unwrap_or(u8::MAX);
        let next_cpu = self.ram.read_u32(next + n.cpu).unwrap_or(u32::MAX);
        state == n.state_running
            && (next_cpu as usize) < self.channels.len()
            && self.channels[next_cpu as usize].blocked_since_us.load(Ordering::Acquire) == 0
    }

    /// Keeps a rescued missed wakeup: counted by class, its dump kept if
    /// there is room.
    pub fn record_rescue(&self, r: crate::watchdog::HangReport) {
        *self.rescued_by_class.lock().unwrap_or_else(|p| p.into_inner()).entry(r.class).or_insert(0) += 1;
        self.rescued.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    /// Sets the steal-time style `preempted` flag the guest reads.
    pub fn set_preempted(&self, cpu: u32, on: bool) {
        self.preempt.stalled[cpu as usize].store(on as u32, Ordering::Release);
        let _ = self.ram.write_u32(Self::block_gpa(cpu) + offset_of!(VcpuBlock, preempted) as u64, on as u32);
    }
}

/// Where a vCPU thread is. Each state has one method of [`VcpuThread`]
/// that runs it and returns the next state.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// In, or about to enter, `KVM_RUN` ([`VcpuThread::running`]).
    Running,
    /// Serving the guest's pv_wait on the byte at `gpa` while it holds
    /// `expected` ([`VcpuThread::waiting`]).
    Waiting { gpa: u64, expected: u8 },
    /// Held at `window` by directed-hold rule `rule` of the preemption
    /// schedule until the rule's condition ([`VcpuThread::held`]).
    Held { rule: usize, window: pvlock_abi::Window },
    /// Deliberately preempted for the duration ([`VcpuThread::stall`]).
    Stalled(Duration),
    /// The guest is done, or the machine stopped the run: the thread returns.
    Finished,
}

pub struct VcpuThread {
    pub cpu: u32,
    pub fd: VcpuFd,
    pub shared: std::sync::Arc<Shared>,
    pub tx: Sender<VcpuEvent>,
    pub rng: crate::preempt::Rng,
    /// The exit being served was stamped in the guest's `legs.vmm_saw_tsc`
    /// (a PING, or a wait ended by a kick): stamp the next `KVM_RUN` too.
    pub stamp_resume: bool,
    /// Host TSC when the last `KVM_RUN` returned.
    pub exit_tsc: u64,
}

impl VcpuThread {
    /// The thread body. Returns the VcpuFd so that its kvm_run mapping
    /// outlives every immediate-exit kick (dropped by the machine after join).
    pub fn run(mut self) -> VcpuFd {
        let cpu = self.cpu;
        let mut state = State::Running;
        while state != State::Finished {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            // A panic here would end this thread silently: the vCPU would
            // never run again and the run would time out as a guest "hang"
            // with this vCPU apparently running (how the VMM's own stall
            // bug looked). Report it as the host failure it is.
            let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.enter(state)));
            match next {
                Ok(Ok(next)) => state = next,
                Ok(Err(f)) => {
                    let _ = self.tx.send(VcpuEvent::Failed(f));
                    break;
                }
                Err(payload) => {
                    let what = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".to_string());
                    let error = format!("VMM vCPU thread panicked: {what}");
                    let _ = self.tx.send(VcpuEvent::Failed(GuestFailure::Host { cpu, error }));
                    break;
                }
            }
        }
        let _ = self.tx.send(VcpuEvent::Exited { cpu });
        self.fd
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    pub(crate) fn abi_violation(&self, detail: String) -> GuestFailure {
        GuestFailure::AbiViolation { cpu: self.cpu, rip: self.rip(), detail }
    }

    /// The same registers as a triple fault: an internal error (an
    /// instruction KVM could not emulate, say) is a crash too.
    fn unexpected_exit(&self, exit: String) -> GuestFailure {
        let regs = self.fd.get_regs().unwrap_or_default();
        let sregs = self.fd.get_sregs().unwrap_or_default();
        GuestFailure::UnexpectedExit {
            cpu: self.cpu,
            rip: regs.rip,
            exit,
            rsp: regs.rsp,
            cr2: sregs.cr2,
            rax: regs.rax,
            rdi: regs.rdi,
        }
    }

    /// Runs `state`; returns the next one.
    fn enter(&mut self, state: State) -> Result<State, GuestFailure> {
        match state {
            State::Running => self.running(),
            State::Waiting { gpa, expected } => self.waiting(gpa, expected),
            State::Held { rule, window } => Ok(self.held(rule, window)),
            State::Stalled(d) => {
                self.stall(d);
                Ok(State::Running)
            }
            State::Finished => Ok(State::Finished),
        }
    }

    /// `Running`: one KVM_RUN and the handling of its exit.
    fn running(&mut self) -> Result<State, GuestFailure> {
        let cpu = self.cpu;
        if std::mem::take(&mut self.stamp_resume) {
            self.shared.stamp_leg(cpu, offset_of!(pvlock_abi::LegTiming, vmm_resume_tsc), host_tsc());
        }
        // Classify into owned data first: VcpuExit borrows the fd.
        let run = self.fd.run();
        self.exit_tsc = host_tsc();
        let class = crate::exit::classify(run);
        if class.is_guest_exit() {
            self.shared.exits[cpu as usize].fetch_add(1, Ordering::Relaxed);
        }
        let req = match class {
            ExitClass::Interrupted => return Ok(self.interrupted()),
            ExitClass::HostError(error) => return Err(GuestFailure::Host { cpu, error }),
            ExitClass::Request(req) => req,
            ExitClass::Abi(detail) => return Err(self.abi_violation(detail)),
            ExitClass::Shutdown => {
                let regs = self.fd.get_regs().unwrap_or_default();
                let sregs = self.fd.get_sregs().unwrap_or_default();
                return Err(GuestFailure::TripleFault {
                    cpu,
                    rip: regs.rip,
                    rsp: regs.rsp,
                    cr2: sregs.cr2,
                    rax: regs.rax,
                    rdi: regs.rdi,
                });
            }
            ExitClass::InternalError => {
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel filled the
                // `internal` member of the kvm_run union; it is plain integers.
                let i = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
                let n = (i.ndata as usize).min(i.data.len());
                return Err(self.unexpected_exit(crate::exit::describe_internal_error(i.suberror, &i.data[..n])));
            }
            ExitClass::Unexpected(name) => return Err(self.unexpected_exit(name)),
        };
        self.serve(req)
    }

    /// KVM_RUN returned EINTR: the machine kicked us (stop, or a stall).
    fn interrupted(&mut self) -> State {
        self.fd.set_kvm_immediate_exit(0);
        if self.shared.stop.load(Ordering::Acquire) {
            return State::Finished;
        }
        match self.shared.preempt.stall_request_us[self.cpu as usize].swap(0, Ordering::AcqRel) {
            0 => State::Running,
            us => State::Stalled(Duration::from_micros(us)),
        }
    }

    /// A doorbell: served here, or the state that serves it.
    fn serve(&mut self, req: GuestRequest) -> Result<State, GuestFailure> {
        let cpu = self.cpu;
        let sh = &self.shared;
        match req {
            GuestRequest::Console { gpa, len } => {
                if len > pvlock_abi::doorbell::CONSOLE_MAX {
                    return Err(self.abi_violation(format!(
                        "console message of {len} bytes (max {})",
                        pvlock_abi::doorbell::CONSOLE_MAX
                    )));
                }
                let bytes = sh.ram.read_bytes(gpa, len).map_err(|e| self.abi_violation(format!("console: {e}")))?;
                let text = String::from_utf8_lossy(&bytes);
                let mut con = sh.console.lock().unwrap_or_else(|p| p.into_inner());
                for line in text.lines() {
                    tracing::info!(target: "guest", "vcpu{cpu}: {line}");
                    con.push(format!("vcpu{cpu}: {line}"));
                }
                Ok(State::Running)
            }
            GuestRequest::Done { status } => {
                let _ = self.tx.send(VcpuEvent::Done { cpu, status });
                Ok(State::Finished)
            }
            GuestRequest::Panic { kind } => Err(self.guest_panic(kind)),
            GuestRequest::Wait { gpa, expected } => {
                sh.ram.check_range(gpa, 1).map_err(|e| self.abi_violation(format!("pv_wait: {e}")))?;
                Ok(State::Waiting { gpa, expected })
            }
            GuestRequest::Stall { window } => {
                if window as usize >= pvlock_abi::NR_WINDOWS {
                    return Err(self.abi_violation(format!("stall at unknown window id {window}")));
                }
                let w = pvlock_abi::Window::ALL[window as usize];
                sh.preempt.window_arrivals[window as usize].fetch_add(1, Ordering::AcqRel);
                let rules = &sh.cfg.preempt.schedule;
                let precondition = |r: &crate::config::HoldRule| {
                    r.when != crate::config::HoldWhen::SuccessorRunning || sh.successor_running(cpu)
                };
                if let Some(rule) = sh.preempt.claim_rule(rules, cpu, w, precondition) {
                    return Ok(State::Held { rule, window: w });
                }
                if sh.cfg.preempt.schedule.is_empty() {
                    return Ok(State::Stalled(Duration::from_micros(sh.cfg.preempt.window_stall_us)));
                }
                Ok(State::Running)
            }
            GuestRequest::Site { index } => crate::sites::serve(self, index).map(|()| State::Running),
            GuestRequest::Ping { .. } => {
                // The exit round trip's legs (doorbells workload).
                sh.stamp_leg(cpu, offset_of!(pvlock_abi::LegTiming, vmm_saw_tsc), self.exit_tsc);
                self.stamp_resume = true;
                Ok(State::Running)
            }
            GuestRequest::KickNoSuchCpu { cpu: target } => match &sh.kick_timer {
                // kick_delay_us > 0: kicks come through here, delivered late.
                Some(timer) if target < sh.cfg.vcpus as u64 => {
                    let at = Instant::now() + Duration::from_micros(sh.cfg.hypervisor.kick_delay_us);
                    let _ = timer.lock().unwrap_or_else(|p| p.into_inner()).send((at, target as u32));
                    Ok(State::Running)
                }
                _ => Err(self.abi_violation(format!("pv_kick of vCPU {target}, which does not exist"))),
            },
        }
    }

    /// `Waiting`: the guest's pv_wait, served on this thread until a kick,
    /// a spurious wakeup, the stall timeout or the machine's stop.
    fn waiting(&mut self, gpa: u64, expected: u8) -> Result<State, GuestFailure> {
        let cpu = self.cpu;
        let sh = &self.shared;
        let ch = &sh.channels[cpu as usize];
        let cur_lock = sh.ram.read_u64(Shared::block_gpa(cpu) + offset_of!(VcpuBlock, cur_lock) as u64).unwrap_or(0);
        ch.head_wait.store(cur_lock != 0 && gpa == cur_lock, Ordering::Relaxed);
        let poll_flag = sh.poll_flag(cpu);
        loop {
            let end = ch.wait(
                &sh.cfg.hypervisor,
                sh.may_poll,
                poll_flag,
                expected,
                gpa,
                || sh.ram.read_u8(gpa).unwrap_or(0),
                sh.run_start,
                &mut self.rng,
            );
            return match end {
                WaitEnd::TimedOut if sh.cfg.hypervisor.rescue => {
                    // --rescue: a wait the watchdog can prove lost is
                    // recorded and woken; a merely long one (a slow
                    // owner, a descheduled vCPU thread) is counted
                    // and left waiting: the run timeout still bounds it.
                    let report = crate::watchdog::explain(sh, cpu);
                    ch.end_blocked();
                    if !crate::watchdog::is_provably_lost(&report) {
                        ch.counters.add(VmmCounter::LongWaits, 1);
                        continue;
                    }
                    ch.counters.add(VmmCounter::Rescues, 1);
                    sh.record_rescue(report);
                    Ok(State::Running)
                }
                // Left marked blocked: the supervisor's dump of this
                // failure shows the wait (blocked_ms, wait_gpa).
                WaitEnd::TimedOut => Err(GuestFailure::BlockedWait {
                    cpu,
                    blocked_ms: sh.cfg.hypervisor.stall_timeout_ms,
                    gpa,
                    expected,
                    current: sh.ram.read_u8(gpa).unwrap_or(0),
                }),
                WaitEnd::Control if sh.stop.load(Ordering::Acquire) => Ok(State::Finished),
                WaitEnd::Kicked if !ch.last_wait_blocked.load(Ordering::Relaxed) => {
                    // The legs of a wake that did not block (a won poll or
                    // a pending kick): when this thread saw the kick, and
                    // (next KVM_RUN) when it resumed the vCPU.
                    sh.stamp_leg(
                        cpu,
                        offset_of!(pvlock_abi::LegTiming, vmm_saw_tsc),
                        ch.kick_seen_tsc.load(Ordering::Relaxed),
                    );
                    self.stamp_resume = true;
                    Ok(State::Running)
                }
                _ => Ok(State::Running),
            };
        }
    }

    /// `Held`: a directed interleaving; this vCPU stays at `window` until
    /// rule `rule`'s condition, its `preempted` flag set, and the outcome
    /// is logged.
    fn held(&self, rule: usize, window: pvlock_abi::Window) -> State {
        let (cpu, sh) = (self.cpu, &self.shared);
        let rules = &sh.cfg.preempt.schedule;
        sh.set_preempted(cpu, true);
        let (why, held) = crate::preempt::hold(
            &rules[rule],
            cpu,
            &sh.preempt,
            |heads| sh.others_blocked(cpu, heads),
            || sh.stop.load(Ordering::Acquire),
        );
        sh.set_preempted(cpu, false);
        crate::preempt::account_stall(&sh.channels[cpu as usize].counters, held);
        sh.preempt.holds.lock().unwrap_or_else(|p| p.into_inner()).push(crate::preempt::HoldOutcome {
            rule,
            cpu,
            window: Some(window),
            site: None,
            released_by: why,
            held_us: held.as_micros() as u64,
        });
        State::Running
    }

    /// `Stalled`: deliberate preemption: this vCPU runs no guest code for `d`, with its
    /// `preempted` flag set so the guest's vcpu_is_preempted() sees it.
    pub(crate) fn stall(&self, d: Duration) {
        let sh = &self.shared;
        let ch = &sh.channels[self.cpu as usize];
        sh.set_preempted(self.cpu, true);
        let t = Instant::now();
        while t.elapsed() < d && !sh.stop.load(Ordering::Acquire) {
            std::thread::sleep(stall_slice(d, t.elapsed()));
        }
        sh.set_preempted(self.cpu, false);
        ch.counters.add(VmmCounter::Stalls, 1);
        ch.counters.add(VmmCounter::StalledUs, t.elapsed().as_micros() as u64);
    }

    fn guest_panic(&self, kind: u64) -> GuestFailure {
        let cpu = self.cpu;
        let rec_gpa = pvlock_abi::vcpu_block_gpa(cpu) + offset_of!(VcpuBlock, assert) as u64;
        // Lengths come from the guest: clamp them to the record's arrays.
        let rec: pvlock_abi::AssertRecord = self.shared.ram.read_pod(rec_gpa).unwrap_or_default();
        let file = &rec.file[..(rec.file_len as usize).min(rec.file.len())];
        let msg = &rec.msg[..(rec.msg_len as usize).min(rec.msg.len())];
        let Some(what) = PanicKind::from_u64(kind) else {
            return self.abi_violation(format!("panic doorbell with unknown kind {kind}"));
        };
        if what == PanicKind::UseAfterFree {
            let uaf_gpa = pvlock_abi::vcpu_block_gpa(cpu) + offset_of!(VcpuBlock, uaf) as u64;
            let u: pvlock_abi::UafRecord = self.shared.ram.read_pod(uaf_gpa).unwrap_or_default();
            let (Some(object), Some(step)) =
                (pvlock_abi::FreedObject::from_u32(u.object), pvlock_abi::WakeStep::from_u32(u.step))
            else {
                return self.abi_violation(format!(
                    "use-after-free record with unknown object {} or step {}",
                    u.object, u.step
                ));
            };
            return GuestFailure::UseAfterFree {
                cpu,
                owner: u.owner,
                object,
                step,
                tag_then: u.tag_then,
                tag_now: u.tag_now,
                addr: u.addr,
                file: String::from_utf8_lossy(file).into_owned(),
                line: rec.line,
            };
        }
        GuestFailure::Panic {
            cpu,
            what,
            file: String::from_utf8_lossy(file).into_owned(),
            line: rec.line,
            message: String::from_utf8_lossy(msg).into_owned(),
        }
    }
}

/// The next sleep of a stall of `d` after `elapsed`: at most 20 ms, so a
/// stop request is seen soon. Saturating: the clock moves between the
/// caller's `elapsed < d` check and the read passed here (a host
/// preemption of the vCPU thread is enough), and a plain `d - elapsed`
/// then panicked and killed the vCPU thread (results/findings, 2026-12-01).
fn stall_slice(d: Duration, elapsed: Duration) -> Duration {
    d.saturating_sub(elapsed).min(Duration::from_millis(20))
}

#[cfg(test)]
mod tests {
    use super::stall_slice;
    use std::time::Duration;

    #[test]
    fn a_stall_whose_time_ran_out_between_two_clock_reads_sleeps_zero() {
        let us = Duration::from_micros;
        assert_eq!(stall_slice(us(1), us(3)), Duration::ZERO, "used to panic: overflow when subtracting durations");
        assert_eq!(stall_slice(us(500), us(100)), us(400));
        assert_eq!(stall_slice(Duration::from_secs(1), Duration::ZERO), Duration::from_millis(20));
    }
}
