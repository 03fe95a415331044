//! The hypervisor half of pv_wait / pv_kick.
//!
//! Each vCPU has a kick eventfd, registered with `KVM_IOEVENTFD` at its kick
//! doorbell: a kick is a guest store that the kernel turns into an eventfd
//! signal, without a userspace exit for the kicker. The eventfd's counter is
//! KVM's `pv_unhalted`: a kick to a running vCPU stays there until its next
//! wait consumes it (remembered kick), unless the `lost-if-not-waiting`
//! contract drains it when a wait begins.
//!
//! A wait is one MMIO exit of the waiting vCPU, handled on its own thread:
//! re-check the byte (checked contract), consume a pending kick, optionally
//! poll, then block in `poll(2)` on the kick eventfd and the vCPU's control
//! eventfd (stop / watchdog) in bounded slices.
//!
//! With `halt_poll_flag` the poll also publishes itself in the vCPU's poll
//! state word in guest memory (the word the guest's own poll uses): a kicker
//! that sees it polling sets it to kicked and skips the kick store, as
//! `set_nr_if_polling()` skips the IPI to a CPU polling in idle.

use crate::config::{HypervisorConfig, KickContract, WaitContract};
use pvlock_abi::boot::{POLL_IDLE, POLL_KICKED, POLL_POLLING};
use pvlock_abi::{VmmCounter, NR_VMM_COUNTERS};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Per-vCPU counters, updated by the vCPU's own thread, read by anyone.
pub struct Counters(pub [AtomicU64; NR_VMM_COUNTERS]);

impl Default for Counters {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Counters {
    pub fn add(&self, c: VmmCounter, n: u64) {
        self.0[c.index()].fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self, c: VmmCounter) -> u64 {
        self.0[c.index()].load(Ordering::Relaxed)
    }
}

/// One vCPU's wait/kick endpoint.
pub struct WaitChannel {
    /// Signalled by guest kick stores (ioeventfd).
    pub kick: EventFd,
    /// Signalled by the machine to interrupt a blocked wait.
    pub control: EventFd,
    pub counters: Counters,
    /// Microseconds since the run's start when the current blocking wait
    /// began, 0 when not blocked (read by the watchdog).
    pub blocked_since_us: AtomicU64,
    /// The byte address of the current wait (for reports).
    pub wait_gpa: AtomicU64,
    /// Set by the vCPU thread before a wait on its own lock word (a queue
    /// head's wait); counted in `head_blocks` if the wait blocks.
    pub head_wait: std::sync::atomic::AtomicBool,
    /// Blocking waits that were a queue head's (directed `head-blocked`).
    pub head_blocks: AtomicU64,
    /// Host TSC when this vCPU's thread last saw a kick (eventfd or poll
    /// flag): the `vmm_saw_tsc` stamp of the wake legs.
    pub kick_seen_tsc: AtomicU64,
    /// The last wait blocked the thread (its legs are not a won poll's).
    pub last_wait_blocked: std::sync::atomic::AtomicBool,
    /// The host thread id of this vCPU's thread (0 until it runs): whose
    /// run-queue delay [`crate::watchdog::host_run_delay_ns`] reads.
    pub host_tid: std::sync::atomic::AtomicI32,
}

/// Host TSC now (the guest's `rdtsc` reads the same clock under PVM; the
/// doorbells workload measures the offset).
pub fn host_tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions in user mode.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// How often the flag poll also reads the kick eventfd (a `read(2)` costs a
/// microsecond or more here; the eventfd only gets kicks stored before the
/// flag went up).
const EVENTFD_EVERY: u32 = 16;

/// How often a timed-out wait looks again while another vCPU's wake-up is
/// in flight.
const WAKE_IN_FLIGHT_RECHECK: Duration = Duration::from_millis(5);

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The byte no longer held the expected value (checked contract).
    ValueChanged,
    /// A kick was pending or arrived.
    Kicked,
    /// The machine asked the vCPU to stop or look at its control state.
    Control,
    /// Blocked longer than `stall_timeout_ms`.
    TimedOut,
    /// Ended by the periodic simulated interrupt (`interrupt_us`).
    Interrupt,
    /// Ended spuriously (`spurious_wakeup_prob`).
    Spurious,
}

