//! Runs one [`RunConfig`] on KVM and turns the VMM's report into a
//! [`Record`] with its correctness checks.

use crate::config::RunConfig;
use crate::record::{now_utc, Check, HashStats, Params, PerVcpu, Record, Timing, SCHEMA_VERSION};
use crate::stats::{histogram_percentiles, merge_histograms};
use anyhow::Result;
use pvlock_abi::vcpu::{DoorbellsTiming, PreemptProbeTiming, TortureTiming};
use pvlock_abi::{LockEvent, PanicKind, Workload};
use pvlock_guest_lib::torture;
use pvlock_vmm::{GuestFailure, Machine, RunReport, RunStatus, StopHandle};
use std::collections::BTreeMap;

/// The guest image built into this binary (see harness/build.rs).
pub static GUEST_ELF: &[u8] = include_bytes!(env!("PVLOCK_GUEST_ELF"));

/// Runs one configuration; `Err` only when the machine could not be built
/// (no KVM, bad ELF): every guest outcome is a record.
pub fn run_one(rc: &RunConfig, run_key: &str, elf: &[u8], stop: &StopHandle) -> Result<Record> {
    run_one_with_report(rc, run_key, elf, stop).map(|(rec, _)| rec)
}

/// [`run_one`], also handing back the VMM's report (its traces feed
/// `--trace`).
pub fn run_one_with_report(
    rc: &RunConfig,
    run_key: &str,
    elf: &[u8],
    stop: &StopHandle,
) -> Result<(Record, RunReport)> {
    let machine = rc.machine();
    // A kernel variant runs the tree's own code: build it (or take it from
    // the cache) and load it beside the guest.
    let kernel = match crate::kernel::spec_of(rc)? {
        Some(spec) => Some(crate::kernel::module_for(&spec)?),
        None => None,
    };
    let mut machine = machine;
    if let Some(k) = &kernel {
        // The VMM reads the tree's locks, nodes and hash entries through
        // the layout its build reported.
        machine.lock_layout = Some(k.lock_layout()?);
        // The run's sites: patterns and site rules resolved against the
        // build's table (an unknown name is an error naming the key).
        machine.sites = crate::kernel::sites::plan_for(k, &mut machine.preempt)?;
    } else {
        crate::kernel::sites::refuse_without_kernel(&machine.preempt)?;
    }
    let started_at = now_utc();
    let mut report = Machine::run_with_module(&machine, elf, kernel.as_ref().map(|k| k.image.as_slice()), stop)?;
    if let (Some(k), true) = (&kernel, report.status != RunStatus::Ok) {
        symbolize_module_frames(&mut report.vcpu_dumps, &k.image);
    }
    let mut rec = make_record(rc, run_key, started_at, &report);
    if let Some(k) = &kernel {
        crate::kernel::sites::annotate(k, &report, &mut rec);
    }
    rec.kernel = kernel.as_ref().map(|k| k.info.clone());
    if rec.status != RunStatus::Ok && report.status == RunStatus::Ok {
        // Not OK by the harness's checks only: the VMM did not symbolize.
        pvlock_vmm::machine::symbolize_dumps(&mut report.vcpu_dumps, elf);
        if let Some(k) = &kernel {
            symbolize_module_frames(&mut report.vcpu_dumps, &k.image);
        }
        attach_dumps(&mut rec.diagnosis, &report);
    }
    Ok((rec, report))
}

/// The frames of `dumps` inside the kernel-lock module's window, looked up
/// in the module's own DWARF (the guest's knows nothing of them): the
/// tree's function and kernel file:line. The location is then the first
/// frame outside the guest runtime's helpers, now possibly kernel code.
fn symbolize_module_frames(dumps: &mut [pvlock_vmm::vcpu_dump::VcpuDump], module_elf: &[u8]) {
    use pvlock_abi::kmod::{KMOD_GPA, KMOD_LIMIT};
    let sym = match pvlock_vmm::symbolize::Symbolizer::cached_module(module_elf) {
        Ok(s) => s,
        Err(e) => return tracing::warn!("cannot symbolize the kernel module's frames: {e}"),
    };
    for d in dumps {
        for (i, f) in d.backtrace.iter_mut().enumerate() {
            if (KMOD_GPA..KMOD_LIMIT).contains(&f.pc) {
                f.source = sym.frames(if i == 0 { f.pc } else { f.pc.saturating_sub(1) });
            }
        }
        d.location = d.backtrace.iter().flat_map(|f| f.source.iter()).find(|s| !s.is_helper()).cloned();
    }
}

