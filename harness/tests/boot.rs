//! Boots the real guest on KVM: the foundation's end-to-end checks.
//! Under `CI=true` a missing /dev/kvm fails these tests; elsewhere they skip
//! with the reason printed.

use pvlock::config::RunConfig;
use pvlock::record::Record;
use pvlock::runner::{run_one, GUEST_ELF};
use pvlock_abi::{Window, Workload};
use pvlock_vmm::{RunStatus, StopHandle};

fn run(rc: RunConfig) -> Record {
    run_one(&rc, "", GUEST_ELF, &StopHandle::new()).expect("machine builds")
}

fn smoke(vcpus: u32, host_cpus: u32) -> RunConfig {
    RunConfig {
        name: format!("smoke-{vcpus}x{host_cpus}"),
        vcpus,
        host_cpus,
        iterations: 5000,
        timeout_ms: 60_000,
        ..Default::default()
    }
}

fn assert_ok(r: &Record) {
    assert_eq!(r.status, RunStatus::Ok, "{}: {}\nconsole: {:?}", r.name, r.summary, r.console);
    assert!(r.all_checks_passed(), "{:?}", r.checks);
}

#[test]
fn smoke_counts_are_exact_on_1_2_4_and_8_vcpus() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    for (v, h) in [(1, 1), (2, 2), (4, 2), (8, 2)] {
        let r = run(smoke(v, h));
        assert_ok(&r);
        let want = v as u64 * 5000;
        assert!(r
            .checks
            .iter()
            .any(|c| c.name == "plain_counter_under_lock" && c.detail.starts_with(&want.to_string())));
        assert_eq!(r.per_vcpu.len(), v as usize);
    }
}

#[test]
fn overcommitted_smoke_uses_wait_and_kick() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    // 6 vCPUs on one host CPU: lock holders get descheduled by the host, so
    // waiters back off into pv_wait and get kicked.
    let mut rc = smoke(6, 1);
    rc.iterations = 20_000;
    let r = run(rc);
    assert_ok(&r);
    assert!(r.vmm["waits"] > 0, "no waits under 6x overcommit: {:?}", r.vmm);
}

#[test]
fn guest_fault_is_a_guest_crash_with_its_rip() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let r = run(RunConfig { workload: Workload::Fault, vcpus: 2, timeout_ms: 10_000, ..Default::default() });
    assert_eq!(r.status, RunStatus::GuestCrash, "{}", r.summary);
    let f = serde_json::to_value(r.failure.expect("failure recorded")).unwrap();
    assert_eq!(f["kind"], "triple-fault");
    assert_eq!(f["cpu"], 0);
    let rip = f["rip"].as_u64().unwrap();
    assert!((pvlock_abi::GUEST_IMAGE_GPA..pvlock_abi::GUEST_IMAGE_GPA + (4 << 20)).contains(&rip), "rip {rip:#x}");
}

#[test]
fn out_of_range_doorbell_pointer_is_reported_not_followed() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let r = run(RunConfig { workload: Workload::BadPointer, vcpus: 2, timeout_ms: 10_000, ..Default::default() });
    assert_eq!(r.status, RunStatus::GuestCrash, "{}", r.summary);
    let f = serde_json::to_value(r.failure.unwrap()).unwrap();
    assert_eq!(f["kind"], "abi-violation");
    assert!(f["detail"].as_str().unwrap().contains("outside guest RAM"), "{f}");
}

#[test]
fn guest_panic_carries_file_line_and_message() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let r =
        run(RunConfig { workload: Workload::Panic, vcpus: 1, host_cpus: 1, timeout_ms: 10_000, ..Default::default() });
    assert_eq!(r.status, RunStatus::GuestCrash);
    let f = serde_json::to_value(r.failure.unwrap()).unwrap();
    assert_eq!(f["kind"], "panic");
    assert!(f["file"].as_str().unwrap().ends_with("workloads.rs"), "{f}");
    assert!(f["line"].as_u64().unwrap() > 0);
    assert!(f["message"].as_str().unwrap().contains("self-test: a guest assertion on vCPU 0"), "{f}");
}

#[test]
fn a_wait_that_never_ends_is_a_hang_within_the_stall_timeout() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let mut rc = RunConfig { workload: Workload::WaitForever, vcpus: 2, timeout_ms: 20_000, ..Default::default() };
    rc.hypervisor.stall_timeout_ms = 300;
    let t = std::time::Instant::now();
    let r = run(rc);
    assert_eq!(r.status, RunStatus::Hang, "{}", r.summary);
    assert_eq!(r.failure.unwrap().kind(), pvlock_vmm::FailureKind::BlockedWait);
    assert!(t.elapsed().as_secs() < 10, "hang detection took {:?}", t.elapsed());
}

#[test]
fn kicks_wake_a_waiting_vcpu() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let r =
        run(RunConfig { workload: Workload::PingPong, vcpus: 2, host_cpus: 2, iterations: 200, ..Default::default() });
    assert_ok(&r);
    let k = r.timing.kick_wake_ns.unwrap();
    assert_eq!(k.count, 200);
    assert!(k.p50 > 0);
}

#[test]
fn a_stall_sets_vcpu_is_preempted_for_exactly_the_stalled_vcpu() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let mut rc = RunConfig { workload: Workload::PreemptProbe, vcpus: 3, host_cpus: 2, ..Default::default() };
    rc.preempt.windows = vec![Window::CriticalSection];
    rc.preempt.window_prob = 1.0;
    rc.preempt.window_stall_us = 20_000;
    let r = run(rc);
    assert_ok(&r);
    assert_eq!(r.vmm["stalls"], 1, "{:?}", r.vmm);
    assert!(r.vmm["stalled_us"] >= 20_000);
}

#[test]
fn random_stalls_arrive_and_are_accounted() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let mut rc = smoke(4, 2);
    rc.iterations = 200_000;
    rc.preempt.random_mean_interval_us = 2_000;
    rc.preempt.random_stall_us = 300;
    // A stall lasts at least its drawn length (mean 300 us) plus however
    // late the host wakes the sleeping vCPU thread, which grows with host
    // load. So the upper bound is measured side by side: a probe thread
    // sleeps 300 us again and again while the VM runs, and the stalls may
    // be at most 10x its mean (300 us plus the host's wake-up lateness
    // now). A unit slip (ms for us) or a stall held to the end of the run
    // is far beyond that at any load.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (r, probe_us) = std::thread::scope(|s| {
        let probe = s.spawn(|| {
            let (mut n, mut total_us) = (0u32, 0f64);
            while n < 20 || !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_micros(300));
                total_us += t.elapsed().as_secs_f64() * 1e6;
                n += 1;
            }
            total_us / n as f64
        });
        let r = run(rc);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (r, probe.join().unwrap())
    });
    assert_ok(&r);
    let stalls = r.vmm["stalls"];
    assert!(stalls > 0, "no random stalls in {} ms: {:?}", r.duration_ms, r.vmm);
    let mean_us = r.vmm["stalled_us"] as f64 / stalls as f64;
    // Every stall sleeps at least its drawn length: the mean cannot fall
    // far below 300 us whatever the load.
    assert!(mean_us > 100.0, "mean stall {mean_us} us for a 300 us exponential mean");
    let bound_us = 10.0 * probe_us.max(300.0);
    assert!(
        mean_us < bound_us,
        "mean stall {mean_us} us for a 300 us exponential mean; a 300 us host sleep took {probe_us:.0} us on average"
    );
}
