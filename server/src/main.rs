//! `streamwatch-server`: runs the service (see `--help`; every flag also reads
//! an environment variable).

use anyhow::Context;
use clap::Parser;
use streamwatch_server::{config::Config, serve, telemetry};

/// mimalloc: a million live watches' small, long-lived allocations fragment
/// glibc's per-thread arenas (resident memory about 40% over the heap);
/// mimalloc's size-segregated pages keep it close to the heap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = telemetry::init(config.log_format)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let served = serve(config, listener, shutdown_signal()).await;
    // Exporting the last spans blocks on the runtime's threads: not on one of them.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    Ok(served?)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
