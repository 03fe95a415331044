//! The quick bench end to end through the library API (about 60 s on the
//! 2-CPU development machine; needs KVM).

use pvlock::bench::{run_bench, BenchOptions, RATIO_PV_OVER_TICKET, RATIO_UNCONTENDED};
use pvlock::runner::GUEST_ELF;
use pvlock_vmm::StopHandle;
use serde_json::Value;

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x}");
    x
}

#[test]
fn quick_bench_writes_its_results() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let json = d.path().join("copy/bench.json");
    let opts = BenchOptions {
        quick: true,
        out: d.path().join("results"),
        json: Some(json.clone()),
        progress: false,
        kernel_tree: None,
    };
    let t = std::time::Instant::now();
    let out = run_bench(&opts, GUEST_ELF, &StopHandle::new()).unwrap();
    eprintln!("quick bench: {:.1} s", t.elapsed().as_secs_f64());
    assert!(!out.aborted);

    // The copy and the result directory hold the same bench.json.
    let body = std::fs::read(&json).unwrap();
    assert_eq!(body, std::fs::read(out.dir.join("bench.json")).unwrap());
    assert!(out.dir.starts_with(d.path().join("results/bench")));
    for f in ["report.md", "runs.jsonl", "throughput_2host.svg", "guest_over_host.svg", "readme-section.md"] {
        assert!(out.dir.join(f).is_file(), "{f} missing");
    }
    let svg = std::fs::read_to_string(out.dir.join("throughput_2host.svg")).unwrap();
    roxmltree::Document::parse(&svg).expect("the throughput plot is valid XML");

    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["complete"], true);
    for k in ["p50", "p99", "max"] {
        positive(&v["kick_wake_us"][k], &format!("kick_wake_us.{k}"));
        positive(&v["kick_wake_tuned_us"][k], &format!("kick_wake_tuned_us.{k}"));
        positive(&v["kick_wake_flag_us"][k], &format!("kick_wake_flag_us.{k}"));
    }
    // The exit's legs are timed on every exit; the VMM stamps fall between
    // the guest's reads around each one, whatever the load: one clock.
    let legs = &v["wake_legs"];
    let exit: Vec<&str> = legs["exit"].as_array().unwrap().iter().map(|l| l["leg"].as_str().unwrap()).collect();
    assert_eq!(exit, ["exit_entry", "vmm_turnaround", "resume"], "{legs}");
    let (lo, hi) = (legs["tsc_offset_us"][0].as_f64().unwrap(), legs["tsc_offset_us"][1].as_f64().unwrap());
    assert!(lo <= 0.0 && 0.0 <= hi, "host TSC - guest TSC in [{lo}, {hi}] us");
    positive(&v["mmio_exit_us"]["mean"], "mmio_exit_us");
    positive(&v["kick_store_us"]["mean"], "kick_store_us");
    assert!(v["disabled_window_ns"]["mean"].is_number());
    let rows = v["throughput"].as_array().expect("throughput rows");
    // 4 vCPU counts x 5 variants without stalls, 5 variants with stalls at 8/2.
    assert_eq!(rows.len(), 25);
    for r in rows {
        positive(&r["acq_per_sec"]["mean"], &format!("acq/s of {r}"));
        assert!(r["acq_per_sec"]["n"].as_u64().unwrap() >= 2, "a single run: {r}");
    }
    let ratio = positive(&v["ratios"][RATIO_PV_OVER_TICKET]["value"], RATIO_PV_OVER_TICKET);
    assert!(ratio > 1.0, "pv-upstream slower than ticket at 4x overcommit: {ratio}");
    positive(&v["ratios"][RATIO_UNCONTENDED]["value"], RATIO_UNCONTENDED);
    let ttd = &v["time_to_detect"][0];
    assert_eq!(ttd["repro"], "double-hash");
    // Kick -> wake (guest poll, VMM poll), overcommit, uncontended (two),
    // bookkeeping, boot slope.
    assert_eq!(v["goals"].as_array().unwrap().len(), 7);
    for k in ["p50", "p99"] {
        positive(&v["kick_wake_guest_poll_us"][k], &format!("kick_wake_guest_poll_us.{k}"));
    }
    assert_eq!(v["poll_cost"].as_array().unwrap().len(), 6, "2 vCPU counts x 3 poll modes");
    assert_eq!(v["sweep"]["rows"].as_array().unwrap().len(), 3);
    positive(&v["sweep"]["rows"][0]["boot_ms"]["mean"], "sweep boot_ms");
    positive(&v["overhead"]["torture_over_loop"]["value"], "torture_over_loop");
}
