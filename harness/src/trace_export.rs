//! `--trace FILE`: the guest's per-vCPU event traces as Chrome trace-event
//! JSON (the "JSON Object Format" that Perfetto UI and chrome://tracing
//! open): one thread track per vCPU, complete events (`"ph": "X"`) for the
//! spans a vCPU spends spinning for a lock, holding it, waiting in
//! pv_wait(), stalled by the VMM and in simulated interrupts, and instant
//! events (`"ph": "i"`) for the steps in between (queued, head, hash,
//! unhash, kick...).
//!
//! Spans are matched with a stack per vCPU, so they nest as the code does;
//! a span whose start the ring overwrote is dropped, one still open at the
//! end is closed at the vCPU's last event and marked `unfinished`.

use pvlock_abi::{TraceEntry, TraceEvent, Window};
use pvlock_vmm::trace::VcpuTrace;
use std::fmt::Write as _;

/// A span kind (the event name on the track).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Spinning,
    Holding,
    Waiting,
    Stalled,
    Interrupt,
}

impl SpanKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Spinning => "spinning",
            Self::Holding => "holding",
            Self::Waiting => "waiting",
            Self::Stalled => "stalled",
            Self::Interrupt => "interrupt",
        }
    }
}

/// One matched span of one vCPU, in TSC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub kind: SpanKind,
    pub lock: u64,
    pub start: u64,
    pub end: u64,
    /// Window id of a stall, depth of an interrupt.
    pub arg: u16,
    pub unfinished: bool,
}

/// What an event does to the span stack.
enum Effect {
    Open(SpanKind),
    /// Close the innermost open span of this kind; `then` opens another.
    Close(SpanKind, Option<SpanKind>),
    Instant,
}

fn effect(ev: TraceEvent) -> Effect {
    use TraceEvent as E;
    match ev {
        E::LockEnter => Effect::Open(SpanKind::Spinning),
        E::Acquired => Effect::Close(SpanKind::Spinning, Some(SpanKind::Holding)),
        E::Released => Effect::Close(SpanKind::Holding, None),
        E::WaitNode | E::WaitHead => Effect::Open(SpanKind::Waiting),
        E::WokeUp => Effect::Close(SpanKind::Waiting, None),
        E::Window => Effect::Open(SpanKind::Stalled),
        E::WindowResume => Effect::Close(SpanKind::Stalled, None),
        E::IrqEnter => Effect::Open(SpanKind::Interrupt),
        E::IrqExit => Effect::Close(SpanKind::Interrupt, None),
        E::Queued | E::BecameHead | E::KickNode | E::Hash | E::Unhash | E::Kick | E::Stolen => Effect::Instant,
        // The page wait queues: steps of the waker and the waiter.
        E::PageWaitEnter
        | E::PageAddTail
        | E::PageVisit
        | E::PageReadPrivate
        | E::PageListDel
        | E::PageSetWoken
        | E::PageWakeTask
        | E::PageWaitSeen
        | E::PageWaitReturn
        | E::PageTaskExit
        | E::PageTaskFork
        | E::PageUseAfterFree => Effect::Instant,
    }
}

/// Matches one vCPU's events into spans (sorted by start, outer first).
pub fn spans(entries: &[TraceEntry]) -> Vec<Span> {
    let mut open: Vec<Span> = Vec::new();
    let mut done = Vec::new();
    for e in entries {
        let Some(ev) = TraceEvent::from_u16(e.event) else { continue };
        let new = |kind| Span { kind, lock: e.lock, start: e.tsc, end: e.tsc, arg: e.arg, unfinished: false };
        match effect(ev) {
            Effect::Open(kind) => open.push(new(kind)),
            Effect::Close(kind, then) => {
                // The innermost open span of this kind (and this lock, for
                // lock spans); anything opened inside it and not closed is
                // closed with it (its end was lost).
                let lock_bound = matches!(kind, SpanKind::Spinning | SpanKind::Holding);
                if let Some(i) = open.iter().rposition(|s| s.kind == kind && (!lock_bound || s.lock == e.lock)) {
                    for mut s in open.drain(i..).rev() {
                        s.end = e.tsc;
                        s.unfinished |= s.kind != kind || s.lock != e.lock;
                        done.push(s);
                    }
                }
                if let Some(k) = then {
                    open.push(new(k));
                }
            }
            Effect::Instant => {}
        }
    }
    let last = entries.last().map(|e| e.tsc).unwrap_or(0);
    for mut s in open.into_iter().rev() {
        s.end = last;
        s.unfinished = true;
        done.push(s);
    }
    done.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
    done
}

