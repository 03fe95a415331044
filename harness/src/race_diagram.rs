//! Race diagrams in the style of kernel fix commits (one column per vCPU
//! involved, one row per step, time going down), drawn from the trace of
//! the run that hit the race: a double hash, a missed wakeup by class, a
//! stale hash entry, a page waker's use-after-free.
//!
//! The rows are the guest's trace events (`pvlock_abi::TraceEvent`) on the
//! lock concerned, merged across the involved vCPUs by TSC (one TSC for all
//! vCPUs on these hosts), each spelled as the kernel step it records.

use pvlock_abi::{FreedObject, TraceEntry, TraceEvent, WakeStep, Window};
use pvlock_vmm::trace::VcpuTrace;
use pvlock_vmm::watchdog::HangReport;
use pvlock_vmm::{GuestFailure, RunReport};
use serde::Serialize;

/// `pv_hash()`'s trace arg for an insert of a lock that is already hashed.
const DOUBLE_HASH_ARG: u16 = u16::MAX;
/// Most rows drawn; longer histories keep their first and last steps.
const MAX_ROWS: usize = 40;

/// What was detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Race {
    /// `cpu` inserted `lock` into the PV hash table while it was there already.
    DoubleHash { cpu: u32, lock: u64, tsc: u64 },
    /// `cpu` waits on `lock` and nothing will wake it (class as the watchdog
    /// judged it; a stale entry is one of the classes).
    MissedWakeup { cpu: u32, lock: u64, class: String },
    /// The page waker on `waker` touched the `object` of `owner` after it
    /// was freed, at `step` (source line `file:line`).
    UseAfterFree { waker: u32, owner: u32, object: FreedObject, step: WakeStep, file: String, line: u32 },
}

/// One diagram column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    pub cpu: u32,
    pub role: String,
}

/// One step: `text` in column `col`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub col: usize,
    /// Microseconds since the diagram's first step (None: not a traced step).
    pub t_us: Option<f64>,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RaceDiagram {
    pub title: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    /// Steps left out in the middle of a long history.
    pub elided: usize,
}

/// The diagram of the race a run ended with, if it was one and its
/// trace was recorded.
pub fn for_report(r: &RunReport) -> Option<RaceDiagram> {
    let race = detect(&r.traces, r.failure.as_ref(), r.hang.as_ref())?;
    build(&r.traces, &race, r.tsc_khz)
}

/// The race a run shows: the last double-hash insert in any trace, else a
/// blocked waiter's missed wakeup.
pub fn detect(traces: &[VcpuTrace], failure: Option<&GuestFailure>, hang: Option<&HangReport>) -> Option<Race> {
    if let Some(GuestFailure::UseAfterFree { cpu, owner, object, step, file, line, .. }) = failure {
        return Some(Race::UseAfterFree {
            waker: *cpu,
            owner: *owner,
            object: *object,
            step: *step,
            file: file.clone(),
            line: *line,
        });
    }
    let double = traces
        .iter()
        .flat_map(|t| t.entries.iter().map(move |e| (t.cpu, e)))
        .filter(|(_, e)| e.event == TraceEvent::Hash as u16 && e.arg == DOUBLE_HASH_ARG)
        .max_by_key(|(_, e)| e.tsc);
    if let Some((cpu, e)) = double {
        return Some(Race::DoubleHash { cpu, lock: e.lock, tsc: e.tsc });
    }
    let h = hang.filter(|h| h.blocked)?;
    let lock = h
        .lock
        .as_ref()
        .map(|l| l.addr)
        .or_else(|| h.vcpus.iter().find(|v| v.cpu == h.blocked_cpu).map(|v| v.lock).filter(|&l| l != 0))?;
    let class = match failure {
        Some(GuestFailure::MissedWakeup { class, .. }) => class.name().to_string(),
        _ => h.class.name().to_string(),
    };
    Some(Race::MissedWakeup { cpu: h.blocked_cpu, lock, class })
}

fn on_lock(e: &TraceEntry, lock: u64) -> bool {
    // Window stalls carry no lock: they belong to whatever the vCPU is doing.
    e.lock == lock || matches!(TraceEvent::from_u16(e.event), Some(TraceEvent::Window | TraceEvent::WindowResume))
}

