//! Where every vCPU is, and the race drawn, on KVM: a vCPU that spins
//! without exits is named by function and source line; the directed R1 run
//! on pv-v4.5 draws the double hash from its own trace and names the lock
//! code a BUG came from; a `--trace` export parses as Chrome trace-event
//! JSON with properly nested spans on one track per vCPU. Plus, without
//! KVM, the guest ELF symbolizes.

use pvlock::config::RunConfig;
use pvlock::record::Record;
use pvlock::repro::{find, run_repro, Mode};
use pvlock::runner::{run_one, run_one_with_report, GUEST_ELF};
use pvlock_abi::{Variant, Workload};
use pvlock_vmm::symbolize::Symbolizer;
use pvlock_vmm::{RunStatus, StopHandle};
use serde_json::Value;
use std::collections::BTreeMap;

const WORKLOADS_RS: &str = include_str!("../../guest/bin/src/workloads.rs");

/// The line numbers of the spin-forever loop: the header above the marker
/// comment and the body below it.
fn spin_loop_lines() -> [u64; 2] {
    let marker = WORKLOADS_RS.lines().position(|l| l.contains("spin-forever-loop")).expect("marker in workloads.rs");
    // 1-based: the marker is on line marker + 1.
    [marker as u64, marker as u64 + 2]
}

fn location(r: &Record, cpu: usize) -> &Value {
    &r.diagnosis.vcpus[cpu]["location"]
}

#[test]
fn the_guest_elf_symbolizes_without_kvm() {
    use object::{Object, ObjectSymbol};
    let elf = object::File::parse(GUEST_ELF).unwrap();
    let sym = elf
        .symbols()
        .find(|s| s.name().is_ok_and(|n| n.contains("spin_forever")))
        .expect("spin_forever in the guest's symbol table");
    let s = Symbolizer::new(GUEST_ELF).unwrap();
    let frames = s.frames(sym.address());
    assert!(
        frames
            .iter()
            .any(|f| f.function.ends_with("workloads::spin_forever") && f.file == "guest/bin/src/workloads.rs"),
        "{frames:?}"
    );
}

#[test]
fn a_vcpu_spinning_without_exits_is_named_by_function_and_line() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let rc =
        RunConfig { workload: Workload::SpinForever, vcpus: 2, host_cpus: 2, timeout_ms: 300, ..Default::default() };
    let r = run_one(&rc, "", GUEST_ELF, &StopHandle::new()).unwrap();
    assert_eq!(r.status, RunStatus::Hang, "{}", r.summary);
    // Every vCPU is dumped, the finished one too.
    assert_eq!(r.diagnosis.vcpus.len(), 2, "{:?}", r.diagnosis.vcpus_text);
    let at = location(&r, 0);
    assert!(at["function"].as_str().unwrap().ends_with("workloads::spin_forever"), "{at}");
    assert_eq!(at["file"], "guest/bin/src/workloads.rs", "{at}");
    let line = at["line"].as_u64().unwrap();
    assert!(spin_loop_lines().contains(&line), "line {line}, loop at {:?}", spin_loop_lines());
    let regs = &r.diagnosis.vcpus[0]["regs"];
    let rip = regs["rip"].as_u64().unwrap();
    assert!((pvlock_abi::GUEST_IMAGE_GPA..pvlock_abi::GUEST_IMAGE_GPA + (4 << 20)).contains(&rip), "{regs}");
    assert!(regs["rsp"].as_u64().unwrap() > regs["rip"].as_u64().unwrap(), "the stack is above the image: {regs}");
    assert_eq!(r.diagnosis.vcpus[0]["phase"], "running");
    assert_eq!(r.diagnosis.vcpus[1]["phase"], "done");
    let text = r.diagnosis.vcpus_text.as_deref().unwrap();
    assert!(text.contains("Call Trace:") && text.contains("guest_main") && text.contains("RIP: "), "{text}");
    // The record carries no path of this machine.
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains(env!("CARGO_MANIFEST_DIR")), "a build path leaked into the record");
}

