//! Operator commands against real services: `inlet status` sees backlogs,
//! pending entries and dead letters and fails when the pipeline stalls;
//! `inlet audit trace` follows one delivery through gateway, worker and
//! store; `inlet audit tail` filters and follows; both services export the
//! queue gauges on `/metrics`.

use std::time::Duration;

use bytes::Bytes;
use inlet::audit::AuditRecord;
use inlet::dlq::DeadLetter;
use inlet::envelope::{RawEvent, Source};
use inlet::model::NormalizedItem;
use inlet::streams::{DLQ, INCOMING_RAW, WORKER_GROUP};
use inlet_suite::*;
use serde_json::Value;

/// Queue mode against a fresh Postgres database, migrated.
async fn pg_config() -> (TestConfig, TestDb) {
    require_redis().await;
    let db = TestDb::create().await;
    let cfg = TestConfig::new().set("INLET_DATABASE_URL", db.url.clone());
    let (ok, out) = cli(cfg.settings(), &["migrate"]).await;
    assert!(ok, "{out}");
    (cfg, db)
}

fn raw_event(fixture_name: &str) -> RawEvent {
    RawEvent::new(
        Source::Whatsapp,
        "default",
        Bytes::from(fixture(fixture_name)),
    )
}

fn dead_letter() -> DeadLetter {
    DeadLetter {
        event: RawEvent::new(Source::Whatsapp, "default", Bytes::from_static(b"nope")),
        reason: "not_json".into(),
        error: "expected value at line 1".into(),
        attempts: 1,
        stage: "worker".into(),
        failed_at: chrono::Utc::now(),
    }
}

/// `inlet --json status`, parsed, with its exit success.
async fn status_json(cfg: &TestConfig) -> (bool, Value) {
    let (ok, out) = cli(cfg.settings(), &["--json", "status"]).await;
    let v = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    (ok, v)
}

fn stream_length(status: &Value, name: &str) -> u64 {
    status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("stream {name} in {status}"))["length"]
        .as_u64()
        .unwrap()
}

fn workers_group(status: &Value) -> &Value {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["stream"] == INCOMING_RAW && g["group"] == WORKER_GROUP)
        .unwrap_or_else(|| panic!("workers group in {status}"))
}

