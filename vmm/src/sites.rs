//! Sites of a kernel build (`pvlock_abi::sites`): the VMM's side.
//!
//! The harness resolves the run's site patterns (`preempt.sites`, schedule
//! rules `at`/`until = "site:..."`) against the build's site table into a
//! [`SitePlan`]: one flags byte per site. After loading the module the VMM
//! writes those bytes into the site descriptors and the stall probability
//! into the module's `SiteParams`; a site that chose to exit rings
//! [`pvlock_abi::doorbell::SITE`] with its index, and [`on_site`] stalls it
//! (random mode) or applies the schedule's rules (directed mode), as a race
//! window's STALL exit is served.

use crate::guest_mem::GuestRam;
use pvlock_abi::kmod::{KmodDescriptor, KMOD_GPA};
use pvlock_abi::sites::{NodeSite, SiteParams, SITE_FLAGS_OFFSET, SITE_HASH_MAX_ENTRIES, SITE_MAX_CPUS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::mem::offset_of;

/// A site named in a schedule rule (`site:SPEC`), with the sites of the
/// build it resolved to (filled in by the harness before the run; empty in
/// a config as parsed).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SiteRef {
    /// What follows `site:` in the config.
    pub spec: String,
    /// Indices in the build's site table.
    pub sites: Vec<u32>,
}

impl SiteRef {
    /// Parses the text after `site:`: `FUNCTION[:OP[:N]]` or `FILE:LINE`
    /// (the syntax only; the build's table decides what exists).
    pub fn parse(spec: &str) -> Result<Self, String> {
        if spec.is_empty() || spec.split(':').any(str::is_empty) || spec.split(':').count() > 3 {
            return Err(format!(
                "`site:{spec}` is not `site:FUNCTION[:OP[:N]]` or `site:FILE:LINE` (see `pvlock list sites`)"
            ));
        }
        Ok(Self { spec: spec.to_string(), sites: Vec::new() })
    }
}

/// How a run uses the sites of its kernel build.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SitePlan {
    /// One `SITE_*` flags byte per site of the build's table, in order.
    pub flags: Vec<u8>,
    /// Stall probability at `SITE_STALL` sites, scaled to 2^32.
    pub prob: u32,
    /// Length of a random-mode stall, us.
    pub stall_us: u64,
}

/// The module's descriptor as loaded.
pub fn descriptor(ram: &GuestRam) -> Option<KmodDescriptor> {
    ram.read_pod::<KmodDescriptor>(KMOD_GPA).ok()
}

/// Writes `plan` into the loaded module: each site's flags, the stall
/// probability and the site count.
pub fn apply(ram: &GuestRam, plan: &SitePlan) -> Result<(), String> {
    let d = descriptor(ram).ok_or("no module descriptor to apply the site plan to")?;
    let n = d.nr_sites();
    if n != plan.flags.len() as u64 {
        return Err(format!("the site plan has {} sites, the module {n}", plan.flags.len()));
    }
    for (i, f) in plan.flags.iter().enumerate() {
        let gpa = d.sites_start + i as u64 * d.site_size as u64 + SITE_FLAGS_OFFSET;
        ram.write_u8(gpa, *f).map_err(|e| format!("site {i}: {e}"))?;
    }
    ram.write_u32(d.site_params + offset_of!(SiteParams, prob) as u64, plan.prob).map_err(|e| e.to_string())?;
    ram.write_u32(d.site_params + offset_of!(SiteParams, nr_sites) as u64, n as u32).map_err(|e| e.to_string())?;
    Ok(())
}

/// Per vCPU: the index of the last tracked site it passed (None: none, or
/// no module).
pub fn last_sites(ram: &GuestRam, vcpus: u32) -> Vec<Option<u32>> {
    let Some(d) = descriptor(ram) else { return Vec::new() };
    if d.site_params == 0 {
        return Vec::new();
    }
    (0..vcpus.min(SITE_MAX_CPUS as u32))
        .map(|c| {
            let gpa = d.site_params + offset_of!(SiteParams, last_site) as u64 + 4 * c as u64;
            ram.read_u32(gpa).ok().and_then(|v| v.checked_sub(1)).filter(|&i| (i as u64) < d.nr_sites())
        })
        .collect()
}

