//! The hypervisor half catches what it claims to catch, on KVM: the
//! directed double hash on pv-v4.5 and not on pv-v4.8, a mutant, the
//! stolen wakeup under an unchecked wait, and a hang dump that classifies.

use pvlock::config::RunConfig;
use pvlock::repro::{find, run_repro, Mode};
use pvlock::runner::{run_one, GUEST_ELF};
use pvlock_abi::PanicKind;
use pvlock_abi::{Variant, Workload};
use pvlock_vmm::{GuestFailure, MissedWakeupClass, RunStatus, StopHandle};

fn detects(repro: &str, variant: Variant, mode: Mode, seeds: u64, budget_ms: u64) -> (usize, Vec<String>) {
    let r = find(repro).unwrap();
    let res = run_repro(&r, variant, mode, seeds, 1, budget_ms, GUEST_ELF, &StopHandle::new(), |_| {}).unwrap();
    (res.detected(), res.runs.iter().map(|o| format!("seed {}: {} {}", o.seed, o.status, o.summary)).collect())
}

#[test]
fn directed_double_hash_is_caught_on_v4_5_and_not_on_v4_8() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    // Detection stops the run at once; three seeds bound the worst case.
    let (n, runs) = detects("double-hash", Variant::PvV45, Mode::Directed, 3, 8_000);
    assert!(n >= 1, "directed double hash not caught on pv-v4.5: {runs:?}");
    let (n, runs) = detects("double-hash", Variant::PvV48, Mode::Directed, 1, 2_000);
    assert_eq!(n, 0, "false alarm on pv-v4.8: {runs:?}");
}

#[test]
fn random_double_hash_is_caught_on_v4_5() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let (n, runs) = detects("double-hash", Variant::PvV45, Mode::Random, 3, 8_000);
    assert!(n >= 1, "{runs:?}");
}

#[test]
fn a_mutant_is_caught() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let (n, runs) = detects("halted-head", Variant::MutantHaltedHead, Mode::Random, 3, 8_000);
    assert!(n >= 1, "mutant-halted-head not caught: {runs:?}");
}

#[test]
fn stolen_wakeup_under_an_unchecked_wait_is_classified() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let (n, runs) = detects("stolen-wakeup", Variant::PvV48, Mode::Random, 3, 8_000);
    assert!(n >= 1, "{runs:?}");
    assert!(runs.iter().any(|r| r.contains(MissedWakeupClass::WaiterNotHashed.name())), "{runs:?}");
}

#[test]
fn the_watchdog_dumps_and_classifies_a_wait_that_never_ends() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let mut rc = RunConfig { workload: Workload::WaitForever, vcpus: 2, timeout_ms: 20_000, ..Default::default() };
    rc.hypervisor.stall_timeout_ms = 200;
    let r = run_one(&rc, "", GUEST_ELF, &StopHandle::new()).unwrap();
    assert_eq!(r.status, RunStatus::Hang);
    let hang = r.diagnosis.hang.expect("a hang carries its dump");
    assert_eq!(hang["blocked_cpu"], 0);
    assert!(hang["class"].is_string());
    assert_eq!(hang["vcpus"].as_array().unwrap().len(), 2);
    assert!(r.diagnosis.hang_text.unwrap().contains("vCPU 0"));
}

#[test]
fn a_guest_bug_names_the_lock_code_line() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    // mutant-slow-before-hash: the unlocker finds no hash entry and
    // pv_unhash() BUGs. #[track_caller] through Platform::bug and
    // GuestCpu::fail: the record names that line in the lock library,
    // not the guest's failure helper.
    let r = find("slow-before-hash").unwrap();
    let mut crashes = Vec::new();
    for seed in 1..=3 {
        let rc = (r.build)(Variant::MutantSlowBeforeHash, Mode::Directed, seed, 5_000);
        let rec = run_one(&rc, "", GUEST_ELF, &StopHandle::new()).unwrap();
        if let Some(GuestFailure::Panic { what: PanicKind::Bug, file, line, .. }) = &rec.failure {
            crashes.push((file.clone(), *line));
            break;
        }
    }
    let (file, line) = crashes.first().expect("the mutant's BUG in 3 seeds");
    assert!(file.starts_with("guest/lib/src/") && *line > 0, "{file}:{line}");
    assert!(!file.contains("cpu.rs"), "{file}:{line}");
}