fn has(t: &VcpuTrace, lock: u64, ev: TraceEvent, until: u64) -> bool {
    t.entries.iter().any(|e| e.lock == lock && e.event == ev as u16 && e.tsc <= until)
}

/// Draws `race` from `traces`.
pub fn build(traces: &[VcpuTrace], race: &Race, tsc_khz: u64) -> Option<RaceDiagram> {
    if let Race::UseAfterFree { .. } = race {
        return build_use_after_free(traces, race, tsc_khz);
    }
    let trace_of = |cpu: u32| traces.iter().find(|t| t.cpu == cpu);
    let (lock, end, mut cpus, title) = match race {
        Race::DoubleHash { cpu, lock, tsc } => {
            // The other party: whoever hashed this lock last before it.
            let other = traces
                .iter()
                .filter(|t| t.cpu != *cpu)
                .flat_map(|t| t.entries.iter().map(move |e| (t.cpu, e)))
                .filter(|(_, e)| {
                    e.lock == *lock && e.event == TraceEvent::Hash as u16 && e.arg != DOUBLE_HASH_ARG && e.tsc <= *tsc
                })
                .max_by_key(|(_, e)| e.tsc)
                .map(|(c, _)| c);
            let title = format!(
                "double hash: vCPU {cpu} inserted lock {lock:#x} into the PV hash table while {} entry was there",
                other.map(|c| format!("vCPU {c}'s")).unwrap_or_else(|| "another".into())
            );
            (*lock, *tsc, [Some(*cpu), other].into_iter().flatten().collect::<Vec<_>>(), title)
        }
        Race::MissedWakeup { cpu, lock, class } => {
            let end = traces.iter().flat_map(|t| t.entries.last()).map(|e| e.tsc).max().unwrap_or(0);
            // The other parties: the vCPUs that touched this lock last.
            let mut others: Vec<(u64, u32)> = traces
                .iter()
                .filter(|t| t.cpu != *cpu)
                .filter_map(|t| t.entries.iter().rev().find(|e| e.lock == *lock).map(|e| (e.tsc, t.cpu)))
                .collect();
            others.sort_unstable_by(|a, b| b.cmp(a));
            let mut cpus = vec![*cpu];
            cpus.extend(others.iter().take(2).map(|&(_, c)| c));
            let title = format!("missed wakeup ({class}): vCPU {cpu} waits on lock {lock:#x} and nothing will wake it");
            (*lock, end, cpus, title)
        }
        Race::UseAfterFree { .. } => return None,
    };
    cpus.dedup();
    trace_of(cpus[0])?;
    // Each vCPU's story starts at its last spin_lock() of this lock, or at
    // its becoming queue head if that is later (a waiter queued for long
    // would otherwise pull in every acquisition of the others meanwhile).
    let start_of = |t: &VcpuTrace| {
        t.entries
            .iter()
            .rev()
            .find(|e| {
                e.lock == lock
                    && (e.event == TraceEvent::LockEnter as u16 || e.event == TraceEvent::BecameHead as u16)
                    && e.tsc <= end
            })
            .or_else(|| t.entries.iter().find(|e| e.lock == lock))
            .map(|e| e.tsc)
    };
    let start = cpus.iter().filter_map(|&c| trace_of(c)).filter_map(start_of).min()?;
    let columns: Vec<Column> = cpus
        .iter()
        .map(|&c| {
            let t = trace_of(c);
            let role = match (race, t) {
                (Race::DoubleHash { cpu, .. }, Some(t)) if c == *cpu && has(t, lock, TraceEvent::KickNode, end) => {
                    "lock holder"
                }
                (Race::MissedWakeup { cpu, .. }, _) if c == *cpu => "waiter",
                (_, Some(t)) if has(t, lock, TraceEvent::BecameHead, end) => "queue head",
                (_, Some(t)) if has(t, lock, TraceEvent::Released, end) => "unlocker",
                _ => "",
            };
            Column { cpu: c, role: role.to_string() }
        })
        .collect();
    let mut steps: Vec<(u64, usize, &TraceEntry)> = Vec::new();
    for (col, &c) in cpus.iter().enumerate() {
        if let Some(t) = trace_of(c) {
            steps.extend(
                t.entries
                    .iter()
                    .filter(|e| e.tsc >= start && e.tsc <= end && on_lock(e, lock))
                    .map(|e| (e.tsc, col, e)),
            );
        }
    }
    let mut rows = rows_of(steps, start, tsc_khz);
    if let Race::MissedWakeup { class, .. } = race {
        rows.push(Row { col: 0, t_us: None, text: format!("... never woken ({class})") });
    }
    Some(elide(title, columns, rows))
}