impl WaitChannel {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            kick: EventFd::new(EFD_NONBLOCK)?,
            control: EventFd::new(EFD_NONBLOCK)?,
            counters: Counters::default(),
            blocked_since_us: AtomicU64::new(0),
            wait_gpa: AtomicU64::new(0),
            head_wait: std::sync::atomic::AtomicBool::new(false),
            head_blocks: AtomicU64::new(0),
            kick_seen_tsc: AtomicU64::new(0),
            last_wait_blocked: std::sync::atomic::AtomicBool::new(false),
            host_tid: std::sync::atomic::AtomicI32::new(0),
        })
    }

    /// Consumes pending kicks; true if there was at least one.
    fn take_kick(&self) -> bool {
        match self.kick.read() {
            Ok(n) => {
                self.kick_seen_tsc.store(host_tsc(), Ordering::Relaxed);
                self.counters.add(VmmCounter::KicksReceived, n);
                true
            }
            Err(_) => false, // EAGAIN: nothing pending
        }
    }

    /// The halt poll: up to `us` on the kick eventfd and, given the vCPU's
    /// poll state word (`halt_poll_flag`), on that word. True: a kick came.
    fn poll(&self, us: u64, flag: Option<&AtomicU32>) -> bool {
        let until = Instant::now() + Duration::from_micros(us);
        let Some(flag) = flag else {
            while Instant::now() < until {
                if self.take_kick() {
                    return true;
                }
                std::hint::spin_loop();
            }
            return false;
        };
        // SeqCst: pairs with the kicker's CAS (guest `pv_kick`): either it
        // sees POLLING and our final swap sees KICKED, or it saw IDLE and
        // stored to the eventfd, which the loop or the blocking half reads.
        flag.store(POLL_POLLING, Ordering::SeqCst);
        let mut won = false;
        let mut i = 0u32;
        loop {
            if flag.load(Ordering::Acquire) == POLL_KICKED {
                break;
            }
            if i.is_multiple_of(EVENTFD_EVERY) && self.take_kick() {
                won = true;
                break;
            }
            if Instant::now() >= until {
                break;
            }
            i = i.wrapping_add(1);
            std::hint::spin_loop();
        }
        // Leave the polling state; a kick that raced with the timeout is
        // still ours.
        if flag.swap(POLL_IDLE, Ordering::SeqCst) == POLL_KICKED {
            if !won {
                self.kick_seen_tsc.store(host_tsc(), Ordering::Relaxed);
            }
            self.counters.add(VmmCounter::PollFlagKicks, 1);
            self.counters.add(VmmCounter::KicksReceived, 1);
            won = true;
        }
        won
    }

    /// Implements one pv_wait of this vCPU. `current` re-reads the watched
    /// guest byte; `poll_flag` is the vCPU's poll state word when the halt
    /// poll publishes itself (`halt_poll_flag`); `now_us` is the run clock;
    /// `host_delay_ns` is how long,
    /// in total so far, the host has kept this machine's vCPU threads
    /// runnable but off a CPU ([`crate::watchdog::host_run_delay_ns`]);
    /// `wake_in_flight` says whether another vCPU's thread is starved by the
    /// host now: kicked and not yet run to take the kick
    /// ([`crate::watchdog::wake_in_flight`]), or runnable and given no CPU
    /// ([`crate::watchdog::starved_now`]).
    /// Returns how it ended.
    // The arguments are the hypercall's inputs plus the run's context;
    // bundling them would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn wait(
        &self,
        cfg: &HypervisorConfig,
        may_poll: bool,
        poll_flag: Option<&AtomicU32>,
        expected: u8,
        gpa: u64,
        current: impl Fn() -> u8,
        run_start: Instant,
        rng: &mut crate::preempt::Rng,
        host_delay_ns: impl Fn() -> u64,
        wake_in_flight: impl Fn() -> bool,
    ) -> WaitEnd {
        self.counters.add(VmmCounter::Waits, 1);
        self.last_wait_blocked.store(false, Ordering::Relaxed);
        if cfg.kick == KickContract::LostIfNotWaiting {
            // The vCPU was running until now: kicks that arrived meanwhile
            // are lost under this contract.
            if let Ok(n) = self.kick.read() {
                self.counters.add(VmmCounter::KicksDropped, n);
            }
        }
        if cfg.wait == WaitContract::Checked && current() != expected {
            // kvm_wait(): `if (READ_ONCE(*ptr) != val) return;` before hlt.
            self.counters.add(VmmCounter::WaitsValueChanged, 1);
            return WaitEnd::ValueChanged;
        }
        if self.take_kick() {
            // A remembered kick (pv_unhalted) makes the halt return at once.
            self.counters.add(VmmCounter::WaitsKickPending, 1);
            return WaitEnd::Kicked;
        }
        if may_poll && cfg.halt_poll_us > 0 && self.poll(cfg.halt_poll_us, poll_flag) {
            self.counters.add(VmmCounter::PollsWon, 1);
            return WaitEnd::Kicked;
        }
        self.counters.add(VmmCounter::WaitsBlocked, 1);
        self.last_wait_blocked.store(true, Ordering::Relaxed);
        if self.head_wait.load(Ordering::Relaxed) {
            self.head_blocks.fetch_add(1, Ordering::Release);
        }
        let began = Instant::now();
        self.wait_gpa.store(gpa, Ordering::Relaxed);
        self.blocked_since_us.store((began - run_start).as_micros().max(1) as u64, Ordering::Release);
        // Wake-ups that do not come from a kick: the next tick of the
        // simulated periodic interrupt, and an injected spurious wakeup.
        let mut other: Option<(Instant, WaitEnd)> = None;
        if cfg.interrupt_us > 0 {
            let p = cfg.interrupt_us as u128;
            let since = (began - run_start).as_micros();
            let next = Duration::from_micros(((since / p + 1) * p - since) as u64);
            other = Some((began + next, WaitEnd::Interrupt));
        }
        if cfg.spurious_wakeup_prob > 0.0 && rng.unit() < cfg.spurious_wakeup_prob {
            let at = began + Duration::from_micros((rng.unit() * 100.0) as u64);
            if other.is_none_or(|(t, _)| at < t) {
                other = Some((at, WaitEnd::Spurious));
            }
        }
        let end = self.block(cfg.stall_timeout_ms, began, other, host_delay_ns, wake_in_flight);
        match end {
            WaitEnd::Interrupt => self.counters.add(VmmCounter::InterruptWakeups, 1),
            WaitEnd::Spurious => self.counters.add(VmmCounter::SpuriousWakeups, 1),
            _ => {}
        }
        // A wait that timed out is still blocked as far as the watchdog's
        // dump is concerned: the caller explains it first (so the dump shows
        // how long and on what), then calls `end_blocked`.
        if end != WaitEnd::TimedOut {
            self.end_blocked();
        }
        self.counters.add(VmmCounter::WaitingUs, began.elapsed().as_micros() as u64);
        end
    }

    /// Marks this vCPU as no longer blocked in a wait.
    pub fn end_blocked(&self) {
        self.blocked_since_us.store(0, Ordering::Release);
    }

    /// Blocks until a kick, a control event, `other`, or `timeout_ms` of
    /// wall time in which the host let every vCPU thread run: time the
    /// host kept a vCPU thread runnable but off a CPU (`host_delay_ns`
    /// grew) does not count, because the vCPU that would kick this one may
    /// be that thread. On a loaded host (2 CPUs, load 15) vCPU threads were
    /// seen waiting 300 ms and more for a CPU, and waits of 500 ms that
    /// ended by their kick were judged lost (results/findings/). The
    /// run-queue delay of a thread is booked only when it gets a CPU, so a
    /// starvation in progress is seen another way: while another vCPU
    /// thread has a kick it has not taken, or is runnable and gets no CPU,
    /// the timeout waits for it.
    fn block(
        &self,
        timeout_ms: u64,
        began: Instant,
        other: Option<(Instant, WaitEnd)>,
        host_delay_ns: impl Fn() -> u64,
        wake_in_flight: impl Fn() -> bool,
    ) -> WaitEnd {
        let delay_at_start = host_delay_ns();
        let timeout = Duration::from_millis(timeout_ms);
        let mut deadline = began + timeout;
        loop {
            let now = Instant::now();
            if let Some((t, why)) = other {
                if now >= t {
                    return why;
                }
            }
            if now >= deadline {
                let starved = Duration::from_nanos(host_delay_ns().saturating_sub(delay_at_start));
                let extended = began + timeout + starved;
                if extended > now {
                    deadline = extended;
                } else if wake_in_flight() {
                    deadline = now + WAKE_IN_FLIGHT_RECHECK;
                } else if self.take_kick() {
                    // The kick came while this thread was off CPU between
                    // two polls, and the deadline passed before it ran
                    // again: it was woken in time.
                    return WaitEnd::Kicked;
                } else {
                    return WaitEnd::TimedOut;
                }
                continue;
            }
            let until = other.map(|(t, _)| t.min(deadline)).unwrap_or(deadline);
            // poll(2) has millisecond resolution; sub-millisecond ends are
            // met by a zero-timeout poll loop.
            let slice = (until - now).as_millis().min(50) as i32;
            let mut fds = [
                libc::pollfd { fd: self.kick.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.control.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: `fds` is a valid array of two pollfds for the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, slice) };
            if rc < 0 {
                continue; // EINTR (our own kick signal): look again
            }
            if fds[1].revents & libc::POLLIN != 0 {
                let _ = self.control.read();
                return WaitEnd::Control;
            }
            if fds[0].revents & libc::POLLIN != 0 && self.take_kick() {
                return WaitEnd::Kicked;
            }
        }
    }

    /// A kick is waiting in this vCPU's eventfd (not consumed: the vCPU
    /// thread has not yet run to take it).
    pub fn kick_pending(&self) -> bool {
        let mut fd = libc::pollfd { fd: self.kick.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a zero timeout never blocks.
        let rc = unsafe { libc::poll(&mut fd, 1, 0) };
        rc > 0 && fd.revents & libc::POLLIN != 0
    }

    /// Wakes a blocked wait with a control event.
    pub fn poke(&self) {
        let _ = self.control.write(1);
    }
}

