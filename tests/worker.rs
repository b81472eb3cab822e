//! Worker acceptance: gateway → Redis stream → worker → Postgres, with real
//! services and a database per test.

use std::time::Duration;

use inlet_suite::*;

/// Config for queue mode against a fresh Postgres database.
async fn pg_config() -> (TestConfig, TestDb) {
    require_redis().await;
    let db = TestDb::create().await;
    let cfg = TestConfig::new()
        .set("INLET_DATABASE_URL", db.url.clone())
        .set("INLET_WORKER__CLAIM_IDLE_MS", "500");
    (cfg, db)
}

#[tokio::test]
async fn every_fixture_flows_into_postgres_as_documented() {
    let (cfg, db) = pg_config().await;
    let prefix = cfg.prefix.clone();
    let worker = TestWorker::start(&cfg).await;
    let gw = TestGateway::start(cfg).await;
    gw.post_all_fixtures().await;
    let store = worker.store();
    wait_raw_events(&store, fixtures().len() as i64).await;
    assert_fixture_rows(&store).await;

    // The normalized stream carries every item with deterministic ids.
    let items: usize = fixtures()
        .iter()
        .map(|(_, b)| inlet::normalize::normalize(b).unwrap().len())
        .sum();
    let normalized = eventually(
        Duration::from_secs(10),
        "normalized stream filled",
        || async {
            let entries = read_stream(&prefix, "incoming.normalized").await;
            (entries.len() >= items).then_some(entries)
        },
    )
    .await;
    assert_eq!(normalized.len(), items, "one normalized entry per item");
    assert!(normalized
        .iter()
        .all(|e| e.text("event_id").is_some() && e.text("trace_id").is_some()));
    // The raw stream is drained (entries acknowledged and deleted).
    assert!(read_stream(&prefix, "incoming.raw").await.is_empty());

    // The audit trail has every step for one trace.
    let trace = store
        .message_by_provider_id("wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwMQA=")
        .await
        .unwrap()
        .unwrap()
        .trace_id;
    let stages: Vec<String> = gw
        .audit()
        .into_iter()
        .filter(|r| r.trace_id.map(|t| t.to_string()) == Some(trace.clone()))
        .map(|r| r.stage)
        .collect();
    for stage in ["received", "enqueued", "dequeued", "normalized", "stored"] {
        assert!(stages.iter().any(|s| s == stage), "{stage} in {stages:?}");
    }
    gw.stop().await;
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn redeliveries_are_stored_once_and_statuses_never_regress() {
    let (cfg, db) = pg_config().await;
    let prefix = cfg.prefix.clone();
    let worker = TestWorker::start(&cfg).await;
    let gw = TestGateway::start(cfg).await;
    let body = fixture("wa_text.json");
    for _ in 0..3 {
        assert_eq!(
            gw.post_signed("whatsapp", &body, SECRET).await.status(),
            200
        );
    }
    // Out of order: read, then sent, then delivered.
    for name in [
        "wa_status_read.json",
        "wa_status_sent.json",
        "wa_status_delivered.json",
    ] {
        assert_eq!(
            gw.post_signed("whatsapp", &fixture(name), SECRET)
                .await
                .status(),
            200
        );
    }
    let store = worker.store();
    wait_raw_events(&store, 6).await;
    let counts = store.counts().await.unwrap();
    assert_eq!(
        counts.messages, 1,
        "same message delivered 3 times is stored once"
    );
    assert_eq!(counts.contacts, 1);
    assert_eq!(counts.conversations, 1);
    assert_eq!(counts.raw_events, 6, "every delivery is kept for replay");
    let cur = store
        .current_status(
            "default",
            "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJCMEIwMDAwMDAwMDAwMDAwMTAA",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.status, "read");
    assert_eq!(counts.statuses, 3, "the history keeps each receipt once");
    gw.stop().await;
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_album_deliveries_converge_on_one_conversation() {
    let (cfg, db) = pg_config().await;
    let prefix = cfg.prefix.clone();
    // Two workers, small batches, so the deliveries race across transactions.
    let cfg = cfg.set("INLET_WORKER__BATCH_SIZE", "2");
    let w1 = TestWorker::start_with(cfg.settings().clone_with_consumer("w1")).await;
    let w2 = TestWorker::start_with(cfg.settings().clone_with_consumer("w2")).await;
    let gw = TestGateway::start(cfg).await;
    let template = String::from_utf8(fixture("wa_image.json")).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        // A new contact sends 40 photos at once.
        let body = template
            .replace("MgA=", &format!("M{i:02}A="))
            .replace("15550001111", "15550007777");
        let client = gw.client.clone();
        let url = format!("{}/webhooks/whatsapp", gw.base);
        tasks.spawn(async move {
            let sig = inlet::signature::sign(body.as_bytes(), SECRET.as_bytes());
            client
                .post(url)
                .header("x-hub-signature-256", sig)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    while let Some(s) = tasks.join_next().await {
        assert_eq!(s.unwrap(), 200);
    }
    let store = w1.store();
    wait_raw_events(&store, 40).await;
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.messages, 40);
    assert_eq!(counts.contacts, 1, "one contact");
    assert_eq!(
        counts.conversations, 1,
        "one conversation, not one per photo"
    );
    gw.stop().await;
    w1.stop().await;
    w2.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_crashed_workers_pending_entries_are_reclaimed_exactly_once() {
    let (cfg, db) = pg_config().await;
    let prefix = cfg.prefix.clone();
    let gw = TestGateway::start(TestConfig::new().set("INLET_STREAM_PREFIX", prefix.clone())).await;
    let template = String::from_utf8(fixture("wa_text.json")).unwrap();
    for i in 0..30 {
        let body = template.replace("MQA=", &format!("R{i:02}A="));
        assert_eq!(
            gw.post_signed("whatsapp", body.as_bytes(), SECRET)
                .await
                .status(),
            200
        );
    }
    // A worker reads 20 entries and dies before acknowledging them.
    let queue = queue(&prefix).await;
    queue.ensure_group("incoming.raw", "workers").await.unwrap();
    let taken = take(&queue, "incoming.raw", "workers", "crashed-worker", 20).await;
    assert_eq!(taken.len(), 20);
    drop(taken);

    // Two healthy workers take over.
    let w1 = TestWorker::start_with(cfg.settings().clone_with_consumer("a")).await;
    let w2 = TestWorker::start_with(cfg.settings().clone_with_consumer("b")).await;
    let store = w1.store();
    wait_raw_events(&store, 30).await;
    eventually(
        Duration::from_secs(20),
        "pending entries reclaimed",
        || async {
            let p = queue.pending("incoming.raw", "workers").await.ok()?;
            (p.count == 0).then_some(())
        },
    )
    .await;
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.messages, 30, "every event stored exactly once");
    assert_eq!(counts.raw_events, 30);
    gw.stop().await;
    w1.stop().await;
    w2.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_database_outage_keeps_entries_pending_never_dead_lettered_and_they_are_stored_after() {
    let (cfg, db) = pg_config().await;
    let prefix = cfg.prefix.clone();
    // The worker reaches Postgres through a forwarder the test can cut.
    let flaky = Flaky::start(&host_port(&db.url)).await;
    let cfg = cfg
        .set("INLET_DATABASE_URL", flaky.route(&db.url))
        .set("INLET_WORKER__MAX_ATTEMPTS", "3")
        .set("INLET_WORKER__BACKOFF_BASE_MS", "50")
        .set("INLET_WORKER__BACKOFF_FACTOR", "2");
    let worker = TestWorker::start(&cfg).await;
    let gw = TestGateway::start(TestConfig::new().set("INLET_STREAM_PREFIX", prefix.clone())).await;

    flaky.down().await;
    let body = fixture("wa_text.json");
    assert_eq!(
        gw.post_signed("whatsapp", &body, SECRET).await.status(),
        200
    );
    // The batch is tried (max_attempts), given back, and tried again after
    // the worker's backoff: twice at least, so several rounds of retries.
    let audit_dir = cfg.dir().join("audit");
    eventually(
        Duration::from_secs(30),
        "the batch retried over several rounds",
        || async {
            let audit = inlet::audit::read_all(&audit_dir).ok()?;
            (audit.iter().filter(|r| r.stage == "retried").count() >= 4).then_some(())
        },
    )
    .await;
    assert!(
        read_stream(&prefix, "dlq").await.is_empty(),
        "nothing dead-lettered"
    );
    assert_eq!(
        read_stream(&prefix, "incoming.raw").await.len(),
        1,
        "the entry waits in the stream"
    );

    // The database returns: the entry is stored, once, and acknowledged.
    flaky.up().await;
    let store = worker.store();
    eventually(Duration::from_secs(30), "the message stored", || async {
        let c = store.counts().await.ok()?;
        (c.messages == 1).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the entry acknowledged",
        || async {
            read_stream(&prefix, "incoming.raw")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert!(read_stream(&prefix, "dlq").await.is_empty());
    let c = store.counts().await.unwrap();
    assert_eq!((c.raw_events, c.messages, c.dead_letters), (1, 1, 0));
    gw.stop().await;
    worker.stop().await;
    flaky.down().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn malformed_entries_go_to_the_dlq_without_blocking_the_stream() {
    let (cfg, db) = pg_config().await;
    let prefix = cfg.prefix.clone();
    let queue = queue(&prefix).await;
    // A raw entry whose body is not JSON (written by something other than
    // the gateway), followed by a good event.
    let mut bad = inlet::envelope::RawEvent::new(
        inlet::envelope::Source::Whatsapp,
        "default",
        bytes::Bytes::from_static(b"{broken"),
    );
    bad.headers
        .push(("content-type".into(), "application/json".into()));
    queue.enqueue_raw(&bad).await.unwrap();
    let good = inlet::envelope::RawEvent::new(
        inlet::envelope::Source::Whatsapp,
        "default",
        bytes::Bytes::from(fixture("wa_text.json")),
    );
    queue.enqueue_raw(&good).await.unwrap();
    let worker = TestWorker::start(&cfg).await;
    let store = worker.store();
    wait_raw_events(&store, 1).await;
    let dlq = eventually(Duration::from_secs(10), "dlq entry", || async {
        let e = read_stream(&prefix, "dlq").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(dlq[0].text("reason").unwrap(), "not_json");
    assert_eq!(dlq[0].text("trace_id").unwrap(), bad.trace_id.to_string());
    let (ok, out) = cli(cfg.settings(), &["dlq", "show", &dlq[0].id]).await;
    assert!(ok && out.contains("not_json"), "{out}");
    let (ok, out) = cli(cfg.settings(), &["dlq", "purge"]).await;
    assert!(
        !ok && out.contains("--yes"),
        "purge needs confirmation: {out}"
    );
    let (ok, _) = cli(cfg.settings(), &["dlq", "purge", "--yes"]).await;
    assert!(ok);
    assert!(read_stream(&prefix, "dlq").await.is_empty());
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn nogroup_after_a_redis_flush_is_recovered() {
    let (cfg, db) = pg_config().await;
    let prefix = cfg.prefix.clone();
    let worker = TestWorker::start(&cfg).await;
    let gw = TestGateway::start(TestConfig::new().set("INLET_STREAM_PREFIX", prefix.clone())).await;
    assert_eq!(
        gw.post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
            .await
            .status(),
        200
    );
    let store = worker.store();
    wait_raw_events(&store, 1).await;
    // Simulate a Redis restart without persistence: the stream and its group vanish.
    cleanup_prefix(&prefix).await;
    assert_eq!(
        gw.post_signed("whatsapp", &fixture("wa_image.json"), SECRET)
            .await
            .status(),
        200
    );
    wait_raw_events(&store, 2).await;
    assert_eq!(store.counts().await.unwrap().messages, 2);
    gw.stop().await;
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}

#[tokio::test]
async fn replay_of_raw_events_is_idempotent() {
    let (cfg, db) = pg_config().await;
    let prefix = cfg.prefix.clone();
    let worker = TestWorker::start(&cfg).await;
    let gw = TestGateway::start(TestConfig::new().set("INLET_STREAM_PREFIX", prefix.clone())).await;
    for name in [
        "wa_text.json",
        "fb_message_text.json",
        "ig_message_text.json",
    ] {
        gw.post_signed(source_of(name), &fixture(name), SECRET)
            .await;
    }
    let store = worker.store();
    wait_raw_events(&store, 3).await;
    let (ok, out) = cli(cfg.settings(), &["replay", "--source", "whatsapp"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("replayed 1 raw events"), "{out}");
    let (ok, out) = cli(cfg.settings(), &["replay", "--from", "2000-01-01"]).await;
    assert!(ok && out.contains("replayed 3"), "{out}");
    eventually(Duration::from_secs(10), "replays processed", || async {
        let q = queue(&prefix).await;
        (q.len("incoming.raw").await.ok()? == 0).then_some(())
    })
    .await;
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.messages, 3, "replay does not duplicate");
    gw.stop().await;
    worker.stop().await;
    cleanup_prefix(&prefix).await;
    db.drop_db().await;
}
