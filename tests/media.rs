//! The media pipeline against the mock Graph API on loopback: an inbound
//! image whose digest matches is stored once (a redelivered webhook does not
//! download again) and served byte-exact by `GET /api/media/{id}` (ranges,
//! ETag, 304); a digest mismatch or an oversize file is recorded as failed
//! and nothing is stored; an expired download URL is replaced by one more
//! `GET /{media-id}`; a 50 MB video goes through the queue-mode consumer
//! (worker, Postgres, Redis) and is stored intact; outbound media is
//! uploaded once per (sender, file) and sent by id.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use inlet::store::media::MediaRecord;
use inlet_suite::graph::MockGraph;
use inlet_suite::{
    eventually, fixture, wait_raw_events, TestConfig, TestDb, TestGateway, TestWorker, SECRET,
};
use serde_json::{json, Value};
use sha2::Digest as _;

const WAIT: Duration = Duration::from_secs(60);
const IMAGE_WAMID: &str = "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwMgA=";
const IMAGE_ID: &str = "910000000000002";
const VIDEO_WAMID: &str = "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwNAA=";
const VIDEO_ID: &str = "910000000000004";
const DOCUMENT_WAMID: &str = "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwNQA=";
const DOCUMENT_ID: &str = "910000000000005";
const FIXTURE_SHA: [&str; 3] = [
    "aW52ZW50ZWQtc2hhMjU2LWRpZ2VzdC0wMDAyLXh4eHg=",
    "aW52ZW50ZWQtc2hhMjU2LWRpZ2VzdC0wMDA0LXh4eHg=",
    "aW52ZW50ZWQtc2hhMjU2LWRpZ2VzdC0wMDA1LXh4eHg=",
];

/// Media on, Graph at the mock, short retries.
fn config(graph: &MockGraph) -> TestConfig {
    TestConfig::new()
        .set("INLET_GRAPH__BASE_URL", graph.base_url.clone())
        .set("INLET_GRAPH__ACCESS_TOKEN", "test-graph-token")
        .set("INLET_MEDIA__ENABLED", "true")
        .set("INLET_MEDIA__BACKOFF_BASE_MS", "20")
        .set("INLET_MEDIA__BACKOFF_CAP_MS", "100")
}

/// Direct mode: the gateway downloads in-process.
fn direct(graph: &MockGraph) -> TestConfig {
    config(graph).set("INLET_REDIS_URL", "")
}

/// Deterministic, incompressible-looking bytes.
fn file_bytes(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn sha_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

/// A fixture whose webhook digest is replaced (the digest of the mock's
/// bytes, in base64 as webhooks carry it).
fn webhook(name: &str, sha256_b64: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(name)).unwrap();
    let mut replaced = text.clone();
    for f in FIXTURE_SHA {
        replaced = replaced.replace(f, sha256_b64);
    }
    assert_ne!(replaced, text, "{name} carries a fixture digest");
    replaced.into_bytes()
}

async fn message_id(gw: &TestGateway, wamid: &str) -> i64 {
    let store = gw.store();
    eventually(WAIT, "message stored", || async {
        store
            .message_by_provider_id(wamid)
            .await
            .ok()
            .flatten()
            .map(|m| m.id)
    })
    .await
}

/// Waits for the attachment to leave `pending`.
async fn settled(gw: &TestGateway, id: i64) -> MediaRecord {
    let store = gw.store();
    eventually(WAIT, "media outcome recorded", || async {
        store
            .media()
            .media_record(id, 0)
            .await
            .ok()
            .flatten()
            .filter(|r| r.state != "pending")
    })
    .await
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = gw
        .client
        .get(format!("{}{path}", gw.base))
        .bearer_auth("api-token");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request sent")
}

