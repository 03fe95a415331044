//! Deliberate preemption: random (Poisson) stalls, holder stalls, and the
//! directed schedule's holds at race windows.
//!
//! A stall keeps a vCPU's thread out of `KVM_RUN`: the vCPU runs no guest
//! code, exactly what a host scheduler does to a preempted vCPU. While it
//! lasts the VMM sets the vCPU's `preempted` flag in guest memory
//! (steal-time style) for the guest's `vcpu_is_preempted()`.

use crate::config::{HoldAt, HoldRule, HoldUntil, StallDist};
use pvlock_abi::{VmmCounter, NR_WINDOWS};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A small seeded generator (xorshift64*): stall choices are repeatable per
/// seed; interleavings are not (that needs a directed schedule).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    /// A stall length drawn from `dist` with mean `mean_us`.
    pub fn stall_us(&mut self, dist: StallDist, mean_us: u64) -> u64 {
        match dist {
            StallDist::Fixed => mean_us,
            StallDist::Uniform => (self.unit() * 2.0 * mean_us as f64) as u64,
            StallDist::Exponential => self.exp(mean_us as f64) as u64,
        }
    }
}

/// What released a directed hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldRelease {
    /// The rule's `until` condition was met.
    Condition,
    /// The rule's `timeout_us` passed first.
    Timeout,
    /// The run was stopped.
    Stop,
}

/// Where an exit asking for a stall came from: a race window of the Rust
/// variants or a site (its index in the build's site table) of a kernel build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallPoint {
    Window(pvlock_abi::Window),
    Site(u32),
}

impl HoldAt {
    /// Whether a rule at `self` applies to an exit at `p`.
    pub fn matches(&self, p: StallPoint) -> bool {
        match (self, p) {
            (HoldAt::Window(w), StallPoint::Window(x)) => *w == x,
            (HoldAt::Site(s), StallPoint::Site(i)) => s.sites.contains(&i),
            _ => false,
        }
    }
}

/// How a directed hold ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HoldOutcome {
    /// Index of the rule in the schedule.
    pub rule: usize,
    pub cpu: u32,
    /// The window held at (absent for a site hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<pvlock_abi::Window>,
    /// The kernel-build site held at, with its file:line and source text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<crate::sites::SiteLabel>,
    pub released_by: HoldRelease,
    pub held_us: u64,
}

/// Run-wide preemption state shared by vCPU threads and the preemptor.
pub struct PreemptState {
    /// Per vCPU: microseconds of stall requested by the preemptor (0 = none).
    pub stall_request_us: Vec<AtomicU64>,
    /// Per vCPU: 1 while stalled or held by the VMM.
    pub stalled: Vec<AtomicU32>,
    /// Times each window was reported by any vCPU (STALL exits).
    pub window_arrivals: [AtomicU64; NR_WINDOWS],
    /// Per site of a kernel build: exits there (SITE doorbells).
    pub site_arrivals: Vec<AtomicU64>,
    /// Per site: stalls the VMM performed there (random mode).
    pub site_stalls: Vec<AtomicU64>,
    /// The site stalls by trial (PCT, the interleaving count).
    pub site_trials: Mutex<crate::sites::TrialLog>,
    /// Holds performed per rule.
    pub rule_used: Vec<AtomicU32>,
    /// Directed holds and how they ended (bounded: a rule with `count = 0`
    /// may hold any number of times).
    pub holds: Mutex<crate::report::BoundedLog<HoldOutcome>>,
    /// Stall requests the preemptor skipped because the vCPU was blocked
    /// in a wait or already stalled.
    pub skipped: AtomicU64,
}

impl PreemptState {
    pub fn new(vcpus: usize, rules: usize) -> Self {
        Self::with_sites(vcpus, rules, 0)
    }

    /// As [`PreemptState::new`], with counters for `sites` kernel sites.
    pub fn with_sites(vcpus: usize, rules: usize, sites: usize) -> Self {
        Self {
            stall_request_us: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
            stalled: (0..vcpus).map(|_| AtomicU32::new(0)).collect(),
            window_arrivals: std::array::from_fn(|_| AtomicU64::new(0)),
            site_arrivals: (0..sites).map(|_| AtomicU64::new(0)).collect(),
            site_stalls: (0..sites).map(|_| AtomicU64::new(0)).collect(),
            site_trials: Mutex::new(crate::sites::TrialLog::default()),
            rule_used: (0..rules).map(|_| AtomicU32::new(0)).collect(),
            holds: Mutex::new(crate::report::BoundedLog::new(crate::report::limits::HOLDS)),
            skipped: AtomicU64::new(0),
        }
    }

