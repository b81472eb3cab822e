//! Text for a terminal: the `inlet status` report, the audit lines of
//! `inlet audit trace|tail` and the lines of `inlet leads list`. The library gathers and judges
//! ([`inlet::status`], [`inlet::audit::query`]); this only formats.

use std::fmt::Write as _;

use inlet::audit::query::Trace;
use inlet::audit::{format_secs as seconds, format_us, AuditRecord};
use inlet::envelope::format_ts;
use inlet::status::StatusReport;

/// `inlet status` for a terminal: one line per part, then the verdict and
/// its reasons.
pub fn status_report(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "inlet status at {}: {}",
        format_ts(report.checked_at),
        report.health.verdict.as_str().to_uppercase()
    );
    let redis = &report.redis;
    let redis_text = if !redis.configured {
        "redis not configured".to_string()
    } else if redis.reachable {
        format!("redis reachable, prefix {:?}", redis.prefix)
    } else {
        format!(
            "redis unreachable: {}",
            redis.error.as_deref().unwrap_or("no answer")
        )
    };
    let _ = writeln!(out, "  mode     {} ({redis_text})", report.mode);
    let store = &report.store;
    let mut store_text = format!(
        "{}, {}",
        store.backend,
        if store.reachable {
            "reachable"
        } else {
            "unreachable"
        }
    );
    if let Some(e) = &store.error {
        let _ = write!(store_text, ": {e}");
    }
    if store.reachable && store.error.is_none() {
        match store.last_event_at {
            Some(t) => {
                let ago = (report.checked_at - t).to_std().unwrap_or_default();
                let _ = write!(
                    store_text,
                    "; last event {} ({} ago)",
                    format_ts(t),
                    seconds(ago.as_secs_f64())
                );
            }
            None => store_text.push_str("; no event kept yet"),
        }
        if let Some(n) = store.outbox {
            let _ = write!(store_text, "; outbox {n}");
        }
        if let Some(n) = store.bus_pending.filter(|n| *n > 0) {
            let _ = write!(store_text, "; in-process deliveries waiting {n}");
        }
        if let Some(p) = &store.partitions {
            let _ = write!(store_text, "; {} partitions", p.count);
            if let Some(t) = p.ready_until {
                let _ = write!(store_text, " ready until {}", format_ts(t));
            }
            if p.default_rows > 0 {
                let _ = write!(store_text, ", {} rows in DEFAULT", p.default_rows);
            }
        }
    }
    let _ = writeln!(out, "  store    {store_text}");
    if !report.streams.is_empty() {
        for (i, s) in report.streams.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {:<8} {:<20} {:>8}{}",
                if i == 0 { "streams" } else { "" },
                s.name,
                s.length,
                s.oldest_entry_age_seconds
                    .map(|a| format!("  oldest {}", seconds(a)))
                    .unwrap_or_default()
            );
        }
    }
    if redis.reachable {
        if report.groups.is_empty() {
            let _ = writeln!(out, "  groups   none (no worker has started yet)");
        }
        for (i, g) in report.groups.iter().enumerate() {
            let mut line = format!(
                "{} / {}: {} consumers, {} pending",
                g.stream,
                g.group,
                g.consumers.len(),
                g.pending
            );
            if let Some(age) = g.oldest_pending_age_seconds {
                let _ = write!(line, ", oldest pending {}", seconds(age));
            }
            if let Some(lag) = g.lag {
                let _ = write!(line, ", lag {lag}");
            }
            let _ = writeln!(out, "  {:<8} {line}", if i == 0 { "groups" } else { "" });
            for c in &g.consumers {
                let _ = writeln!(
                    out,
                    "             {:<28} {} pending, idle {}",
                    c.name,
                    c.pending,
                    seconds(c.idle_seconds)
                );
            }
        }
    }
    if report.spool.pending_events > 0 {
        let _ = writeln!(
            out,
            "  spool    {} events ({} bytes) waiting to be drained",
            report.spool.pending_events, report.spool.pending_bytes
        );
    }
    if let Some(o) = &report.outbound {
        let states = if o.by_status.is_empty() {
            "no sends yet".to_string()
        } else {
            o.by_status
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "  outbound {states}; {} waiting", o.waiting());
        if !o.broadcasts.is_empty() {
            let b = o
                .broadcasts
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(out, "           broadcasts {b}");
        }
        for h in &o.halted {
            let _ = writeln!(
                out,
                "           HALTED tenant {} since {} ({}{})",
                h.tenant,
                format_ts(h.since),
                h.error_class,
                h.code.map(|c| format!(", code {c}")).unwrap_or_default()
            );
        }
    }
    if let Some(l) = &report.leads {
        let _ = writeln!(
            out,
            "  leads    {} fetched, {} pending, {} failed, {} dead-lettered",
            l.fetched, l.pending, l.failed, l.dead_lettered
        );
        if let Some(e) = &l.last_error {
            let error = e.error.as_ref();
            let code = error
                .and_then(|v| v.get("code"))
                .and_then(serde_json::Value::as_i64)
                .map(|c| format!("code {c}, "))
                .unwrap_or_default();
            let class = error
                .and_then(|v| v.get("class").or_else(|| v.get("reason")))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("-");
            let message = error
                .and_then(|v| v.get("message"))
                .and_then(serde_json::Value::as_str)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "           last error {} lead {} page {} ({code}{class}){message}",
                format_ts(e.at),
                e.lead_id,
                e.page_id
            );
        }
    }
    let dash = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "  dlq      {} in the stream, {} in the store, {} outbound, {} media, {} leads",
        report
            .dlq
            .stream
            .map_or_else(|| "-".to_string(), |n| n.to_string()),
        dash(report.dlq.store),
        dash(report.dlq.outbound),
        dash(report.dlq.media),
        dash(report.dlq.leads)
    );
    let _ = writeln!(out, "  health   {}", report.health.verdict.as_str());
    for r in &report.health.reasons {
        let _ = writeln!(out, "           - {r}");
    }
    out
}