/// The vCPU dumps of a record that did not end OK.
fn attach_dumps(d: &mut crate::record::Diagnosis, r: &RunReport) {
    d.vcpus = r.vcpu_dumps.iter().filter_map(|v| serde_json::to_value(v).ok()).collect();
    d.vcpus_text = (!r.vcpu_dumps.is_empty()).then(|| pvlock_vmm::vcpu_dump::render(&r.vcpu_dumps));
}

fn sum_map<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k.clone()).or_insert(0) += v;
        }
    }
    out
}

/// Every vCPU's wake-leg histograms merged, leg by leg (legs no vCPU
/// recorded are left out).
fn wake_legs(r: &RunReport) -> BTreeMap<String, crate::record::LegStats> {
    let mut out = BTreeMap::new();
    for leg in pvlock_abi::Leg::ALL {
        let i = leg as usize;
        let h = merge_histograms(r.per_vcpu.iter().filter_map(|v| v.leg_buckets.get(i)).map(Vec::as_slice));
        let ns = histogram_percentiles(&h);
        if ns.count == 0 {
            continue;
        }
        let sum: u64 = r.per_vcpu.iter().filter_map(|v| v.leg_sum_ns.get(i)).sum();
        out.insert(leg.name().to_string(), crate::record::LegStats { ns, mean_ns: sum as f64 / ns.count as f64 });
    }
    out
}

