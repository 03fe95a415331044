//! The page-wake section of a report: for `page-wake` runs, per (wake
//! path, queue lock, vCPUs, host CPUs), what one `unlock_page()` that saw
//! PG_waiters costs: tasks woken, entries visited and time in the wake walk
//! (queue lock held), the worst walk, and how often waiters re-queued.
//! This is the thread of the seed ("silence soft lockups from
//! unlock_page"): the old path against the 2020 rewrite. Pure functions of
//! the records.

use super::table::{cell as e, groups, lock_event as ev, OkRuns};
use crate::record::Record;
use crate::stats::Estimate;
use pvlock_abi::Workload;

/// One group of page-wake runs.
#[derive(Debug, Clone)]
pub struct PageWakeRow {
    pub page_wake: String,
    pub queue_lock: String,
    pub vcpus: u32,
    pub host_cpus: u32,
    pub runs: usize,
    pub ok: usize,
    /// Entries queued when the walk started, per `wake_up_page_bit()`.
    pub queued_per_unlock: Option<Estimate>,
    /// Tasks woken per `wake_up_page_bit()`.
    pub woken_per_unlock: Option<Estimate>,
    /// Entries the walk visited per `wake_up_page_bit()`.
    pub visits_per_unlock: Option<Estimate>,
    /// Mean walk, us (queue lock held).
    pub walk_us: Option<Estimate>,
    /// Longest walk of the run, us.
    pub max_walk_us: Option<Estimate>,
    /// Cost of one entry visit in the walk, ns, visits the vCPU was
    /// preempted in left out.
    pub visit_ns: Option<Estimate>,
    /// The walk per unlock with the preempted visits left out, us:
    /// `visit_ns` x visits per unlock.
    pub walk_unstalled_us: Option<Estimate>,
    /// Share of the visits left out as preempted.
    pub stalled_visit_share: Option<Estimate>,
    /// Re-queues per wait (woken, lost the bit, queued again).
    pub requeues_per_wait: Option<Estimate>,
    /// Page locks and waits per second (all tasks).
    pub ops_per_sec: Option<Estimate>,
}

/// One entry visit's cost, ns, preempted visits left out.
fn visit_ns(r: &Record) -> Option<f64> {
    let n = ev(r, "page_wake_visits_timed");
    (n > 0.0 && r.tsc_khz > 0).then(|| ev(r, "page_wake_visit_cycles") / n / r.tsc_khz as f64 * 1e6)
}

/// The page-wake rows of `records` (empty without page-wake runs).
pub fn rows(records: &[Record]) -> Vec<PageWakeRow> {
    groups(records, Workload::PageWake, |r| r.config.lock.page_wake.name())
        .into_iter()
        .map(|((page_wake, queue_lock, vcpus, host_cpus), rs)| {
            let ok = OkRuns::of(&rs);
            let per = |f: &dyn Fn(&Record) -> Option<f64>| ok.estimate(f);
            let per_unlock = |r: &Record, name: &str| {
                let n = ev(r, "page_wake_calls");
                (n > 0.0).then(|| ev(r, name) / n)
            };
            let cycles_us = |r: &Record, c: f64| (r.tsc_khz > 0).then(|| c / r.tsc_khz as f64 * 1e3);
            PageWakeRow {
                page_wake,
                queue_lock,
                vcpus,
                host_cpus,
                runs: rs.len(),
                ok: ok.ok.len(),
                queued_per_unlock: per(&|r| per_unlock(r, "page_wake_queued")),
                woken_per_unlock: per(&|r| per_unlock(r, "page_wake_woken")),
                visits_per_unlock: per(&|r| per_unlock(r, "page_wake_visits")),
                walk_us: per(&|r| per_unlock(r, "page_wake_loop_cycles").and_then(|c| cycles_us(r, c))),
                max_walk_us: per(&|r| cycles_us(r, ev(r, "page_wake_loop_max_cycles"))),
                visit_ns: per(&|r| visit_ns(r)),
                walk_unstalled_us: per(&|r| Some(visit_ns(r)? * per_unlock(r, "page_wake_visits")? / 1e3)),
                stalled_visit_share: per(&|r| {
                    let n = ev(r, "page_wake_visits_timed") + ev(r, "page_wake_visits_stalled");
                    (n > 0.0).then(|| ev(r, "page_wake_visits_stalled") / n)
                }),
                requeues_per_wait: per(&|r| {
                    let w = ev(r, "page_waits");
                    (w > 0.0).then(|| ev(r, "page_wait_requeue") / w)
                }),
                ops_per_sec: per(&|r| Some(r.acquisitions_per_sec)),
            }
        })
        .collect()
}

/// The markdown section ("" without page-wake runs).
pub fn markdown(rows: &[PageWakeRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n## Page wake-ups (page-wake)\n\n\
         Per wake path and vCPUs (one task per vCPU, all on the pages of the run: the waiters), ok runs, \
         mean ± 95% interval over repeats. Per `wake_up_page_bit()` (an `unlock_page()` that saw \
         PG_waiters): entries *queued* when the walk started, tasks *woken*, entries *visited*. \
         *ns / visit*: one entry visit of the walk (wake function, kick included) with the visits \
         in which the waker's vCPU was preempted (longer than `STALL_GAP_CYCLES`) left out; \
         *walk us* = ns / visit x visits / unlock: the queue-lock hold of one walk without host \
         preemption. *raw walk us* and *longest*: the guest-TSC walk as measured, preemption \
         included (on an overcommitted host these rank host scheduling, not wake paths); \
         *stalled*: share of visits left out. *re-queues* per wait. Compare paths within one run of \
         the matrix.\n\n\
         | path | queue lock | vCPUs | host CPUs | runs ok | queued / unlock | woken / unlock | visited / unlock | ns / visit | walk us | raw walk us | longest us | stalled | re-queues / wait | ops/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.page_wake,
            r.queue_lock,
            r.vcpus,
            r.host_cpus,
            r.ok,
            r.runs,
            e(r.queued_per_unlock, 1),
            e(r.woken_per_unlock, 2),
            e(r.visits_per_unlock, 2),
            e(r.visit_ns, 0),
            e(r.walk_unstalled_us, 2),
            e(r.walk_us, 1),
            e(r.max_walk_us, 0),
            e(r.stalled_visit_share, 3),
            e(r.requeues_per_wait, 2),
            e(r.ops_per_sec, 0),
        ));
    }
    out
}
