//! The DLQ over HTTP (`/api/dlq`) against the real Redis: list, show,
//! replay (the letter goes back into incoming.raw and leaves the DLQ), the
//! bearer token and JSON errors.

use inlet_suite::*;
use serde_json::Value;

const TOKEN: &str = "api-token";

async fn get(gw: &TestGateway, path: &str) -> (u16, Value) {
    let res = gw
        .client
        .get(format!("{}{path}", gw.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

async fn replay(gw: &TestGateway, id: &str) -> (u16, Value) {
    let res = gw
        .client
        .post(format!("{}/api/dlq/{id}/replay", gw.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn dead_letters_are_listed_shown_and_replayed_over_http() {
    require_redis().await;
    let gw = TestGateway::start(TestConfig::new()).await;
    let body = b"this is not json";
    assert_eq!(gw.post_signed("whatsapp", body, SECRET).await.status(), 200);
    assert_eq!(gw.stream("dlq").await.len(), 1);

    // Without the token: 401 with a JSON error, on every DLQ route.
    let res = gw.get("/api/dlq").await;
    assert_eq!(res.status(), 401);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["code"], "unauthorized");
    let res = gw
        .client
        .post(format!("{}/api/dlq/1-0/replay", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let (status, list) = get(&gw, "/api/dlq").await;
    assert_eq!(status, 200, "{list}");
    let letters = list["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{list}");
    assert_eq!(list["total"]["stream"], 1);
    let letter = &letters[0];
    assert_eq!(letter["reason"], "not_json");
    assert_eq!(letter["stage"], "gateway");
    assert_eq!(letter["source"], "whatsapp");
    assert_eq!(letter["body_bytes"], body.len());
    assert!(
        letter.get("body").is_none(),
        "no body unless asked: {letter}"
    );
    let id = letter["id"].as_str().unwrap().to_string();
    let trace_id = letter["trace_id"].as_str().unwrap().to_string();

    let (status, shown) = get(&gw, &format!("/api/dlq/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["trace_id"], trace_id.as_str());
    assert!(shown.get("body").is_none());
    let (status, shown) = get(&gw, &format!("/api/dlq/{id}?body=true")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["body"], "this is not json");

    let (status, err) = get(&gw, "/api/dlq/not-an-id").await;
    assert_eq!((status, err["code"].as_str()), (400, Some("bad_request")));
    let (status, err) = get(&gw, "/api/dlq/1-0").await;
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
    let (status, err) = replay(&gw, "1-0").await;
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
    assert!(gw.stream("incoming.raw").await.is_empty());

    // Replay: the event is back in incoming.raw with its trace id and bytes,
    // and the letter is gone.
    let (status, done) = replay(&gw, &id).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["replayed"], id.as_str());
    let raw = gw.stream("incoming.raw").await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].text("trace_id").unwrap(), trace_id);
    assert_eq!(raw[0].field("body").unwrap(), body);
    assert!(gw.stream("dlq").await.is_empty());
    let (status, _) = get(&gw, &format!("/api/dlq/{id}")).await;
    assert_eq!(status, 404);
    let (status, err) = replay(&gw, &id).await;
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
    assert!(gw
        .audit()
        .iter()
        .any(|r| r.stage == "replayed"
            && r.trace_id.map(|t| t.to_string()) == Some(trace_id.clone())));

    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_dead_letter_kept_in_the_store_is_replayed_into_the_stream_and_deleted() {
    require_redis().await;
    let gw = TestGateway::start(TestConfig::new()).await;
    let event = inlet::envelope::RawEvent::new(
        inlet::envelope::Source::Whatsapp,
        "default",
        fixture("wa_text.json").into(),
    );
    let trace_id = event.trace_id.to_string();
    let letter = inlet::dlq::DeadLetter {
        event,
        reason: "transient_exhausted".into(),
        error: "database unreachable".into(),
        attempts: 5,
        stage: "direct".into(),
        failed_at: chrono::Utc::now(),
    };
    let row = gw.store().put_dead_letter(&letter).await.unwrap();
    let id = format!("db-{row}");

    let (status, list) = get(&gw, "/api/dlq").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"]["store"], 1, "{list}");
    assert_eq!(list["dead_letters"][0]["id"], id.as_str());

    let (status, done) = replay(&gw, &id).await;
    assert_eq!(status, 200, "{done}");
    let raw = gw.stream("incoming.raw").await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].text("trace_id").unwrap(), trace_id);
    assert!(gw.store().dead_letters(10).await.unwrap().is_empty());
    let (status, _) = get(&gw, &format!("/api/dlq/{id}")).await;
    assert_eq!(status, 404);

    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_replay_that_processing_rejects_again_is_422_and_keeps_the_letter() {
    // Direct mode: the replay runs through the pipeline in-process, which
    // dead-letters a body that is not JSON again. No retry can change
    // that, so it is no server error.
    let mut cfg = TestConfig::new();
    cfg.env.remove("INLET_REDIS_URL");
    let gw = TestGateway::start(cfg).await;
    let res = gw.post_signed("whatsapp", b"not json at all", SECRET).await;
    assert_eq!(res.status(), 200);
    let (status, list) = get(&gw, "/api/dlq").await;
    assert_eq!(status, 200, "{list}");
    let id = list["dead_letters"][0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("db-"), "{list}");

    let (status, err) = replay(&gw, &id).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["code"], "replay_rejected", "{err}");
    assert!(
        err["detail"].as_str().unwrap().contains("not_json"),
        "{err}"
    );
    let (status, kept) = get(&gw, &format!("/api/dlq/{id}")).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["reason"], "not_json", "{kept}");

    // A malformed query parameter is the API's JSON error, not plain text.
    let (status, err) = get(&gw, "/api/dlq?limit=-1").await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "bad_request", "{err}");
    gw.stop().await;
}