/// Who last touched the node of PV hash entry `entry` (the guest's
/// `SiteParams::hash_node_site`): the vCPU and the site, labelled. None
/// without a module, or when no tracked site touched it.
pub fn hash_node_site(ram: &GuestRam, entry: u64) -> Option<(u32, SiteLabel)> {
    let d = descriptor(ram)?;
    if d.site_params == 0 || entry >= SITE_HASH_MAX_ENTRIES as u64 {
        return None;
    }
    let gpa = d.site_params + offset_of!(SiteParams, hash_node_site) as u64 + 4 * entry;
    let ns = NodeSite::unpack(ram.read_u32(gpa).ok()?)?;
    Some((ns.cpu, label(ram, ns.site)?))
}

/// What the last access to a stale entry's node says, for a hang report:
/// a read is an unlock's pv_unhash() that took the node and left the
/// entry; a write is the pv_hash() that made it.
pub fn describe_hash_node_site(ram: &GuestRam, entry: u64) -> Option<String> {
    let (cpu, l) = hash_node_site(ram, entry)?;
    let reads = pvlock_abi::sites::SiteOp::from_name(&l.op).is_some_and(pvlock_abi::sites::SiteOp::loads);
    Some(if reads {
        format!(
            "entry {entry:#x}: its node last read by vCPU {cpu} at {}() {}:{}, which left the entry in the table",
            l.function, l.file, l.line
        )
    } else {
        format!("entry {entry:#x}: hashed by vCPU {cpu} at {}() {}:{}, not looked up since", l.function, l.file, l.line)
    })
}

/// A site's label as the module's descriptor has it (file, line, function):
/// for hold records. Strings are read from guest memory, bounded.
pub fn label(ram: &GuestRam, index: u32) -> Option<SiteLabel> {
    let d = descriptor(ram)?;
    if index as u64 >= d.nr_sites() {
        return None;
    }
    let s: pvlock_abi::sites::KernelSite = ram.read_pod(d.sites_start + index as u64 * d.site_size as u64).ok()?;
    let text = |gpa: u64| -> String {
        let mut out = Vec::new();
        for i in 0..256 {
            match ram.read_u8(gpa + i) {
                Ok(0) | Err(_) => break,
                Ok(b) => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    Some(SiteLabel {
        index,
        function: text(s.func),
        file: text(s.file),
        line: s.line,
        op: pvlock_abi::sites::SiteOp::from_u8(s.op).map_or("?", |o| o.name()).to_string(),
        source: None,
    })
}

/// A site as records name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteLabel {
    pub index: u32,
    pub function: String,
    pub file: String,
    pub line: u32,
    pub op: String,
    /// The source line's text (filled in by the harness from the build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl std::fmt::Display for SiteLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}() at {}:{}", self.op, self.function, self.file, self.line)
    }
}

/// Serves a SITE exit of vCPU `t.cpu` at site `index`: a schedule rule
/// that applies holds it (directed mode); with no schedule it stalls
/// `preempt.site_stall_us` (random mode); a site that exits only because a
/// rule's `until` names it goes on at once.
pub fn serve(t: &crate::vcpu::VcpuThread, value: u64) -> Result<(), crate::report::GuestFailure> {
    use std::sync::atomic::Ordering;
    let sh = &t.shared;
    let cpu = t.cpu;
    let (index, trial) = pvlock_abi::sites::site_exit_decode(value);
    let index = index as u64;
    let Some(arrivals) = sh.preempt.site_arrivals.get(index as usize) else {
        return Err(t.abi_violation(format!("exit at unknown kernel site {index}")));
    };
    arrivals.fetch_add(1, Ordering::AcqRel);
    let rules = &sh.cfg.preempt.schedule;
    let at = crate::preempt::StallPoint::Site(index as u32);
    let precondition =
        |r: &crate::config::HoldRule| r.when != crate::config::HoldWhen::SuccessorRunning || sh.successor_running(cpu);
    if let Some(i) = sh.preempt.claim_rule(rules, cpu, at, precondition) {
        sh.set_preempted(cpu, true);
        let (why, held) = crate::preempt::hold(
            &rules[i],
            cpu,
            &sh.preempt,
            |heads| sh.others_blocked(cpu, heads),
            || sh.stop.load(Ordering::Acquire),
        );
        sh.set_preempted(cpu, false);
        crate::preempt::account_stall(&sh.channels[cpu as usize].counters, held);
        sh.preempt.holds.lock().unwrap_or_else(|p| p.into_inner()).push(crate::preempt::HoldOutcome {
            rule: i,
            cpu,
            window: None,
            site: label(&sh.ram, index as u32),
            released_by: why,
            held_us: held.as_micros() as u64,
        });
    } else if rules.is_empty() {
        sh.preempt.site_stalls[index as usize].fetch_add(1, Ordering::Relaxed);
        sh.preempt.site_trials.lock().unwrap_or_else(|p| p.into_inner()).record(trial, cpu, index as u32);
        let us = sh.cfg.sites.as_ref().map_or(sh.cfg.preempt.site_stall_us, |p| p.stall_us);
        t.stall(std::time::Duration::from_micros(us));
    }
    Ok(())
}

/// Trials whose stall signatures a run keeps (one map entry each); beyond
/// it the report says `truncated` and counts stalls only.
pub const TRIALS_LOGGED: usize = 1 << 16;
/// Stalls listed one by one in a report (the first of the run).
pub const STALLS_LISTED: usize = 32;

/// The site stalls of a run grouped by the trial the guest took them in
/// (`pvlock_abi::sites::SiteSchedule`): a trial's signature is the
/// multiset of (vCPU, site) it stalled at, kept as a commutative hash (the
/// sum of splitmix64 of each pair), so the order in which the VMM serves
/// the stalls of one trial does not change it.
#[derive(Debug, Default)]
pub struct TrialLog {
    by_trial: BTreeMap<u32, u64>,
    first: Vec<ChosenStall>,
    stalls: u64,
    truncated: bool,
}

impl TrialLog {
    /// A stall of vCPU `cpu` at site `site` in trial `trial`.
    pub fn record(&mut self, trial: u32, cpu: u32, site: u32) {
        self.stalls += 1;
        if self.first.len() < STALLS_LISTED {
            self.first.push(ChosenStall { trial, cpu, site });
        }
        let h = pvlock_abi::seed::splitmix64((cpu as u64) << 32 | site as u64);
        if let Some(sig) = self.by_trial.get_mut(&trial) {
            *sig = sig.wrapping_add(h);
        } else if self.by_trial.len() < TRIALS_LOGGED {
            self.by_trial.insert(trial, h);
        } else {
            self.truncated = true;
        }
    }

    /// The report, `None` without stalls.
    pub fn report(&self) -> Option<ScheduleReport> {
        if self.stalls == 0 {
            return None;
        }
        let mut distinct: Vec<u64> = self.by_trial.values().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        Some(ScheduleReport {
            stalls: self.stalls,
            trials: self.by_trial.len() as u64,
            signatures: distinct,
            first: self.first.clone(),
            truncated: self.truncated,
        })
    }
}

/// One stall the guest chose: which vCPU, at which site, in which trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenStall {
    pub trial: u32,
    pub cpu: u32,
    pub site: u32,
}

