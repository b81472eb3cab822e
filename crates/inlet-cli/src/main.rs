//! `inlet`: the operator's command line. Parsing and dispatch live in the
//! `inlet_cli` library so tests run the same code in-process.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = inlet_cli::Cli::parse();
    let mut out = std::io::stdout().lock();
    match inlet_cli::run(cli, &mut out).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
