//! The HTTP API's OpenAPI 3.1 document: generated from the handlers, served
//! at `GET /api/openapi.json` and committed as `docs/openapi.json`.
//! After changing the API, regenerate the file with
//! `INLET_UPDATE_OPENAPI=1 cargo test --test openapi`.

use std::path::Path;

use inlet_suite::*;

fn committed_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = inlet::http::api::openapi_document();
    let path = committed_path();
    if std::env::var_os("INLET_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is not the document the handlers generate; \
         regenerate it with INLET_UPDATE_OPENAPI=1 cargo test --test openapi"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    for (path, method) in [
        ("/api/conversations", "get"),
        ("/api/conversations/{id}/messages", "get"),
        ("/api/contacts", "get"),
        ("/api/analytics/summary", "get"),
        ("/api/events/stats", "get"),
        ("/api/events/failed", "get"),
        ("/api/dlq", "get"),
        ("/api/dlq/{id}", "get"),
        ("/api/dlq/{id}/replay", "post"),
        ("/api/openapi.json", "get"),
        ("/api/drafts", "post"),
        ("/api/drafts", "get"),
        ("/api/drafts/{id}", "get"),
        ("/api/drafts/{id}/approve", "post"),
        ("/api/drafts/{id}/reject", "post"),
        ("/api/events/stream", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the document"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn the_gateway_serves_the_document_behind_the_token() {
    require_redis().await;
    let gw = TestGateway::start(TestConfig::new()).await;
    assert_eq!(gw.get("/api/openapi.json").await.status(), 401);
    let res = gw
        .client
        .get(format!("{}/api/openapi.json", gw.base))
        .bearer_auth("api-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served = res.text().await.unwrap();
    assert_eq!(served, inlet::http::api::openapi_document());
    cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
}
