//! Gateway ingest against the real Redis: signatures, limits, handshake,
//! durable enqueue, dead-lettering of malformed bodies, audit hygiene.

use std::time::Duration;

use inlet_suite::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

async fn gateway() -> TestGateway {
    require_redis().await;
    TestGateway::start(TestConfig::new()).await
}

#[tokio::test]
async fn every_fixture_is_enqueued_with_its_exact_bytes() {
    let gw = gateway().await;
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 30,
        "fixtures copied into tests/fixtures/meta"
    );
    let mut traces = Vec::new();
    for (name, body) in &fixtures {
        let res = gw.post_signed(source_of(name), body, SECRET).await;
        assert_eq!(res.status(), 200, "{name}");
        let trace = res
            .headers()
            .get("x-trace-id")
            .unwrap_or_else(|| panic!("{name}: X-Trace-Id"))
            .to_str()
            .unwrap()
            .to_string();
        let trace = Uuid::parse_str(&trace).unwrap();
        assert_eq!(trace.get_version_num(), 7, "trace ids are UUIDv7");
        traces.push((name.clone(), body.clone(), trace));
    }
    let entries = gw.stream("incoming.raw").await;
    assert_eq!(
        entries.len(),
        fixtures.len(),
        "one stream entry per delivery"
    );
    for ((name, body, trace), entry) in traces.iter().zip(&entries) {
        assert_eq!(
            entry.field("body").unwrap(),
            body.as_slice(),
            "{name}: bytes unchanged"
        );
        assert_eq!(entry.text("trace_id").unwrap(), trace.to_string(), "{name}");
        assert_eq!(entry.text("source").unwrap(), source_of(name), "{name}");
        assert_eq!(entry.text("tenant").unwrap(), "default");
        let event = inlet::envelope::RawEvent::from_fields(entry.pairs()).unwrap();
        assert_eq!(event.header("content-type"), Some("application/json"));
    }
    let audit = gw.audit();
    let enqueued = audit.iter().filter(|r| r.stage == "enqueued").count();
    assert_eq!(enqueued, fixtures.len());
    assert!(audit
        .iter()
        .filter(|r| r.stage == "enqueued")
        .all(|r| r.trace_id.is_some() && r.duration_us.is_some()));
    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}

#[tokio::test]
async fn bad_signatures_are_refused_and_audited() {
    let gw = gateway().await;
    let body = fixture("wa_text.json");
    let good = inlet::signature::sign(&body, SECRET.as_bytes());
    let wrong = inlet::signature::sign(&body, b"not-the-secret");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("wrong secret", Some(wrong)),
        ("no prefix", Some(good[7..].to_string())),
        ("sha1 prefix", Some(format!("sha1={}", &good[7..]))),
        ("short", Some(good[..40].to_string())),
        ("bad hex", Some(format!("sha256={}", "g".repeat(64)))),
        ("empty", Some(String::new())),
    ];
    for (what, sig) in &cases {
        let res = gw.post("whatsapp", &body, sig.as_deref()).await;
        assert_eq!(res.status(), 401, "{what}");
        assert!(res.headers().contains_key("x-trace-id"), "{what}");
    }
    // A body changed after signing fails too (bytes, not parsed JSON).
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert_eq!(
        gw.post("whatsapp", &tampered, Some(&good)).await.status(),
        401
    );

    assert!(
        gw.stream("incoming.raw").await.is_empty(),
        "nothing enqueued"
    );
    let rejected: Vec<_> = gw
        .audit()
        .into_iter()
        .filter(|r| r.stage == "rejected")
        .collect();
    assert_eq!(rejected.len(), cases.len() + 1);
    assert!(rejected
        .iter()
        .all(|r| r.reason.as_deref().unwrap_or("").starts_with("signature_")));

    // The second configured secret is accepted.
    let res = gw.post_signed("whatsapp", &body, SECRET_2).await;
    assert_eq!(res.status(), 200);
    assert_eq!(gw.stream("incoming.raw").await.len(), 1);

    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("inlet_gateway_signature_failures_total"));
    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    require_redis().await;
    let gw = TestGateway::start(TestConfig::new().set("INLET_HTTP__MAX_BODY_BYTES", "1024")).await;
    let big = vec![b'x'; 4096];
    let res = gw.post_signed("whatsapp", &big, SECRET).await;
    assert_eq!(res.status(), 413);

    // Chunked, no Content-Length: refused once the limit is passed.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = "POST /webhooks/whatsapp HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nx-hub-signature-256: sha256=00\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'y'; 2000];
    for _ in 0..2 {
        let _ = tcp
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = tcp.write_all(&chunk).await;
        let _ = tcp.write_all(b"\r\n").await;
    }
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    assert!(gw.stream("incoming.raw").await.is_empty());
    let audit = gw.audit();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.reason.as_deref() == Some("body_too_large"))
            .count(),
        2
    );
    gw.stop().await;
}

#[tokio::test]
async fn handshake_contract_for_every_source() {
    let gw = gateway().await;
    for source in ["whatsapp", "facebook", "instagram"] {
        let ok = gw
            .get(&format!(
                "/webhooks/{source}?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
            ))
            .await;
        assert_eq!(ok.status(), 200, "{source}");
        assert_eq!(ok.text().await.unwrap(), "1158201444", "{source}");

        let wrong = gw
            .get(&format!(
                "/webhooks/{source}?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1"
            ))
            .await;
        assert_eq!(wrong.status(), 403, "{source}");
        let no_mode = gw
            .get(&format!(
                "/webhooks/{source}?hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"
            ))
            .await;
        assert_eq!(no_mode.status(), 403, "{source}");
        let none = gw.get(&format!("/webhooks/{source}")).await;
        assert_eq!(none.status(), 403, "{source}");
    }
    assert_eq!(
        gw.get("/webhooks/telegram?hub.mode=subscribe&hub.verify_token=x")
            .await
            .status(),
        404
    );
    gw.stop().await;
}