/// One row per statement of each step, in TSC order, timed from `start`.
fn rows_of(mut steps: Vec<(u64, usize, &TraceEntry)>, start: u64, tsc_khz: u64) -> Vec<Row> {
    steps.sort_by_key(|&(tsc, col, _)| (tsc, col));
    let to_us = |tsc: u64| if tsc_khz > 0 { tsc.saturating_sub(start) as f64 * 1e3 / tsc_khz as f64 } else { 0.0 };
    let mut rows: Vec<Row> = Vec::new();
    for &(tsc, col, e) in &steps {
        for (i, text) in step_lines(e).into_iter().enumerate() {
            rows.push(Row { col, t_us: (i == 0).then(|| to_us(tsc)), text });
        }
    }
    rows
}

/// The diagram, with the middle of a long history left out.
fn elide(title: String, columns: Vec<Column>, mut rows: Vec<Row>) -> RaceDiagram {
    let mut elided = 0;
    if rows.len() > MAX_ROWS {
        elided = rows.len() - MAX_ROWS;
        let tail = rows.split_off(rows.len() - (MAX_ROWS - 10));
        rows.truncate(10);
        rows.push(Row { col: 0, t_us: None, text: format!("... {elided} steps ...") });
        rows.extend(tail);
    }
    RaceDiagram { title, columns, rows, elided }
}

/// The page wait queues' trace events.
fn is_page_event(ev: TraceEvent) -> bool {
    (TraceEvent::PageWaitEnter as u16..=TraceEvent::PageUseAfterFree as u16).contains(&(ev as u16))
}

/// The use-after-free of a page waker: the waker's column and the owner's
/// (the waiter whose entry or task it was), from the owner's last wait
/// before the access (or the waker's visit of its entry, if the owner's
/// start was overwritten) to the access the lifetime check caught. The
/// steps are the page events (`TraceEvent::PageWaitEnter` ..), the queue
/// lock's spin_lock()/unlock and the VMM's stalls and interrupts.
fn build_use_after_free(traces: &[VcpuTrace], race: &Race, tsc_khz: u64) -> Option<RaceDiagram> {
    let Race::UseAfterFree { waker, owner, object, step, file, line } = race else { return None };
    let trace_of = |cpu: u32| traces.iter().find(|t| t.cpu == cpu);
    let wt = trace_of(*waker)?;
    let ev_is = |e: &TraceEntry, ev: TraceEvent| e.event == ev as u16;
    let end = wt
        .entries
        .iter()
        .rev()
        .find(|e| ev_is(e, TraceEvent::PageUseAfterFree))
        .or(wt.entries.last())
        .map(|e| e.tsc)?;
    let visit =
        wt.entries.iter().rev().find(|e| ev_is(e, TraceEvent::PageVisit) && u32::from(e.arg) == *owner && e.tsc <= end);
    let queue_lock = visit.map(|e| e.lock).unwrap_or(0);
    let ot = trace_of(*owner);
    // The wait whose entry the waker visited (the owner may have waited
    // again since, in the same frame).
    let enter_by = visit.map_or(end, |v| v.tsc);
    let enter =
        ot.and_then(|t| t.entries.iter().rev().find(|e| ev_is(e, TraceEvent::PageWaitEnter) && e.tsc <= enter_by));
    // The waker's story starts at its spin_lock() of the queue before the
    // visit, so its walk is whole.
    let walk_start = visit.and_then(|v| {
        wt.entries
            .iter()
            .rev()
            .find(|e| ev_is(e, TraceEvent::LockEnter) && e.lock == queue_lock && e.tsc <= v.tsc)
            .or(Some(v))
    });
    // Each column from its own start: the waker's earlier steps (its own
    // waits as a waiter) and the owner's earlier waits are other stories.
    let waker_from = walk_start.map_or(0, |e| e.tsc);
    let owner_from = enter.map_or(waker_from, |e| e.tsc);
    let start = waker_from.min(owner_from);
    let shown = |e: &TraceEntry| {
        let Some(ev) = TraceEvent::from_u16(e.event) else { return false };
        is_page_event(ev)
            || matches!(ev, TraceEvent::Window | TraceEvent::WindowResume | TraceEvent::IrqEnter | TraceEvent::IrqExit)
            || (queue_lock != 0
                && e.lock == queue_lock
                && matches!(ev, TraceEvent::LockEnter | TraceEvent::Acquired | TraceEvent::Released))
    };
    let mut steps: Vec<(u64, usize, &TraceEntry)> = Vec::new();
    for (col, (t, from)) in [(Some(wt), waker_from), (ot, owner_from)].into_iter().enumerate() {
        let Some(t) = t else { continue };
        steps.extend(t.entries.iter().filter(|e| e.tsc >= from && e.tsc <= end && shown(e)).map(|e| (e.tsc, col, e)));
    }
    let mut rows = rows_of(steps, start, tsc_khz);
    rows.push(Row { col: 0, t_us: None, text: format!("<caught at {file}:{line}>") });
    let title = format!(
        "use-after-free: vCPU {waker}'s page wakeup touched vCPU {owner}'s {} after it was freed (step {})",
        object.name(),
        step.name()
    );
    let columns = vec![
        Column { cpu: *waker, role: "waker: unlock_page()".into() },
        Column { cpu: *owner, role: "waiter: wait_on_page_bit_common()".into() },
    ];
    Some(elide(title, columns, rows))
}

