//! The gateway's HTTP surface: webhook endpoints, health, metrics, the
//! read API, the send, drafts and leads APIs and the event stream, assembled into one router with limits, timeouts and graceful
//! shutdown.
//!
//! [`Gateway::build`] binds the listener (port 0 works, for tests) and
//! returns a value that knows its address; [`Gateway::run`] serves until the
//! shutdown token is cancelled, then finishes in-flight requests.

mod abuse;
pub mod api;
pub mod drafts;
mod health;
pub mod leads;
pub mod media;
pub mod outbound;
mod webhooks;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
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
    /// Failed-signature budgets per client address (`None`: no limit).
    signature_failures: Option<Arc<abuse::FailureLimiter>>,
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
            apps: Arc::new(apps),
            ingest,
            audit,
            metrics: crate::telemetry::metrics_handle(),
            cache: None,
            media: None,
            feed: None,
            signature_failures: abuse::FailureLimiter::new(
                settings.http.signature_failures_per_minute,
                settings.http.signature_failure_addresses,
            )
            .map(Arc::new),
            settings,
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
    let body_idle = state.settings.http.body_idle_timeout;
    Router::new()
        .route(
            "/webhooks/{source}",
            get(webhooks::handshake).post(webhooks::receive),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(api::routes(state.clone()))
        // A body that stops arriving fails the handler's read (408), long
        // before the whole-request timeout would.
        .layer(RequestBodyTimeoutLayer::new(body_idle))
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

/// A bound, ready-to-run gateway.
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: crate::config::HttpSettings,
    audit: Audit,
}

impl Gateway {
    /// Binds `settings.listen` and prepares the router.
    pub async fn bind(state: AppState, shutdown: CancellationToken) -> std::io::Result<Self> {
        let listener = TcpListener::bind(state.settings.listen).await?;
        Ok(Self {
            listener,
            limits: state.settings.http.clone(),
            audit: state.audit.clone(),
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
    ///
    /// Its own accept loop rather than `axum::serve`, for the limits hyper
    /// enforces while it parses a request head, before any handler runs: a
    /// head must arrive within `http.header_read_timeout_ms` (slowloris),
    /// within `http.max_header_bytes` and with at most `http.max_headers`
    /// headers (431, and nothing more is buffered).
    pub async fn run(self) -> std::io::Result<()> {
        let Self {
            listener,
            router,
            shutdown,
            limits,
            audit,
        } = self;
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            .max_header_size(limits.max_header_bytes);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                },
            };
            let service = router
                .clone()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req
                });
            let conn = http1.serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            );
            let conn = graceful.watch(conn);
            let audit = audit.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    connection_failed(&e, peer, &audit);
                }
            });
        }
        // Stop listening first, then let every open connection finish its
        // request in flight and close.
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    }
}

/// An accept error: per-connection ones (the peer already left) are
/// skipped; others (out of file descriptors) pause the loop briefly rather
/// than spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing for a second");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// Counts (and, for refused heads, audits) a connection hyper ended with an
/// error: a head too large or with too many headers (hyper answered 431), a
/// head not sent in time (closed), or an ordinary client disconnect.
fn connection_failed(e: &hyper::Error, peer: SocketAddr, audit: &Audit) {
    let reason = if e.is_parse_too_large() {
        "headers_too_large"
    } else if e.is_timeout() {
        "header_timeout"
    } else if e.is_parse() {
        "bad_request"
    } else {
        "client_error"
    };
    metrics::counter!("inlet_gateway_connections_closed_total", "reason" => reason).increment(1);
    tracing::debug!(reason, client_ip = %peer.ip(), error = %e, "connection ended with an error");
    if reason == "headers_too_large" {
        metrics::counter!("inlet_gateway_rejected_headers_total").increment(1);
        audit.write(
            crate::audit::AuditRecord::new("rejected")
                .outcome("error")
                .reason(reason)
                .with("status", 431)
                .with("client_ip", peer.ip().to_string()),
        );
    }
}