#[tokio::test]
async fn status_shows_backlog_pending_entries_and_dead_letters() {
    let (cfg, db) = pg_config().await;
    let queue = queue(&cfg.prefix).await;
    let store = inlet::store::open(&db.url, 2).await.unwrap();

    // Two deliveries queued; a consumer takes one and never acknowledges it.
    let first = raw_event("wa_text.json");
    queue.enqueue_raw(&first).await.unwrap();
    queue
        .enqueue_raw(&raw_event("wa_image.json"))
        .await
        .unwrap();
    queue
        .ensure_group(INCOMING_RAW, WORKER_GROUP)
        .await
        .unwrap();
    let taken = take(&queue, INCOMING_RAW, WORKER_GROUP, "slow-worker", 1).await;
    assert_eq!(taken.len(), 1);
    // One dead letter in each place, and one event kept in the store.
    queue.dead_letter(&dead_letter()).await.unwrap();
    store.put_dead_letter(&dead_letter()).await.unwrap();
    let items = inlet::normalize::normalize(&first.body).unwrap();
    store
        .write(&[inlet::plan::Delivery {
            event: first.clone(),
            items,
        }])
        .await
        .unwrap();

    let (ok, text) = cli(cfg.settings(), &["status"]).await;
    assert!(ok, "dead letters degrade, they do not fail: {text}");
    for part in [
        "mode     queue",
        "postgres, reachable",
        "1 consumers, 1 pending",
        "slow-worker",
        "1 in the stream, 1 in the store",
        "health   degraded",
        "inlet dlq list",
    ] {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }

    let (ok, status) = status_json(&cfg).await;
    assert!(ok);
    assert_eq!(status["mode"], "queue");
    assert_eq!(status["store"]["reachable"], true);
    assert_eq!(stream_length(&status, INCOMING_RAW), 2);
    assert_eq!(stream_length(&status, DLQ), 1);
    assert_eq!(stream_length(&status, "incoming.normalized"), 0);
    assert_eq!(stream_length(&status, "cache.sync"), 0);
    let group = workers_group(&status);
    assert_eq!(group["pending"], 1);
    assert!(group["oldest_pending_age_seconds"].is_number(), "{group}");
    assert!(group["held_too_long"].is_null(), "held briefly: {group}");
    let consumer = &group["consumers"][0];
    assert_eq!(consumer["name"], "slow-worker");
    assert_eq!(consumer["pending"], 1);
    assert_eq!(status["dlq"]["stream"], 1);
    assert_eq!(status["dlq"]["store"], 1);
    assert_eq!(status["health"]["verdict"], "degraded");
    let last: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(status["store"]["last_event_at"].clone()).unwrap();
    assert_eq!(last, first.received_at, "newest raw_events.received_at");

    cleanup_prefix(&cfg.prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn status_exits_non_zero_while_the_pipeline_is_stalled() {
    require_redis().await;
    // Entries idle for more than 2 × 50 ms count as stalled.
    let cfg = TestConfig::new().set("INLET_WORKER__CLAIM_IDLE_MS", "50");
    let (ok, out) = cli(cfg.settings(), &["migrate"]).await;
    assert!(ok, "the embedded SQLite store exists: {out}");
    let queue = queue(&cfg.prefix).await;

    // A backlog nobody has ever consumed.
    queue.enqueue_raw(&raw_event("wa_text.json")).await.unwrap();
    let (ok, text) = cli(cfg.settings(), &["status"]).await;
    assert!(!ok, "{text}");
    assert!(text.contains("STALLED"), "{text}");
    assert!(text.contains("no worker has ever joined"), "{text}");

    // A consumer takes the entry and then goes silent.
    queue
        .ensure_group(INCOMING_RAW, WORKER_GROUP)
        .await
        .unwrap();
    let taken = take(&queue, INCOMING_RAW, WORKER_GROUP, "wedged", 10).await;
    assert_eq!(taken.len(), 1);
    let status = eventually(
        Duration::from_secs(10),
        "status reports the held entry",
        || async {
            let (ok, status) = status_json(&cfg).await;
            (!ok && workers_group(&status)["held_too_long"].is_object()).then_some(status)
        },
    )
    .await;
    assert_eq!(status["health"]["verdict"], "stalled");
    let held = &workers_group(&status)["held_too_long"];
    assert_eq!(held["consumer"], "wedged");
    assert_eq!(held["id"], taken.ids()[0].as_str());
    let reasons = status["health"]["reasons"].to_string();
    assert!(reasons.contains("held by consumer wedged"), "{reasons}");

    // Once the entry is acknowledged the pipeline is healthy again.
    taken.ack_delete().await.unwrap();
    let (ok, text) = cli(cfg.settings(), &["status"]).await;
    assert!(ok, "{text}");
    assert!(text.contains("health   ok"), "{text}");
    cleanup_prefix(&cfg.prefix).await;
}

#[tokio::test]
async fn status_is_down_when_nothing_can_keep_events() {
    let cfg = TestConfig::new()
        .set(
            "INLET_REDIS_URL",
            format!("redis://127.0.0.1:{}", closed_port()),
        )
        .set(
            "INLET_DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{}/none", closed_port()),
        );
    let (ok, status) = status_json(&cfg).await;
    assert!(!ok);
    assert_eq!(status["mode"], "direct");
    assert_eq!(status["redis"]["reachable"], false);
    assert_eq!(status["store"]["reachable"], false);
    assert_eq!(status["health"]["verdict"], "down");
}

/// The audit stages of `text` (a rendered trace), in the order printed.
fn printed_stages(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('+'))
        .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
        .collect()
}

/// Posts a signed WhatsApp delivery; returns its trace id.
async fn post_whatsapp(gw: &TestGateway, body: &[u8]) -> String {
    let res = gw.post_signed("whatsapp", body, SECRET).await;
    assert_eq!(res.status(), 200);
    res.headers()["x-trace-id"].to_str().unwrap().to_string()
}