#[cfg(test)]
impl WaitChannel {
    /// A test's wait on `expected = 1` at gpa 0 whose byte reads `byte`,
    /// started now, with no host delay and no wake-up in flight.
    fn plain_wait(&self, cfg: &HypervisorConfig, may_poll: bool, flag: Option<&AtomicU32>, byte: u8) -> WaitEnd {
        self.wait(cfg, may_poll, flag, 1, 0, || byte, Instant::now(), &mut crate::preempt::Rng::new(1), || 0, || false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(wait: WaitContract, kick: KickContract) -> HypervisorConfig {
        HypervisorConfig { wait, kick, stall_timeout_ms: 30, ..Default::default() }
    }

    #[test]
    fn checked_wait_returns_when_value_changed_and_keeps_the_kick() {
        let ch = WaitChannel::new().unwrap();
        ch.kick.write(1).unwrap();
        let c = cfg(WaitContract::Checked, KickContract::Remembered);
        assert_eq!(ch.plain_wait(&c, false, None, 0), WaitEnd::ValueChanged);
        // KVM keeps pv_unhalted set: the next wait returns at once.
        assert_eq!(ch.plain_wait(&c, false, None, 1), WaitEnd::Kicked);
        assert_eq!(ch.counters.get(VmmCounter::WaitsKickPending), 1);
    }

    #[test]
    fn unchecked_wait_blocks_even_if_value_changed() {
        let ch = WaitChannel::new().unwrap();
        let c = cfg(WaitContract::Unchecked, KickContract::Remembered);
        assert_eq!(ch.plain_wait(&c, false, None, 0), WaitEnd::TimedOut);
        // Still shown as blocked (for the dump) until the caller says so.
        assert_ne!(ch.blocked_since_us.load(Ordering::Acquire), 0);
        ch.end_blocked();
        assert_eq!(ch.blocked_since_us.load(Ordering::Acquire), 0);
    }

    #[test]
    fn lost_if_not_waiting_drops_an_early_kick() {
        let ch = WaitChannel::new().unwrap();
        ch.kick.write(1).unwrap();
        let c = cfg(WaitContract::Checked, KickContract::LostIfNotWaiting);
        assert_eq!(ch.plain_wait(&c, false, None, 1), WaitEnd::TimedOut);
        assert_eq!(ch.counters.get(VmmCounter::KicksDropped), 1);
    }

    #[test]
    fn kick_from_another_thread_wakes_a_blocked_wait() {
        let ch = std::sync::Arc::new(WaitChannel::new().unwrap());
        let c = HypervisorConfig { stall_timeout_ms: 5000, ..Default::default() };
        let k = ch.clone();
        let t = std::thread::spawn(move || {
            while k.blocked_since_us.load(Ordering::Acquire) == 0 {
                std::thread::yield_now();
            }
            k.kick.write(1).unwrap();
        });
        assert_eq!(ch.plain_wait(&c, false, None, 1), WaitEnd::Kicked);
        t.join().unwrap();
        assert_eq!(ch.counters.get(VmmCounter::WaitsBlocked), 1);
    }

    /// A wait whose kick comes late because the host kept the vCPU
    /// threads off CPU meanwhile is not timed out: only time in which the
    /// threads could run counts. Before, it timed out at 30 ms.
    #[test]
    fn host_starvation_does_not_count_towards_the_stall_timeout() {
        let ch = std::sync::Arc::new(WaitChannel::new().unwrap());
        let c = cfg(WaitContract::Checked, KickContract::Remembered);
        let start = Instant::now();
        // The host starves the vCPU threads for the first 200 ms.
        let starved = move || start.elapsed().min(Duration::from_millis(200)).as_nanos() as u64;
        let k = ch.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(120));
            k.kick.write(1).unwrap();
        });
        assert_eq!(
            ch.wait(&c, false, None, 1, 0, || 1, start, &mut crate::preempt::Rng::new(1), starved, || false),
            WaitEnd::Kicked
        );
        t.join().unwrap();
        // Once the threads run again, the 30 ms count: no kick, timed out
        // 30 ms after the starvation ended, not before.
        let start = Instant::now();
        let starved = move || start.elapsed().min(Duration::from_millis(100)).as_nanos() as u64;
        assert_eq!(
            ch.wait(&c, false, None, 1, 0, || 1, start, &mut crate::preempt::Rng::new(1), starved, || false),
            WaitEnd::TimedOut
        );
        assert!(start.elapsed() >= Duration::from_millis(130), "{:?}", start.elapsed());
    }

    /// Another vCPU kicked but not yet running (its kick still in its
    /// eventfd) holds the timeout back: its run-queue delay is booked only
    /// once it runs. Before, the wait timed out at 30 ms.
    #[test]
    fn a_wake_up_in_flight_holds_the_stall_timeout_back() {
        let ch = WaitChannel::new().unwrap();
        let other = WaitChannel::new().unwrap();
        other.kick.write(1).unwrap();
        assert!(other.kick_pending() && !ch.kick_pending());
        let c = cfg(WaitContract::Checked, KickContract::Remembered);
        let start = Instant::now();
        let in_flight = || {
            if start.elapsed() >= Duration::from_millis(100) {
                let _ = other.kick.read(); // the other vCPU ran and took it
            }
            other.kick_pending()
        };
        let end = ch.wait(&c, false, None, 1, 0, || 1, start, &mut crate::preempt::Rng::new(1), || 0, in_flight);
        assert_eq!(end, WaitEnd::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(100), "{:?}", start.elapsed());
    }

    /// A kick that arrived while the waiting thread was off CPU past its
    /// deadline (between two polls) wakes it: the wait is not timed out.
    /// The closure stands in for the host: it runs at the deadline check,
    /// after the last poll. Before, the wait timed out with the kick
    /// pending (a "hang" of unpatched 6.1 in the 2026-12-02 matrix).
    #[test]
    fn a_kick_pending_at_the_deadline_is_not_a_timeout() {
        let ch = WaitChannel::new().unwrap();
        let c = cfg(WaitContract::Checked, KickContract::Remembered);
        let kick_now = || {
            let _ = ch.kick.write(1);
            false
        };
        assert_eq!(
            ch.wait(&c, false, None, 1, 0, || 1, Instant::now(), &mut crate::preempt::Rng::new(1), || 0, kick_now),
            WaitEnd::Kicked
        );
    }

    #[test]
    fn control_event_interrupts_a_wait() {
        let ch = WaitChannel::new().unwrap();
        ch.poke();
        let c = HypervisorConfig { stall_timeout_ms: 5000, ..Default::default() };
        assert_eq!(ch.plain_wait(&c, false, None, 1), WaitEnd::Control);
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    fn polling_cfg() -> HypervisorConfig {
        // A poll far longer than any test: it can only end by a kick.
        HypervisorConfig {
            halt_poll_us: 600_000_000,
            stall_timeout_ms: 5000,
            halt_poll_flag: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_kick_through_the_poll_flag_ends_the_halt_poll_without_the_eventfd() {
        let ch = std::sync::Arc::new(WaitChannel::new().unwrap());
        let word = std::sync::Arc::new(AtomicU32::new(POLL_IDLE));
        let (k, w) = (ch.clone(), word.clone());
        // The guest kicker's side: CAS POLLING -> KICKED once the poll is up.
        let t = std::thread::spawn(move || {
            while w.compare_exchange(POLL_POLLING, POLL_KICKED, Ordering::SeqCst, Ordering::Relaxed).is_err() {
                std::thread::yield_now();
            }
            drop(k);
        });
        let end = ch.plain_wait(&polling_cfg(), true, Some(&word), 1);
        t.join().unwrap();
        assert_eq!(end, WaitEnd::Kicked);
        assert_eq!(word.load(Ordering::SeqCst), POLL_IDLE, "the poller leaves the word idle");
        assert_eq!(ch.counters.get(VmmCounter::PollFlagKicks), 1);
        assert_eq!(ch.counters.get(VmmCounter::PollsWon), 1);
        assert_eq!(ch.counters.get(VmmCounter::WaitsBlocked), 0);
        assert!(ch.kick.read().is_err(), "no kick store was needed");
        assert_ne!(ch.kick_seen_tsc.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_flag_poll_still_sees_a_kick_stored_to_the_eventfd() {
        // A kicker that saw the word idle just before the poll began stores
        // to the doorbell; the flag poll reads the eventfd now and then.
        let ch = std::sync::Arc::new(WaitChannel::new().unwrap());
        let word = std::sync::Arc::new(AtomicU32::new(POLL_IDLE));
        let (k, w) = (ch.clone(), word.clone());
        let t = std::thread::spawn(move || {
            while w.load(Ordering::SeqCst) != POLL_POLLING {
                std::thread::yield_now();
            }
            k.kick.write(1).unwrap();
        });
        let end = ch.plain_wait(&polling_cfg(), true, Some(&word), 1);
        t.join().unwrap();
        assert_eq!(end, WaitEnd::Kicked);
        assert_eq!(word.load(Ordering::SeqCst), POLL_IDLE);
        assert_eq!(ch.counters.get(VmmCounter::PollFlagKicks), 0);
        assert_eq!(ch.counters.get(VmmCounter::PollsWon), 1);
    }

    #[test]
    fn periodic_interrupt_ends_a_wait() {
        let ch = WaitChannel::new().unwrap();
        let c = HypervisorConfig { interrupt_us: 2000, stall_timeout_ms: 5000, ..Default::default() };
        let t = Instant::now();
        let end = ch.wait(&c, false, None, 1, 0, || 1, t, &mut crate::preempt::Rng::new(1), || 0, || false);
        assert_eq!(end, WaitEnd::Interrupt);
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!(ch.counters.get(VmmCounter::InterruptWakeups), 1);
    }

    #[test]
    fn spurious_wakeups_happen_at_the_configured_rate() {
        let ch = WaitChannel::new().unwrap();
        let c = HypervisorConfig { spurious_wakeup_prob: 1.0, stall_timeout_ms: 5000, ..Default::default() };
        let mut rng = crate::preempt::Rng::new(3);
        for _ in 0..5 {
            assert_eq!(
                ch.wait(&c, false, None, 1, 0, || 1, Instant::now(), &mut rng, || 0, || false),
                WaitEnd::Spurious
            );
        }
        assert_eq!(ch.counters.get(VmmCounter::SpuriousWakeups), 5);
    }
}