pub fn make_record(rc: &RunConfig, run_key: &str, started_at: String, r: &RunReport) -> Record {
    let workload = rc.workload;
    let variant = rc.lock.variant;
    let per_vcpu: Vec<PerVcpu> = r
        .per_vcpu
        .iter()
        .map(|v| PerVcpu {
            cpu: v.cpu,
            done: v.done,
            acquisitions: v.acquisitions,
            max_wait_ns: v.max_wait_ns,
            latency_ns: histogram_percentiles(&v.latency_buckets),
            exits: v.exits,
            final_phase: v.final_phase.map(|p| p.name()).unwrap_or("?").to_string(),
            lock_events: v.lock_events.clone(),
            vmm: v.vmm.clone(),
            window_hits: v.window_hits.clone(),
        })
        .collect();
    let mut lock_events = sum_map(per_vcpu.iter().map(|v| &v.lock_events));
    // hash_max_probe (and the other `is_max` events) is a maximum, not a sum.
    for e in LockEvent::ALL.iter().filter(|e| e.is_max()) {
        let max = r.per_vcpu.iter().map(|v| v.lock_events.get(e.name()).copied().unwrap_or(0)).max().unwrap_or(0);
        lock_events.insert(e.name().into(), max);
    }
    let vmm = sum_map(per_vcpu.iter().map(|v| &v.vmm));
    let acquisitions: u64 = per_vcpu.iter().map(|v| v.acquisitions).sum();
    let latency = histogram_percentiles(&merge_histograms(r.per_vcpu.iter().map(|v| v.latency_buckets.as_slice())));
    let ev = |e: LockEvent| lock_events.get(e.name()).copied().unwrap_or(0);
    let inserts = ev(LockEvent::HashInserts);
    let hash = HashStats {
        entries: r.boot.hash_entries,
        stale_entries: r.hash_in_use.len() as u64,
        inserts,
        removes: ev(LockEvent::HashRemoves),
        max_probe: ev(LockEvent::HashMaxProbe),
        hops_per_insert: if inserts > 0 { ev(LockEvent::PvHashHops) as f64 / inserts as f64 } else { 0.0 },
        hops_per_kick_unlock: match ev(LockEvent::PvKickUnlock) {
            0 => 0.0,
            kicks => ev(LockEvent::PvHashHops) as f64 / kicks as f64,
        },
        double_hash: ev(LockEvent::DoubleHash),
        occupancy: r.hash_occupancy.iter().map(|&(k, v)| [k, v]).collect(),
    };
    // Guest run time: from the start barrier to the run's configured end
    // for timed workloads; wall time otherwise.
    // A run that ended early (abort, hang, crash) ran for its wall time,
    // not for its configured duration.
    let run_secs = match workload {
        Workload::Torture | Workload::MutexTorture | Workload::LockLoop | Workload::EmptyLoop
            if rc.torture.max_acquisitions == 0 && r.status == RunStatus::Ok =>
        {
            rc.duration_ms as f64 / 1e3
        }
        _ => r.wall_ms / 1e3,
    };
    let mut timing = Timing {
        boot_us: r.boot_us,
        vcpu_setup_us: r.vcpu_setup_us,
        kick_setup_us: r.kick_setup_us,
        ..Default::default()
    };
    match workload {
        Workload::Doorbells => {
            if let Some(v) = r.per_vcpu.first() {
                let t = DoorbellsTiming::from_slots(&v.timing);
                let n = t.iterations.max(1) as f64;
                timing.mmio_exit_us = Some(t.exits_ns as f64 / n / 1e3);
                timing.kick_store_us = Some(t.kick_stores_ns as f64 / n / 1e3);
                if t.window_loops > 0 {
                    let loops = t.window_loops as f64;
                    timing.disabled_window_ns = Some((t.window_loop_ns as f64 - t.empty_loop_ns as f64) / loops);
                }
            }
        }
        Workload::PingPong => {
            let h = merge_histograms(r.per_vcpu.iter().map(|v| v.latency_buckets.as_slice()));
            timing.kick_wake_ns = Some(histogram_percentiles(&h));
        }
        _ => {}
    }
    if matches!(workload, Workload::Doorbells | Workload::PingPong) {
        timing.wake_legs = wake_legs(r);
        timing.tsc_offset_cycles = r
            .per_vcpu
            .iter()
            .find_map(|v| v.tsc_offset)
            .map(|o| crate::record::TscOffsetBounds { lo: o.lo, hi: o.hi, samples: o.samples });
    }

    let mut checks = Vec::new();
    let not_done: Vec<u32> = per_vcpu.iter().filter(|v| !v.done).map(|v| v.cpu).collect();
    checks.push(Check::new(
        "all_vcpus_done",
        not_done.is_empty(),
        if not_done.is_empty() { "every vCPU reported done".to_string() } else { format!("not done: {not_done:?}") },
    ));
    match workload {
        Workload::Smoke => {
            let want = rc.vcpus as u64 * rc.iterations;
            let (a, p) = (r.boot.atomic_counter, r.boot.plain_counter);
            checks.push(Check::new("atomic_counter", a == want, format!("{a} of {want} lock-xadd increments")));
            checks.push(Check::new(
                "plain_counter_under_lock",
                p == want,
                format!("{p} of {want} increments under the lock"),
            ));
        }
        Workload::Torture | Workload::MutexTorture => torture_checks(r, &mut checks),
        Workload::PreemptProbe => {
            // Polls (by all watchers) that saw vCPU c preempted.
            let n = (rc.vcpus as usize).min(PreemptProbeTiming::WATCHED);
            let watchers: Vec<PreemptProbeTiming> =
                r.per_vcpu.iter().skip(1).map(|v| PreemptProbeTiming::from_slots(&v.timing)).collect();
            let seen: Vec<u64> = (0..n).map(|c| watchers.iter().map(|w| w.seen_preempted[c]).sum()).collect();
            let only_0 = seen[0] > 0 && seen[1..].iter().all(|&x| x == 0);
            checks.push(Check::new(
                "preempted_flag_exactly_for_the_stalled_vcpu",
                only_0,
                format!("polls that saw each vCPU preempted: {seen:?} (only vCPU 0 was stalled)"),
            ));
        }
        Workload::PingPong if rc.vcpus >= 2 => {
            let wakes: u64 = per_vcpu.iter().map(|v| v.acquisitions).sum();
            checks.push(Check::new(
                "every_ping_woke",
                wakes == rc.iterations,
                format!("{wakes} of {} wakeups", rc.iterations),
            ));
        }
        _ => {}
    }
    if rc.lock.variant.is_kernel() {
        // A kernel WARN does not stop the run; it fails the verdict here.
        let warned: Vec<String> = r
            .console
            .iter()
            .filter_map(|l| crate::record::KernelWarning::parse(l))
            .map(|w| format!("vCPU {} at {}:{}: {}", w.cpu, w.file, w.line, w.message))
            .collect();
        checks.push(Check::new(
            "no_kernel_warnings",
            warned.is_empty(),
            if warned.is_empty() { "no kernel WARN()".to_string() } else { warned.join("; ") },
        ));
    }
    let mut status = r.status;
    if status.is_ok() && checks.iter().any(|c| !c.passed) {
        status = RunStatus::Failed;
    }
    let summary = match (&r.failure, status) {
        (Some(f @ GuestFailure::Timeout { .. }), _) if r.hang.as_ref().is_none_or(|h| !h.blocked) => {
            format!(
                "{}; no vCPU was blocked in a wait at the end: the run made too little progress (a collapse or a \
             livelock in the guest, not a missed wakeup); acquisitions per vCPU: {:?}",
                f.summary(),
                per_vcpu.iter().map(|v| v.acquisitions).collect::<Vec<_>>()
            )
        }
        (Some(f), _) => f.summary() + &failing_code(f, r),
        (None, RunStatus::Failed) => {
            let failed: Vec<_> =
                checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
            format!("checks failed: {}", failed.join("; "))
        }
        _ => "all vCPUs finished; all checks passed".to_string(),
    };
    Record {
        schema_version: SCHEMA_VERSION,
        name: rc.name.clone(),
        run_key: run_key.to_string(),
        status,
        expected: rc.expected(),
        summary,
        failure: r.failure.clone(),
        started_at,
        pvlock_version: crate::version().to_string(),
        vcpus: rc.vcpus,
        host_cpus: rc.host_cpus,
        duration_ms: r.wall_ms,
        tsc_khz: r.tsc_khz,
        acquisitions,
        acquisitions_per_sec: if run_secs > 0.0 { acquisitions as f64 / run_secs } else { 0.0 },
        latency_ns: latency,
        max_wait_ns: per_vcpu.iter().map(|v| v.max_wait_ns).max().unwrap_or(0),
        lock_events,
        vmm,
        hash,
        params: Params {
            variant,
            mutant: variant.is_mutant(),
            pv: variant.is_pv(),
            spin_threshold: rc.lock.spin_threshold,
            hash_bits: if r.boot.hash_entries > 0 { r.boot.hash_entries.trailing_zeros() } else { rc.lock.hash_bits },
            counters: crate::record::CounterOrigin::of(variant),
            wait_early: pvlock_guest_lib::variants::has_wait_early(variant)
                && rc.lock.spin_threshold >= pvlock_guest_lib::variants::WAIT_EARLY_MIN_SPIN_THRESHOLD,
        },
        timing,
        checks,
        diagnosis: diagnosis(r),
        per_vcpu,
        console: r.console.clone(),
        config: rc.clone(),
        kernel: None,
        kernel_sites: None,
    }
}