/// Waits for the `stored` audit line of `trace`.
async fn wait_stored(gw: &TestGateway, trace: &str) {
    eventually(
        Duration::from_secs(30),
        "the delivery is stored",
        || async {
            gw.audit()
                .iter()
                .any(|r| r.stage == "stored" && r.trace_id.is_some_and(|t| t.to_string() == trace))
                .then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn audit_trace_follows_a_delivery_from_gateway_to_store() {
    let (cfg, db) = pg_config().await;
    let prefix = cfg.prefix.clone();
    let worker = TestWorker::start(&cfg).await;
    let gw = TestGateway::start(cfg).await;
    let settings = gw.config.settings();
    let body = fixture("wa_text.json");
    let provider_id = match inlet::normalize::normalize(&body).unwrap().remove(0) {
        NormalizedItem::Message(m) => m.provider_message_id,
        other => panic!("a message, not {other:?}"),
    };

    let trace = post_whatsapp(&gw, &body).await;
    wait_stored(&gw, &trace).await;

    let (ok, text) = cli(settings.clone(), &["audit", "trace", &trace]).await;
    assert!(ok, "{text}");
    assert!(
        text.starts_with(&format!("trace {trace}  whatsapp / default")),
        "{text}"
    );
    let stages = printed_stages(&text);
    let expected = ["received", "enqueued", "dequeued", "normalized", "stored"];
    let positions: Vec<usize> = expected
        .iter()
        .map(|s| {
            stages
                .iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("{s} in {stages:?}:\n{text}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "steps in order: {stages:?}"
    );
    assert!(
        text.contains("gateway") && text.contains("worker"),
        "{text}"
    );
    assert!(text.contains("steps over"), "{text}");
    // The first step is the reference point; timed steps show their duration.
    let first = text
        .lines()
        .find(|l| l.trim_start().starts_with('+'))
        .unwrap();
    assert!(first.trim_start().starts_with("+0µs"), "{first}");

    // JSON: the same lines, in time order, with durations.
    let (ok, json) = cli(settings.clone(), &["--json", "audit", "trace", &trace]).await;
    assert!(ok, "{json}");
    let lines: Vec<AuditRecord> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .all(|l| l.trace_id.map(|t| t.to_string()) == Some(trace.clone())));
    assert!(lines
        .windows(2)
        .all(|w| w[0].timestamp() <= w[1].timestamp()));
    for stage in ["enqueued", "normalized", "stored"] {
        let l = lines.iter().find(|l| l.stage == stage).unwrap();
        assert!(l.duration_us.is_some(), "{stage} carries its duration");
    }

    // From the provider message id: the same trace, and a redelivery's too.
    let (ok, text) = cli(settings.clone(), &["audit", "trace", &provider_id]).await;
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("1 delivery carried {provider_id}")),
        "{text}"
    );
    assert!(text.contains(&format!("trace {trace}")), "{text}");
    let again = post_whatsapp(&gw, &body).await;
    wait_stored(&gw, &again).await;
    let (ok, text) = cli(settings.clone(), &["audit", "trace", &provider_id]).await;
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("2 deliveries carried {provider_id}")),
        "{text}"
    );
    let first_at = text.find(&format!("trace {trace}")).unwrap();
    let again_at = text.find(&format!("trace {again}")).unwrap();
    assert!(first_at < again_at, "oldest delivery first:\n{text}");
    // The logs found it without ever holding it (it embeds a phone number).
    for entry in std::fs::read_dir(settings.audit_dir()).unwrap() {
        let logged = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(
            !logged.contains(&provider_id),
            "provider ids are only logged hashed"
        );
    }

    // An unknown id prints a clear message and fails.
    let (ok, text) = cli(settings, &["audit", "trace", "wamid.UNKNOWN"]).await;
    assert!(!ok);
    assert!(text.contains("no audit lines for wamid.UNKNOWN"), "{text}");

    gw.stop().await;
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn audit_tail_filters_by_stage_source_and_outcome_and_follows() {
    require_redis().await;
    let gw = TestGateway::start(TestConfig::new()).await;
    let settings = gw.config.settings();
    let wa = fixture("wa_text.json");
    let fb = fixture("fb_message_text.json");
    assert_eq!(gw.post_signed("whatsapp", &wa, SECRET).await.status(), 200);
    assert_eq!(gw.post_signed("facebook", &fb, SECRET).await.status(), 200);
    assert_eq!(
        gw.post("whatsapp", &wa, Some("sha256=00")).await.status(),
        401
    );

    let tail = |args: &'static [&'static str]| {
        let settings = settings.clone();
        async move {
            let mut argv = vec!["--json", "audit", "tail"];
            argv.extend_from_slice(args);
            let (ok, out) = cli(settings, &argv).await;
            assert!(ok, "{out}");
            out.lines()
                .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap())
                .collect::<Vec<_>>()
        }
    };

    let received = tail(&["--stage", "received"]).await;
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received.iter().all(|r| r.stage == "received"));
    assert_eq!(
        received[0].source.as_deref(),
        Some("whatsapp"),
        "time order"
    );
    assert_eq!(received[1].source.as_deref(), Some("facebook"));

    let facebook = tail(&["--source", "facebook"]).await;
    let stages: Vec<&str> = facebook.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(stages, ["received", "enqueued"]);

    let errors = tail(&["--outcome", "error"]).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].stage, "rejected");

    let both = tail(&["--stage", "received,enqueued", "--source", "whatsapp"]).await;
    assert_eq!(both.len(), 2, "{both:?}");
    let last = tail(&["-n", "1", "--stage", "enqueued"]).await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].source.as_deref(), Some("facebook"), "the newest");

    // Text lines carry the trace id and the stage.
    let (ok, text) = cli(settings.clone(), &["audit", "tail", "--stage", "received"]).await;
    assert!(ok);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(&received[0].trace_id.unwrap().to_string()));

    // --follow prints lines written after it started, until --for runs out.
    let (followed, ()) = tokio::join!(
        cli(
            settings.clone(),
            &[
                "--json",
                "audit",
                "tail",
                "--follow",
                "--for",
                "3s",
                "--outcome",
                "error"
            ],
        ),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(gw.post("facebook", &fb, None).await.status(), 401);
        }
    );
    let (ok, out) = followed;
    assert!(ok, "{out}");
    let lines: Vec<AuditRecord> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "the earlier rejection and the new one: {out}"
    );
    assert_eq!(lines[1].reason.as_deref(), Some("signature_missing"));

    let prefix = gw.config.prefix.clone();
    gw.stop().await;
    cleanup_prefix(&prefix).await;
}

