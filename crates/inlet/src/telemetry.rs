//! Process-wide observability: the tracing subscriber, the Prometheus
//! recorder (and a bare `/metrics` listener for the worker) and the
//! shutdown signal.
//!
//! The subscriber is built in one function and installed in another so tests
//! can stay silent (`TEST_LOG=1` turns their logs on). Log level comes from
//! `INLET_LOG` (falling back to `RUST_LOG`, then `info`); `INLET_LOG_FORMAT=json`
//! switches to JSON lines for production. Fields never carry bodies or secrets.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global tracing subscriber (once; later calls are no-ops).
pub fn init_tracing(service: &str) {
    let filter = std::env::var("INLET_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("INLET_LOG_FORMAT").is_ok_and(|f| f == "json");
    let result = if json {
        fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .try_init()
    } else {
        fmt().with_env_filter(filter).with_target(false).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "tracing initialised");
    }
}

/// Installs tracing for tests: silent unless `TEST_LOG` is set.
pub fn init_test_tracing() {
    if std::env::var("TEST_LOG").is_ok() {
        let _ = fmt()
            .with_env_filter(EnvFilter::new(
                std::env::var("TEST_LOG").unwrap_or_else(|_| "debug".into()),
            ))
            .with_test_writer()
            .try_init();
    }
}