/// What the code did at a traced event, in the kernel's words: one line
/// per statement.
pub fn step_lines(e: &TraceEntry) -> Vec<String> {
    let window = || Window::ALL.get(e.arg as usize).map(|w| w.name()).unwrap_or("?");
    let Some(ev) = TraceEvent::from_u16(e.event) else { return vec![format!("event {}", e.event)] };
    let one = |s: &str| vec![s.to_string()];
    match ev {
        TraceEvent::LockEnter => one("spin_lock();"),
        TraceEvent::Acquired => one("<lock acquired>"),
        TraceEvent::Released => one("spin_unlock(); <done>"),
        TraceEvent::Queued => match (e.value >> 2).checked_sub(1) {
            // The old tail is (cpu + 1) << 2 | idx.
            Some(p) => vec![format!("xchg_tail(); <queued behind vCPU {p}>")],
            None => one("xchg_tail(); <queued>"),
        },
        TraceEvent::BecameHead => one("pv_wait_head_or_lock():"),
        TraceEvent::WaitNode => vec![
            "pv_wait_node():".into(),
            " smp_store_mb(pn->state, vcpu_halted);".into(),
            " pv_wait(&pn->state, vcpu_halted);".into(),
        ],
        TraceEvent::WaitHead => {
            let mut v = Vec::new();
            match e.arg {
                1 => v.push("WRITE_ONCE(pn->state, vcpu_halted);".to_string()),
                2 => v.push("WRITE_ONCE(pn->state, vcpu_hashed);".to_string()),
                _ => {}
            }
            let locked = e.value as u8;
            let seen = if locked == 3 { "_Q_SLOW_VAL".to_string() } else { format!("locked = {locked}") };
            v.push(format!("pv_wait(&l->locked, _Q_SLOW_VAL); <halts, {seen}>"));
            v
        }
        TraceEvent::WokeUp => vec![format!("<woken, byte = {}>", e.value)],
        TraceEvent::KickNode => vec![
            "pv_kick_node():".into(),
            " cmpxchg(&pn->state, vcpu_halted, vcpu_hashed);".into(),
            " WRITE_ONCE(l->locked, _Q_SLOW_VAL);".into(),
        ],
        TraceEvent::Hash if e.arg == DOUBLE_HASH_ARG => {
            vec!["(void)pv_hash(lock, pn);".into(), "<lock already hashed: DOUBLE HASH>".into()]
        }
        TraceEvent::Hash => vec![format!("lp = pv_hash(lock, pn); <slot {}>", e.arg)],
        TraceEvent::Unhash => vec![format!("node = pv_unhash(lock); <slot {}>", e.arg)],
        TraceEvent::Kick => vec![format!("pv_kick(vCPU {});", e.arg)],
        TraceEvent::Window => match window() {
            "handoff" => vec!["arch_mcs_spin_unlock_contended(&next->locked);".into(), "<preempted>".into()],
            w => vec![format!("<preempted at {w}>")],
        },
        TraceEvent::WindowResume => one("<runs again>"),
        TraceEvent::Stolen => vec![format!("<woken, lock stolen: locked = {}>", e.value)],
        TraceEvent::IrqEnter => vec![format!("<interrupt, depth {}>", e.arg)],
        TraceEvent::IrqExit => vec![format!("<interrupt return, depth {}>", e.arg)],
        TraceEvent::PageWaitEnter => one("init_wait(&wait->entry); wait->private = current;"),
        TraceEvent::PageAddTail => one("__add_wait_queue_entry_tail(q, &wait->entry);"),
        TraceEvent::PageVisit => vec![format!("wake_page_function(vCPU {}'s wait):", e.arg)],
        TraceEvent::PageReadPrivate => vec![format!(" target = wait->private; <vCPU {}'s task>", e.value)],
        TraceEvent::PageListDel if e.value != 0 => one(" list_del_init_careful(&wait->entry);"),
        TraceEvent::PageListDel => one(" list_del_init(&wait->entry);"),
        TraceEvent::PageSetWoken => one(" wait->flags |= WQ_FLAG_WOKEN;"),
        TraceEvent::PageWakeTask if e.value != 0 => {
            vec![format!(" wake_up_state(target, TASK_NORMAL); <woke vCPU {}'s task>", e.arg)]
        }
        TraceEvent::PageWakeTask => {
            vec![format!(" wake_up_state(target, TASK_NORMAL); <vCPU {}'s task was running>", e.arg)]
        }
        TraceEvent::PageWaitSeen if e.value == 1 => {
            vec!["if (list_empty_careful(&wait->entry))".into(), " break; <unlinked: no queue lock taken>".into()]
        }
        TraceEvent::PageWaitSeen => one("if (wait->flags & WQ_FLAG_WOKEN) break;"),
        TraceEvent::PageWaitReturn => vec![format!("finish_wait(); return {}; <stack frame freed>", e.value as i32)],
        TraceEvent::PageTaskExit => one("do_exit(); <task freed>"),
        TraceEvent::PageTaskFork => one("<a new task reuses the task's memory>"),
        TraceEvent::PageUseAfterFree => {
            let step = WakeStep::from_u32(e.value >> 8).map_or("?", |s| s.name());
            let object = FreedObject::from_u32(e.value & 0xff).map_or("?", |o| o.name());
            vec![format!("<USE-AFTER-FREE: {step} on vCPU {}'s freed {object}>", e.arg)]
        }
    }
}

