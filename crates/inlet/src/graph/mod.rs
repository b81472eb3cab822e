//! The Graph API read client shared by the lead fetcher and the scheduled
//! sync: one `reqwest` client (base URL, version, timeouts of `[graph]`), a
//! GET that answers JSON or a classified [`GraphError`], cursor pagination,
//! and the usage pacing of [`crate::outbound::usage`] applied to every call:
//! each answer's usage headers feed one [`UsageGate`], and each call first
//! waits what the gate says.
//!
//! Paging follows `paging.cursors.after` on the request's own path (only
//! while Meta announces a `paging.next`), never the `next` URL itself: that
//! URL repeats the access token in its query string, and it must not reach
//! logs or stored cursors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::GraphSettings;
use crate::outbound::usage::{Usage, UsageGate};
use crate::outbound::{ErrorClass, GraphError};

/// A read that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Graph answered with an error.
    #[error("graph error: {0}")]
    Graph(Box<GraphError>),
    /// The call failed before an answer (connect, timeout, reset).
    #[error("transport: {0}")]
    Transport(String),
    /// A 2xx answer that is not JSON.
    #[error("unreadable answer: {0}")]
    Answer(String),
}

impl ReadError {
    /// Whether a later attempt may succeed (transport trouble, Meta-side
    /// errors, throttles). Permission, auth and request errors are final
    /// until someone changes the token or the request.
    pub fn is_transient(&self) -> bool {
        match self {
            ReadError::Graph(e) => {
                matches!(e.class(), ErrorClass::Transient) || e.class().is_throttle()
            }
            ReadError::Transport(_) | ReadError::Answer(_) => true,
        }
    }

    /// The Graph error, when Meta answered with one.
    pub fn graph(&self) -> Option<&GraphError> {
        match self {
            ReadError::Graph(e) => Some(e),
            _ => None,
        }
    }
}

/// One page of a list endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// `data[]`.
    pub data: Vec<Value>,
    /// The cursor of the next page, when Meta announced one.
    pub after: Option<String>,
}

impl Page {
    /// Reads `{data: [...], paging: {cursors: {after}, next}}`.
    pub fn from_value(v: &Value) -> Page {
        let data = v
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let paging = v.get("paging");
        let has_next = paging.and_then(|p| p.get("next")).is_some();
        let after = paging
            .and_then(|p| p.get("cursors"))
            .and_then(|c| c.get("after"))
            .and_then(Value::as_str)
            .filter(|_| has_next && !data.is_empty())
            .map(str::to_string);
        Page { data, after }
    }
}

/// Counters a status page shows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReaderStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that waited for the usage gate first.
    pub waits: u64,
    /// The last usage reported (highest figure, percent).
    pub last_usage_pct: Option<f64>,
}

/// The Graph read client.
#[derive(Debug, Clone)]
pub struct GraphReader {
    http: reqwest::Client,
    base: String,
    gate: Arc<Mutex<UsageGate>>,
    stats: Arc<Mutex<ReaderStats>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GraphReader {
    /// A client for `[graph]`.
    pub fn new(settings: &GraphSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("inlet/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: format!("{}/{}", settings.base_url, settings.version),
            gate: Arc::new(Mutex::new(UsageGate::new(settings.pacing))),
            stats: Arc::default(),
        })
    }

    /// Calls and waits so far.
    pub fn stats(&self) -> ReaderStats {
        *lock(&self.stats)
    }

    /// `GET {base}/{version}{path}?{query}` with the bearer token, after
    /// the wait the usage gate asks for.
    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
        token: &SecretString,
    ) -> Result<Value, ReadError> {
        let wait = lock(&self.gate).wait(Instant::now());
        if !wait.is_zero() {
            lock(&self.stats).waits += 1;
            metrics::counter!("inlet_graph_usage_waits_total").increment(1);
            tracing::info!(?wait, "Graph usage is high: waiting before the next read");
            tokio::time::sleep(wait).await;
        }
        lock(&self.stats).calls += 1;
        let result = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(token.expose_secret())
            .send()
            .await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                // Never the URL: it may carry ids a log should not.
                return Err(ReadError::Transport(e.without_url().to_string()));
            }
        };
        let status = response.status();
        let headers = response.headers();
        let usage = Usage::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok()));
        if let Some(u) = usage {
            metrics::gauge!("inlet_graph_usage_pct").set(u.max_pct);
            lock(&self.stats).last_usage_pct = Some(u.max_pct);
            lock(&self.gate).observe(u, Instant::now());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| ReadError::Transport(e.without_url().to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| ReadError::Answer(e.to_string()));
        }
        let error = GraphError::from_body(status.as_u16(), &body);
        if error.class().is_throttle() {
            let regain = usage
                .filter(|u| u.regain_minutes > 0)
                .map(|u| Duration::from_secs(u.regain_minutes * 60));
            lock(&self.gate).throttled(regain, Instant::now());
        }
        Err(ReadError::Graph(Box::new(error)))
    }

    /// One page of a list endpoint, from `after` when given.
    pub async fn page(
        &self,
        path: &str,
        query: &[(&str, String)],
        after: Option<&str>,
        token: &SecretString,
    ) -> Result<Page, ReadError> {
        let mut q = query.to_vec();
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        Ok(Page::from_value(&self.get(path, &q, token).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_page_goes_on_only_while_meta_announces_a_next_page() {
        let p = Page::from_value(&json!({
            "data": [{"id": "1"}],
            "paging": {"cursors": {"before": "b", "after": "QVFIU"}, "next": "https://graph.facebook.com/v23.0/x?access_token=SECRET&after=QVFIU"}
        }));
        assert_eq!(p.after.as_deref(), Some("QVFIU"));
        // The last page: cursors, no `next`.
        let last = Page::from_value(&json!({
            "data": [{"id": "2"}],
            "paging": {"cursors": {"before": "b", "after": "QVFIV"}}
        }));
        assert_eq!(last.after, None);
        let empty = Page::from_value(&json!({"data": []}));
        assert!(empty.data.is_empty());
        assert_eq!(empty.after, None);
    }

    #[test]
    fn permission_errors_are_final_and_throttles_transient() {
        let perm = ReadError::Graph(Box::new(GraphError::from_body(
            403,
            br#"{"error":{"message":"(#200) Requires leads_retrieval permission","type":"OAuthException","code":200}}"#,
        )));
        assert!(!perm.is_transient());
        let throttle = ReadError::Graph(Box::new(GraphError::from_body(
            400,
            br#"{"error":{"message":"User request limit reached","code":17}}"#,
        )));
        assert!(throttle.is_transient());
        let server = ReadError::Graph(Box::new(GraphError::from_body(503, b"busy")));
        assert!(server.is_transient());
    }
}
