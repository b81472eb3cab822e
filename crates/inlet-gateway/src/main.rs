//! `inlet-gateway`: loads configuration, starts the webhook gateway, serves
//! until SIGINT/SIGTERM. Everything else lives in the `inlet` library.

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
            eprintln!("inlet-gateway: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    inlet::telemetry::init_tracing("gateway");
    let mut settings = inlet::config::Settings::load().context("loading configuration")?;
    settings.prepare().context("preparing the data directory")?;
    let shutdown = inlet::telemetry::shutdown_signal();
    let gateway = inlet::service::start_gateway(settings, shutdown)
        .await
        .context("starting the gateway")?;
    tracing::info!(addr = %gateway.addr, mode = gateway.mode(), "inlet-gateway listening");
    gateway.wait().await.context("serving")?;
    tracing::info!("inlet-gateway stopped");
    Ok(())
}
