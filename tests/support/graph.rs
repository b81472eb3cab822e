//! A mock of Meta's Graph Send API on loopback: answers the way Meta
//! documents (fixtures in `tests/fixtures/meta/outbound/`), records every
//! request it gets, throttles (HTTP 400, code 130429) or rejects the token
//! (HTTP 401, code 190) or fails (HTTP 500, code 131000) or declines a
//! recipient (HTTP 400, code 131049) on demand, and can
//! post the `sent` status webhook of
//! each accepted message to a gateway, as Meta does.
//!
//! Media: files registered with [`MockGraph::add_media`] are described by
//! `GET /{version}/{media-id}` (url, mime_type, sha256 in hex, file_size)
//! and served from that URL (`GET /download/{media-id}?g=N`, bearer token
//! required, streamed in chunks); [`MockGraph::expire_urls`] makes the first
//! URLs of a file answer 404, as an expired link does.
//! `POST /{version}/{sender}/media` (multipart) records the upload and
//! answers `{"id"}`.
//!
//! Leads: ids registered with [`MockGraph::add_lead`] are answered by the
//! same `GET /{version}/{id}` route with the lead (fixture
//! `tests/fixtures/meta/graph/lead.json`); [`MockGraph::fail_leads_next`]
//! answers HTTP 500 (code 2) and [`MockGraph::deny_leads`] the permission
//! error (HTTP 403, code 200) instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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

/// A file the mock serves.
#[derive(Clone)]
struct MockMedia {
    bytes: Bytes,
    mime_type: String,
    sha256_hex: String,
    /// URLs of generation `<= expired` answer 404.
    expired: u64,
    /// URLs handed out so far.
    generation: u64,
    lookups: u64,
    downloads: u64,
    /// Downloads that carried a bearer token.
    with_token: u64,
}

/// One upload the mock received.
#[derive(Debug, Clone)]
pub struct SeenUpload {
    /// `/{sender}/media`.
    pub sender: String,
    /// The multipart body as sent.
    pub body: Bytes,
    /// Its content type (with the boundary).
    pub content_type: String,
    /// The id the mock answered with.
    pub id: String,
}

struct Inner {
    seen: Mutex<Vec<Seen>>,
    media: Mutex<std::collections::HashMap<String, MockMedia>>,
    uploads: Mutex<Vec<SeenUpload>>,
    behaviour: Mutex<Behaviour>,
    leads: Mutex<MockLeads>,
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
            media: Mutex::new(std::collections::HashMap::new()),
            uploads: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour::default()),
            leads: Mutex::new(MockLeads::default()),
            counter: AtomicU64::new(0),
            client: reqwest::Client::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/{version}/{sender}/messages", post(send))
            .route("/{version}/{sender}/media", post(upload))
            .route("/download/{media_id}", get(download))
            .route("/{version}/{media_id}", get(media_info))
            .layer(axum::extract::DefaultBodyLimit::max(200 << 20))
            .with_state((inner.clone(), format!("http://{addr}")));
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

    /// Serves `bytes` as media `id`; `GET /{id}` gives their real SHA-256.
    pub fn add_media(&self, id: &str, bytes: Bytes, mime_type: &str) {
        use sha2::Digest;
        let sha = hex_encode(&sha2::Sha256::digest(&bytes));
        self.add_media_described(id, bytes, mime_type, &sha);
    }

    /// Serves `bytes` as media `id`, described with `sha256_hex` (a wrong
    /// one makes a mismatch).
    pub fn add_media_described(&self, id: &str, bytes: Bytes, mime_type: &str, sha256_hex: &str) {
        self.inner.media.lock().unwrap().insert(
            id.to_string(),
            MockMedia {
                bytes,
                mime_type: mime_type.to_string(),
                sha256_hex: sha256_hex.to_string(),
                expired: 0,
                generation: 0,
                lookups: 0,
                downloads: 0,
                with_token: 0,
            },
        );
    }

    /// The first `n` download URLs handed out for `id` answer 404.
    pub fn expire_urls(&self, id: &str, n: u64) {
        if let Some(m) = self.inner.media.lock().unwrap().get_mut(id) {
            m.expired = n;
        }
    }

    /// (`GET /{media-id}` lookups, download requests) of media `id`.
    pub fn media_calls(&self, id: &str) -> (u64, u64) {
        self.inner
            .media
            .lock()
            .unwrap()
            .get(id)
            .map_or((0, 0), |m| (m.lookups, m.downloads))
    }

    /// Downloads of media `id` that carried a bearer token.
    pub fn token_downloads(&self, id: &str) -> u64 {
        self.inner
            .media
            .lock()
            .unwrap()
            .get(id)
            .map_or(0, |m| m.with_token)
    }

    /// Uploads so far.
    pub fn uploads(&self) -> Vec<SeenUpload> {
        self.inner.uploads.lock().unwrap().clone()
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

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

/// Whether the token is refused (HTTP 401 code 190).
fn refused(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    let b = inner.behaviour.lock().unwrap();
    let token = bearer(headers);
    (b.token.as_ref().is_some_and(|t| *t != token) || token.is_empty()).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            fixture("error_190.json"),
        )
            .into_response()
    })
}

/// `GET /{version}/{media-id}`: Meta's "retrieve media URL" answer.
async fn media_info(
    State((inner, base)): State<(Arc<Inner>, String)>,
    Path((_version, media_id)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refused(&inner, &headers) {
        return r;
    }
    if let Some(r) = lead_answer(&inner, &media_id, query) {
        return r;
    }
    let mut media = inner.media.lock().unwrap();
    let Some(m) = media.get_mut(&media_id) else {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            r#"{"error":{"message":"Unsupported get request.","type":"GraphMethodException","code":100,"error_subcode":33,"fbtrace_id":"AmockTrace"}}"#,
        )
            .into_response();
    };
    m.lookups += 1;
    m.generation += 1;
    let answer = serde_json::json!({
        "messaging_product": "whatsapp",
        "url": format!("{base}/download/{media_id}?g={}", m.generation),
        "mime_type": m.mime_type,
        "sha256": m.sha256_hex,
        "file_size": m.bytes.len(),
        "id": media_id,
    });
    axum::Json(answer).into_response()
}

