//! Page wait queues in the real guest on KVM (issue 18): the waker of
//! Linus's July 2020 RFC, held by the VMM between `list_del_init()` and
//! `wake_up_state(target)`, wakes a task that has returned and exited, and
//! the VMM reports the use-after-free with both vCPUs, the object and the
//! waker's step. The variants that do it right, held at the same point
//! (between their wakeup and their unlink), keep the waiter in the queue
//! until the waker lets go: every hold ends by its timeout, no task exits
//! under it, no use-after-free. The WOKEN-after-wake mutant loses a wakeup.
//! Each run is one to a few hundred ms of guest time.

use pvlock::config::RunConfig;
use pvlock::record::Record;
use pvlock::repro::{self, Mode};
use pvlock::runner::{run_one, GUEST_ELF};
use pvlock_abi::{FreedObject, PageWakeVariant, Variant, WakeStep, Window, Workload};
use pvlock_vmm::{GuestFailure, HoldRelease, HoldRule, HoldUntil, RunStatus, StopHandle};

fn run(rc: &RunConfig) -> Record {
    rc.validate().expect("valid config");
    run_one(rc, "", GUEST_ELF, &StopHandle::new()).expect("machine builds")
}

fn directed(name: &str) -> RunConfig {
    let r = repro::find(name).expect("in the catalog");
    (r.build)(r.default_variant, Mode::Directed, 1, 3_000)
}

#[test]
fn the_rfc_wakes_an_exited_task_at_the_first_directed_try() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let rc = directed("page-wake-uaf");
    assert_eq!(rc.lock.page_wake, PageWakeVariant::Rfc2020);
    let r = run(&rc);
    let Some(GuestFailure::UseAfterFree { cpu, owner, object, step, file, .. }) = &r.failure else {
        panic!("expected a use-after-free, got {:?}: {}", r.status, r.summary)
    };
    assert_eq!(r.status, RunStatus::GuestCrash);
    assert_eq!((*object, *step), (FreedObject::Task, WakeStep::WakeTask), "{}", r.summary);
    assert_ne!(cpu, owner, "the waker and the exited task are different vCPUs: {}", r.summary);
    assert!(file.ends_with("sleeping/page.rs"), "names the wake function's line: {file}");
    // The hold that let the waiter exit ended by that exit (on an
    // overloaded host an earlier hold can run out first: the run, not the
    // hold, is the "first try").
    let h = r.diagnosis.holds.last().expect("a hold");
    assert_eq!(
        (h.window, h.released_by),
        (Some(Window::PageWakeBetween), HoldRelease::Condition),
        "{:?}",
        r.diagnosis.holds
    );
    assert!(r.summary.contains(&format!("vCPU {cpu}")) && r.summary.contains(&format!("vCPU {owner}'s task")));
    // The race diagram from the trace: both vCPUs' columns, the waker's
    // unlink and stall, the waiter's return and exit before the access.
    let d = r.diagnosis.race_diagram.as_deref().expect("a race diagram of the use-after-free");
    assert!(d.contains(&format!("vCPU {cpu} (waker: unlock_page())")), "{d}");
    assert!(d.contains(&format!("vCPU {owner} (waiter: wait_on_page_bit_common())")), "{d}");
    let pos = |needle: &str| d.find(needle).unwrap_or_else(|| panic!("{needle:?} not in\n{d}"));
    assert!(pos("list_del_init(&wait->entry);") < pos("<preempted at page-wake-between>"), "{d}");
    assert!(pos("<preempted at page-wake-between>") < pos("break; <unlinked: no queue lock taken>"), "{d}");
    assert!(pos("break; <unlinked") < pos("do_exit(); <task freed>"), "{d}");
    assert!(
        pos("do_exit(); <task freed>") < pos(&format!("<USE-AFTER-FREE: wake-task on vCPU {owner}'s freed task>")),
        "{d}"
    );
    assert!(d.contains("<caught at guest/lib/src/sleeping/page.rs:"), "{d}");
}

#[test]
fn unlinking_before_reading_private_reads_a_returned_frame() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let r = run(&directed("page-wake-entry-uaf"));
    let Some(GuestFailure::UseAfterFree { object, step, .. }) = &r.failure else {
        panic!("expected a use-after-free, got {:?}: {}", r.status, r.summary)
    };
    assert_eq!((*object, *step), (FreedObject::WaitEntry, WakeStep::ReadPrivate), "{}", r.summary);
}