impl RaceDiagram {
    /// The diagram as text: a header naming each column's vCPU and role,
    /// `===` under it, then one step per line in its column; a narrow left
    /// gutter gives each step's time.
    pub fn render(&self) -> String {
        let heads: Vec<String> = self
            .columns
            .iter()
            .map(|c| if c.role.is_empty() { format!("vCPU {}", c.cpu) } else { format!("vCPU {} ({})", c.cpu, c.role) })
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                self.rows.iter().filter(|r| r.col == i).map(|r| r.text.len()).chain([heads[i].len()]).max().unwrap_or(0)
                    + 3
            })
            .collect();
        let line = |cells: &[(usize, &str)], gutter: &str| {
            let mut s = format!("{gutter:>10}  ");
            for (i, w) in widths.iter().enumerate() {
                let text = cells.iter().find(|(c, _)| *c == i).map(|(_, t)| *t).unwrap_or("");
                s += &format!("{text:<w$}");
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = format!("{}\n\n", self.title);
        let head_cells: Vec<(usize, &str)> = heads.iter().enumerate().map(|(i, h)| (i, h.as_str())).collect();
        out += &line(&head_cells, "t (us)");
        let rules: Vec<String> = heads.iter().map(|h| "=".repeat(h.len())).collect();
        let rule_cells: Vec<(usize, &str)> = rules.iter().enumerate().map(|(i, r)| (i, r.as_str())).collect();
        out += &line(&rule_cells, "");
        for r in &self.rows {
            let gutter = r.t_us.map(|t| format!("{t:.1}")).unwrap_or_default();
            out += &line(&[(r.col, r.text.as_str())], &gutter);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tsc: u64, lock: u64, ev: TraceEvent, arg: u16, value: u32) -> TraceEntry {
        TraceEntry { tsc, lock, event: ev as u16, arg, value }
    }

    /// R1 as it happens under the directed schedule: vCPU 1 owns the lock
    /// and is preempted at the MCS hand-off; vCPU 0 becomes head, hashes
    /// itself, sets the slow value and halts with state vcpu_halted; vCPU 1
    /// then hashes it a second time.
    fn r1() -> Vec<VcpuTrace> {
        const L: u64 = 0x50_0000;
        let holder = vec![
            e(100, L, TraceEvent::LockEnter, 0, 0),
            e(110, L, TraceEvent::BecameHead, 0, 0),
            e(200, 0, TraceEvent::Window, Window::Handoff as u16, 0),
            e(900, 0, TraceEvent::WindowResume, Window::Handoff as u16, 0),
            e(910, L, TraceEvent::KickNode, 0, 2),
            e(920, L, TraceEvent::Hash, DOUBLE_HASH_ARG, 1),
        ];
        let head = vec![
            e(50, 0x60_0000, TraceEvent::LockEnter, 0, 0),
            e(120, L, TraceEvent::LockEnter, 0, 0),
            e(130, L, TraceEvent::Queued, 0, 2 << 2), // behind vCPU 1, node 0
            e(300, L, TraceEvent::BecameHead, 0, 0),
            e(400, L, TraceEvent::Hash, 5, 1),
            e(500, L, TraceEvent::WaitHead, 1, 3),
        ];
        vec![VcpuTrace { cpu: 0, entries: head, lost: 0 }, VcpuTrace { cpu: 1, entries: holder, lost: 0 }]
    }

    #[test]
    fn r1_is_drawn_with_the_holder_and_the_head_in_order() {
        let traces = r1();
        let race = detect(&traces, None, None).expect("double hash found in the trace");
        assert_eq!(race, Race::DoubleHash { cpu: 1, lock: 0x50_0000, tsc: 920 });
        let d = build(&traces, &race, 1_000).unwrap();
        assert_eq!(
            d.columns,
            vec![Column { cpu: 1, role: "lock holder".into() }, Column { cpu: 0, role: "queue head".into() }]
        );
        let text = d.render();
        let pos = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in\n{text}"));
        // The kernel's order: the head hashes itself and halts before the
        // preempted holder's pv_kick_node() hashes it again.
        assert!(pos("lp = pv_hash(lock, pn); <slot 5>") < pos("WRITE_ONCE(pn->state, vcpu_halted)"));
        assert!(pos("WRITE_ONCE(pn->state, vcpu_halted)") < pos("pv_kick_node()"));
        assert!(pos("cmpxchg(&pn->state, vcpu_halted, vcpu_hashed)") < pos("DOUBLE HASH"));
        assert!(pos("<preempted>") < pos("<slot 5>"), "the holder is preempted before the head hashes itself");
        // Another lock's events stay out; both columns have a header rule.
        assert_eq!(text.matches("spin_lock()").count(), 1, "{text}"); // the holder's story starts at queue head
        assert!(text.contains("vCPU 1 (lock holder)") && text.contains("===================="), "{text}");
        // The head's steps are in the second column.
        let row = text.lines().find(|l| l.contains("<slot 5>")).unwrap();
        let holder_col = text.lines().find(|l| l.contains("pv_kick_node()")).unwrap();
        assert!(row.find("lp =").unwrap() > holder_col.find("pv_kick_node").unwrap(), "{text}");
    }

    /// The RFC's use-after-free as the directed run traces it: vCPU 2
    /// unlinks vCPU 0's entry and is stalled; vCPU 0 sees the entry
    /// unlinked, returns, exits and waits again in the same frame; vCPU 2's
    /// wakeup then touches the freed task.
    #[test]
    fn the_page_use_after_free_is_drawn_waker_against_waiter() {
        const Q: u64 = 0x41_0000;
        let step = (WakeStep::WakeTask as u32) << 8 | FreedObject::Task as u32;
        let waker = vec![
            // The waker's own earlier wait: another story, left out.
            e(5, Q, TraceEvent::PageWaitSeen, 2, 1),
            e(90, Q, TraceEvent::LockEnter, 0, 0),
            e(100, Q, TraceEvent::Acquired, 0, 0),
            e(110, Q, TraceEvent::PageVisit, 0, 0),
            e(120, 0, TraceEvent::PageReadPrivate, 0, 0),
            e(130, Q, TraceEvent::PageListDel, 0, 0),
            e(140, 0, TraceEvent::Window, Window::PageWakeBetween as u16, 0),
            e(900, 0, TraceEvent::WindowResume, Window::PageWakeBetween as u16, 0),
            e(910, 0, TraceEvent::PageUseAfterFree, 0, step),
        ];
        let waiter = vec![
            e(10, 0, TraceEvent::PageWaitEnter, 0, 3),
            e(20, Q, TraceEvent::PageAddTail, 0, 0),
            e(300, Q, TraceEvent::PageWaitSeen, 0, 1),
            e(310, Q, TraceEvent::PageWaitReturn, 0, 0),
            e(320, 0, TraceEvent::PageTaskExit, 0, 2),
            e(400, 0, TraceEvent::PageTaskFork, 0, 5),
            e(410, 0, TraceEvent::PageWaitEnter, 0, 5),
            // Another lock's events stay out.
            e(420, 0x60_0000, TraceEvent::LockEnter, 0, 0),
        ];
        let traces =
            vec![VcpuTrace { cpu: 0, entries: waiter, lost: 0 }, VcpuTrace { cpu: 2, entries: waker, lost: 0 }];
        let failure = GuestFailure::UseAfterFree {
            cpu: 2,
            owner: 0,
            object: FreedObject::Task,
            step: WakeStep::WakeTask,
            tag_then: 1,
            tag_now: 3,
            addr: 0x41_7fc0,
            file: "guest/lib/src/sleeping/page.rs".into(),
            line: 310,
        };
        let race = detect(&traces, Some(&failure), None).expect("the use-after-free is a race");
        let d = build(&traces, &race, 1_000).unwrap();
        assert_eq!(d.columns.iter().map(|c| c.cpu).collect::<Vec<_>>(), vec![2, 0]);
        let text = d.render();
        let pos = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in\n{text}"));
        assert!(text.contains("vCPU 2 (waker: unlock_page())") && text.contains("vCPU 0 (waiter:"), "{text}");
        // The waiter's first wait starts the story, not its second; the
        // waker's own earlier wait stays out.
        assert_eq!(text.matches("init_wait(").count(), 2, "{text}");
        assert_eq!(text.matches("list_empty_careful").count(), 1, "{text}");
        assert!(pos("__add_wait_queue_entry_tail") < pos("wake_page_function(vCPU 0's wait)"));
        assert!(pos("list_del_init(&wait->entry)") < pos("<preempted at page-wake-between>"));
        assert!(pos("<preempted at page-wake-between>") < pos("<unlinked: no queue lock taken>"));
        assert!(pos("do_exit(); <task freed>") < pos("<runs again>"));
        assert!(pos("<runs again>") < pos("<USE-AFTER-FREE: wake-task on vCPU 0's freed task>"));
        assert!(text.ends_with("<caught at guest/lib/src/sleeping/page.rs:310>\n"), "{text}");
        // The waiter's steps are in the second column.
        let waker_col = text.lines().find(|l| l.contains("list_del_init")).unwrap().find("list_del_init").unwrap();
        let waiter_col = text.lines().find(|l| l.contains("do_exit")).unwrap().find("do_exit").unwrap();
        assert!(waiter_col > waker_col, "{text}");
    }

    #[test]
    fn no_race_no_diagram() {
        let mut traces = r1();
        traces[1].entries.pop();
        assert_eq!(detect(&traces, None, None), None);
    }

    #[test]
    fn long_histories_are_elided_in_the_middle() {
        const L: u64 = 0x50_0000;
        let mut entries = vec![e(1, L, TraceEvent::LockEnter, 0, 0)];
        entries.extend((0..100).map(|i| e(10 + i, L, TraceEvent::Kick, 1, 0)));
        let traces = vec![VcpuTrace { cpu: 0, entries, lost: 0 }];
        let race = Race::MissedWakeup { cpu: 0, lock: L, class: "plain-deadlock".into() };
        let d = build(&traces, &race, 1_000).unwrap();
        assert_eq!(d.rows.len(), MAX_ROWS + 1, "{}", d.render());
        assert!(d.elided > 0);
        assert!(d.render().contains("never woken (plain-deadlock)"));
    }
}