/// One delivery for `inlet audit trace`: a header, then one line per step
/// with the time since the first step and the step's own duration.
pub fn trace(trace: &Trace) -> String {
    let mut out = String::new();
    let first = trace.steps.first();
    let origin = first
        .map(|f| {
            format!(
                "{} / {}",
                f.webhook_source().unwrap_or("-"),
                f.tenant.as_deref().unwrap_or("-")
            )
        })
        .unwrap_or_default();
    let _ = writeln!(out, "trace {}  {origin}", trace.trace_id);
    let _ = writeln!(
        out,
        "  {:>10}  {:<27}  {:<7}  {:<13}  {:<12}  {:>9}  details",
        "since", "time", "service", "stage", "outcome", "took"
    );
    for step in &trace.steps {
        let since = trace
            .offset_us(step)
            .map(|us| format!("+{}", format_us(us.max(0).unsigned_abs())))
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "  {:>10}  {:<27}  {:<7}  {:<13}  {:<12}  {:>9}  {}",
            since,
            step.ts,
            step.service,
            step.stage,
            step.outcome,
            step.duration_us
                .map(format_us)
                .unwrap_or_else(|| "-".into()),
            details(step)
        );
    }
    let services: Vec<&str> = {
        let mut seen = Vec::new();
        for s in &trace.steps {
            if !seen.contains(&s.service.as_str()) {
                seen.push(s.service.as_str());
            }
        }
        seen
    };
    let _ = writeln!(
        out,
        "  {} steps over {} ({})",
        trace.steps.len(),
        trace
            .total_us()
            .map(|us| format_us(us.max(0).unsigned_abs()))
            .unwrap_or_else(|| "?".into()),
        services.join(", ")
    );
    out
}

/// `reason` and the extra fields as `key=value`, for the end of a line.
fn details(record: &AuditRecord) -> String {
    let mut parts = Vec::new();
    if let Some(reason) = &record.reason {
        parts.push(format!("reason={reason:?}"));
    }
    for (k, v) in &record.extra {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        parts.push(format!("{k}={v}"));
    }
    parts.join(" ")
}