/// The download URL: the bytes, in 64 KiB chunks.
async fn download(
    State((inner, _)): State<(Arc<Inner>, String)>,
    Path(media_id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    // WhatsApp media URLs need the bearer token; `public=1` plays a public
    // web server (outbound media fetched by URL).
    if bearer(&headers).is_empty() && q.get("public").map(String::as_str) != Some("1") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let generation: u64 = q.get("g").and_then(|g| g.parse().ok()).unwrap_or(0);
    let (bytes, mime) = {
        let mut media = inner.media.lock().unwrap();
        let Some(m) = media.get_mut(&media_id) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        m.downloads += 1;
        if !bearer(&headers).is_empty() {
            m.with_token += 1;
        }
        if generation <= m.expired {
            return StatusCode::NOT_FOUND.into_response();
        }
        (m.bytes.clone(), m.mime_type.clone())
    };
    let len = bytes.len();
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..len)
        .step_by(64 * 1024)
        .map(|i| Ok(bytes.slice(i..(i + 64 * 1024).min(len))))
        .collect();
    Response::builder()
        .header("content-type", mime)
        .header("content-length", len)
        .body(axum::body::Body::from_stream(futures_util::stream::iter(
            chunks,
        )))
        .unwrap()
}

/// `POST /{version}/{sender}/media`: records the multipart upload.
async fn upload(
    State((inner, _)): State<(Arc<Inner>, String)>,
    Path((_version, sender)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = refused(&inner, &headers) {
        return r;
    }
    let n = inner.counter.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}", 4_000_000_000_000_000u64 + n);
    inner.uploads.lock().unwrap().push(SeenUpload {
        sender,
        body,
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        id: id.clone(),
    });
    axum::Json(serde_json::json!({ "id": id })).into_response()
}

async fn send(
    State((inner, _)): State<(Arc<Inner>, String)>,
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

// ---- Leads: `GET /{version}/{leadgen_id}` (answered by `media_info`'s
// route, which asks `lead_answer` first). ----

/// The leads the mock knows, and how it answers their reads.
#[derive(Default)]
struct MockLeads {
    /// Lead id → its answer.
    answers: std::collections::HashMap<String, Value>,
    /// Answer HTTP 500 (code 2) to this many lead reads more.
    fail_next: u64,
    /// Answer the permission error (HTTP 403, code 200) to every lead read.
    deny: bool,
    /// Reads per lead id (every answer, errors included).
    calls: std::collections::HashMap<String, u64>,
    /// The `fields` query of the last read of each lead id.
    fields: std::collections::HashMap<String, String>,
}

fn graph_fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/meta/graph")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The mock's lead answer (fixture `graph/lead.json`) for `lead_id`.
pub fn lead_fixture(lead_id: &str) -> Value {
    serde_json::from_str(&graph_fixture("lead.json").replace("{lead_id}", lead_id)).unwrap()
}

impl MockGraph {
    /// Answers `GET /{lead_id}` with `answer` (see [`lead_fixture`]).
    pub fn add_lead(&self, lead_id: &str, answer: Value) {
        self.inner
            .leads
            .lock()
            .unwrap()
            .answers
            .insert(lead_id.to_string(), answer);
    }

    /// Answers the next `n` lead reads with HTTP 500, code 2 (transient).
    pub fn fail_leads_next(&self, n: u64) {
        self.inner.leads.lock().unwrap().fail_next = n;
    }

    /// Answers every lead read with the permission error (HTTP 403, code
    /// 200: the token lacks leads_retrieval), or stops doing so.
    pub fn deny_leads(&self, deny: bool) {
        self.inner.leads.lock().unwrap().deny = deny;
    }

    /// Reads of `lead_id` so far (errors included).
    pub fn lead_calls(&self, lead_id: &str) -> u64 {
        self.inner
            .leads
            .lock()
            .unwrap()
            .calls
            .get(lead_id)
            .copied()
            .unwrap_or(0)
    }

    /// The `fields` asked in the last read of `lead_id`.
    pub fn lead_fields(&self, lead_id: &str) -> Option<String> {
        self.inner
            .leads
            .lock()
            .unwrap()
            .fields
            .get(lead_id)
            .cloned()
    }
}

/// The answer to `GET /{id}` when `id` is a registered lead.
fn lead_answer(inner: &Inner, id: &str, query: Option<String>) -> Option<Response> {
    let mut leads = inner.leads.lock().unwrap();
    let answer = leads.answers.get(id).cloned()?;
    *leads.calls.entry(id.to_string()).or_default() += 1;
    let fields = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("fields="))
        .map(|f| f.replace("%2C", ",").replace("%2c", ","))
        .unwrap_or_default();
    leads.fields.insert(id.to_string(), fields);
    let json = [("content-type", "application/json")];
    if leads.deny {
        let body = graph_fixture("error_200_leads_retrieval.json");
        return Some((StatusCode::FORBIDDEN, json, body).into_response());
    }
    if leads.fail_next > 0 {
        leads.fail_next -= 1;
        let body = graph_fixture("error_2_service.json");
        return Some((StatusCode::INTERNAL_SERVER_ERROR, json, body).into_response());
    }
    Some(axum::Json(answer).into_response())
}
