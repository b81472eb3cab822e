//! Event bus acceptance: write events in the immutable log, signed outgoing
//! webhooks with retries and isolation, stats, replay, exactly-once delivery
//! across two workers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use inlet_suite::*;

/// One recorded POST: headers and body.
type Hit = (HeaderMap, Vec<u8>);

/// A local HTTP receiver recording every POST (headers + body).
#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    status: u16,
}

impl Receiver {
    async fn start(status: u16) -> (Receiver, String) {
        let receiver = Receiver {
            hits: Arc::default(),
            status,
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn event_types(&self) -> Vec<String> {
        self.hits()
            .iter()
            .filter_map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
            .filter_map(|v| v["type"].as_str().map(String::from))
            .collect()
    }
}

async fn record(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.hits.lock().unwrap().push((headers, body.to_vec()));
    StatusCode::from_u16(r.status).unwrap()
}

async fn setup() -> (TestConfig, TestDb) {
    require_redis().await;
    let db = TestDb::create().await;
    let cfg = TestConfig::new()
        .set("INLET_DATABASE_URL", db.url.clone())
        .set("INLET_EVENTS__WEBHOOK_RETRY_SCHEDULE_MS", "20,20")
        .set("INLET_EVENTS__HANDLER_BACKOFF_MS", "20")
        .set("INLET_EVENTS__WEBHOOK_DISABLE_AFTER", "3");
    (cfg, db)
}

/// Migrates and adds the subscription `name` for `events` at `url` with the
/// CLI, as an operator would.
async fn subscribe(settings: inlet::config::Settings, name: &str, url: &str, events: &str) {
    let (ok, out) = cli(settings.clone(), &["migrate"]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(
        settings,
        &[
            "subscriptions",
            "add",
            "--name",
            name,
            "--url",
            url,
            "--events",
            events,
        ],
    )
    .await;
    assert!(ok, "{out}");
}

async fn type_counts(store: &inlet::store::Store, phase: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, e) in store
        .event_log()
        .logged_events(None, None, Some(phase.parse().unwrap()), 0, 100_000)
        .await
        .unwrap()
    {
        *counts.entry(e.event_type).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn fixtures_produce_exactly_the_expected_after_events() {
    let (cfg, db) = setup().await;
    let prefix = cfg.prefix.clone();
    let worker = TestWorker::start(&cfg).await;
    let gw = TestGateway::start(cfg).await;
    gw.post_all_fixtures().await;
    let store = worker.store();
    wait_raw_events(&store, fixtures().len() as i64).await;
    let counts = type_counts(&store, "after").await;
    let c = store.counts().await.unwrap();
    assert_eq!(
        counts["message.after.create"], c.messages as usize,
        "one per stored message"
    );
    assert_eq!(
        counts["message_status.after.create"], c.statuses as usize,
        "one per receipt"
    );
    assert_eq!(counts["page_change.after.create"], c.page_changes as usize);
    assert!(counts["contact.after.upsert"] >= c.contacts as usize);
    assert!(counts["conversation.after.upsert"] >= c.conversations as usize);
    // Redelivering everything fires no new create events.
    gw.post_all_fixtures().await;
    wait_raw_events(&store, 2 * fixtures().len() as i64).await;
    let again = type_counts(&store, "after").await;
    assert_eq!(
        again["message.after.create"],
        counts["message.after.create"]
    );
    assert_eq!(
        again["message_status.after.create"],
        counts["message_status.after.create"]
    );
    gw.stop().await;
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_forced_store_failure_produces_a_failed_event() {
    let (cfg, db) = setup().await;
    let prefix = cfg.prefix.clone();
    let worker = TestWorker::start(&cfg).await;
    // Make the database refuse one particular message.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.text = 'boom' THEN RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_boom BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_boom();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let gw = TestGateway::start(TestConfig::new().set("INLET_STREAM_PREFIX", prefix.clone())).await;
    let body = String::from_utf8(fixture("wa_text.json"))
        .unwrap()
        .replace("Hi, is the blue kettle still in stock?", "boom");
    assert_eq!(
        gw.post_signed("whatsapp", body.as_bytes(), SECRET)
            .await
            .status(),
        200
    );
    let store = worker.store();
    let failed = eventually(Duration::from_secs(20), "failed event logged", || async {
        let f = type_counts(&store, "failed").await;
        (!f.is_empty()).then_some(f)
    })
    .await;
    assert_eq!(failed.get("message.failed.create"), Some(&1), "{failed:?}");
    let (ok, out) = cli(worker_settings(&db, &prefix), &["events", "failed"]).await;
    assert!(
        ok && out.contains("message.failed.create") && out.contains("refused by test"),
        "{out}"
    );
    // The event itself went to the DLQ with the database's reason.
    let dlq = eventually(Duration::from_secs(10), "dlq entry", || async {
        let e = read_stream(&prefix, "dlq").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(dlq[0].text("reason").unwrap(), "store_rejected");
    gw.stop().await;
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

fn worker_settings(db: &TestDb, prefix: &str) -> inlet::config::Settings {
    TestConfig::new()
        .set("INLET_DATABASE_URL", db.url.clone())
        .set("INLET_STREAM_PREFIX", prefix.to_string())
        .settings()
}

#[tokio::test]
async fn signed_webhooks_retry_isolate_and_disable() {
    let (cfg, db) = setup().await;
    let prefix = cfg.prefix.clone();
    let (good, good_url) = Receiver::start(200).await;
    let (bad, bad_url) = Receiver::start(500).await;
    let settings = cfg.settings();
    // Subscriptions are added before the worker starts reading events.
    let (ok, out) = cli(settings.clone(), &["migrate"]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(
        settings.clone(),
        &[
            "subscriptions",
            "add",
            "--name",
            "good",
            "--url",
            &good_url,
            "--events",
            "message.after.*",
            "--secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = cli(
        settings.clone(),
        &[
            "subscriptions",
            "add",
            "--name",
            "bad",
            "--url",
            &bad_url,
            "--events",
            "message.after.*",
        ],
    )
    .await;
    assert!(ok && out.contains("signing secret"), "{out}");

    let worker = TestWorker::start(&cfg).await;
    let gw = TestGateway::start(cfg).await;
    let names = [
        "wa_text.json",
        "wa_image.json",
        "fb_message_text.json",
        "ig_message_text.json",
    ];
    for name in names {
        gw.post_signed(source_of(name), &fixture(name), SECRET)
            .await;
    }
    eventually(
        Duration::from_secs(30),
        "good receiver got every event",
        || async { (good.hits().len() >= names.len()).then_some(()) },
    )
    .await;
    assert_eq!(
        good.event_types(),
        vec!["message.after.create"; names.len()]
    );
    for (headers, body) in good.hits() {
        let id = headers["webhook-id"].to_str().unwrap();
        let ts: i64 = headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let sig = headers["webhook-signature"].to_str().unwrap();
        assert!(
            inlet::webhooks::verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id, ts, &body, sig),
            "signature verifies"
        );
    }
    // The failing receiver was retried (1 + 2 attempts per event), then
    // recorded as failed, and disabled after 3 failed events.
    let store = worker.store();
    eventually(
        Duration::from_secs(30),
        "bad subscription disabled",
        || async {
            let subs = store.event_log().subscriptions().await.ok()?;
            subs.iter()
                .any(|s| s.name == "bad" && !s.active)
                .then_some(())
        },
    )
    .await;
    assert!(bad.hits().len() >= 9, "retried: {} hits", bad.hits().len());
    let failures = store.event_log().handler_failures(100).await.unwrap();
    assert!(
        failures
            .iter()
            .filter(|f| f.handler.starts_with("webhook:"))
            .count()
            >= 3
    );
    let (ok, out) = cli(worker_settings(&db, &prefix), &["subscriptions", "list"]).await;
    assert!(
        ok && out.contains("disabled") && out.contains("consecutive events failed"),
        "{out}"
    );
    assert!(!out.contains("whsec_"), "secrets are not listed");

    // Stats count what was sent.
    let (ok, out) = cli(
        worker_settings(&db, &prefix),
        &["--json", "events", "stats", "--days", "1"],
    )
    .await;
    assert!(ok, "{out}");
    let stats: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    let created: i64 = stats
        .iter()
        .filter(|s| s["event_type"] == "message.after.create")
        .map(|s| s["count"].as_i64().unwrap())
        .sum();
    assert_eq!(created, names.len() as i64);
    let api: serde_json::Value = gw
        .client
        .get(format!("{}/api/events/stats?days=1", gw.base))
        .bearer_auth("api-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api_created: i64 = api["stats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["event_type"] == "message.after.create")
        .map(|s| s["count"].as_i64().unwrap())
        .sum();
    assert_eq!(api_created, names.len() as i64, "API and CLI agree");
    let unauthorized = gw
        .client
        .get(format!("{}/api/events/failed", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let failed: serde_json::Value = gw
        .client
        .get(format!("{}/api/events/failed", gw.base))
        .bearer_auth("api-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(failed["handler_failures"].as_array().unwrap().len() >= 3);

    // Replay re-delivers, marked, and is not swallowed by dedup.
    let before = good.hits().len();
    let (ok, out) = cli(
        worker_settings(&db, &prefix),
        &[
            "events",
            "replay",
            "--from",
            "2000-01-01",
            "--type",
            "message.after.*",
        ],
    )
    .await;
    assert!(
        ok && out.contains(&format!("queued {}", names.len())),
        "{out}"
    );
    eventually(
        Duration::from_secs(30),
        "replayed events delivered",
        || async { (good.hits().len() >= before + names.len()).then_some(()) },
    )
    .await;
    let replayed = good.hits()[before..]
        .iter()
        .filter(|(_, b)| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap()["replay"].is_string()
        })
        .count();
    assert_eq!(replayed, names.len());
    gw.stop().await;
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn event_log_is_append_only() {
    for backend in ["postgres", "sqlite"] {
        let db = if backend == "postgres" {
            Some(TestDb::create().await)
        } else {
            None
        };
        let mut cfg = TestConfig::new();
        cfg.env.remove("INLET_REDIS_URL");
        if let Some(db) = &db {
            cfg = cfg.set("INLET_DATABASE_URL", db.url.clone());
        }
        let gw = TestGateway::start(cfg).await;
        gw.post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
            .await;
        let settings = gw.config.settings();
        let url = settings.database_url.clone();
        let errors = if backend == "postgres" {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            vec![
                sqlx::query("UPDATE event_log SET event_type = 'x'")
                    .execute(&pool)
                    .await
                    .err(),
                sqlx::query("DELETE FROM event_log")
                    .execute(&pool)
                    .await
                    .err(),
            ]
        } else {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            vec![
                sqlx::query("UPDATE event_log SET event_type = 'x'")
                    .execute(&pool)
                    .await
                    .err(),
                sqlx::query("DELETE FROM event_log")
                    .execute(&pool)
                    .await
                    .err(),
            ]
        };
        for e in errors {
            let e = e.unwrap_or_else(|| panic!("{backend}: change to event_log accepted"));
            assert!(e.to_string().contains("append-only"), "{backend}: {e}");
        }
        let counts = type_counts(&gw.store(), "after").await;
        assert_eq!(counts.get("message.after.create"), Some(&1), "{backend}");
        gw.stop().await;
        if let Some(db) = db {
            db.drop_db().await;
        }
    }
}

#[tokio::test]
async fn direct_mode_delivers_events_in_process() {
    let (receiver, url) = Receiver::start(200).await;
    let mut cfg = TestConfig::new();
    cfg.env.remove("INLET_REDIS_URL");
    let gw = TestGateway::start(cfg).await;
    let (ok, out) = cli(
        gw.config.settings(),
        &[
            "subscriptions",
            "add",
            "--name",
            "inbox",
            "--url",
            &url,
            "--events",
            "message.after.create",
        ],
    )
    .await;
    assert!(ok, "{out}");
    gw.post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
        .await;
    eventually(Duration::from_secs(15), "in-process delivery", || async {
        (!receiver.hits().is_empty()).then_some(())
    })
    .await;
    assert_eq!(receiver.event_types(), vec!["message.after.create"]);

    // `subscriptions test` sends a signed ping now.
    let (ok, out) = cli(gw.config.settings(), &["subscriptions", "test", "inbox"]).await;
    assert!(ok && out.contains("Ok(200)"), "{out}");
    assert_eq!(
        receiver.event_types().last().map(String::as_str),
        Some("subscription.test.ping")
    );

    // A Slack subscription gets a one-line summary, no message text.
    let (slack, slack_url) = Receiver::start(200).await;
    let (ok, out) = cli(
        gw.config.settings(),
        &[
            "subscriptions",
            "add",
            "--name",
            "slack",
            "--url",
            &slack_url,
            "--events",
            "message.after.*",
            "--format",
            "slack",
        ],
    )
    .await;
    assert!(ok, "{out}");
    gw.post_signed("whatsapp", &fixture("wa_image.json"), SECRET)
        .await;
    eventually(Duration::from_secs(15), "slack message", || async {
        (!slack.hits().is_empty()).then_some(())
    })
    .await;
    let (_, body) = &slack.hits()[0];
    let msg: serde_json::Value = serde_json::from_slice(body).unwrap();
    let text = msg["text"].as_str().unwrap();
    assert!(
        text.contains("message.after.create") && text.contains("image"),
        "{text}"
    );
    assert!(
        !text.contains("scratch on the lid"),
        "no message text in Slack: {text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn two_workers_deliver_each_event_exactly_once() {
    let (cfg, db) = setup().await;
    let prefix = cfg.prefix.clone();
    let (receiver, url) = Receiver::start(200).await;
    subscribe(cfg.settings(), "crm", &url, "message.after.create").await;
    let w1 = TestWorker::start_with(cfg.settings().clone_with_consumer("one")).await;
    let w2 = TestWorker::start_with(cfg.settings().clone_with_consumer("two")).await;
    let gw = TestGateway::start(cfg).await;
    let template = String::from_utf8(fixture("wa_text.json")).unwrap();
    const N: usize = 60;
    for i in 0..N {
        let body = template.replace("MQA=", &format!("E{i:02}A="));
        assert_eq!(
            gw.post_signed("whatsapp", body.as_bytes(), SECRET)
                .await
                .status(),
            200
        );
    }
    eventually(Duration::from_secs(30), "every event delivered", || async {
        (receiver.hits().len() >= N).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ids: std::collections::HashSet<String> = receiver
        .hits()
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(receiver.hits().len(), N, "no duplicates");
    assert_eq!(ids.len(), N);
    gw.stop().await;
    w1.stop().await;
    w2.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn events_can_be_switched_off_per_entity_and_globally() {
    let mut cfg = TestConfig::new().set("INLET_EVENTS__DISABLED_ENTITIES", "contact,conversation");
    cfg.env.remove("INLET_REDIS_URL");
    let gw = TestGateway::start(cfg).await;
    gw.post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
        .await;
    let counts = type_counts(&gw.store(), "after").await;
    assert_eq!(counts.get("message.after.create"), Some(&1));
    assert!(
        !counts
            .keys()
            .any(|t| t.starts_with("contact.") || t.starts_with("conversation.")),
        "{counts:?}"
    );
    gw.stop().await;

    let mut cfg = TestConfig::new().set("INLET_EVENTS__ENABLED", "false");
    cfg.env.remove("INLET_REDIS_URL");
    let gw = TestGateway::start(cfg).await;
    gw.post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
        .await;
    assert!(type_counts(&gw.store(), "after").await.is_empty());
    assert_eq!(
        gw.store().counts().await.unwrap().messages,
        1,
        "data is still stored"
    );
    gw.stop().await;
}

#[tokio::test]
async fn events_a_dead_worker_left_pending_still_reach_subscribers_once() {
    let (cfg, db) = setup().await;
    let cfg = cfg.set("INLET_WORKER__CLAIM_IDLE_MS", "300");
    let prefix = cfg.prefix.clone();
    let (receiver, url) = Receiver::start(200).await;
    subscribe(cfg.settings(), "crm", &url, "message.after.create").await;

    // A worker that crashed: it had read an event from the webhooks group
    // and died before acknowledging it. Its consumer name (host-pid) will
    // never come back.
    let q = queue(&prefix).await;
    q.ensure_group("events", "bus.webhooks").await.unwrap();
    let event = inlet::events::Event::new(
        "message",
        inlet::events::Phase::After,
        inlet::events::Operation::Create,
        "dead-worker-1",
        "default",
        None,
        "meta:whatsapp",
        serde_json::json!({"channel": "whatsapp", "direction": "inbound"}),
    );
    let row = inlet::events::outbox_row(&event);
    let fields: Vec<(&str, Vec<u8>)> = row
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone().into_bytes()))
        .collect();
    q.publish_many("events", &[fields]).await.unwrap();
    let mut ghost = inlet::queue::GroupConsumer::connect(
        &q,
        inlet::queue::ConsumerConfig {
            stream: "events".into(),
            group: "bus.webhooks".into(),
            consumer: "ghost-4242".into(),
            count: 10,
            block: Duration::from_millis(100),
            claim_idle: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    let taken = ghost.next_batch().await.unwrap();
    assert_eq!(taken.len(), 1);
    // It dies holding the batch: the entry stays pending on its name.
    drop(taken);

    // A live worker reclaims it once it has been idle long enough.
    let worker = TestWorker::start(&cfg).await;
    eventually(
        Duration::from_secs(20),
        "the orphaned event delivered",
        || async { (!receiver.hits().is_empty()).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "nothing left pending in the webhooks group",
        || async { (q.pending("events", "bus.webhooks").await.ok()?.count == 0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1, "delivered exactly once");
    assert_eq!(
        hits[0].0["webhook-id"].to_str().unwrap(),
        event.id.to_string()
    );
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

/// An event as the relay would publish it, with a fresh id.
fn test_event(key: &str) -> inlet::events::Event {
    inlet::events::Event::new(
        "message",
        inlet::events::Phase::After,
        inlet::events::Operation::Create,
        key,
        "default",
        None,
        "test",
        serde_json::json!({"channel": "whatsapp"}),
    )
}

/// Event ids of one log claim, completing it.
async fn claim_ids(store: &inlet::store::Store) -> Vec<String> {
    let claim = store.log_claim(500).await.unwrap();
    let ids = claim
        .entries()
        .iter()
        .map(|e| {
            assert_eq!(e.stream, "events");
            let event = e.fields.iter().find(|(k, _)| k == "event").unwrap();
            inlet::events::parse_event(&event.1).unwrap().id.to_string()
        })
        .collect();
    claim.complete().await.unwrap();
    ids
}

/// Waits until a claim would see `n` events (a claim dropped without
/// completing moves nothing). On Postgres the relay reads only rows older
/// than every transaction still running in the cluster, so concurrent tests
/// can hold rows back for a moment.
async fn wait_claimable(store: &inlet::store::Store, n: usize) {
    eventually(
        Duration::from_secs(20),
        &format!("{n} events past the relay's horizon"),
        || async {
            let claim = store.log_claim(500).await.ok()?;
            let seen = claim.entries().len();
            claim.release().await.ok()?;
            (seen >= n).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_log_relay_never_skips_an_event_that_commits_late_on_postgres() {
    use sqlx::Connection;
    let db = TestDb::create().await;
    let store = inlet::store::open(&db.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    assert!(claim_ids(&store).await.is_empty(), "nothing logged yet");

    // A transaction logs event A and stays open…
    let a = test_event("late-a");
    let mut slow = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
    sqlx::query(
        "INSERT INTO event_log (event_id, event_type, entity, phase, operation, tenant, actor, \
         data, schema_version, occurred_at) \
         VALUES ($1, 'message.after.create', 'message', 'after', 'create', 'default', 'test', \
         '{}'::jsonb, 1, now())",
    )
    .bind(a.id.to_string())
    .execute(&mut slow)
    .await
    .unwrap();
    // …while a later one logs B (a higher seq) and commits first.
    let b = test_event("early-b");
    store.log_event(&b).await.unwrap();
    // B is held back while A's transaction may still add rows before it.
    assert!(
        claim_ids(&store).await.is_empty(),
        "nothing past a transaction that is still running"
    );
    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
    wait_claimable(&store, 2).await;
    assert_eq!(
        claim_ids(&store).await,
        vec![a.id.to_string(), b.id.to_string()],
        "both, in transaction order"
    );
    assert!(claim_ids(&store).await.is_empty(), "each event once");
    drop(slow);
    drop(store);
    db.drop_db().await;
}

#[tokio::test]
async fn two_relays_never_claim_the_same_log_rows() {
    let db = TestDb::create().await;
    let store = inlet::store::open(&db.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    for i in 0..3 {
        store
            .log_event(&test_event(&format!("two-{i}")))
            .await
            .unwrap();
    }
    assert_eq!(store.activity().await.unwrap().outbox, 3, "not yet relayed");
    wait_claimable(&store, 3).await;
    let first = store.log_claim(500).await.unwrap();
    assert_eq!(first.entries().len(), 3);
    // The cursor is locked: a second relay claims nothing meanwhile.
    let second = store.log_claim(500).await.unwrap();
    assert!(second.entries().is_empty());
    second.release().await.unwrap();
    first.complete().await.unwrap();
    assert_eq!(store.activity().await.unwrap().outbox, 0, "all relayed");
    assert!(claim_ids(&store).await.is_empty());
    // A claim given up without completing (publish failed) leaves the rows.
    store.log_event(&test_event("two-3")).await.unwrap();
    wait_claimable(&store, 1).await;
    let failed = store.log_claim(500).await.unwrap();
    assert_eq!(failed.entries().len(), 1);
    failed.release().await.unwrap();
    assert_eq!(claim_ids(&store).await.len(), 1);
    drop(store);
    db.drop_db().await;
}

#[tokio::test]
async fn the_log_relay_reads_sqlite_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/relay.db", dir.path().display());
    let store = inlet::store::open(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let events: Vec<_> = (0..5).map(|i| test_event(&format!("lite-{i}"))).collect();
    for e in &events[..3] {
        store.log_event(e).await.unwrap();
    }
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(claim_ids(&store).await, ids[..3]);
    for e in &events[3..] {
        store.log_event(e).await.unwrap();
    }
    assert_eq!(claim_ids(&store).await, ids[3..]);
    assert!(claim_ids(&store).await.is_empty());
}