/// For a guest failure reported from a helper (the runtime's panic and
/// BUG plumbing): where in the lock or workload code the failing vCPU was,
/// from its symbolized backtrace.
fn failing_code(f: &pvlock_vmm::GuestFailure, r: &RunReport) -> String {
    let pvlock_vmm::GuestFailure::Panic { cpu, file, .. } = f else { return String::new() };
    let helper = file.ends_with("rt.rs") || file.ends_with("cpu.rs");
    let at = r.vcpu_dumps.iter().find(|d| d.cpu == *cpu).and_then(|d| d.location.as_ref());
    match at {
        Some(l) if helper => format!(" [in {}]", l.render()),
        _ => String::new(),
    }
}

/// The torture workloads' end-state checks: the guest library's torture
/// verifier ([`torture::check_recorded`]) over the end state the VMM read
/// back (each lock's count and owner mark, the PV hash entries in use,
/// each vCPU's increments), so a KVM run is judged by the same code as a
/// host-thread run. A mutual-exclusion violation the guest saw arrives as
/// its PANIC doorbell (the failure). Lock words are not read back, so they
/// are not checked here.
fn torture_checks(r: &RunReport, checks: &mut Vec<Check>) {
    let mutex_violation = matches!(&r.failure, Some(GuestFailure::Panic { what: PanicKind::MutualExclusion, .. }));
    let verified = verify_end_state(r);
    let failed = |f: fn(&torture::Failure) -> bool| verified.failures().filter(|x| f(x)).collect::<Vec<_>>();
    let owners_left: Vec<usize> = failed(|f| matches!(f, torture::Failure::OwnerLeft { .. }))
        .iter()
        .filter_map(|f| match f {
            torture::Failure::OwnerLeft { lock, .. } => Some(*lock),
            _ => None,
        })
        .collect();
    let ok = r.status == RunStatus::Ok;
    checks.push(Check::new(
        "mutual_exclusion",
        !mutex_violation && (!ok || owners_left.is_empty()),
        if mutex_violation {
            "two vCPUs in one critical section (see failure)".to_string()
        } else if !owners_left.is_empty() && ok {
            format!("locks still owned at the end: {owners_left:?}")
        } else {
            "no second owner seen".to_string()
        },
    ));
    if !ok {
        // The run stopped at an arbitrary point: its counts and hash
        // entries say nothing.
        return;
    }
    let counts = failed(|f| matches!(f, torture::Failure::TotalCount { .. } | torture::Failure::LockCount { .. }));
    let mut detail = format!(
        "sum of {} per-lock plain counters {}, lock acquisitions {}",
        r.lock_counts.len(),
        verified.total_count,
        verified.total_acquisitions
    );
    for f in &counts {
        detail += &format!("; {f}");
    }
    checks.push(Check::new("lock_counts_match_acquisitions", counts.is_empty() && !r.lock_counts.is_empty(), detail));
    let stale = failed(|f| matches!(f, torture::Failure::StaleHash { .. }));
    checks.push(Check::new(
        "hash_table_empty",
        stale.is_empty(),
        match stale.first() {
            None => "no PV hash entries left".to_string(),
            Some(f) => format!("{f}: {:x?}", r.hash_in_use),
        },
    ));
}

