//! A mock of Meta's Graph Send API on loopback: answers the way Meta
//! documents (fixtures in `tests/fixtures/meta/outbound/`), records every
//! request it gets, throttles (HTTP 400, code 130429) or rejects the token
//! (HTTP 401, code 190) or fails (HTTP 500, code 131000) or declines a
//! recipient (HTTP 400, code 131049) on demand, and can
//! post the `sent` status webhook of
//! each accepted message to a gateway, as Meta does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When (mock clock).
    pub at: Instant,
    /// `/{sender}/messages` sender.
    pub sender: String,
    /// `to` or `recipient`.
    pub recipient: String,
    /// Which field carried the recipient (`to` / `recipient`).
    pub field: String,
    /// The body.
    pub body: Value,
    /// What the mock answered (HTTP status).
    pub status: u16,
    /// The message id it returned (2xx).
    pub wamid: Option<String>,
}

#[derive(Default)]
struct Behaviour {
    /// Answer 130429 to this many requests more.
    throttle_next: u64,
    /// Answer 131000 (HTTP 500) to this many requests more.
    fail_next: u64,
    /// Answer 131049 (per-user marketing cap) to this many more sends to
    /// each of these recipients.
    decline: std::collections::HashMap<String, u64>,
    /// Accepted bearer token (`None`: any).
    token: Option<String>,
    /// Post status webhooks here: (gateway base URL, app secret).
    webhooks: Option<(String, String)>,
}

struct Inner {
    seen: Mutex<Vec<Seen>>,
    behaviour: Mutex<Behaviour>,
    counter: AtomicU64,
    client: reqwest::Client,
}

/// The running mock.
#[derive(Clone)]
pub struct MockGraph {
    /// `http://127.0.0.1:PORT` (set as `INLET_GRAPH__BASE_URL`).
    pub base_url: String,
    inner: Arc<Inner>,
}

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/meta/outbound")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl MockGraph {
    /// Starts the mock on a free loopback port.
    pub async fn start() -> MockGraph {
        let inner = Arc::new(Inner {
            seen: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour::default()),
            counter: AtomicU64::new(0),
            client: reqwest::Client::new(),
        });
        let app = Router::new()
            .route("/{version}/{sender}/messages", post(send))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockGraph {
            base_url: format!("http://{addr}"),
            inner,
        }
    }

    /// Answers the next `n` sends with HTTP 400 code 130429.
    pub fn throttle_next(&self, n: u64) {
        self.inner.behaviour.lock().unwrap().throttle_next = n;
    }

    /// Answers the next `n` sends with HTTP 500 code 131000 ("Something went
    /// wrong": a transient error).
    pub fn fail_next(&self, n: u64) {
        self.inner.behaviour.lock().unwrap().fail_next = n;
    }

    /// Answers the next `n` sends to `recipient` with HTTP 400 code 131049
    /// (Meta declined it for now: per-user marketing cap).
    pub fn decline_next_to(&self, recipient: &str, n: u64) {
        self.inner
            .behaviour
            .lock()
            .unwrap()
            .decline
            .insert(recipient.to_string(), n);
    }

    /// Accepts only this bearer token (others get HTTP 401 code 190).
    pub fn accept_token(&self, token: &str) {
        self.inner.behaviour.lock().unwrap().token = Some(token.to_string());
    }

    /// Posts a signed `sent` status webhook to `gateway` for every accepted
    /// message, with the request's `biz_opaque_callback_data`.
    pub fn post_statuses_to(&self, gateway: &str, secret: &str) {
        self.inner.behaviour.lock().unwrap().webhooks =
            Some((gateway.to_string(), secret.to_string()));
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    /// Accepted sends so far.
    pub fn accepted(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.status == 200)
            .collect()
    }
}

/// The status webhook body of one message (fixture `status_sent.json`).
pub fn status_webhook(from: &str, to: &str, wamid: &str, status: &str, callback: &str) -> Vec<u8> {
    fixture("status_sent.json")
        .replace("{from}", from)
        .replace("{to}", to)
        .replace("{wamid}", wamid)
        .replace("{status}", status)
        .replace("{timestamp}", &chrono::Utc::now().timestamp().to_string())
        .replace("{callback}", callback)
        .into_bytes()
}

async fn send(
    State(inner): State<Arc<Inner>>,
    Path((_version, sender)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (field, recipient) = match (body.get("recipient"), body.get("to")) {
        (Some(r), _) => ("recipient", r.as_str().unwrap_or_default().to_string()),
        (None, Some(t)) => ("to", t.as_str().unwrap_or_default().to_string()),
        _ => (
            "recipient.id",
            body.pointer("/recipient/id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ),
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let (status, answer, wamid, webhooks) = {
        let mut b = inner.behaviour.lock().unwrap();
        if b.token.as_ref().is_some_and(|t| *t != token) {
            (401, fixture("error_190.json"), None, None)
        } else if b.throttle_next > 0 {
            b.throttle_next -= 1;
            (400, fixture("error_130429.json"), None, None)
        } else if b.decline.get(&recipient).is_some_and(|n| *n > 0) {
            *b.decline.get_mut(&recipient).unwrap() -= 1;
            (400, fixture("error_131049.json"), None, None)
        } else if b.fail_next > 0 {
            b.fail_next -= 1;
            (500, fixture("error_131000.json"), None, None)
        } else {
            let n = inner.counter.fetch_add(1, Ordering::Relaxed);
            let wamid = format!("wamid.MOCK{n:012}");
            let answer = fixture("send_ok.json")
                .replace("{to}", &recipient)
                .replace("{wamid}", &wamid);
            (200, answer, Some(wamid), b.webhooks.clone())
        }
    };
    inner.seen.lock().unwrap().push(Seen {
        at: Instant::now(),
        sender: sender.clone(),
        recipient: recipient.clone(),
        field: field.to_string(),
        body: body.clone(),
        status,
        wamid: wamid.clone(),
    });
    if let (Some((gateway, secret)), Some(wamid)) = (webhooks, &wamid) {
        let callback = body
            .get("biz_opaque_callback_data")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let hook = status_webhook(&sender, &recipient, wamid, "sent", &callback);
        let client = inner.client.clone();
        tokio::spawn(async move {
            let sig = inlet::signature::sign(&hook, secret.as_bytes());
            // Meta retries a failed webhook; so does the mock.
            for _ in 0..50 {
                let res = client
                    .post(format!("{gateway}/webhooks/whatsapp"))
                    .header("x-hub-signature-256", &sig)
                    .body(hook.clone())
                    .send()
                    .await;
                if res.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
    }
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        answer,
    )
        .into_response()
}
