//! AI drafts with human approval, end to end against a mock Graph API: the
//! event stream (SSE) sees new drafts and resumes from `Last-Event-ID`;
//! reviewers approving at once send one message; a newer inbound message
//! makes a draft stale; a closed 24-hour window needs a template; the CLI
//! reviews drafts.

use std::time::Duration;

use inlet_suite::graph::MockGraph;
use inlet_suite::{cli, eventually, fixture, TestConfig, TestDb, TestGateway, SECRET};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
/// The business phone number id and the contact of `wa_text.json`.
const BUSINESS: &str = "200000000000002";
const CONTACT: &str = "15550001111";

fn config(graph: &MockGraph) -> TestConfig {
    TestConfig::new()
        .set("INLET_REDIS_URL", "")
        .set("INLET_GRAPH__BASE_URL", graph.base_url.clone())
        .set("INLET_GRAPH__ACCESS_TOKEN", "test-graph-token")
        .set("INLET_OUTBOUND__POLL_MS", "20")
        .set("INLET_OUTBOUND__PAIR_INTERVAL_MS", "1")
        .set("INLET_EVENTS__STREAM_POLL_MS", "50")
}

/// A WhatsApp text from `contact` sent at `at` (Unix seconds), built from
/// `wa_text.json` (Meta's documented shape).
fn inbound(contact: &str, wamid: &str, at: i64, text: &str) -> Vec<u8> {
    String::from_utf8(fixture("wa_text.json"))
        .unwrap()
        .replace(
            "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwMQA=",
            wamid,
        )
        .replace("1795165200", &at.to_string())
        .replace("Hi, is the blue kettle still in stock?", text)
        .replace(CONTACT, contact)
        .into_bytes()
}

/// Posts an inbound message (direct mode: stored when this returns) and
/// returns its conversation id.
async fn receive(gw: &TestGateway, contact: &str, wamid: &str, at: i64, text: &str) -> i64 {
    let res = gw
        .post_signed("whatsapp", &inbound(contact, wamid, at, text), SECRET)
        .await;
    assert_eq!(res.status(), 200);
    gw.store()
        .message_by_provider_id(wamid)
        .await
        .unwrap()
        .expect("the message is stored")
        .conversation_id
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn api(gw: &TestGateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    request(&gw.client, &gw.base, method, path, body).await
}

async fn request(
    client: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{base}{path}");
    let mut req = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    }
    .bearer_auth("api-token");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap_or(Value::Null))
}

/// Creates a draft; returns its id.
async fn create_draft(
    gw: &TestGateway,
    conversation: i64,
    text: &str,
    reply_to: Option<&str>,
) -> String {
    let mut body = json!({"conversation_id": conversation, "text": text, "author": "test-model-1"});
    if let Some(r) = reply_to {
        body["reply_to"] = json!(r);
    }
    let (status, b) = api(gw, "POST", "/api/drafts", Some(body)).await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["status"], "pending", "{b}");
    assert_eq!(b["version"], 1, "{b}");
    b["id"].as_str().unwrap().to_string()
}

async fn draft(gw: &TestGateway, id: &str) -> Value {
    let (status, d) = api(gw, "GET", &format!("/api/drafts/{id}"), None).await;
    assert_eq!(status, 200, "{d}");
    d
}

async fn wait_draft(gw: &TestGateway, id: &str, status: &str) -> Value {
    eventually(WAIT, &format!("draft {id} {status}"), || async {
        let d = draft(gw, id).await;
        (d["status"] == status).then_some(d)
    })
    .await
}

/// Accepted sends whose text is `text`.
fn sent_texts(graph: &MockGraph, text: &str) -> Vec<Value> {
    graph
        .accepted()
        .into_iter()
        .filter(|s| s.body["text"]["body"] == text)
        .map(|s| s.body)
        .collect()
}

/// One frame of an event stream.
#[derive(Debug)]
enum Frame {
    Event { id: String, data: Value },
    Comment(String),
}

/// A Server-Sent Events client: a streaming response read chunk by chunk
/// and split into frames at blank lines.
struct SseClient {
    res: reqwest::Response,
    buf: Vec<u8>,
}

