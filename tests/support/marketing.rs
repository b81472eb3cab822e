//! A mock of the Graph read endpoints the scheduled sync uses, on loopback:
//! `GET /{version}/act_{id}/insights` (campaign rows per `date_preset`, every
//! number a string, as Meta sends them), `GET /{version}/{page}/conversations`
//! and `GET /{version}/{conversation}/messages` (newest first), each paged
//! with `paging.cursors.after` and a `paging.next` URL that carries the
//! access token (as Meta's does), and every answer with an
//! `X-Business-Use-Case-Usage` header at the usage set by the test.
//! Shapes: Marketing API insights reference, Messenger Platform
//! conversations API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

/// One conversation the mock serves.
#[derive(Clone)]
struct MockConversation {
    id: String,
    updated_time: String,
    /// Newest first.
    messages: Vec<Value>,
}

#[derive(Default)]
struct Inner {
    /// (account, date_preset) → rows.
    insights: HashMap<(String, String), Vec<Value>>,
    /// page → conversations, newest first.
    conversations: HashMap<String, Vec<MockConversation>>,
    /// Usage (percent) reported on every answer.
    usage_pct: f64,
    /// Paths whose next request answers HTTP 500 once.
    fail_once: Vec<String>,
    /// Every request: path and query (without the token).
    requests: Vec<(String, HashMap<String, String>)>,
    /// Bearer tokens seen.
    tokens: Vec<String>,
}

/// The running mock.
#[derive(Clone)]
pub struct MockMarketing {
    /// `http://127.0.0.1:PORT` (set as `INLET_GRAPH__BASE_URL`).
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

/// Rows per insights page, conversations per list page, messages per page.
const INSIGHTS_PAGE: usize = 2;
const CONVERSATIONS_PAGE: usize = 2;
const MESSAGES_PAGE: usize = 10;

impl MockMarketing {
    /// Starts the mock on a free loopback port.
    pub async fn start() -> MockMarketing {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/{version}/{node}/{edge}", get(edge))
            .with_state((inner.clone(), format!("http://{addr}")));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockMarketing {
            base_url: format!("http://{addr}"),
            inner,
        }
    }

    /// Campaign rows of `account` for `preset` (`today`, `yesterday`):
    /// (campaign id, name, date, spend, impressions, clicks).
    pub fn set_insights(
        &self,
        account: &str,
        preset: &str,
        rows: &[(&str, &str, &str, &str, u64, u64)],
    ) {
        let rows = rows
            .iter()
            .map(|(id, name, date, spend, imp, clicks)| {
                json!({"account_id": account.trim_start_matches("act_"), "campaign_id": id,
                    "campaign_name": name, "spend": spend, "impressions": imp.to_string(),
                    "clicks": clicks.to_string(), "account_currency": "EUR",
                    "date_start": date, "date_stop": date})
            })
            .collect();
        self.inner
            .lock()
            .unwrap()
            .insights
            .insert((account.to_string(), preset.to_string()), rows);
    }

    /// `n` conversations of `page` with `per` messages each (alternately
    /// from the person and from the page), one per minute, newest first,
    /// all after `start` (RFC 3339 without zone, e.g. `2026-11-20T09:00:00`).
    pub fn set_conversations(&self, page: &str, n: usize, per: usize, start: &str) {
        let t0 = chrono::NaiveDateTime::parse_from_str(start, "%Y-%m-%dT%H:%M:%S").unwrap();
        let fmt = |t: chrono::NaiveDateTime| t.format("%Y-%m-%dT%H:%M:%S+0000").to_string();
        let convs = (0..n)
            .map(|c| {
                let person = format!("77000000000{c:02}");
                let mut messages: Vec<Value> = (0..per)
                    .map(|m| {
                        let at = t0 + chrono::Duration::minutes((c * per + m) as i64);
                        let (from, to) = if m % 2 == 0 {
                            (json!({"name": format!("Person {c}"), "email": format!("{person}@facebook.com"), "id": person}),
                             json!({"name": "Shop", "id": page}))
                        } else {
                            (json!({"name": "Shop", "id": page}),
                             json!({"name": format!("Person {c}"), "id": person}))
                        };
                        json!({"id": format!("m_{page}_{c}_{m}"), "created_time": fmt(at),
                            "from": from, "to": {"data": [to]}, "message": format!("message {m}")})
                    })
                    .collect();
                messages.reverse();
                let updated = messages[0]["created_time"].as_str().unwrap().to_string();
                MockConversation {
                    id: format!("t_{page}_{c}"),
                    updated_time: updated,
                    messages,
                }
            })
            .rev()
            .collect();
        self.inner
            .lock()
            .unwrap()
            .conversations
            .insert(page.to_string(), convs);
    }