/// What a run's site stalls were (`RunReport::site_schedule`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleReport {
    /// Site stalls served.
    pub stalls: u64,
    /// Trials with at least one stall (those logged).
    pub trials: u64,
    /// The distinct stall signatures of those trials, sorted (a set: the
    /// union over seeds counts distinct interleavings across runs).
    pub signatures: Vec<u64>,
    /// The first [`STALLS_LISTED`] stalls, in the order served.
    pub first: Vec<ChosenStall>,
    /// More than [`TRIALS_LOGGED`] trials had stalls: later ones are counted
    /// in `stalls` only.
    pub truncated: bool,
}

#[cfg(test)]
mod trial_tests {
    use super::*;

    #[test]
    fn a_trial_signature_is_its_multiset_of_stalls() {
        let mut log = TrialLog::default();
        assert_eq!(log.report(), None, "no stalls, no report");
        // Trials 0 and 2 stall the same (vCPU, site) pairs in another
        // order; trial 1 differs by one vCPU.
        log.record(0, 1, 7);
        log.record(0, 2, 9);
        log.record(1, 1, 7);
        log.record(1, 3, 9);
        log.record(2, 2, 9);
        log.record(2, 1, 7);
        let r = log.report().unwrap();
        assert_eq!((r.stalls, r.trials), (6, 3));
        assert_eq!(r.signatures.len(), 2, "{r:?}");
        assert_eq!(r.first[0], ChosenStall { trial: 0, cpu: 1, site: 7 });
        assert!(!r.truncated);
    }
}