/// Content files under `{data_dir}/media` (temp files excluded).
fn stored_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let root = dir.join("media");
    let Ok(levels) = std::fs::read_dir(&root) else {
        return out;
    };
    for level in levels.flatten() {
        if level.file_name() == "tmp" || !level.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(level.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

#[tokio::test]
async fn an_image_is_stored_once_and_served_byte_exact() {
    let graph = MockGraph::start().await;
    let bytes = file_bytes(300_000, 1);
    graph.add_media(IMAGE_ID, bytes.clone(), "image/jpeg");
    let gw = TestGateway::start(direct(&graph)).await;
    let body = webhook("wa_image.json", &sha_b64(&bytes));
    assert_eq!(
        gw.post_signed("whatsapp", &body, SECRET).await.status(),
        200
    );

    let id = message_id(&gw, IMAGE_WAMID).await;
    let record = settled(&gw, id).await;
    assert_eq!(record.state, "stored", "{record:?}");
    assert_eq!(record.sha256.as_deref(), Some(sha_hex(&bytes).as_str()));
    assert_eq!(record.bytes, Some(bytes.len() as i64));
    assert_eq!(record.mime_type.as_deref(), Some("image/jpeg"));

    // Served byte-exact, with its type and digest.
    let res = get(&gw, &format!("/api/media/{id}"), &[]).await;
    assert_eq!(res.status(), 200);
    let etag = format!("\"{}\"", sha_hex(&bytes));
    assert_eq!(res.headers()["content-type"], "image/jpeg");
    assert_eq!(res.headers()["etag"], etag.as_str());
    assert_eq!(res.headers()["accept-ranges"], "bytes");
    assert_eq!(res.bytes().await.unwrap(), bytes);
    // A range, the end of the file, and an unchanged copy.
    let res = get(
        &gw,
        &format!("/api/media/{id}"),
        &[("range", "bytes=1000-1999")],
    )
    .await;
    assert_eq!(res.status(), 206);
    assert_eq!(
        res.headers()["content-range"],
        format!("bytes 1000-1999/{}", bytes.len()).as_str()
    );
    assert_eq!(res.bytes().await.unwrap(), bytes.slice(1000..2000));
    let res = get(&gw, &format!("/api/media/{id}"), &[("range", "bytes=-10")]).await;
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap(), bytes.slice(bytes.len() - 10..));
    let res = get(
        &gw,
        &format!("/api/media/{id}"),
        &[("range", "bytes=999999999-")],
    )
    .await;
    assert_eq!(res.status(), 416);
    let res = get(
        &gw,
        &format!("/api/media/{id}"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(res.status(), 304);
    // No such attachment; the token is required.
    assert_eq!(
        get(&gw, &format!("/api/media/{id}?index=3"), &[])
            .await
            .status(),
        404
    );
    let anonymous = gw
        .client
        .get(format!("{}/api/media/{id}", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // One content-addressed file on disk.
    let files = stored_files(gw.config.dir());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), bytes);

    // The conversation file shows the media state.
    let conversation = gw
        .store()
        .message_by_provider_id(IMAGE_WAMID)
        .await
        .unwrap()
        .unwrap()
        .conversation_id;
    eventually(WAIT, "conversation file shows the stored media", || async {
        let res = get(
            &gw,
            &format!("/api/conversations/{conversation}/messages"),
            &[],
        )
        .await;
        let doc: Value = res.json().await.ok()?;
        let message = doc["messages"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == id)?
            .clone();
        (message["media_state"][0]["state"] == "stored").then_some(message)
    })
    .await;

    // Meta redelivers the webhook: stored once, not downloaded again.
    assert_eq!(
        gw.post_signed("whatsapp", &body, SECRET).await.status(),
        200
    );
    wait_raw_events(&gw.store(), 2).await;
    let pending = gw
        .store()
        .outbox_pending(Some("media.processing"), 10)
        .await
        .unwrap();
    assert!(pending.is_empty(), "no new media job: {pending:?}");
    assert_eq!(
        graph.media_calls(IMAGE_ID),
        (1, 1),
        "one lookup, one download"
    );
    assert_eq!(settled(&gw, id).await.attempts, 1);
    assert_eq!(stored_files(gw.config.dir()).len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_mismatch_or_an_oversize_file_fails_and_nothing_is_stored() {
    let graph = MockGraph::start().await;
    let image = file_bytes(50_000, 2);
    // Graph describes the bytes truthfully, but the webhook's digest (the
    // fixture's) is of another file.
    graph.add_media(IMAGE_ID, image.clone(), "image/jpeg");
    let document = file_bytes(5_000, 3);
    graph.add_media(DOCUMENT_ID, document.clone(), "application/pdf");
    let gw =
        TestGateway::start(direct(&graph).set("INLET_MEDIA__MAX_BYTES__DOCUMENT", "1000")).await;
    let image_body = fixture("wa_image.json");
    assert_eq!(
        gw.post_signed("whatsapp", &image_body, SECRET)
            .await
            .status(),
        200
    );
    let doc_body = webhook("wa_document.json", &sha_b64(&document));
    assert_eq!(
        gw.post_signed("whatsapp", &doc_body, SECRET).await.status(),
        200
    );

    let image_id = message_id(&gw, IMAGE_WAMID).await;
    let record = settled(&gw, image_id).await;
    assert_eq!(record.state, "failed");
    assert_eq!(
        record.reason.as_deref(),
        Some("sha256_mismatch"),
        "{record:?}"
    );
    assert_eq!(record.sha256, None);
    assert_eq!(
        graph.media_calls(IMAGE_ID),
        (1, 1),
        "downloaded once, never retried"
    );

    let doc_id = message_id(&gw, DOCUMENT_WAMID).await;
    let record = settled(&gw, doc_id).await;
    assert_eq!(record.state, "failed");
    assert_eq!(record.reason.as_deref(), Some("too_large"), "{record:?}");
    assert_eq!(
        graph.media_calls(DOCUMENT_ID),
        (1, 0),
        "refused before downloading"
    );

    // 404 with the state; nothing on disk, no temp file left.
    let res = get(&gw, &format!("/api/media/{image_id}"), &[]).await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["x-inlet-media-state"], "failed");
    let err: Value = res.json().await.unwrap();
    assert!(
        err["detail"].as_str().unwrap().contains("sha256_mismatch"),
        "{err}"
    );
    assert!(stored_files(gw.config.dir()).is_empty());
    let temp: Vec<_> = std::fs::read_dir(gw.config.dir().join("media/tmp"))
        .unwrap()
        .collect();
    assert!(temp.is_empty(), "{temp:?}");
    gw.stop().await;
}

#[tokio::test]
async fn an_expired_url_is_replaced_by_a_fresh_lookup() {
    let graph = MockGraph::start().await;
    let bytes = file_bytes(120_000, 4);
    graph.add_media(IMAGE_ID, bytes.clone(), "image/jpeg");
    graph.expire_urls(IMAGE_ID, 1);
    let gw = TestGateway::start(direct(&graph)).await;
    let body = webhook("wa_image.json", &sha_b64(&bytes));
    assert_eq!(
        gw.post_signed("whatsapp", &body, SECRET).await.status(),
        200
    );

    let id = message_id(&gw, IMAGE_WAMID).await;
    let record = settled(&gw, id).await;
    assert_eq!(record.state, "stored", "{record:?}");
    assert_eq!(
        record.attempts, 1,
        "refreshed within the attempt, not retried"
    );
    // The dead link was tried once; the second URL came from a new lookup.
    assert_eq!(graph.media_calls(IMAGE_ID), (2, 2));
    let res = get(&gw, &format!("/api/media/{id}"), &[]).await;
    assert_eq!(res.bytes().await.unwrap(), bytes);
    gw.stop().await;
}

#[tokio::test]
async fn a_50_mb_video_goes_through_the_queue_consumer_intact() {
    let graph = MockGraph::start().await;
    let bytes = file_bytes(50 * 1024 * 1024, 5);
    graph.add_media(VIDEO_ID, bytes.clone(), "video/mp4");
    let db = TestDb::create().await;
    let config = config(&graph)
        .set("INLET_DATABASE_URL", db.url.clone())
        .set(
            "INLET_MEDIA__MAX_BYTES__VIDEO",
            (64 * 1024 * 1024).to_string(),
        );
    let gw = TestGateway::start(config).await;
    let worker = TestWorker::start(&gw.config).await;
    let body = webhook("wa_video.json", &sha_b64(&bytes));
    assert_eq!(
        gw.post_signed("whatsapp", &body, SECRET).await.status(),
        200
    );

    let id = message_id(&gw, VIDEO_WAMID).await;
    let record = eventually(Duration::from_secs(120), "video stored", || async {
        worker
            .store()
            .media()
            .media_record(id, 0)
            .await
            .ok()
            .flatten()
            .filter(|r| r.state != "pending")
    })
    .await;
    assert_eq!(record.state, "stored", "{record:?}");
    assert_eq!(record.bytes, Some(bytes.len() as i64));
    assert_eq!(record.sha256.as_deref(), Some(sha_hex(&bytes).as_str()));
    let files = stored_files(gw.config.dir());
    assert_eq!(files.len(), 1);
    assert_eq!(sha_hex(&std::fs::read(&files[0]).unwrap()), sha_hex(&bytes));
    // The job was acknowledged and deleted: the stream is the backlog.
    eventually(WAIT, "media.processing drained", || async {
        gw.stream("media.processing").await.is_empty().then_some(())
    })
    .await;
    // Served streaming, intact.
    let res = get(&gw, &format!("/api/media/{id}"), &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert_eq!(sha_hex(&res.bytes().await.unwrap()), sha_hex(&bytes));
    worker.stop().await;
    gw.stop().await;
    db.drop_db().await;
}

/// Opens the 24-hour window of `15550001111` on `200000000000002`.
async fn open_window(gw: &TestGateway) {
    let text = String::from_utf8(fixture("wa_text.json")).unwrap();
    let now = chrono::Utc::now().timestamp().to_string();
    let body = text.replace(
        "\"timestamp\": \"1795165200\"",
        &format!("\"timestamp\": \"{now}\""),
    );
    assert_ne!(body, text, "wa_text.json timestamp replaced");
    assert_eq!(
        gw.post_signed("whatsapp", body.as_bytes(), SECRET)
            .await
            .status(),
        200
    );
    wait_raw_events(&gw.store(), 1).await;
}

async fn send(gw: &TestGateway, image: Value) -> (u16, Value) {
    let res = gw
        .client
        .post(format!("{}/api/messages", gw.base))
        .bearer_auth("api-token")
        .json(
            &json!({"channel": "whatsapp", "from": "200000000000002", "to": "15550001111",
            "type": "image", "image": image}),
        )
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn accepted(gw: &TestGateway, id: &str) -> Value {
    eventually(WAIT, "send accepted", || async {
        let m: Value = get(gw, &format!("/api/messages/{id}"), &[])
            .await
            .json()
            .await
            .ok()?;
        match m["status"].as_str()? {
            "accepted" | "sent" => Some(m),
            "failed" | "dead_lettered" => panic!("send failed: {m}"),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn outbound_media_is_checked_uploaded_once_and_sent_by_id() {
    let graph = MockGraph::start().await;
    let uploads = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(uploads.path().join("catalog")).unwrap();
    let photo = file_bytes(100_000, 6);
    std::fs::write(uploads.path().join("catalog/kettle.jpg"), &photo).unwrap();
    std::fs::write(
        uploads.path().join("catalog/huge.jpg"),
        file_bytes(300_000, 7),
    )
    .unwrap();
    let web = file_bytes(20_000, 8);
    graph.add_media("web-photo", web.clone(), "image/png");
    let gw = TestGateway::start(
        direct(&graph)
            .set(
                "INLET_MEDIA__UPLOAD_DIR",
                uploads.path().to_string_lossy().into_owned(),
            )
            .set("INLET_MEDIA__MAX_BYTES__IMAGE", "200000")
            .set("INLET_OUTBOUND__POLL_MS", "20")
            .set("INLET_OUTBOUND__PAIR_INTERVAL_MS", "1"),
    )
    .await;
    open_window(&gw).await;

    // Local checks before anything is stored or uploaded.
    let (status, body) = send(&gw, json!({"path": "catalog/missing.jpg"})).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("image.path")),
        "{body}"
    );
    let (status, body) = send(&gw, json!({"path": "catalog/huge.jpg"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("limit"), "{body}");
    let (status, body) = send(&gw, json!({"path": "../etc/passwd.jpg"})).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("image.path")),
        "{body}"
    );
    assert!(graph.uploads().is_empty());

    // Uploaded once, sent by id; the same file again reuses the id.
    let (status, first) = send(
        &gw,
        json!({"path": "catalog/kettle.jpg", "caption": "blue"}),
    )
    .await;
    assert_eq!(status, 202, "{first}");
    accepted(&gw, first["id"].as_str().unwrap()).await;
    let (_, second) = send(&gw, json!({"path": "catalog/kettle.jpg"})).await;
    accepted(&gw, second["id"].as_str().unwrap()).await;
    let ups = graph.uploads();
    assert_eq!(ups.len(), 1, "one upload for one file");
    assert_eq!(ups[0].sender, "200000000000002");
    assert!(ups[0].content_type.starts_with("multipart/form-data"));
    let body = &ups[0].body;
    assert!(
        body.windows(photo.len()).any(|w| w == photo),
        "the file's bytes are in the upload"
    );
    for part in ["messaging_product", "whatsapp", "image/jpeg", "kettle.jpg"] {
        assert!(
            body.windows(part.len()).any(|w| w == part.as_bytes()),
            "{part}"
        );
    }
    let sends: Vec<Value> = graph.accepted().into_iter().map(|s| s.body).collect();
    assert_eq!(sends.len(), 2);
    for s in &sends {
        assert_eq!(s["image"]["id"], ups[0].id.as_str(), "{s}");
        assert!(s["image"].get("path").is_none());
    }
    assert_eq!(sends[0]["image"]["caption"], "blue");

    // A URL: fetched by Inlet (no token to a third-party host), type from
    // its Content-Type, uploaded.
    let url = format!("{}/download/web-photo?public=1&g=1", graph.base_url);
    let (status, third) = send(&gw, json!({"url": url})).await;
    assert_eq!(status, 202, "{third}");
    accepted(&gw, third["id"].as_str().unwrap()).await;
    let ups = graph.uploads();
    assert_eq!(ups.len(), 2);
    assert!(ups[1].body.windows(web.len()).any(|w| w == web));
    assert!(ups[1].body.windows(9).any(|w| w == b"image/png"));
    gw.stop().await;
}

#[tokio::test]
async fn transient_failures_end_in_the_dlq_and_a_replay_downloads() {
    let graph = MockGraph::start().await;
    let bytes = file_bytes(10_000, 9);
    graph.add_media(IMAGE_ID, bytes.clone(), "image/jpeg");
    // No token yet (the file is empty): every attempt fails, transiently.
    let token_file = tempfile::NamedTempFile::new().unwrap();
    let gw = TestGateway::start(
        direct(&graph)
            .set("INLET_GRAPH__ACCESS_TOKEN", "")
            .set(
                "INLET_GRAPH__ACCESS_TOKEN_FILE",
                token_file.path().to_string_lossy().into_owned(),
            )
            .set("INLET_MEDIA__MAX_ATTEMPTS", "2"),
    )
    .await;
    let body = webhook("wa_image.json", &sha_b64(&bytes));
    assert_eq!(
        gw.post_signed("whatsapp", &body, SECRET).await.status(),
        200
    );
    let id = message_id(&gw, IMAGE_WAMID).await;
    let record = settled(&gw, id).await;
    assert_eq!(record.state, "dead_lettered", "{record:?}");
    assert_eq!(record.reason.as_deref(), Some("no_access_token"));
    assert_eq!(record.attempts, 2);
    assert_eq!(graph.media_calls(IMAGE_ID), (0, 0));

    // In the DLQ as media-{message}-{index}.
    let letter = format!("media-{id}-0");
    let list: Value = get(&gw, "/api/dlq", &[]).await.json().await.unwrap();
    assert_eq!(list["total"]["media"], 1, "{list}");
    assert!(
        list["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == letter.as_str() && l["stage"] == "media"),
        "{list}"
    );

    // A token arrives; the replay queues the download again.
    std::fs::write(token_file.path(), "rotated-graph-token\n").unwrap();
    let res = gw
        .client
        .post(format!("{}/api/dlq/{letter}/replay", gw.base))
        .bearer_auth("api-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let record = settled(&gw, id).await;
    assert_eq!(record.state, "stored", "{record:?}");
    assert_eq!(
        get(&gw, &format!("/api/media/{id}"), &[])
            .await
            .bytes()
            .await
            .unwrap(),
        bytes
    );
    let list: Value = get(&gw, "/api/dlq", &[]).await.json().await.unwrap();
    assert_eq!(list["total"]["media"], 0, "{list}");
    gw.stop().await;
}

#[tokio::test]
async fn webhook_urls_are_used_and_attachment_links_never_get_the_token() {
    let graph = MockGraph::start().await;
    let image = file_bytes(40_000, 10);
    graph.add_media(IMAGE_ID, image.clone(), "image/jpeg");
    let photo = file_bytes(30_000, 11);
    graph.add_media("fb-photo", photo.clone(), "image/jpeg");
    let receipt = file_bytes(20_000, 12);
    graph.add_media("fb-receipt", receipt.clone(), "application/pdf");
    let gw = TestGateway::start(direct(&graph)).await;

    // A Graph v24+ WhatsApp webhook that carries the download URL: no lookup.
    let text = String::from_utf8(webhook("wa_image.json", &sha_b64(&image))).unwrap();
    let with_url = text.replacen(
        "\"mime_type\": \"image/jpeg\",",
        &format!(
            "\"mime_type\": \"image/jpeg\", \"url\": \"{}/download/{IMAGE_ID}?g=7\",",
            graph.base_url
        ),
        1,
    );
    assert_ne!(with_url, text);
    assert_eq!(
        gw.post_signed("whatsapp", with_url.as_bytes(), SECRET)
            .await
            .status(),
        200
    );
    let id = message_id(&gw, IMAGE_WAMID).await;
    assert_eq!(settled(&gw, id).await.state, "stored");
    assert_eq!(
        graph.media_calls(IMAGE_ID),
        (0, 1),
        "the webhook's URL, no lookup"
    );
    assert_eq!(
        graph.token_downloads(IMAGE_ID),
        1,
        "WhatsApp media URLs need the token"
    );

    // Messenger attachments: public CDN links, fetched without the token.
    let fb = String::from_utf8(fixture("fb_message_attachment.json")).unwrap();
    let fb = fb
        .replace(
            "https://scontent.xx.fbcdn.net/v/t1.15752-9/fixture_000002_n.jpg?_nc_cat=1&oh=00_fixture&oe=6A000000",
            &format!("{}/download/fb-photo?public=1&g=1", graph.base_url),
        )
        .replace(
            "https://cdn.fbsbx.com/v/t59.2708-21/fixture_receipt.pdf?_nc_cat=1&oh=00_fixture2&oe=6A000001",
            &format!("{}/download/fb-receipt?public=1&g=1", graph.base_url),
        );
    assert_eq!(
        gw.post_signed("facebook", fb.as_bytes(), SECRET)
            .await
            .status(),
        200
    );
    let fb_id = message_id(
        &gw,
        "m_Zml4dHVyZS1tZXNzZW5nZXItbWlkLTAwMDAwMDAyLWludmVudGVk",
    )
    .await;
    let store = gw.store();
    for (index, bytes) in [(0, &photo), (1, &receipt)] {
        let record = eventually(WAIT, "attachment stored", || async {
            store
                .media()
                .media_record(fb_id, index)
                .await
                .ok()
                .flatten()
                .filter(|r| r.state != "pending")
        })
        .await;
        assert_eq!(record.state, "stored", "{record:?}");
        let res = get(&gw, &format!("/api/media/{fb_id}?index={index}"), &[]).await;
        assert_eq!(res.bytes().await.unwrap(), *bytes);
    }
    assert_eq!(graph.token_downloads("fb-photo"), 0);
    assert_eq!(graph.token_downloads("fb-receipt"), 0);
    gw.stop().await;
}

#[tokio::test]
async fn the_object_store_backend_keeps_what_the_pipeline_downloads() {
    use inlet::media::storage::{MediaStorage, ObjectStorage};
    let graph = MockGraph::start().await;
    let bytes = file_bytes(200_000, 13);
    graph.add_media(IMAGE_ID, bytes.clone(), "image/jpeg");
    // The gateway stores the message and queues the job; downloads are off
    // there, so the job is run here against the object-store backend (the
    // S3 code path, in memory).
    let cfg = direct(&graph).set("INLET_MEDIA__ENABLED", "false");
    let gw = TestGateway::start(cfg).await;
    let body = webhook("wa_image.json", &sha_b64(&bytes));
    assert_eq!(
        gw.post_signed("whatsapp", &body, SECRET).await.status(),
        200
    );
    let id = message_id(&gw, IMAGE_WAMID).await;

    let storage =
        std::sync::Arc::new(ObjectStorage::in_memory(gw.config.dir().join("object-tmp")).unwrap());
    let fetcher = inlet::media::fetch::MediaFetcher::new(
        gw.store(),
        storage.clone(),
        std::sync::Arc::new(gw.config.settings()),
        None,
    )
    .unwrap();
    let job = inlet::media::MediaJob {
        message_id: id,
        index: 0,
        tenant: "default".into(),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let outcome = fetcher.run_job(&job, &shutdown).await.unwrap();
    assert_eq!(outcome, inlet::media::fetch::JobOutcome::Stored);
    let record = gw
        .store()
        .media()
        .media_record(id, 0)
        .await
        .unwrap()
        .unwrap();
    let key = inlet::media::content_key(record.sha256.as_deref().unwrap());
    assert_eq!(storage.size(&key).await.unwrap(), bytes.len() as u64);
    let mut read = Vec::new();
    let mut stream = storage.read(&key, Some(100..1100)).await.unwrap();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        read.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(read, bytes.slice(100..1100));
    // Run again (a redelivered job): skipped, not downloaded twice.
    let again = fetcher.run_job(&job, &shutdown).await.unwrap();
    assert_eq!(again, inlet::media::fetch::JobOutcome::Skipped);
    assert_eq!(graph.media_calls(IMAGE_ID), (1, 1));
    assert!(
        stored_files(gw.config.dir()).is_empty(),
        "nothing on local disk"
    );
    gw.stop().await;
}
