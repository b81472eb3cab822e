//! The gateway's local spool: when neither Redis nor the store can keep a
//! delivery, it is fsynced to the spool and answered 200, then drained into
//! the store once the store is back (also after a restart), each event
//! stored once; spool off or full → 503.

use std::time::Duration;

use inlet_suite::*;

/// A Redis-less gateway whose Postgres goes through a forwarder the test
/// switches off.
async fn gateway_over(flaky: &Flaky, db: &TestDb, extra: &[(&str, &str)]) -> TestGateway {
    let mut cfg = TestConfig::new()
        .set("INLET_DATABASE_URL", flaky.route(&db.url))
        .set("INLET_SPOOL__DRAIN_INTERVAL_MS", "100");
    cfg.env.remove("INLET_REDIS_URL");
    for (k, v) in extra {
        cfg = cfg.set(k, *v);
    }
    TestGateway::start(cfg).await
}

fn spooled(gw: &TestGateway) -> u64 {
    gw.running
        .as_ref()
        .unwrap()
        .ingest
        .spool_stats()
        .expect("spool on")
        .pending_events
}

#[tokio::test]
async fn with_redis_and_the_store_down_events_are_spooled_then_stored_once() {
    let db = TestDb::create().await;
    let flaky = Flaky::start(&host_port(&db.url)).await;
    let gw = gateway_over(&flaky, &db, &[]).await;
    flaky.down().await;

    // Every fixture is answered 200 while nothing but the disk can keep it.
    gw.post_all_fixtures().await;
    let n = fixtures().len() as u64;
    assert_eq!(spooled(&gw), n);
    let audit = gw.audit();
    assert_eq!(
        audit.iter().filter(|r| r.stage == "spooled").count() as u64,
        n
    );
    // `inlet status` tells.
    let (_, out) = cli(gw.config.settings(), &["--json", "status"]).await;
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["spool"]["pending_events"], n, "{v:#}");
    assert_eq!(v["health"]["verdict"], "down", "{v:#}");

    flaky.up().await;
    eventually(Duration::from_secs(30), "the spool drained", || async {
        (spooled(&gw) == 0).then_some(())
    })
    .await;
    let store = gw.store();
    assert_fixture_rows(&store).await;
    let drained = gw
        .audit()
        .into_iter()
        .filter(|r| r.outcome == "drained")
        .count() as u64;
    assert_eq!(drained, n);
    let (_, out) = cli(gw.config.settings(), &["--json", "status"]).await;
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["spool"]["pending_events"], 0, "{v:#}");
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_spool_left_by_a_stopped_gateway_is_drained_after_its_restart() {
    let db = TestDb::create().await;
    let flaky = Flaky::start(&host_port(&db.url)).await;
    let gw = gateway_over(&flaky, &db, &[]).await;
    flaky.down().await;
    gw.post_all_fixtures().await;
    assert_eq!(spooled(&gw), fixtures().len() as u64);
    let cfg = gw.stop_keeping_config().await;
    flaky.up().await;
    // The same data directory: the spool is found and drained.
    let gw = TestGateway::start(cfg).await;
    eventually(Duration::from_secs(30), "the spool drained", || async {
        (spooled(&gw) == 0).then_some(())
    })
    .await;
    assert_fixture_rows(&gw.store()).await;
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_full_or_disabled_spool_answers_503_as_before() {
    let db = TestDb::create().await;
    let flaky = Flaky::start(&host_port(&db.url)).await;
    let (name, body) = fixtures().remove(0);

    let off = gateway_over(&flaky, &db, &[("INLET_SPOOL__ENABLED", "false")]).await;
    flaky.down().await;
    let res = off.post_signed(source_of(&name), &body, SECRET).await;
    assert_eq!(res.status(), 503);
    assert!(off.running.as_ref().unwrap().ingest.spool_stats().is_none());
    off.stop().await;
    flaky.up().await;

    // Room for about one event.
    let full = gateway_over(
        &flaky,
        &db,
        &[("INLET_SPOOL__MAX_BYTES", &(body.len() + 600).to_string())],
    )
    .await;
    flaky.down().await;
    assert_eq!(
        full.post_signed(source_of(&name), &body, SECRET)
            .await
            .status(),
        200
    );
    let res = full.post_signed(source_of(&name), &body, SECRET).await;
    assert_eq!(res.status(), 503);
    let rejected = full
        .audit()
        .into_iter()
        .find(|r| r.stage == "rejected")
        .expect("the refusal is audited");
    assert!(
        rejected
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("spool full"),
        "{rejected:?}"
    );
    flaky.up().await;
    full.stop().await;
    db.drop_db().await;
}