/// GET `http://{addr}{path}` as text.
async fn get_text(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let res = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// A consumer group only this test uses, holding `n` entries of the raw
/// stream: its gauges cannot be confused with another test's.
async fn probe_group(prefix: &str, n: usize) -> String {
    let queue = queue(prefix).await;
    for _ in 0..n {
        queue.enqueue_raw(&raw_event("wa_text.json")).await.unwrap();
    }
    let group = format!("probe-{}", uuid::Uuid::new_v4().simple());
    queue.ensure_group(INCOMING_RAW, &group).await.unwrap();
    let taken = take(&queue, INCOMING_RAW, &group, "probe", n).await;
    assert_eq!(taken.len(), n);
    group
}

#[tokio::test]
async fn worker_metrics_endpoint_serves_the_queue_gauges() {
    let (cfg, db) = pg_config().await;
    let group = probe_group(&cfg.prefix, 2).await;
    queue(&cfg.prefix)
        .await
        .dead_letter(&dead_letter())
        .await
        .unwrap();
    let worker = TestWorker::start(&cfg).await;
    let addr = worker.running.metrics_addr.expect("metrics listener");

    assert_eq!(get_text(addr, "/healthz").await, (200, "ok".to_string()));
    let wanted = format!("inlet_consumer_pending{{stream=\"incoming.raw\",group=\"{group}\"}} 2");
    let text = eventually(
        Duration::from_secs(20),
        "the sampler exported this test's group",
        || {
            let wanted = wanted.clone();
            async move {
                let (_, text) = get_text(addr, "/metrics").await;
                text.contains(&wanted).then_some(text)
            }
        },
    )
    .await;
    for name in [
        "inlet_stream_length{stream=\"incoming.raw\"}",
        "inlet_stream_length{stream=\"incoming.normalized\"}",
        "inlet_stream_length{stream=\"cache.sync\"}",
        "inlet_stream_length{stream=\"dlq\"}",
        "inlet_stream_oldest_entry_age_seconds{stream=\"incoming.raw\"}",
        "inlet_consumer_group_consumers{stream=\"incoming.raw\",group=\"workers\"}",
        "inlet_consumer_oldest_pending_seconds{stream=\"incoming.raw\",group=\"workers\"}",
        "inlet_dlq_size{where=\"stream\"}",
        "inlet_dlq_size{where=\"store\"}",
        "inlet_outbox_pending",
    ] {
        assert!(text.contains(name), "{name} in:\n{text}");
    }
    let consumers =
        format!("inlet_consumer_group_consumers{{stream=\"incoming.raw\",group=\"{group}\"}} 1");
    assert!(text.contains(&consumers), "{consumers}");

    worker.stop().await;
    cleanup_prefix(&cfg.prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn gateway_metrics_carry_the_queue_gauges_in_queue_mode() {
    require_redis().await;
    let cfg = TestConfig::new();
    let group = probe_group(&cfg.prefix, 1).await;
    let gw = TestGateway::start(cfg).await;
    assert_eq!(gw.running.as_ref().unwrap().mode(), "queue");
    let wanted = format!("inlet_consumer_pending{{stream=\"incoming.raw\",group=\"{group}\"}} 1");
    eventually(
        Duration::from_secs(20),
        "the gateway's sampler exported this test's group",
        || {
            let wanted = wanted.clone();
            let gw = &gw;
            async move {
                let text = gw.get("/metrics").await.text().await.ok()?;
                text.contains(&wanted).then_some(())
            }
        },
    )
    .await;
    let prefix = gw.config.prefix.clone();
    gw.stop().await;
    cleanup_prefix(&prefix).await;
}

/// Event types `inlet replay` logged for the raw events kept in the store of
/// `cfg` (SQLite, no Redis): the deliveries are kept raw only, as if the
/// gateway had stored them and processing had never run, then replayed.
async fn replayed_event_types(cfg: &TestConfig) -> Vec<String> {
    let settings = cfg.settings();
    let store = inlet::store::from_settings(&settings).await.unwrap();
    store.migrate().await.unwrap();
    for name in ["wa_text.json", "wa_status_read.json"] {
        store
            .write(&[inlet::plan::Delivery {
                event: raw_event(name),
                items: Vec::new(),
            }])
            .await
            .unwrap();
    }
    let (ok, out) = cli(settings, &["replay", "--from", "2000-01-01"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("replayed 2 raw events"), "{out}");
    assert_eq!(store.messages(None, 10).await.unwrap().len(), 1);
    let stats = store
        .event_log()
        .event_stats(chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    stats.into_iter().map(|s| s.event_type).collect()
}

#[tokio::test]
async fn replay_honours_the_configured_event_filter() {
    let no_redis = || {
        let mut cfg = TestConfig::new();
        cfg.env.remove("INLET_REDIS_URL");
        cfg
    };
    let all = replayed_event_types(&no_redis()).await;
    assert!(
        all.iter().any(|t| t.starts_with("message.")),
        "by default a replay emits message events: {all:?}"
    );

    let cfg = no_redis().set("INLET_EVENTS__DISABLED_ENTITIES", "message,message_status");
    let filtered = replayed_event_types(&cfg).await;
    assert!(
        !filtered
            .iter()
            .any(|t| t.starts_with("message.") || t.starts_with("message_status.")),
        "events disabled for message and message_status: {filtered:?}"
    );
    assert!(
        filtered.iter().any(|t| t.starts_with("contact.")),
        "other entities still emit: {filtered:?}"
    );
}
