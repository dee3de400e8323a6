//! The `herald` command: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use herald::config::Overrides;
use herald::{App, Config};
use tokio_util::sync::CancellationToken;

/// mimalloc: Herald allocates many small, short-lived buffers per delivery (bodies, headers,
/// JSON), where it measurably beats the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Self-hosted event streaming: publish, sign, deliver, retry, record."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on the embedded store.
    Serve {
        /// Configuration file [default: ./herald.toml, if present]
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    match cli.command {
        Command::Serve { config, overrides } => runtime.block_on(serve(config, overrides)),
    }
}

async fn serve(file: Option<PathBuf>, overrides: Overrides) -> ExitCode {
    let config = match Config::load(file, &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match App::build(config, Arc::new(herald::clock::SystemClock)).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(token) = app.new_admin_token() {
        println!(
            "Created the platform admin token. It is shown only this once; keep it safe:\n\n    {token}\n"
        );
    }
    println!("herald listening on http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match app.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: the server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing requests and deliveries under way");
    shutdown.cancel();
}