/// One line for `inlet audit tail`: time, service, stage, outcome, trace,
/// source, duration, details.
pub fn audit_line(record: &AuditRecord) -> String {
    format!(
        "{:<27}  {:<7}  {:<13}  {:<12}  {:<36}  {:<9}  {:>9}  {}",
        record.ts,
        record.service,
        record.stage,
        record.outcome,
        record
            .trace_id
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into()),
        record.webhook_source().unwrap_or("-"),
        record
            .duration_us
            .map(format_us)
            .unwrap_or_else(|| "-".into()),
        details(record)
    )
    .trim_end()
    .to_string()
}

/// One lead for `inlet leads list`: id, status, page, form, campaign, when,
/// the contact it is linked to, and the name.
pub fn lead_line(l: &inlet::store::leads::LeadRecord) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "{:<17} {:<13} page {:<16} form {:<16} campaign {:<19} {:<27} contact {:<6} {}",
        l.lead_id,
        l.status,
        l.page_id,
        dash(&l.form_id),
        dash(&l.campaign_id),
        l.created_time.map(format_ts).unwrap_or_else(|| "-".into()),
        l.contact_id
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        l.name.as_deref().unwrap_or("-"),
    )
    .trim_end()
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use inlet::status::{
        judge, ConsumerStatus, DlqSize, GroupStatus, HaltStatus, Health, LeadsStatus,
        OutboundStatus, RedisStatus, SpoolStatus, StoreStatus, StreamStatus, Verdict, STREAMS,
    };
    use inlet::streams::{INCOMING_RAW, WORKER_GROUP};
    use uuid::Uuid;

    use super::*;

    const STALL: Duration = Duration::from_secs(60);

    fn report() -> StatusReport {
        StatusReport {
            checked_at: Utc::now(),
            mode: "queue",
            redis: RedisStatus {
                configured: true,
                reachable: true,
                prefix: "inlet:".into(),
                error: None,
            },
            store: StoreStatus {
                backend: "postgres",
                reachable: true,
                error: None,
                last_event_at: None,
                outbox: Some(0),
                bus_pending: Some(0),
                partitions: None,
            },
            streams: STREAMS
                .iter()
                .map(|s| StreamStatus {
                    name: s.to_string(),
                    length: 0,
                    oldest_entry_age_seconds: None,
                })
                .collect(),
            groups: vec![GroupStatus {
                stream: INCOMING_RAW.into(),
                group: WORKER_GROUP.into(),
                consumers: vec![ConsumerStatus {
                    name: "w1".into(),
                    pending: 0,
                    idle_seconds: 0.5,
                }],
                pending: 0,
                oldest_pending_age_seconds: None,
                held_too_long: None,
                lag: Some(0),
            }],
            dlq: DlqSize {
                stream: Some(0),
                store: Some(0),
                outbound: Some(0),
                media: Some(0),
                leads: Some(0),
            },
            outbound: Some(OutboundStatus::default()),
            leads: Some(LeadsStatus::default()),
            spool: SpoolStatus::default(),
            stall_after_seconds: 60.0,
            health: Health {
                verdict: Verdict::Ok,
                reasons: Vec::new(),
            },
        }
    }

    #[test]
    fn the_report_names_every_part() {
        let mut r = report();
        r.dlq.stream = Some(1);
        r.health = judge(&r, STALL);
        let text = status_report(&r);
        for part in [
            "incoming.raw",
            "incoming.normalized",
            "cache.sync",
            "dlq",
            "workers",
            "w1",
            "degraded",
            "DEGRADED",
            "1 in the stream",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }

    #[test]
    fn halts_and_outbound_figures_are_shown() {
        let mut r = report();
        let mut out = OutboundStatus::default();
        out.queued_by_sender.insert("106540352242922".into(), 7);
        out.by_status.insert("queued".into(), 7);
        out.by_status.insert("dead_lettered".into(), 2);
        out.broadcasts.insert("paused".into(), 1);
        out.halted.push(HaltStatus {
            tenant: "acme".into(),
            error_class: "auth_halt".into(),
            code: Some(190),
            since: Utc::now(),
        });
        r.outbound = Some(out);
        r.dlq.outbound = Some(2);
        r.health = judge(&r, STALL);
        let text = status_report(&r);
        assert!(text.contains("HALTED tenant acme"), "{text}");
        assert!(text.contains("code 190"), "{text}");
        assert!(
            text.contains("dead_lettered 2, queued 7; 7 waiting"),
            "{text}"
        );
        assert!(text.contains("broadcasts paused 1"), "{text}");
        assert!(text.contains("2 outbound"), "{text}");
        assert!(text.contains("sending for tenant acme is halted"), "{text}");
    }

    #[test]
    fn leads_and_their_last_error_are_shown() {
        let mut r = report();
        r.leads = Some(LeadsStatus {
            fetched: 4,
            failed: 1,
            last_error: Some(inlet::store::leads::LeadError {
                lead_id: "810000000000013".into(),
                page_id: "300000000000003".into(),
                status: "failed".into(),
                error: Some(serde_json::json!({
                    "code": 200,
                    "class": "auth_halt",
                    "message": "(#200) Requires leads_retrieval permission"
                })),
                at: Utc::now(),
            }),
            ..LeadsStatus::default()
        });
        r.health = judge(&r, STALL);
        let text = status_report(&r);
        assert!(
            text.contains("leads    4 fetched, 0 pending, 1 failed, 0 dead-lettered"),
            "{text}"
        );
        assert!(
            text.contains("lead 810000000000013 page 300000000000003 (code 200, auth_halt): (#200) Requires leads_retrieval permission"),
            "{text}"
        );
        assert!(text.contains("1 leads could not be fetched"), "{text}");
    }

    #[test]
    fn without_redis_the_report_says_so() {
        let mut r = report();
        r.mode = "direct";
        r.redis.configured = false;
        r.redis.reachable = false;
        r.streams.clear();
        r.groups.clear();
        r.dlq.stream = None;
        let text = status_report(&r);
        assert!(text.contains("direct (redis not configured)"), "{text}");
        assert!(text.contains("- in the stream"), "{text}");
        assert!(!text.contains("groups"), "{text}");
    }

    fn step(ts: &str, service: &str, stage: &str, trace: Uuid) -> AuditRecord {
        let mut r = AuditRecord::new(stage)
            .trace(trace)
            .origin("whatsapp", "t")
            .with("count", 2);
        r.ts = ts.into();
        r.service = service.into();
        r
    }

    #[test]
    fn a_trace_shows_offsets_and_totals() {
        let t = Uuid::now_v7();
        let mut stored = step("2024-05-01T10:00:00.000500Z", "worker", "stored", t);
        stored.duration_us = Some(1_500);
        let text = trace(&Trace {
            trace_id: t,
            steps: vec![
                step("2024-05-01T10:00:00.000100Z", "gateway", "received", t),
                stored,
            ],
        });
        assert!(
            text.starts_with(&format!("trace {t}  whatsapp / t")),
            "{text}"
        );
        assert!(text.contains("+400µs"), "{text}");
        assert!(text.contains("1.5ms"), "{text}");
        assert!(text.contains("count=2"), "{text}");
        assert!(
            text.contains("2 steps over 400µs (gateway, worker)"),
            "{text}"
        );
    }

    #[test]
    fn an_audit_line_has_every_column() {
        let t = Uuid::now_v7();
        let mut r = step("2024-05-01T10:00:00.000100Z", "gateway", "rejected", t)
            .outcome("error")
            .reason("signature_mismatch");
        r.source = None;
        r.extra.insert("source".into(), "instagram".into());
        let line = audit_line(&r);
        for part in [
            "2024-05-01T10:00:00.000100Z",
            "gateway",
            "rejected",
            "error",
            &t.to_string(),
            "instagram",
            "reason=\"signature_mismatch\"",
            "count=2",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        assert_eq!(line, line.trim_end());
    }
}