/// Buckets (seconds) for every `*_seconds` histogram: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the global Prometheus recorder once and returns its handle; later
/// calls (several apps in one test process) share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; keep ours usable.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe_metrics();
            }
            handle
        })
        .clone()
}

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic count (`*_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observations (`*_seconds`).
    Histogram,
}

/// Every metric the crate records, described once: kind, name, unit and the
/// `# HELP` text. A metric added anywhere in `crates/` gets its line here
/// (the `metrics` test checks that every family on `/metrics` has help text).
pub const METRICS: &[(MetricKind, &str, Unit, &str)] = &[
    // Gateway (HTTP intake).
    (C, "inlet_gateway_handshakes_total", Unit::Count, "Webhook verification handshakes (GET hub.challenge), by source and outcome"),
    (C, "inlet_gateway_deliveries_total", Unit::Count, "Webhook deliveries received, by source and outcome (queued, direct, dead_lettered, rejected, unavailable ...)"),
    (C, "inlet_gateway_signature_failures_total", Unit::Count, "Deliveries rejected because X-Hub-Signature-256 did not verify, by source and reason"),
    (H, "inlet_gateway_ack_seconds", Unit::Seconds, "Time from receiving a delivery to answering Meta, by source and mode (queue or direct)"),
    (C, "inlet_gateway_rejected_headers_total", Unit::Count, "Requests refused with 431: request head larger than http.max_header_bytes or with more than http.max_headers headers"),
    (C, "inlet_gateway_connections_closed_total", Unit::Count, "Gateway connections ended by an error, by reason (header_timeout: no complete request head within http.header_read_timeout_ms, idle kept-alive connections included; headers_too_large; bad_request; client_error)"),
    (C, "inlet_gateway_rate_limited_total", Unit::Count, "Webhook deliveries refused with 429 because their client address failed signatures more than http.signature_failures_per_minute, by source"),
    (G, "inlet_gateway_queue_mode", Unit::Count, "1 while the gateway enqueues into Redis, 0 while it stores directly (Redis down)"),
    (C, "inlet_gateway_mode_switches_total", Unit::Count, "Switches between queue and direct mode, by the mode switched to"),
    // Read API.
    (C, "inlet_api_requests_total", Unit::Count, "Read API requests, by cache file and outcome"),
    // Worker and store pipeline.
    (C, "inlet_worker_events_total", Unit::Count, "Raw events handled by the worker, by outcome (stored or dead_lettered)"),
    (H, "inlet_worker_batch_seconds", Unit::Seconds, "Time the worker took for one batch of raw events"),
    (C, "inlet_worker_queue_errors_total", Unit::Count, "Failed reads or acknowledgements of the incoming stream by the worker"),
    (G, "inlet_worker_raw_shards", Unit::Count, "incoming.raw shards this worker consumes (its own redis.raw_shards and any a gateway registered)"),
    (C, "inlet_worker_store_outages_total", Unit::Count, "Batches given back (left pending, read again after a backoff) because the store stayed unavailable: never dead-lettered"),
    (C, "inlet_events_malformed_total", Unit::Count, "Raw events that could not be parsed and went to the dead-letter queue"),
    (H, "inlet_store_batch_seconds", Unit::Seconds, "Time to write one normalized batch to the store, by stage"),
    (C, "inlet_store_retries_total", Unit::Count, "Retried store writes after a transient failure, by stage"),
    (C, "inlet_messages_stored_total", Unit::Count, "New messages written to the store"),
    (C, "inlet_statuses_stored_total", Unit::Count, "New delivery statuses written to the store"),
    (C, "inlet_page_changes_stored_total", Unit::Count, "New page changes (feed, comments) written to the store"),
    (C, "inlet_dead_letters_total", Unit::Count, "Entries sent to the dead-letter queue, by reason"),
    // Consumer protocol.
    (C, "inlet_stream_reclaimed_total", Unit::Count, "Stalled stream entries reclaimed from another consumer (XAUTOCLAIM), by group"),
    (C, "inlet_stream_group_recreated_total", Unit::Count, "Consumer groups recreated after they vanished (NOGROUP), by group"),
    // Events, outbox and webhooks out.
    (C, "inlet_events_total", Unit::Count, "Change events emitted, by event type"),
    (C, "inlet_event_handler_total", Unit::Count, "Event handler runs, by handler and outcome"),
    (C, "inlet_outbox_published_total", Unit::Count, "Outbox entries relayed to Redis"),
    (C, "inlet_outbox_discarded_total", Unit::Count, "Outbox entries dropped because no Redis is configured, by stream"),
    (C, "inlet_webhook_deliveries_total", Unit::Count, "Outgoing event webhook deliveries to subscribers, by outcome (ok, retry, failed)"),
    // Cache.
    (C, "inlet_cache_jobs_total", Unit::Count, "Cache update jobs processed"),
    (C, "inlet_cache_rewrites_total", Unit::Count, "Cache files rewritten, by file"),
    (C, "inlet_cache_errors_total", Unit::Count, "Failed cache file writes, by file"),
    (C, "inlet_cache_rebuilds_total", Unit::Count, "Full cache rebuilds from the store"),
    // Retention and time partitions of the store (Postgres).
    (C, "inlet_partition_runs_total", Unit::Count, "Runs of the daily retention and partition job, by outcome (ok, failed: retried after 15 minutes)"),
    (C, "inlet_partitions_created_total", Unit::Count, "Time partitions created ahead by the retention and partition job, by table"),
    (C, "inlet_partitions_dropped_total", Unit::Count, "Expired time partitions dropped whole by retention, by table"),
    (G, "inlet_partition_default_rows", Unit::Count, "Rows in a partitioned table's DEFAULT partition (times outside every partition; normally 0), by table"),
    // Audit.
    (C, "inlet_audit_write_errors_total", Unit::Count, "Audit lines that could not be written"),
    // Status sampler (gauges read from Redis and the store).
    (G, "inlet_stream_length", Unit::Count, "Entries in a Redis stream; for incoming.raw, the backlog still to process"),
    (G, "inlet_stream_oldest_entry_age_seconds", Unit::Seconds, "Age of the oldest entry of incoming.raw (how far behind the workers are) and of the dlq"),
    (G, "inlet_consumer_group_consumers", Unit::Count, "Consumers registered in a consumer group"),
    (G, "inlet_consumer_pending", Unit::Count, "Entries delivered to a consumer group and not yet acknowledged"),
    (G, "inlet_consumer_oldest_pending_seconds", Unit::Seconds, "Age of the oldest unacknowledged entry of a consumer group (0 when none)"),
    (G, "inlet_consumer_lag", Unit::Count, "Entries not yet delivered to a consumer group (when Redis can tell)"),
    (G, "inlet_dlq_size", Unit::Count, "Dead letters waiting, in the dlq stream, in the store's dead_letters table, or as dead-lettered outbound sends"),
    (C, "inlet_dlq_replayed_total", Unit::Count, "Dead letters replayed, by kind (event, outbound, command)"),
    (G, "inlet_outbox_pending", Unit::Count, "Outbox entries and event-log rows not yet relayed to Redis"),
    (G, "inlet_bus_pending", Unit::Count, "Events handed to in-process handlers (direct mode) and not handled yet (bus_pending rows)"),
    (G, "inlet_last_event_timestamp_seconds", Unit::Seconds, "Unix time of the newest raw event kept in the store"),
    (C, "inlet_status_sample_errors_total", Unit::Count, "Failed reads of the gauges sampler, by dependency"),
    // Outbound (send API and sender).
    (C, "inlet_outbound_requests_total", Unit::Count, "POST /api/messages requests, by outcome (queued, duplicate, invalid, conflict, unavailable)"),
    (C, "inlet_outbound_intake_total", Unit::Count, "Entries of outgoing.command read by the sender's intake, by outcome (queued, duplicate, invalid)"),
    (C, "inlet_outbound_steps_total", Unit::Count, "Sender steps written to the audit log, by step (sending, sent, retried, failed, dead_lettered, unknown, halted)"),
    (C, "inlet_outbound_sends_total", Unit::Count, "Graph send outcomes, by outcome and error class"),
    (C, "inlet_outbound_halts_total", Unit::Count, "Apps whose sending halted on an auth or account error, by class"),
    (H, "inlet_outbound_graph_seconds", Unit::Seconds, "Duration of one Graph API send call"),
    (H, "inlet_outbound_accept_seconds", Unit::Seconds, "Time from a command being stored to Meta accepting it"),
    (H, "inlet_outbound_delivered_seconds", Unit::Seconds, "Time from Meta accepting a send to its first delivered (or read) status"),
    (G, "inlet_outbound_queued", Unit::Count, "Sends waiting (queued or claimed), by sender"),
    (G, "inlet_outbound_tokens", Unit::Count, "Tokens left in a sender's rate bucket, by sender"),
    (G, "inlet_outbound_halted", Unit::Count, "Apps whose sending is halted (1 per halted tenant)"),
    // Media (download, storage, uploads).
    (C, "inlet_media_jobs_total", Unit::Count, "Media jobs, by outcome (stored, failed, dead_lettered, skipped, retried, interrupted)"),
    (C, "inlet_media_bytes_total", Unit::Bytes, "Bytes of media downloaded, verified and stored"),
    (H, "inlet_media_download_seconds", Unit::Seconds, "Duration of one media attempt (Graph lookup, download, verification, storage)"),
    (C, "inlet_media_url_refreshes_total", Unit::Count, "Expired media download URLs replaced by a fresh GET /{media-id}"),
    (C, "inlet_media_requests_total", Unit::Count, "GET /api/media requests, by outcome (served, partial, not_modified, not_stored, not_found, unsatisfiable, missing, error)"),
    (G, "inlet_leads", Unit::Count, "Leads in the store, by status (pending, fetched, failed, dead_lettered)"),
    (C, "inlet_lead_jobs_total", Unit::Count, "Lead jobs, by outcome (fetched, failed, dead_lettered, skipped, retried, interrupted)"),
    (H, "inlet_lead_fetch_seconds", Unit::Seconds, "Duration of one GET /{leadgen_id} attempt"),
    (C, "inlet_media_uploads_total", Unit::Count, "Outbound media, by outcome (uploaded, cached, refused, failed)"),
    // The gateway's local spool.
    (G, "inlet_spool_pending_bytes", Unit::Bytes, "Bytes waiting in the gateway's local spool (kept while Redis and the store were both down)"),
    (C, "inlet_spool_events_total", Unit::Count, "Events through the local spool, by outcome (spooled, drained, refused: spool off, full or failing)"),
    // Graph reads (leads, scheduled sync).
    (G, "inlet_graph_usage_pct", Unit::Percent, "Highest figure of Meta's usage headers (X-App-Usage, X-Business-Use-Case-Usage, X-Ad-Account-Usage) on the last Graph answer that carried one (sends, reads)"),
    (C, "inlet_graph_usage_waits_total", Unit::Count, "Graph reads that waited first because Meta's usage was high or a budget was spent"),
    (C, "inlet_sync_runs_total", Unit::Count, "Scheduled Graph sync runs, by job (insights, conversations) and outcome (ok, failed)"),
    (C, "inlet_sync_rows_total", Unit::Count, "Rows written by sync runs (insight rows, backfilled messages), by job"),
    (H, "inlet_sync_run_seconds", Unit::Seconds, "Duration of one sync run, by job"),
    // AI drafts and the event stream.
    (C, "inlet_draft_requests_total", Unit::Count, "Drafts API and CLI requests, by action (create, approve, reject) and outcome (created, approved, rejected, invalid, not_found, conflict, needs_template, unavailable)"),
    (C, "inlet_drafts_changed_total", Unit::Count, "Drafts moved by something other than a reviewer, by the status entered (stale, sent, failed, needs_template, expired, approved on a DLQ replay)"),
    (G, "inlet_event_stream_clients", Unit::Count, "Clients connected to GET /api/events/stream"),
    (C, "inlet_event_stream_events_total", Unit::Count, "Events handed to event stream clients"),
    (C, "inlet_event_stream_disconnects_total", Unit::Count, "Event stream clients that ended, by reason (closed by the client, slow: took no event for events.stream_stall_ms, shutdown)"),
];

use MetricKind::{Counter as C, Gauge as G, Histogram as H};

/// Registers [`METRICS`] with the installed recorder (their `# HELP` lines).
fn describe_metrics() {
    for &(kind, name, unit, help) in METRICS {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(name, unit, help),
            MetricKind::Gauge => metrics::describe_gauge!(name, unit, help),
            MetricKind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// A small listener serving `GET /metrics` (the process' Prometheus
/// registry) and `GET /healthz`, for services without an HTTP server of
/// their own (the worker). Binds `addr` (port 0 picks a free port), returns
/// the bound address and the serving task, which ends on `shutdown`.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::http::header;
    use axum::routing::get;

    let handle = metrics_handle();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = handle.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok((bound, task))
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_once_with_a_fitting_name() {
        let mut seen = std::collections::HashSet::new();
        for &(kind, name, unit, help) in METRICS {
            assert!(seen.insert(name), "{name} described twice");
            assert!(!help.is_empty(), "{name} has no help");
            if kind == MetricKind::Counter {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
            if name.ends_with("_seconds") {
                assert_eq!(unit, Unit::Seconds, "{name}");
            }
        }
    }

    #[test]
    fn every_metric_recorded_in_the_crate_is_described() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut missing = Vec::new();
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                // This file holds the table (and this test's patterns).
                if path.ends_with("telemetry.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for mac in ["counter!(", "gauge!(", "histogram!("] {
                    for (i, _) in text.match_indices(mac) {
                        if text[..i].ends_with("describe_") {
                            continue;
                        }
                        let rest = text[i + mac.len()..].trim_start();
                        let Some(rest) = rest.strip_prefix('"') else {
                            continue;
                        };
                        let name = &rest[..rest.find('"').unwrap()];
                        if !METRICS.iter().any(|m| m.1 == name) {
                            missing.push(format!("{name} ({})", path.display()));
                        }
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "metrics without a description in telemetry::METRICS: {missing:?}"
        );
    }
}