/// The run's end state as the VMM recorded it, through the torture
/// verifier.
fn verify_end_state(r: &RunReport) -> torture::VerifyReport {
    let b = &r.boot;
    let locks: Vec<torture::RecordedLock> = r
        .lock_counts
        .iter()
        .zip(&r.lock_owners)
        .enumerate()
        .map(|(i, (&count, &owner))| torture::RecordedLock {
            addr: b.locks_gpa + i as u64 * b.lock_stride,
            count,
            owner,
            word: None,
        })
        .collect();
    let results: Vec<torture::TortureResult> = r
        .per_vcpu
        .iter()
        .map(|v| {
            let t = TortureTiming::from_slots(&v.timing);
            torture::TortureResult {
                cpu: v.cpu,
                lock_acquisitions: t.lock_acquisitions,
                irq_acquisitions: t.irq_acquisitions,
                ..Default::default()
            }
        })
        .collect();
    let facts = torture::SystemFacts {
        word_must_be_zero: false,
        hash_in_use: r.hash_in_use.len(),
        first_hashed_lock: r.hash_in_use.first().map_or(0, |e| e.0),
    };
    torture::check_recorded(&locks, &b.torture, &results, facts)
}

fn diagnosis(r: &RunReport) -> crate::record::Diagnosis {
    let mut missed = BTreeMap::new();
    // Every rescue counts (the VMM keeps only the first dumps, but counts
    // all by class). A dump of a vCPU that was running (not blocked) is no
    // missed wakeup.
    for (c, n) in &r.rescued_by_class {
        *missed.entry(c.name().to_string()).or_insert(0) += n;
    }
    for h in r.hang.iter().filter(|h| h.blocked) {
        *missed.entry(h.class.name().to_string()).or_insert(0) += 1;
    }
    let severity = (!missed.is_empty()).then(|| {
        "in a real guest: a hang for callers that wait with interrupts disabled (spin_lock_irq*), \
         otherwise latency until the waiter's next interrupt"
            .to_string()
    });
    let mut d = crate::record::Diagnosis {
        hang: r.hang.as_ref().and_then(|h| serde_json::to_value(h).ok()),
        hang_text: r.hang.as_ref().map(|h| h.render()),
        missed_wakeups: missed,
        real_guest_severity: severity,
        holds: r.holds.clone(),
        stalls_skipped: r.stalls_skipped,
        vcpus: Vec::new(),
        vcpus_text: None,
        race_diagram: crate::race_diagram::for_report(r).map(|d| d.render()),
        dropped: r.dropped,
        kernel_warnings: r.console.iter().filter_map(|l| crate::record::KernelWarning::parse(l)).collect(),
    };
    if r.status != RunStatus::Ok {
        attach_dumps(&mut d, r);
    }
    d
}