/// Metadata for the export's header.
pub struct ExportInfo<'a> {
    pub name: &'a str,
    pub variant: &'a str,
    pub tsc_khz: u64,
    pub status: &'a str,
}

/// Nanoseconds since `base`, integral so that a span's start plus its
/// duration is exactly its end.
fn ns(tsc: u64, base: u64, khz: u64) -> u64 {
    (tsc.saturating_sub(base) as u128 * 1_000_000 / khz.max(1) as u128) as u64
}

/// Microseconds (the format's unit) with nanosecond digits, exactly.
fn us(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn instant_args(e: &TraceEntry, ev: TraceEvent) -> String {
    match ev {
        TraceEvent::Kick => format!("\"target\":{}", e.arg),
        TraceEvent::Hash if e.arg == u16::MAX => "\"double_hash\":true".to_string(),
        TraceEvent::Hash | TraceEvent::Unhash => format!("\"slot\":{},\"value\":{}", e.arg, e.value),
        TraceEvent::Queued => format!("\"node\":{},\"old_tail\":{}", e.arg, e.value),
        TraceEvent::PageUseAfterFree => format!(
            "\"owner\":{},\"step\":{},\"object\":{}",
            e.arg,
            json_str(pvlock_abi::WakeStep::from_u32(e.value >> 8).map_or("?", |s| s.name())),
            json_str(pvlock_abi::FreedObject::from_u32(e.value & 0xff).map_or("?", |o| o.name()))
        ),
        TraceEvent::PageWaitEnter
        | TraceEvent::PageAddTail
        | TraceEvent::PageVisit
        | TraceEvent::PageReadPrivate
        | TraceEvent::PageListDel
        | TraceEvent::PageSetWoken
        | TraceEvent::PageWakeTask
        | TraceEvent::PageWaitSeen
        | TraceEvent::PageWaitReturn
        | TraceEvent::PageTaskExit
        | TraceEvent::PageTaskFork => format!("\"vcpu\":{},\"value\":{}", e.arg, e.value),
        _ => format!("\"arg\":{},\"value\":{}", e.arg, e.value),
    }
}

/// The Chrome trace-event JSON of `traces`.
pub fn chrome_json(traces: &[VcpuTrace], info: &ExportInfo<'_>) -> String {
    let base = traces.iter().filter_map(|t| t.entries.first()).map(|e| e.tsc).min().unwrap_or(0);
    let khz = info.tsc_khz;
    let mut out = String::with_capacity(1 << 20);
    let lost: Vec<String> = traces.iter().map(|t| format!("\"{}\":{}", t.cpu, t.lost)).collect();
    let _ = writeln!(
        out,
        "{{\"displayTimeUnit\":\"ns\",\"otherData\":{{\"pvlock\":{},\"run\":{},\"variant\":{},\"status\":{},\
         \"tsc_khz\":{khz},\"lost_events_per_vcpu\":{{{}}}}},\"traceEvents\":[",
        json_str(crate::version()),
        json_str(info.name),
        json_str(info.variant),
        json_str(info.status),
        lost.join(",")
    );
    let mut first = true;
    let mut push = |out: &mut String, s: String| {
        if !first {
            out.push_str(",\n");
        }
        first = false;
        out.push_str(&s);
    };
    push(
        &mut out,
        format!(
            "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"tid\":0,\"args\":{{\"name\":{}}}}}",
            json_str(&format!("pvlock guest: {} ({})", info.name, info.variant))
        ),
    );
    for t in traces {
        push(
            &mut out,
            format!(
                "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{c},\"args\":{{\"name\":\"vCPU {c}\"}}}}",
                c = t.cpu
            ),
        );
        push(
            &mut out,
            format!(
                "{{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":1,\"tid\":{c},\"args\":{{\"sort_index\":{c}}}}}",
                c = t.cpu
            ),
        );
        for s in spans(&t.entries) {
            let extra = match s.kind {
                SpanKind::Stalled => format!(
                    ",\"window\":{}",
                    json_str(Window::ALL.get(s.arg as usize).map(|w| w.name()).unwrap_or("?"))
                ),
                SpanKind::Interrupt => format!(",\"depth\":{}", s.arg),
                _ => String::new(),
            };
            push(
                &mut out,
                format!(
                    "{{\"name\":\"{}\",\"cat\":\"lock\",\"ph\":\"X\",\"pid\":1,\"tid\":{},\"ts\":{},\"dur\":{},\
                     \"args\":{{\"lock\":\"{:#x}\",\"unfinished\":{}{extra}}}}}",
                    s.kind.name(),
                    t.cpu,
                    us(ns(s.start, base, khz)),
                    us(ns(s.end, base, khz) - ns(s.start, base, khz)),
                    s.lock,
                    s.unfinished
                ),
            );
        }
        for e in &t.entries {
            let Some(ev) = TraceEvent::from_u16(e.event) else { continue };
            if !matches!(effect(ev), Effect::Instant) {
                continue;
            }
            push(
                &mut out,
                format!(
                    "{{\"name\":\"{}\",\"cat\":\"lock\",\"ph\":\"i\",\"s\":\"t\",\"pid\":1,\"tid\":{},\"ts\":{},\
                     \"args\":{{\"lock\":\"{:#x}\",{}}}}}",
                    ev.name(),
                    t.cpu,
                    us(ns(e.tsc, base, khz)),
                    e.lock,
                    instant_args(e, ev)
                ),
            );
        }
    }
    out.push_str("\n]}\n");
    out
}

/// Writes the trace of one run to `path` (atomically).
pub fn write_run(path: &std::path::Path, rec: &crate::record::Record, r: &pvlock_vmm::RunReport) -> anyhow::Result<()> {
    let info = ExportInfo {
        name: &rec.name,
        variant: rec.params.variant.name(),
        tsc_khz: r.tsc_khz,
        status: rec.status.as_str(),
    };
    crate::output::write_atomic(path, chrome_json(&r.traces, &info).as_bytes())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tsc: u64, lock: u64, ev: TraceEvent, arg: u16) -> TraceEntry {
        TraceEntry { tsc, lock, event: ev as u16, arg, value: 0 }
    }

    #[test]
    fn spans_nest_like_the_code_and_lost_starts_are_dropped() {
        use TraceEvent as E;
        let entries = vec![
            e(5, 0xb, E::Released, 0), // its Acquired was overwritten: no span
            e(10, 0xa, E::LockEnter, 0),
            e(20, 0xa, E::WaitHead, 0),
            e(30, 0xa, E::WokeUp, 0),
            e(40, 0xa, E::Acquired, 0),
            e(50, 0, E::Window, Window::CriticalSection as u16),
            e(60, 0, E::WindowResume, Window::CriticalSection as u16),
            e(70, 0xa, E::Released, 0),
            e(80, 0xa, E::LockEnter, 0), // still spinning at the end
            e(90, 0xa, E::Queued, 0),
        ];
        let s = spans(&entries);
        let got: Vec<_> = s.iter().map(|s| (s.kind, s.start, s.end, s.unfinished)).collect();
        assert_eq!(
            got,
            vec![
                (SpanKind::Spinning, 10, 40, false),
                (SpanKind::Waiting, 20, 30, false),
                (SpanKind::Holding, 40, 70, false),
                (SpanKind::Stalled, 50, 60, false),
                (SpanKind::Spinning, 80, 90, true),
            ]
        );
    }

    #[test]
    fn export_is_valid_json_with_one_track_per_vcpu() {
        use TraceEvent as E;
        let traces = vec![
            VcpuTrace { cpu: 0, entries: vec![e(1000, 0xa, E::LockEnter, 0), e(2000, 0xa, E::Acquired, 0)], lost: 0 },
            VcpuTrace { cpu: 1, entries: vec![e(1500, 0xa, E::Kick, 0)], lost: 7 },
        ];
        let info = ExportInfo { name: "t", variant: "pv-v4.8", tsc_khz: 1_000_000, status: "ok" };
        let v: serde_json::Value = serde_json::from_str(&chrome_json(&traces, &info)).expect("valid JSON");
        let evs = v["traceEvents"].as_array().unwrap();
        let threads: Vec<_> = evs.iter().filter(|e| e["name"] == "thread_name").map(|e| e["tid"].as_u64()).collect();
        assert_eq!(threads, vec![Some(0), Some(1)]);
        let x = evs.iter().find(|e| e["ph"] == "X").unwrap();
        assert_eq!((x["name"].as_str(), x["ts"].as_f64(), x["dur"].as_f64()), (Some("spinning"), Some(0.0), Some(1.0)));
        let kick = evs.iter().find(|e| e["name"] == "kick").unwrap();
        assert_eq!((kick["ph"].as_str(), kick["s"].as_str(), kick["ts"].as_f64()), (Some("i"), Some("t"), Some(0.5)));
        assert_eq!(v["otherData"]["lost_events_per_vcpu"]["1"], 7);
    }
}