#[tokio::test]
async fn unknown_source_is_404() {
    let gw = gateway().await;
    let body = fixture("wa_text.json");
    let res = gw.post_signed("telegram", &body, SECRET).await;
    assert_eq!(res.status(), 404);
    assert!(gw.stream("incoming.raw").await.is_empty());
    assert!(gw
        .audit()
        .iter()
        .any(|r| r.reason.as_deref() == Some("unknown_source")));
    gw.stop().await;
}

#[tokio::test]
async fn signed_malformed_bodies_are_acknowledged_and_dead_lettered() {
    let gw = gateway().await;
    let cases: [(&[u8], &str); 3] = [
        (b"this is not json", "not_json"),
        (br#"{"hello":"world"}"#, "not_meta_shape"),
        (br#"{"object":"page","entry":{}}"#, "not_meta_shape"),
    ];
    for (body, _) in &cases {
        let res = gw.post_signed("facebook", body, SECRET).await;
        assert_eq!(res.status(), 200);
    }
    assert!(gw.stream("incoming.raw").await.is_empty());
    let dlq = gw.stream("dlq").await;
    assert_eq!(dlq.len(), cases.len());
    for ((body, reason), entry) in cases.iter().zip(&dlq) {
        assert_eq!(entry.field("body").unwrap(), *body);
        assert_eq!(entry.text("reason").unwrap(), *reason);
        assert!(!entry.text("error").unwrap().is_empty());
        assert_eq!(entry.text("stage").unwrap(), "gateway");
        assert!(entry.text("trace_id").is_some());
    }
    assert_eq!(
        gw.audit()
            .iter()
            .filter(|r| r.stage == "dead_lettered")
            .count(),
        cases.len()
    );
    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_posts_make_a_thousand_entries() {
    require_redis().await;
    // A generous Redis timeout: under a loaded test machine a slow XADD
    // would (correctly) fall back to direct mode, and this test is about
    // the queue path.
    let gw = TestGateway::start(TestConfig::new().set("INLET_REDIS__TIMEOUT_MS", "10000")).await;
    let template = String::from_utf8(fixture("wa_text.json")).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let body = template.replace("QA=", &format!("Q{i:04}="));
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
                .map(|r| r.status().as_u16())
        });
    }
    let mut ok = 0;
    while let Some(res) = tasks.join_next().await {
        assert_eq!(res.unwrap().unwrap(), 200);
        ok += 1;
    }
    assert_eq!(ok, 1000);
    let entries = gw.stream("incoming.raw").await;
    assert_eq!(entries.len(), 1000);
    let traces: std::collections::HashSet<_> = entries
        .iter()
        .map(|e| e.text("trace_id").unwrap())
        .collect();
    assert_eq!(traces.len(), 1000, "every delivery has its own trace id");
    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}

/// With the local spool off (with it on, tests/spool.rs: 200 and spooled).
#[tokio::test]
async fn neither_redis_nor_store_reachable_means_503_without_the_spool() {
    let cfg = TestConfig::new()
        .set("INLET_SPOOL__ENABLED", "false")
        .set(
            "INLET_REDIS_URL",
            format!("redis://127.0.0.1:{}", closed_port()),
        )
        .set(
            "INLET_DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{}/nowhere", closed_port()),
        );
    let gw = TestGateway::start(cfg).await;
    let res = gw
        .post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
        .await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["redis"], "down");
    assert!(gw
        .audit()
        .iter()
        .any(|r| r.stage == "rejected" && r.outcome == "unavailable"));
    gw.stop().await;
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let gw = gateway().await;
    assert_eq!(gw.get("/healthz").await.status(), 200);
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["mode"], "queue");
    assert_eq!(body["redis"], "up");
    gw.post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
        .await;
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("inlet_gateway_deliveries_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("inlet_gateway_ack_seconds_bucket"),
        "{metrics}"
    );
    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}

#[tokio::test]
async fn audit_never_contains_secrets_or_message_text() {
    let gw = gateway().await;
    gw.post_all_fixtures().await;
    gw.post("whatsapp", &fixture("wa_text.json"), Some("sha256=bad"))
        .await;
    gw.get(&format!(
        "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"
    ))
    .await;
    let dir = gw.config.dir().join("audit");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    assert!(!text.is_empty());
    for forbidden in [
        SECRET,
        SECRET_2,
        VERIFY_TOKEN,
        "Hi, is the blue kettle still in stock?",
        "Hello! What are your opening hours?",
        "Ana Testerman",
        "15550001111",
    ] {
        assert!(!text.contains(forbidden), "audit contains {forbidden:?}");
    }
    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_and_stops_listening() {
    let gw = gateway().await;
    let addr = gw.addr;
    let res = gw
        .post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
        .await;
    assert_eq!(res.status(), 200);
    let prefix = gw.config.prefix.clone();
    gw.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(read_stream(&prefix, "incoming.raw").await.len(), 1);
    cleanup_prefix(&prefix).await;
}