    pub fn any_stalled(&self) -> bool {
        self.stalled.iter().any(|s| s.load(Ordering::Acquire) != 0)
    }

    /// The first rule that applies to `cpu` at `at` (a window, or a
    /// kernel site) and still has holds left; claims one hold.
    pub fn claim_rule(
        &self,
        rules: &[HoldRule],
        cpu: u32,
        at: impl Into<StallPoint>,
        precondition: impl Fn(&HoldRule) -> bool,
    ) -> Option<usize> {
        let at = at.into();
        for (i, r) in rules.iter().enumerate() {
            if !r.at.matches(at) || r.cpu.is_some_and(|c| c != cpu) || !precondition(r) {
                continue;
            }
            let used = &self.rule_used[i];
            loop {
                let n = used.load(Ordering::Acquire);
                if r.count != 0 && n >= r.count {
                    break;
                }
                if used.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return Some(i);
                }
            }
        }
        None
    }
}

impl From<pvlock_abi::Window> for StallPoint {
    fn from(w: pvlock_abi::Window) -> Self {
        StallPoint::Window(w)
    }
}

/// Blocks the calling vCPU thread per `rule`; `others_blocked` returns the
/// number of blocking waits other vCPUs have begun so far, `stop` the run's
/// stop flag.
pub fn hold(
    rule: &HoldRule,
    cpu: u32,
    st: &PreemptState,
    others_blocked: impl Fn(bool) -> u64,
    stop: impl Fn() -> bool,
) -> (HoldRelease, Duration) {
    let t0 = Instant::now();
    let timeout = Duration::from_micros(rule.timeout_us);
    let arrivals0: Vec<u64> = st.window_arrivals.iter().map(|a| a.load(Ordering::Acquire)).collect();
    let site_arrivals = |sites: &[u32]| -> u64 {
        sites.iter().filter_map(|&i| st.site_arrivals.get(i as usize)).map(|a| a.load(Ordering::Acquire)).sum()
    };
    let sites0 = match &rule.until {
        HoldUntil::Site(s) => site_arrivals(&s.sites),
        _ => 0,
    };
    let heads = rule.until == HoldUntil::HeadBlocked;
    let blocked0 = others_blocked(heads);
    loop {
        if stop() {
            return (HoldRelease::Stop, t0.elapsed());
        }
        let met = match &rule.until {
            HoldUntil::Window(w) => st.window_arrivals[*w as usize].load(Ordering::Acquire) > arrivals0[*w as usize],
            HoldUntil::Site(s) => site_arrivals(&s.sites) > sites0,
            HoldUntil::Blocked | HoldUntil::HeadBlocked => others_blocked(heads) > blocked0,
            HoldUntil::Timeout => false,
        };
        if met {
            return (HoldRelease::Condition, t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            return (HoldRelease::Timeout, t0.elapsed());
        }
        let _ = cpu;
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Counter helper for stalls.
pub fn account_stall(counters: &crate::hypervisor::Counters, d: Duration) {
    counters.add(VmmCounter::Stalls, 1);
    counters.add(VmmCounter::StalledUs, d.as_micros() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvlock_abi::Window;

    #[test]
    fn stall_distributions_have_the_configured_mean() {
        let mut r = Rng::new(7);
        for dist in [StallDist::Fixed, StallDist::Uniform, StallDist::Exponential] {
            let n = 200_000;
            let mean = (0..n).map(|_| r.stall_us(dist, 1000) as f64).sum::<f64>() / n as f64;
            assert!((mean - 1000.0).abs() < 15.0, "{dist:?}: mean {mean}");
        }
        // Poisson arrivals: exponential gaps with the configured mean.
        let gaps: f64 = (0..100_000).map(|_| r.exp(500.0)).sum::<f64>() / 100_000.0;
        assert!((gaps - 500.0).abs() < 10.0, "{gaps}");
    }

    #[test]
    fn the_same_seed_gives_the_same_stalls() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..10).map(|_| r.stall_us(StallDist::Exponential, 100)).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..10).map(|_| r.stall_us(StallDist::Exponential, 100)).collect()
        };
        assert_eq!(a, b);
    }

    fn rule(at: Window, cpu: Option<u32>, until: HoldUntil, count: u32) -> HoldRule {
        HoldRule { cpu, until, timeout_us: 20_000, count, ..HoldRule::at(at) }
    }

    fn site_rule(sites: Vec<u32>, until: HoldUntil) -> HoldRule {
        let at = HoldAt::Site(crate::sites::SiteRef { spec: "f".into(), sites });
        HoldRule { until, timeout_us: 20_000, count: 1, ..HoldRule::at_point(at) }
    }

    #[test]
    fn site_rules_match_their_resolved_sites_only() {
        let rules = [site_rule(vec![3, 5], HoldUntil::Timeout), rule(Window::Handoff, None, HoldUntil::Timeout, 0)];
        let st = PreemptState::with_sites(2, rules.len(), 8);
        let any = |_: &HoldRule| true;
        assert_eq!(st.claim_rule(&rules, 0, StallPoint::Site(4), any), None);
        assert_eq!(st.claim_rule(&rules, 0, StallPoint::Site(5), any), Some(0));
        assert_eq!(st.claim_rule(&rules, 0, StallPoint::Site(3), any), None, "count 1 used up");
        assert_eq!(st.claim_rule(&rules, 0, Window::Handoff, any), Some(1), "a window rule is not a site rule");
    }

    #[test]
    fn a_hold_until_a_site_ends_when_another_vcpu_arrives_there() {
        let until = HoldUntil::Site(crate::sites::SiteRef { spec: "g".into(), sites: vec![2] });
        let r = site_rule(vec![1], until);
        let st = PreemptState::with_sites(2, 1, 4);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(2));
                st.site_arrivals[3].fetch_add(1, Ordering::SeqCst);
                st.site_arrivals[2].fetch_add(1, Ordering::SeqCst);
            });
            let (why, d) = hold(&r, 0, &st, |_| 0, || false);
            assert_eq!(why, HoldRelease::Condition);
            assert!(d < Duration::from_millis(20));
        });
    }

    #[test]
    fn rules_match_window_and_cpu_and_run_out() {
        let rules =
            [rule(Window::Handoff, Some(1), HoldUntil::Blocked, 1), rule(Window::Handoff, None, HoldUntil::Timeout, 2)];
        let st = PreemptState::new(4, rules.len());
        let any = |_: &HoldRule| true;
        assert_eq!(st.claim_rule(&rules, 0, Window::Handoff, |_: &HoldRule| false), None, "precondition fails");
        assert_eq!(st.claim_rule(&rules, 0, Window::Handoff, any), Some(1));
        assert_eq!(st.claim_rule(&rules, 1, Window::Handoff, any), Some(0));
        assert_eq!(st.claim_rule(&rules, 1, Window::Handoff, any), Some(1), "rule 0 is used up");
        assert_eq!(st.claim_rule(&rules, 2, Window::Handoff, any), None, "both used up");
        assert_eq!(st.claim_rule(&rules, 2, Window::UnlockKick, any), None);
    }

    #[test]
    fn hold_is_released_by_its_condition_or_its_timeout() {
        let st = PreemptState::new(2, 1);
        let blocked = AtomicU64::new(0);
        let r = rule(Window::Handoff, None, HoldUntil::Blocked, 0);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(2));
                blocked.fetch_add(1, Ordering::SeqCst);
            });
            let (why, d) = hold(&r, 0, &st, |_| blocked.load(Ordering::SeqCst), || false);
            assert_eq!(why, HoldRelease::Condition);
            assert!(d < Duration::from_millis(20));
        });
        let r = HoldRule { timeout_us: 3000, ..rule(Window::Handoff, None, HoldUntil::Window(Window::UnlockKick), 0) };
        let (why, d) = hold(&r, 0, &st, |_| 0, || false);
        assert_eq!(why, HoldRelease::Timeout);
        assert!(d >= Duration::from_micros(3000));
        st.window_arrivals[Window::UnlockKick as usize].fetch_add(0, Ordering::SeqCst);
    }
}
