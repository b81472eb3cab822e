//! The gateway's HTTP surface: webhook endpoints, health, metrics, the
//! read API, the send, drafts and leads APIs and the event stream, assembled into one router with limits, timeouts and graceful
//! shutdown.
//!
//! [`Gateway::build`] binds the listener (port 0 works, for tests) and
//! returns a value that knows its address; [`Gateway::run`] serves until the
//! shutdown token is cancelled, then finishes in-flight requests.

pub mod api;
pub mod drafts;
mod health;
pub mod leads;
pub mod media;
pub mod outbound;
mod webhooks;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::audit::Audit;
use crate::config::Settings;
use crate::envelope::Source;
use crate::ingest::Ingest;
use crate::signature::SigningKey;

/// A Meta app as the gateway sees it: prepared keys, tenant, token.
#[derive(Debug, Clone)]
pub struct App {
    /// Tenant of events this app signs.
    pub tenant: String,
    /// One key per accepted secret.
    pub keys: Vec<SigningKey>,
    /// Handshake token.
    pub verify_token: Option<String>,
    /// Allowed sources (empty = all).
    pub sources: Vec<Source>,
}

impl App {
    fn allows(&self, source: Source) -> bool {
        self.sources.is_empty() || self.sources.contains(&source)
    }
}

/// Shared state of every handler: one `Arc`, so the per-request clones axum
/// makes cost one reference count, not one per field (they showed in
/// profiles under load).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Clone)]
pub struct Shared {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// Meta apps, in configuration order.
    pub apps: Arc<Vec<App>>,
    /// Durable acceptance (queue or direct mode).
    pub ingest: Ingest,
    /// Gateway audit log.
    pub audit: Audit,
    /// Prometheus render handle.
    pub metrics: PrometheusHandle,
    /// The JSON cache behind the read API (`None`: the API answers 503).
    pub cache: Option<crate::cache::Cache>,
    /// Stored media behind `GET /api/media/{id}` (`None`: it answers 503).
    pub media: Option<crate::media::storage::Storage>,
    /// Live readers of the event log (`None`: the event stream answers 503).
    pub feed: Option<crate::feed::Feed>,
}

impl AppState {
    /// Builds the state from settings and the acceptor.
    pub fn new(settings: Arc<Settings>, ingest: Ingest, audit: Audit) -> Self {
        let apps = settings
            .apps
            .iter()
            .map(|a| App {
                tenant: a.tenant.clone(),
                keys: a.signing_keys(),
                verify_token: a
                    .verify_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_string()),
                sources: a.sources.clone(),
            })
            .collect();
        Self(Arc::new(Shared {
            settings,
            apps: Arc::new(apps),
            ingest,
            audit,
            metrics: crate::telemetry::metrics_handle(),
            cache: None,
            media: None,
            feed: None,
        }))
    }

    /// The same state serving the read API from `cache`.
    pub fn with_cache(self, cache: crate::cache::Cache) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.cache = Some(cache);
        Self(Arc::new(shared))
    }

    /// The same state serving stored media from `storage`.
    pub fn with_media(self, storage: crate::media::storage::Storage) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.media = Some(storage);
        Self(Arc::new(shared))
    }

    /// The same state serving `GET /api/events/stream` from `feed`.
    pub fn with_feed(self, feed: crate::feed::Feed) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.feed = Some(feed);
        Self(Arc::new(shared))
    }

    /// The client address: the peer, or — only when the peer is a trusted
    /// proxy — the right-most untrusted address in `X-Forwarded-For`.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let trusted = |ip: &IpAddr| {
            self.settings
                .http
                .trusted_proxies
                .iter()
                .any(|net| net.contains(ip))
        };
        if !trusted(&peer) {
            return peer;
        }
        let Some(chain) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in chain.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(&ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// Builds the router with every layer.
pub fn router(state: AppState) -> Router {
    let timeout = state.settings.http.request_timeout;
    Router::new()
        .route(
            "/webhooks/{source}",
            get(webhooks::handshake).post(webhooks::receive),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(api::routes(state.clone()))
        .layer(middleware::from_fn_with_state(state.clone(), limit_headers))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(
            // Path only: the handshake's query string carries the verify token.
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
            }),
        )
        .with_state(state)
}

/// Rejects requests whose headers add up to more than the configured size
/// (431), before any handler runs.
async fn limit_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > state.settings.http.max_header_bytes {
        metrics::counter!("inlet_gateway_rejected_headers_total").increment(1);
        state.audit.write(
            crate::audit::AuditRecord::new("rejected")
                .outcome("error")
                .reason("headers_too_large")
                .with("header_bytes", size),
        );
        return StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.into_response();
    }
    next.run(req).await
}

/// A bound, ready-to-run gateway.
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
}

impl Gateway {
    /// Binds `settings.listen` and prepares the router.
    pub async fn bind(state: AppState, shutdown: CancellationToken) -> std::io::Result<Self> {
        let listener = TcpListener::bind(state.settings.listen).await?;
        Ok(Self {
            listener,
            router: router(state),
            shutdown,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the shutdown token is cancelled; in-flight requests
    /// finish before this returns.
    pub async fn run(self) -> std::io::Result<()> {
        let shutdown = self.shutdown.clone();
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    }
}
