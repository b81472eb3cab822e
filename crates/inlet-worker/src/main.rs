//! `inlet-worker`: loads configuration, consumes the raw stream into the
//! store until SIGINT/SIGTERM, finishing the batch in progress. Everything
//! else lives in the `inlet` library.

use anyhow::Context;

// mimalloc instead of glibc malloc: allocation was a quarter of the
// services' CPU under load (arena locks, consolidation); see BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs the service; a startup error is printed as one paragraph (the
/// error and its causes, no backtrace whatever `RUST_BACKTRACE` says) and
/// the process exits with status 2.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inlet-worker: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    inlet::telemetry::init_tracing("worker");
    let mut settings = inlet::config::Settings::load().context("loading configuration")?;
    settings.prepare().context("preparing the data directory")?;
    let shutdown = inlet::telemetry::shutdown_signal();
    let worker = inlet::service::start_worker(settings, shutdown)
        .await
        .context("starting the worker")?;
    tracing::info!(
        consumer = %worker.consumer,
        backend = worker.store.backend(),
        metrics = ?worker.metrics_addr,
        "inlet-worker running"
    );
    worker.wait().await;
    tracing::info!("inlet-worker stopped");
    Ok(())
}