    /// Reports this usage (percent) on every answer from now on.
    pub fn set_usage(&self, pct: f64) {
        self.inner.lock().unwrap().usage_pct = pct;
    }

    /// The next request for `path` (e.g. `/{page}/conversations` with its
    /// `after` cursor given: `path?after=X`) answers HTTP 500 once.
    pub fn fail_once(&self, path_and_after: &str) {
        self.inner
            .lock()
            .unwrap()
            .fail_once
            .push(path_and_after.to_string());
    }

    /// Requests so far: (path, query).
    pub fn requests(&self) -> Vec<(String, HashMap<String, String>)> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Bearer tokens seen.
    pub fn tokens(&self) -> Vec<String> {
        self.inner.lock().unwrap().tokens.clone()
    }
}

fn page_of(items: Vec<Value>, size: usize, query: &HashMap<String, String>, url: &str) -> Value {
    let start: usize = query
        .get("after")
        .and_then(|a| a.strip_prefix("cur"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let end = (start + size).min(items.len());
    let data: Vec<Value> = items[start.min(end)..end].to_vec();
    let mut paging =
        json!({"cursors": {"before": format!("cur{start}"), "after": format!("cur{end}")}});
    if end < items.len() {
        // Meta's next URL repeats the token; a client must not log it.
        paging["next"] = json!(format!(
            "{url}?access_token=TOKEN-IN-NEXT-URL&after=cur{end}"
        ));
    }
    json!({"data": data, "paging": paging})
}

async fn edge(
    State((inner, base)): State<(Arc<Mutex<Inner>>, String)>,
    Path((version, node, edge)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut g = inner.lock().unwrap();
    let path = format!("/{node}/{edge}");
    g.requests.push((path.clone(), query.clone()));
    if let Some(t) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        g.tokens.push(t.to_string());
    }
    let usage = json!({"112233": [{"type": "ads_insights", "call_count": g.usage_pct,
        "total_cputime": 1, "total_time": 1, "estimated_time_to_regain_access": 0}]})
    .to_string();
    let key = match query.get("after") {
        Some(a) => format!("{path}?after={a}"),
        None => path.clone(),
    };
    if let Some(i) = g.fail_once.iter().position(|p| *p == key) {
        g.fail_once.remove(i);
        let body = json!({"error": {"message": "An unexpected error has occurred. Please retry your request later.",
            "type": "OAuthException", "is_transient": true, "code": 2, "fbtrace_id": "AbCdEf"}});
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("x-business-use-case-usage", usage)],
            body.to_string(),
        )
            .into_response();
    }
    let url = format!("{base}/{version}{path}");
    let body = match edge.as_str() {
        "insights" => {
            let preset = query.get("date_preset").cloned().unwrap_or_default();
            let rows = g
                .insights
                .get(&(node.clone(), preset))
                .cloned()
                .unwrap_or_default();
            page_of(rows, INSIGHTS_PAGE, &query, &url)
        }
        "conversations" => {
            let convs: Vec<Value> = g
                .conversations
                .get(&node)
                .map(|c| {
                    c.iter()
                        .map(|c| json!({"id": c.id, "updated_time": c.updated_time}))
                        .collect()
                })
                .unwrap_or_default();
            page_of(convs, CONVERSATIONS_PAGE, &query, &url)
        }
        "messages" => {
            let msgs = g
                .conversations
                .values()
                .flatten()
                .find(|c| c.id == node)
                .map(|c| c.messages.clone());
            match msgs {
                Some(m) => page_of(m, MESSAGES_PAGE, &query, &url),
                None => {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({"error": {"message": "Unsupported get request.", "type": "GraphMethodException", "code": 100, "error_subcode": 33}}).to_string(),
                    )
                        .into_response()
                }
            }
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "Unknown path components", "type": "OAuthException", "code": 2500}}).to_string(),
            )
                .into_response()
        }
    };
    (
        StatusCode::OK,
        [
            ("content-type", "application/json".to_string()),
            ("x-business-use-case-usage", usage),
        ],
        body.to_string(),
    )
        .into_response()
}