#[test]
fn the_right_orders_keep_the_waiter_queued_while_the_waker_is_held() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    for v in
        [PageWakeVariant::V5_7, PageWakeVariant::OlegWoken, PageWakeVariant::Rewrite2a9127, PageWakeVariant::Upstream]
    {
        let mut rc = repro::page_wake_base(Variant::PvUpstream, v, 1, 600);
        rc.hypervisor.interrupt_us = 300;
        rc.preempt.schedule = vec![HoldRule {
            until: HoldUntil::Window(Window::PageTaskExit),
            timeout_us: 5_000,
            count: 0,
            ..HoldRule::at(Window::PageWakeBetween)
        }];
        let r = run(&rc);
        assert_eq!(r.status, RunStatus::Ok, "{}: {}", v.name(), r.summary);
        let holds = &r.diagnosis.holds;
        assert!(!holds.is_empty(), "{}: the waker was never held", v.name());
        // The held waker's own target cannot leave while its entry is
        // linked: holds run to their timeout (the exact property, with one
        // waiter, is guest/lib/tests/host_waitqueue.rs).
        assert!(holds.iter().any(|h| h.released_by == HoldRelease::Timeout), "{}: {holds:?}", v.name());
        let ev = |k: &str| r.lock_events.get(k).copied().unwrap_or(0);
        assert!(ev("page_waits") > 0 && ev("page_task_exits") > 0 && ev("page_wake_woken") > 0, "{:?}", r.lock_events);
    }
}

#[test]
fn woken_after_the_wakeup_is_a_lost_wakeup() {
    if !pvlock::kvm_available_for_tests() {
        return;
    }
    let r = run(&directed("page-wake-lost-woken"));
    assert_eq!(r.status, RunStatus::Hang, "{}", r.summary);
    assert!(
        matches!(r.failure, Some(GuestFailure::BlockedWait { .. } | GuestFailure::MissedWakeup { .. })),
        "{}",
        r.summary
    );
}

#[test]
fn page_wake_refuses_nesting_interrupts_and_too_many_pages() {
    let mut rc = repro::page_wake_base(Variant::PvUpstream, PageWakeVariant::Upstream, 1, 100);
    assert_eq!(rc.workload, Workload::PageWake);
    rc.torture.nest = 2;
    assert!(rc.validate().unwrap_err().to_string().contains("torture.nest"));
    let mut rc = repro::page_wake_base(Variant::PvUpstream, PageWakeVariant::Upstream, 1, 100);
    rc.torture.irq_prob = 0.01;
    assert!(rc.validate().unwrap_err().to_string().contains("torture.irq_prob"));
    let mut rc = repro::page_wake_base(Variant::PvUpstream, PageWakeVariant::Upstream, 1, 100);
    rc.torture.locks = pvlock_abi::MAX_PAGES as u32 + 1;
    assert!(rc.validate().unwrap_err().to_string().contains("torture.locks"));
}

#[test]
fn page_wake_reproducers_take_the_wake_path_from_the_cli() {
    let bin = env!("CARGO_BIN_EXE_pvlock");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin).args(args).output().expect("pvlock runs");
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = run(&["repro", "page-wake-uaf", "--page-wake", "page-wake-v9", "--seeds", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown page wake variant `page-wake-v9`") && err.contains("page-wake-upstream"), "{err}");
    let (code, err) = run(&["repro", "double-hash", "--page-wake", "page-wake-upstream", "--seeds", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`double-hash` is not a page-wake reproducer") && err.contains("page-wake-uaf"), "{err}");
    let (code, err) = run(&["repro", "--all", "--page-wake", "page-wake-upstream"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--page-wake go with one reproducer"), "{err}");
    // The chosen path is the run's `lock.page_wake`, the entry's window kept.
    let r = repro::find("page-wake-uaf").unwrap();
    let chosen = repro::Repro { page_wake: Some(PageWakeVariant::Upstream), ..r };
    let rc = repro::config_for(&chosen, &repro::Target::variant(r.default_variant), Mode::Directed, 1, 600).unwrap();
    assert_eq!(rc.lock.page_wake, PageWakeVariant::Upstream);
    assert!(matches!(rc.preempt.schedule[0].at, pvlock_vmm::config::HoldAt::Window(Window::PageWakeBetween)));
}