#[test]
fn directed_r1_on_v4_5_is_drawn_from_its_own_trace() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let repro = find("double-hash").unwrap();
    let res =
        run_repro(&repro, Variant::PvV45, Mode::Directed, 3, 1, 8_000, GUEST_ELF, &StopHandle::new(), |_| {}).unwrap();
    let hit = res.runs.iter().find(|o| o.detected).unwrap_or_else(|| panic!("not detected: {:?}", res.runs));
    let d = hit.race_diagram.as_deref().unwrap_or_else(|| panic!("no diagram: {}", hit.summary));
    let pos = |needle: &str| d.find(needle).unwrap_or_else(|| panic!("{needle:?} not in\n{d}"));
    // R1 (229ce6315747): the holder is preempted at the hand-off, the head
    // hashes itself and halts with vcpu_halted, the holder's
    // pv_kick_node() then sees halted and hashes the head again.
    assert!(d.contains("(lock holder)") && d.contains("(queue head)"), "{d}");
    assert!(pos("arch_mcs_spin_unlock_contended") < pos("lp = pv_hash(lock, pn)"), "{d}");
    assert!(pos("lp = pv_hash(lock, pn)") < pos("WRITE_ONCE(pn->state, vcpu_halted)"), "{d}");
    assert!(pos("WRITE_ONCE(pn->state, vcpu_halted)") < pos("cmpxchg(&pn->state, vcpu_halted, vcpu_hashed)"), "{d}");
    assert!(pos("cmpxchg(&pn->state, vcpu_halted, vcpu_hashed)") < pos("DOUBLE HASH"), "{d}");
    // The head's steps sit in the second column, right of the holder's.
    let col = |needle: &str| d.lines().find(|l| l.contains(needle)).and_then(|l| l.find(needle)).unwrap();
    assert!(col("lp = pv_hash") > col("pv_kick_node()"), "{d}");
    // The summary names the lock code the BUG was raised in (the BUG's own
    // location tracks its caller through Platform::event).
    assert!(hit.summary.contains("BUG at guest/lib/src/hash.rs:"), "{}", hit.summary);
}

/// Properly nested: on one track, a span that starts inside another ends
/// inside it.
fn check_nesting(spans: &mut [(f64, f64, String)], tid: u64) {
    spans.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut stack: Vec<(f64, f64)> = Vec::new();
    for (ts, end, name) in spans.iter() {
        // JSON carries nanosecond digits; allow float rounding of ts + dur.
        while stack.last().is_some_and(|&(_, e)| e <= *ts + 1e-6) {
            stack.pop();
        }
        if let Some(&(s, e)) = stack.last() {
            assert!(*end <= e + 1e-6, "vCPU {tid}: {name} [{ts}, {end}] overlaps [{s}, {e}] without nesting");
        }
        stack.push((*ts, *end));
    }
}

#[test]
fn a_trace_export_is_chrome_trace_event_json_with_a_track_per_vcpu() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let mut rc = RunConfig {
        workload: Workload::Torture,
        vcpus: 3,
        host_cpus: 2,
        duration_ms: 60,
        timeout_ms: 20_000,
        ..Default::default()
    };
    rc.lock.variant = Variant::PvV48;
    rc.torture.locks = 2;
    rc.torture.nest = 2;
    rc.torture.irq_prob = 0.01;
    rc.enable_trace_export();
    rc.validate().unwrap();
    let (rec, report) = run_one_with_report(&rc, "", GUEST_ELF, &StopHandle::new()).unwrap();
    assert_eq!(rec.status, RunStatus::Ok, "{}", rec.summary);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.json");
    pvlock::trace_export::write_run(&path, &rec, &report).unwrap();
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("the export is JSON");

    // The JSON Object Format: traceEvents plus optional metadata.
    assert_eq!(v["displayTimeUnit"], "ns");
    let events = v["traceEvents"].as_array().expect("traceEvents array");
    let mut spans: BTreeMap<u64, Vec<(f64, f64, String)>> = BTreeMap::new();
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    for e in events {
        let ph = e["ph"].as_str().expect("every event has a phase");
        assert!(e["pid"].is_u64() && e["tid"].is_u64() && e["name"].is_string(), "{e}");
        let tid = e["tid"].as_u64().unwrap();
        match ph {
            "M" => {
                if e["name"] == "thread_name" {
                    names.insert(tid, e["args"]["name"].as_str().unwrap().to_string());
                }
            }
            "X" => {
                let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
                assert!(ts >= 0.0 && dur >= 0.0, "{e}");
                let name = e["name"].as_str().unwrap();
                assert!(["spinning", "holding", "waiting", "stalled", "interrupt"].contains(&name), "{e}");
                spans.entry(tid).or_default().push((ts, ts + dur, name.to_string()));
            }
            "i" => {
                assert_eq!(e["s"], "t", "instant events are thread-scoped: {e}");
                assert!(e["ts"].as_f64().unwrap() >= 0.0);
            }
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[&2], "vCPU 2");
    for (tid, s) in spans.iter_mut() {
        for kind in ["spinning", "holding"] {
            assert!(s.iter().any(|x| x.2 == kind), "vCPU {tid} has no {kind} span");
        }
        check_nesting(s, *tid);
    }
    // A short run fits whole: nothing was overwritten, and every
    // acquisition is a holding span.
    let lost = &v["otherData"]["lost_events_per_vcpu"];
    assert!((0..3).all(|c| lost[c.to_string()] == 0), "{lost}");
    let holding: usize = spans.values().map(|s| s.iter().filter(|x| x.2 == "holding").count()).sum();
    let acquired: u64 = report.per_vcpu.iter().map(|v| v.timing[0] + v.timing[1]).sum();
    assert_eq!(holding as u64, acquired, "one holding span per lock acquisition");
}