impl SseClient {
    async fn connect(gw: &TestGateway, query: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = gw
            .client
            .get(format!("{}/api/events/stream{query}", gw.base))
            .bearer_auth("api-token");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.expect("stream connected");
        assert_eq!(res.status(), 200);
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        SseClient {
            res,
            buf: Vec::new(),
        }
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 frames");
                let (mut id, mut data, mut comment) = (None, Vec::new(), None);
                for line in text.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        comment = Some(c.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    if let Some(c) = comment {
                        return Frame::Comment(c);
                    }
                    continue;
                }
                return Frame::Event {
                    id: id.expect("every event has an id"),
                    data: serde_json::from_str(&data.join("\n")).expect("JSON data"),
                };
            }
            let chunk = tokio::time::timeout(WAIT, self.res.chunk())
                .await
                .expect("a frame within the wait")
                .expect("the stream is readable")
                .expect("the stream is still open");
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next event (heartbeats skipped): its id and the event.
    async fn event(&mut self) -> (String, Value) {
        loop {
            if let Frame::Event { id, data } = self.frame().await {
                return (id, data);
            }
        }
    }
}

#[tokio::test]
async fn a_stream_client_sees_new_drafts_and_resumes_from_last_event_id() {
    let graph = MockGraph::start().await;
    let cfg = config(&graph)
        .set("INLET_EVENTS__STREAM_HEARTBEAT_MS", "400")
        .set("INLET_HTTP__REQUEST_TIMEOUT_MS", "1000");
    let gw = TestGateway::start(cfg).await;
    let conv = receive(
        &gw,
        CONTACT,
        "wamid.SSE.1",
        now() - 30,
        "Is the kettle in stock?",
    )
    .await;
    let other = receive(&gw, "15550002222", "wamid.SSE.2", now() - 30, "Hello?").await;
    assert_ne!(conv, other);
    let filter = format!("?type=draft.*&conversation_id={conv}");

    // Connected before the draft exists: it sees the draft's creation.
    let mut live = SseClient::connect(&gw, &filter, None).await;
    let first = create_draft(&gw, conv, "Yes, it is in stock.", None).await;
    let (seen_id, e) = live.event().await;
    assert_eq!(e["type"], "draft.after.create", "{e}");
    assert_eq!(e["data"]["id"], first.as_str());
    assert_eq!(e["data"]["conversation_id"], conv);
    assert_eq!(e["data"]["text"], "Yes, it is in stock.");
    assert_eq!(
        e["data"]["reply_to"], "wamid.SSE.1",
        "anchored to the latest inbound message"
    );
    // Heartbeats keep the stream open past the request timeout.
    let mut beats = 0;
    while beats < 3 {
        if let Frame::Comment(c) = live.frame().await {
            assert_eq!(c, "heartbeat");
            beats += 1;
        }
    }
    drop(live);

    // While nobody listens: a second draft, a rejection, and a draft of
    // another conversation (filtered out).
    let second = create_draft(&gw, conv, "We have two left.", None).await;
    create_draft(&gw, other, "Hello! How can we help?", None).await;
    let (status, r) = api(
        &gw,
        "POST",
        &format!("/api/drafts/{first}/reject"),
        Some(json!({"reason": "too curt"})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "rejected");

    // Reconnecting with Last-Event-ID gets what it missed, in order, once.
    let mut resumed = SseClient::connect(&gw, &filter, Some(&seen_id)).await;
    let (_, a) = resumed.event().await;
    assert_eq!(
        (a["type"].as_str(), a["data"]["id"].as_str()),
        (Some("draft.after.create"), Some(second.as_str())),
        "{a}"
    );
    let (_, b) = resumed.event().await;
    assert_eq!(
        (b["type"].as_str(), b["data"]["id"].as_str()),
        (Some("draft.after.reject"), Some(first.as_str())),
        "{b}"
    );
    assert_eq!(b["data"]["reason"], "too curt");

    // …and then follows live: the approval, then the send's outcome.
    let (status, ok) = api(
        &gw,
        "POST",
        &format!("/api/drafts/{second}/approve"),
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["status"], "approved");
    assert_eq!(ok["version"], 2);
    let (_, c) = resumed.event().await;
    assert_eq!(c["type"], "draft.after.approve", "{c}");
    assert_eq!(c["data"]["outbound_id"], ok["outbound_id"]);
    let (_, s) = resumed.event().await;
    assert_eq!(s["type"], "draft.after.update", "{s}");
    assert_eq!(s["data"]["status"], "sent");

    let d = wait_draft(&gw, &second, "sent").await;
    assert_eq!(d["send"]["status"], "accepted", "{d}");
    let sent = sent_texts(&graph, "We have two left.");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["to"], CONTACT);
    assert!(
        graph
            .accepted()
            .iter()
            .any(|s| s.sender == BUSINESS && s.body["text"]["body"] == "We have two left."),
        "sent from the conversation's business number"
    );
    assert!(
        sent[0].get("context").is_none(),
        "not quoted: no reply_to was given"
    );

    // A Last-Event-ID the log does not have is refused, not ignored.
    let res = gw
        .client
        .get(format!("{}/api/events/stream", gw.base))
        .bearer_auth("api-token")
        .header("last-event-id", "999999999")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // The stream is behind the API token.
    let res = gw
        .client
        .get(format!("{}/api/events/stream", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    gw.stop().await;
}

#[tokio::test]
async fn reviewers_approving_at_once_send_one_message() {
    let graph = MockGraph::start().await;
    let db = TestDb::create().await;
    let gw = TestGateway::start(config(&graph).set("INLET_DATABASE_URL", db.url.clone())).await;
    let conv = receive(&gw, CONTACT, "wamid.RACE.1", now() - 10, "Can I return it?").await;
    let mut approvals = SseClient::connect(&gw, "?type=draft.after.approve", None).await;
    let id = create_draft(&gw, conv, "Yes, within 30 days.", None).await;

    let mut reviewers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, base, path) = (
            gw.client.clone(),
            gw.base.clone(),
            format!("/api/drafts/{id}/approve"),
        );
        reviewers.spawn(async move {
            request(&client, &base, "POST", &path, Some(json!({"version": 1}))).await
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = reviewers.join_next().await {
        answers.push(r.unwrap());
    }
    let ok: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(ok.len(), 1, "exactly one approval wins: {answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 409, "{body}");
        // Lost in the conditional update, or saw the approval already.
        let code = body["code"].as_str().unwrap();
        assert!(
            ["version_conflict", "invalid_state"].contains(&code),
            "{body}"
        );
        assert_eq!(body["draft"]["status"], "approved", "{body}");
    }
    let outbound_id = ok[0]["outbound_id"].as_str().unwrap().to_string();

    let (_, e) = approvals.event().await;
    assert_eq!(e["data"]["id"], id.as_str(), "{e}");
    let d = wait_draft(&gw, &id, "sent").await;
    assert_eq!(d["outbound_id"], outbound_id.as_str());
    assert_eq!(
        sent_texts(&graph, "Yes, within 30 days.").len(),
        1,
        "one send to the mock"
    );
    assert_eq!(
        graph.accepted()[0].body["biz_opaque_callback_data"],
        outbound_id.as_str()
    );

    // Approving a sent draft again changes nothing.
    let (status, again) = api(
        &gw,
        "POST",
        &format!("/api/drafts/{id}/approve"),
        Some(json!({"version": 3})),
    )
    .await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["code"], "invalid_state");
    assert_eq!(sent_texts(&graph, "Yes, within 30 days.").len(), 1);

    // The store's guard alone (no check before it): of approvals racing in
    // the database, one stores the send.
    let store = gw.store();
    let id = create_draft(&gw, conv, "Or exchange it.", None).await;
    let d = store.drafts().draft(&id).await.unwrap().unwrap();
    let spec =
        inlet::outbound::draft::reply_spec(&inlet::drafts::target_of(&d).unwrap(), &d.text, None)
            .unwrap();
    let approval = inlet::store::drafts::Approval {
        draft_id: id.clone(),
        version: 1,
        force: false,
        edited_text: None,
        send: inlet::store::outbound::NewSend {
            id: inlet::outbound::draft::outbound_id(&id),
            tenant: d.tenant.clone(),
            spec,
            broadcast_id: None,
            trace_id: d.trace_id.clone(),
        },
        actor: "test".into(),
    };
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (store, approval) = (store.clone(), approval.clone());
        racers.spawn(async move { store.drafts().approve_draft(&approval).await.unwrap() });
    }
    let mut queued = 0;
    while let Some(r) = racers.join_next().await {
        match r.unwrap() {
            inlet::store::drafts::Approved::Queued(..) => queued += 1,
            inlet::store::drafts::Approved::Conflict(Some(d)) => assert_eq!(d.status, "approved"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(queued, 1, "one approval stored the send");
    wait_draft(&gw, &id, "sent").await;
    assert_eq!(sent_texts(&graph, "Or exchange it.").len(), 1);
    gw.stop().await;
    db.drop_db().await;
}

/// A newer inbound message makes a pending draft stale; approval then needs
/// `force` at the current version. Redeliveries and late older messages do
/// not make a draft stale.
async fn stale_drafts(gw: &TestGateway, graph: &MockGraph) {
    let t = now();
    let conv = receive(gw, CONTACT, "wamid.STALE.1", t - 120, "Do you deliver?").await;
    let first = create_draft(gw, conv, "Yes, we deliver.", None).await;
    receive(gw, CONTACT, "wamid.STALE.2", t - 60, "To Porto, I mean").await;
    let d = draft(gw, &first).await;
    assert_eq!(d["status"], "stale", "{d}");
    assert_eq!(d["version"], 2);
    assert!(
        d["reason"].as_str().unwrap().contains("wamid.STALE.2"),
        "{d}"
    );

    let approve = |version: i32, force: bool| {
        let path = format!("/api/drafts/{first}/approve");
        async move {
            api(
                gw,
                "POST",
                &path,
                Some(json!({"version": version, "force": force})),
            )
            .await
        }
    };
    let (status, body) = approve(2, false).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("stale")),
        "{body}"
    );
    let (status, body) = approve(1, true).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("version_conflict")),
        "{body}"
    );

    // A draft answering the newer message, quoting it.
    let second = create_draft(gw, conv, "Yes, Porto too.", Some("wamid.STALE.2")).await;
    let d = draft(gw, &second).await;
    assert_eq!(
        (d["reply_to"].as_str(), d["quoted"].as_bool()),
        (Some("wamid.STALE.2"), Some(true))
    );
    // A redelivery and a late message sent before the anchor: still pending.
    receive(gw, CONTACT, "wamid.STALE.1", t - 120, "Do you deliver?").await;
    receive(
        gw,
        CONTACT,
        "wamid.STALE.0",
        t - 90,
        "(sent earlier, arrived late)",
    )
    .await;
    let d = draft(gw, &second).await;
    assert_eq!(
        (d["status"].as_str(), d["version"].as_i64()),
        (Some("pending"), Some(1)),
        "{d}"
    );

    let (status, body) = approve(2, true).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(
        gw,
        "POST",
        &format!("/api/drafts/{second}/approve"),
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let d = wait_draft(gw, &first, "sent").await;
    assert_eq!(d["forced"], true, "{d}");
    wait_draft(gw, &second, "sent").await;
    let quoted = sent_texts(graph, "Yes, Porto too.");
    assert_eq!(quoted.len(), 1);
    assert_eq!(quoted[0]["context"]["message_id"], "wamid.STALE.2");
    assert_eq!(sent_texts(graph, "Yes, we deliver.").len(), 1);
    // Unknown references are named.
    let (status, body) = api(
        gw,
        "POST",
        "/api/drafts",
        Some(
            json!({"conversation_id": conv, "text": "x", "author": "m", "reply_to": "wamid.NOPE"}),
        ),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("reply_to")),
        "{body}"
    );
    let (status, body) = api(
        gw,
        "POST",
        "/api/drafts",
        Some(json!({"conversation_id": 999999, "text": "x", "author": "m"})),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("conversation_id")),
        "{body}"
    );
    let (status, list) = api(
        gw,
        "GET",
        &format!("/api/drafts?status=sent&conversation_id={conv}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["drafts"].as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test]
async fn a_newer_inbound_message_makes_a_draft_stale_sqlite() {
    let graph = MockGraph::start().await;
    let gw = TestGateway::start(config(&graph)).await;
    stale_drafts(&gw, &graph).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_newer_inbound_message_makes_a_draft_stale_postgres() {
    let graph = MockGraph::start().await;
    let db = TestDb::create().await;
    let gw = TestGateway::start(config(&graph).set("INLET_DATABASE_URL", db.url.clone())).await;
    stale_drafts(&gw, &graph).await;
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn approving_after_the_window_closed_needs_a_template() {
    let graph = MockGraph::start().await;
    // No sender (so no housekeeping): the approval itself finds the window
    // closed.
    let gw = TestGateway::start(config(&graph).set("INLET_OUTBOUND__ENABLED", "false")).await;
    // wa_text.json as Meta sent it, more than 24 hours ago.
    let res = gw
        .post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
        .await;
    assert_eq!(res.status(), 200);
    let conv = gw
        .store()
        .message_by_provider_id("wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwMQA=")
        .await
        .unwrap()
        .unwrap()
        .conversation_id;
    let id = create_draft(&gw, conv, "Sorry for the wait!", None).await;
    let (status, body) = api(
        &gw,
        "POST",
        &format!("/api/drafts/{id}/approve"),
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "needs_template");
    assert_eq!(body["draft"]["status"], "needs_template");
    let d = draft(&gw, &id).await;
    assert_eq!(
        (d["status"].as_str(), d["version"].as_i64()),
        (Some("needs_template"), Some(2))
    );
    assert!(d["outbound_id"].is_null(), "nothing was queued: {d}");
    assert!(gw
        .store()
        .outbound()
        .outbound_recent(10)
        .await
        .unwrap()
        .is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn the_cli_reviews_drafts_and_housekeeping_closes_old_ones() {
    let graph = MockGraph::start().await;
    let gw = TestGateway::start(config(&graph)).await;
    let settings = gw.config.settings();

    // A draft for a conversation whose window closed long ago: the
    // sender's housekeeping marks it needs_template by itself.
    let res = gw
        .post_signed("whatsapp", &fixture("wa_text.json"), SECRET)
        .await;
    assert_eq!(res.status(), 200);
    let old = gw
        .store()
        .message_by_provider_id("wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQUZBMDAwMDAwMDAwMDAwMDAwMQA=")
        .await
        .unwrap()
        .unwrap()
        .conversation_id;
    let closed = create_draft(&gw, old, "Too late for this one", None).await;
    let d = wait_draft(&gw, &closed, "needs_template").await;
    assert_eq!(d["reason"], "window_closed");

    let conv = receive(
        &gw,
        "15550003333",
        "wamid.CLI.1",
        now() - 5,
        "Any discounts?",
    )
    .await;
    let id = create_draft(&gw, conv, "Not today.", None).await;
    let (ok, out) = cli(settings.clone(), &["drafts", "list", "--status", "pending"]).await;
    assert!(ok, "{out}");
    assert!(out.contains(&id), "{out}");
    assert!(!out.contains(&closed), "{out}");
    let (ok, out) = cli(settings.clone(), &["--json", "drafts", "show", &id]).await;
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (shown["status"].as_str(), shown["version"].as_i64()),
        (Some("pending"), Some(1))
    );

    let (ok, out) = cli(
        settings.clone(),
        &["drafts", "approve", &id, "--version", "2"],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("version_conflict"), "{out}");
    let (ok, out) = cli(
        settings.clone(),
        &[
            "drafts",
            "approve",
            &id,
            "--version",
            "1",
            "--text",
            "10% off today only.",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let d = wait_draft(&gw, &id, "sent").await;
    assert_eq!(d["final_text"], "10% off today only.", "{d}");
    assert_eq!(sent_texts(&graph, "10% off today only.").len(), 1);
    assert!(
        sent_texts(&graph, "Not today.").is_empty(),
        "the edit is sent, not the draft"
    );

    let other = create_draft(&gw, conv, "Maybe tomorrow.", None).await;
    let (ok, out) = cli(
        settings.clone(),
        &["drafts", "reject", &other, "--reason", "off topic"],
    )
    .await;
    assert!(ok, "{out}");
    let d = draft(&gw, &other).await;
    assert_eq!(
        (d["status"].as_str(), d["reason"].as_str()),
        (Some("rejected"), Some("off topic"))
    );
    let (ok, out) = cli(settings, &["drafts", "reject", &other, "--reason", "again"]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("invalid_state"), "{out}");

    // No draft text in the audit log.
    let text = std::fs::read_dir(gw.config.dir().join("audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(text.contains("\"draft_id\""), "drafts are audited");
    assert!(!text.contains("10% off"), "a draft's text in the audit log");
    gw.stop().await;
}

#[tokio::test]
async fn in_queue_mode_the_worker_makes_drafts_stale_and_the_stream_tells() {
    let graph = MockGraph::start().await;
    let db = TestDb::create().await;
    let cfg = config(&graph)
        .set("INLET_REDIS_URL", inlet_suite::redis_url())
        .set("INLET_DATABASE_URL", db.url.clone());
    let gw = TestGateway::start(cfg).await;
    let worker = inlet_suite::TestWorker::start(&gw.config).await;
    let store = gw.store();
    let stored = |wamid: &'static str| {
        let store = store.clone();
        async move {
            eventually(WAIT, &format!("{wamid} stored by the worker"), || async {
                store.message_by_provider_id(wamid).await.unwrap()
            })
            .await
        }
    };
    let t = now();
    let body = inbound(CONTACT, "wamid.QUEUE.1", t - 30, "Open on Sunday?");
    assert_eq!(
        gw.post_signed("whatsapp", &body, SECRET).await.status(),
        200
    );
    let conv = stored("wamid.QUEUE.1").await.conversation_id;

    let mut stream =
        SseClient::connect(&gw, &format!("?type=draft.*&conversation_id={conv}"), None).await;
    let id = create_draft(&gw, conv, "Yes, 10 to 4.", None).await;
    let (_, created) = stream.event().await;
    assert_eq!(created["type"], "draft.after.create", "{created}");
    let body = inbound(CONTACT, "wamid.QUEUE.2", t - 5, "And on holidays?");
    assert_eq!(
        gw.post_signed("whatsapp", &body, SECRET).await.status(),
        200
    );
    let (_, stale) = stream.event().await;
    assert_eq!(stale["type"], "draft.after.update", "{stale}");
    assert_eq!(stale["data"]["id"], id.as_str());
    assert_eq!(stale["data"]["status"], "stale");
    assert_eq!(stale["actor"], "pipeline");
    assert_eq!(draft(&gw, &id).await["status"], "stale");
    worker.stop().await;
    inlet_suite::cleanup_prefix(&gw.config.prefix).await;
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn drafts_nobody_reviews_expire() {
    let graph = MockGraph::start().await;
    let gw = TestGateway::start(config(&graph).set("INLET_DRAFTS__EXPIRE_AFTER_MS", "1")).await;
    let conv = receive(&gw, CONTACT, "wamid.EXPIRE.1", now() - 5, "Hello?").await;
    let id = create_draft(&gw, conv, "Hi! How can we help?", None).await;
    let d = wait_draft(&gw, &id, "expired").await;
    assert_eq!(
        (d["reason"].as_str(), d["version"].as_i64()),
        (Some("not_reviewed"), Some(2))
    );
    let (status, body) = api(
        &gw,
        "POST",
        &format!("/api/drafts/{id}/approve"),
        Some(json!({"version": 2, "force": true})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("invalid_state")),
        "{body}"
    );
    gw.stop().await;
}
