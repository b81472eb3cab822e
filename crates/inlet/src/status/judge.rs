//! Judging: the verdict of a report and one sentence per finding.
//!
//! A stall is judged against the worker's `claim_idle`: live workers reclaim
//! entries idle that long, so an entry held for more than twice that time, or
//! a backlog with no consumer active for that long, means nobody is making
//! progress.

use std::time::Duration;

use super::report::{Health, StatusReport, Verdict};
use crate::audit::format_secs as seconds;
use crate::envelope::format_ts;
use crate::streams::{is_raw, WORKER_GROUP};

/// Judges a report (its `health` field is ignored).
pub fn judge(report: &StatusReport, stall_after: Duration) -> Health {
    let mut findings: Vec<(Verdict, String)> = Vec::new();
    let threshold = stall_after.as_secs_f64();
    let store_ok = report.store.reachable && report.store.error.is_none();
    let redis = &report.redis;
    if redis.configured && !redis.reachable {
        if store_ok {
            findings.push((
                Verdict::Degraded,
                "redis is unreachable: the gateway runs in direct mode and keeps events in the store"
                    .into(),
            ));
        } else {
            findings.push((
                Verdict::Down,
                "neither redis nor the store is reachable: the gateway answers 503 (Meta retries)"
                    .into(),
            ));
        }
    } else if !store_ok {
        if redis.configured {
            findings.push((
                Verdict::Stalled,
                "the store is unusable: the gateway still queues events in redis, but workers cannot store them (they retry, then dead-letter)".into(),
            ));
        } else {
            findings.push((
                Verdict::Down,
                "the store is unusable and no redis is configured: the gateway answers 503 (Meta retries)".into(),
            ));
        }
    }
    if let Some(p) = &report.store.partitions {
        if p.default_rows > 0 {
            findings.push((
                Verdict::Degraded,
                format!(
                    "{} rows sit in DEFAULT partitions (times outside every partition): the partition job has not created their partitions; run `inlet db maintain`",
                    p.default_rows
                ),
            ));
        }
        if p.ready_until.is_some_and(|t| t <= report.checked_at) {
            findings.push((
                Verdict::Degraded,
                "no partition is ready for rows stored now (they go to the DEFAULT partition): the daily partition job has not run; run `inlet db maintain`".into(),
            ));
        }
    }
    if redis.reachable {
        // Each raw shard on its own: a worker that stopped consuming one
        // shard stalls the conversations hashed to it.
        for raw in report.streams.iter().filter(|s| is_raw(&s.name)) {
            let stream = raw.name.as_str();
            let backlog = raw.length;
            let workers = report
                .groups
                .iter()
                .find(|g| g.stream == stream && g.group == WORKER_GROUP);
            match workers {
                Some(g) => {
                    if let Some(held) = &g.held_too_long {
                        findings.push((
                            Verdict::Stalled,
                            format!(
                                "{stream} entry {} has been held by consumer {} for {} (more than 2 × claim_idle = {}) without being acknowledged or reclaimed",
                                held.id,
                                held.consumer,
                                seconds(held.idle_seconds),
                                seconds(threshold)
                            ),
                        ));
                    }
                    let active = g
                        .consumers
                        .iter()
                        .filter(|c| c.idle_seconds <= threshold)
                        .count();
                    if backlog > 0 && active == 0 {
                        findings.push((
                            Verdict::Stalled,
                            format!(
                                "{backlog} entries wait in {stream} and no consumer of group {WORKER_GROUP} has been active in the last {}: is inlet-worker running?",
                                seconds(threshold)
                            ),
                        ));
                    }
                }
                None if backlog > 0 => findings.push((
                    Verdict::Stalled,
                    format!(
                        "{backlog} entries wait in {stream} and no worker has ever joined group {WORKER_GROUP}: start inlet-worker"
                    ),
                )),
                None => {}
            }
        }
        for g in &report.groups {
            if is_raw(&g.stream) && g.group == WORKER_GROUP {
                continue;
            }
            if let Some(held) = &g.held_too_long {
                findings.push((
                    Verdict::Degraded,
                    format!(
                        "consumer group {} on {} has entry {} held by {} for {}",
                        g.group,
                        g.stream,
                        held.id,
                        held.consumer,
                        seconds(held.idle_seconds)
                    ),
                ));
            }
        }
    }
    if report.spool.pending_events > 0 {
        findings.push((
            Verdict::Degraded,
            format!(
                "{} events ({} bytes) wait in the gateway's local spool (kept while Redis and the store were both down): the gateway drains them once one of them answers",
                report.spool.pending_events, report.spool.pending_bytes
            ),
        ));
    }
    let dead = report.dlq.total();
    if dead > 0 {
        findings.push((
            Verdict::Degraded,
            format!(
                "{dead} dead letters wait (stream {}, store {}, outbound {}, media {}, leads {}): inspect with `inlet dlq list`, replay with `inlet dlq replay`",
                report.dlq.stream.unwrap_or(0),
                report.dlq.store.unwrap_or(0),
                report.dlq.outbound.unwrap_or(0),
                report.dlq.media.unwrap_or(0),
                report.dlq.leads.unwrap_or(0)
            ),
        ));
    }
    if let Some(out) = &report.outbound {
        for halt in &out.halted {
            findings.push((
                Verdict::Degraded,
                format!(
                    "sending for tenant {} is halted since {} ({}{}): {} sends wait; configure a new access token and sending resumes",
                    halt.tenant,
                    format_ts(halt.since),
                    halt.error_class,
                    halt.code.map(|c| format!(", Graph code {c}")).unwrap_or_default(),
                    out.waiting()
                ),
            ));
        }
        if let Some(n) = out.broadcasts.get("paused").filter(|n| **n > 0) {
            findings.push((
                Verdict::Degraded,
                format!("{n} broadcasts are paused: see `inlet broadcasts list`, resume with `inlet broadcasts resume ID`"),
            ));
        }
    }
    if let Some(leads) = &report.leads {
        let stuck = leads.failed + leads.dead_lettered;
        if stuck > 0 {
            let last = leads
                .last_error
                .as_ref()
                .map(|e| {
                    let error = e.error.as_ref();
                    let code = error
                        .and_then(|v| v.get("code"))
                        .and_then(serde_json::Value::as_i64)
                        .map(|c| format!("Graph code {c}"));
                    let reason = error
                        .and_then(|v| v.get("class").or_else(|| v.get("reason")))
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string);
                    let what = [code, reason]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("; last: lead {} of page {} ({what})", e.lead_id, e.page_id)
                })
                .unwrap_or_default();
            findings.push((
                Verdict::Degraded,
                format!(
                    "{stuck} leads could not be fetched ({} failed, {} dead-lettered){last}: check the Page token's permissions (leads_retrieval), then `inlet leads refetch ID`",
                    leads.failed, leads.dead_lettered
                ),
            ));
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.0));
    Health {
        verdict: findings.first().map_or(Verdict::Ok, |f| f.0),
        reasons: findings.into_iter().map(|f| f.1).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::report::*;
    use crate::status::STREAMS;
    use crate::streams::INCOMING_RAW;
    use chrono::Utc;

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

    const STALL: Duration = Duration::from_secs(60);

    #[test]
    fn a_halted_sender_and_outbound_letters_degrade_and_are_shown() {
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
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Degraded, "{:?}", h.reasons);
        let all = h.reasons.join("\n");
        assert!(
            all.contains("sending for tenant acme is halted") && all.contains("Graph code 190"),
            "{all}"
        );
        assert!(all.contains("7 sends wait"), "{all}");
        assert!(all.contains("1 broadcasts are paused"), "{all}");
        assert!(all.contains("outbound 2"), "{all}");
    }

    #[test]
    fn leads_that_could_not_be_fetched_degrade_with_the_graph_error() {
        let mut r = report();
        r.leads = Some(LeadsStatus {
            fetched: 3,
            failed: 1,
            last_error: Some(crate::store::leads::LeadError {
                lead_id: "810000000000013".into(),
                page_id: "300000000000003".into(),
                status: "failed".into(),
                error: Some(serde_json::json!({"code": 200, "class": "auth_halt"})),
                at: Utc::now(),
            }),
            ..LeadsStatus::default()
        });
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Degraded, "{:?}", h.reasons);
        let all = h.reasons.join("\n");
        assert!(all.contains("1 leads could not be fetched"), "{all}");
        assert!(
            all.contains(
                "lead 810000000000013 of page 300000000000003 (Graph code 200, auth_halt)"
            ),
            "{all}"
        );
        // Fetched leads alone are fine.
        r.leads = Some(LeadsStatus {
            fetched: 3,
            ..LeadsStatus::default()
        });
        assert_eq!(judge(&r, STALL).verdict, Verdict::Ok);
    }

    #[test]
    fn stray_rows_and_no_partition_ahead_degrade() {
        let mut r = report();
        r.store.partitions = Some(PartitionsStatus {
            count: 20,
            default_rows: 0,
            ready_until: Some(r.checked_at + chrono::Duration::days(60)),
        });
        assert_eq!(judge(&r, STALL).verdict, Verdict::Ok);
        r.store.partitions = Some(PartitionsStatus {
            count: 20,
            default_rows: 7,
            ready_until: Some(r.checked_at - chrono::Duration::hours(1)),
        });
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Degraded, "{:?}", h.reasons);
        let all = h.reasons.join("\n");
        assert!(all.contains("7 rows sit in DEFAULT partitions"), "{all}");
        assert!(all.contains("no partition is ready"), "{all}");
    }

    #[test]
    fn each_raw_shard_is_judged_on_its_own() {
        let mut r = report();
        // Shard 0 flows; shard 2 has a backlog and nobody joined its group.
        r.streams.push(StreamStatus {
            name: "incoming.raw.2".into(),
            length: 4,
            oldest_entry_age_seconds: Some(30.0),
        });
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Stalled, "{:?}", h.reasons);
        assert!(
            h.reasons
                .iter()
                .any(|m| m.contains("4 entries wait in incoming.raw.2")
                    && m.contains("no worker has ever joined")),
            "{:?}",
            h.reasons
        );
        // A worker on it that is active: fine again.
        let mut g = r.groups[0].clone();
        g.stream = "incoming.raw.2".into();
        r.groups.push(g);
        assert_eq!(judge(&r, STALL).verdict, Verdict::Ok);
    }

    #[test]
    fn a_flowing_deployment_is_ok() {
        let h = judge(&report(), STALL);
        assert_eq!(h.verdict, Verdict::Ok, "{:?}", h.reasons);
        assert!(h.reasons.is_empty());
    }

    #[test]
    fn an_entry_held_past_twice_claim_idle_is_a_stall() {
        let mut r = report();
        r.groups[0].pending = 1;
        r.groups[0].held_too_long = Some(HeldEntry {
            id: "1-0".into(),
            consumer: "w1".into(),
            idle_seconds: 61.0,
            deliveries: 1,
        });
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Stalled);
        assert!(
            h.reasons[0].contains("held by consumer w1"),
            "{:?}",
            h.reasons
        );
        assert_eq!(h.verdict.exit_code(), 2);
    }

    #[test]
    fn a_backlog_without_active_consumers_is_a_stall() {
        let mut r = report();
        r.streams[0].length = 5;
        assert_eq!(judge(&r, STALL).verdict, Verdict::Ok, "an active worker");
        r.groups[0].consumers[0].idle_seconds = 600.0;
        assert_eq!(judge(&r, STALL).verdict, Verdict::Stalled);
        r.groups.clear();
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Stalled);
        assert!(h.reasons[0].contains("start inlet-worker"));
    }

    #[test]
    fn dead_letters_and_direct_mode_degrade() {
        let mut r = report();
        r.dlq.stream = Some(1);
        assert_eq!(judge(&r, STALL).verdict, Verdict::Degraded);
        let mut r = report();
        r.redis.reachable = false;
        r.streams.clear();
        r.groups.clear();
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Degraded);
        assert_eq!(h.verdict.exit_code(), 0);
    }

    #[test]
    fn nothing_to_keep_events_is_down() {
        let mut r = report();
        r.redis.reachable = false;
        r.store.reachable = false;
        assert_eq!(judge(&r, STALL).verdict, Verdict::Down);
        let mut r = report();
        r.redis.configured = false;
        r.redis.reachable = false;
        r.store.error = Some("no such table".into());
        let h = judge(&r, STALL);
        assert_eq!(h.verdict, Verdict::Down);
        assert_eq!(h.verdict.exit_code(), 3);
        // Redis up, store down: accepted but not processed.
        let mut r = report();
        r.store.reachable = false;
        assert_eq!(judge(&r, STALL).verdict, Verdict::Stalled);
    }
}
