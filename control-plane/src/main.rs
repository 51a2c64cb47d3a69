//! `control-plane`: parses flags, binds the port (and the catalog's line
//! protocol's, if asked), installs the shutdown signal, and runs
//! [`control_plane::serve::run`].

use std::{io::IsTerminal, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use control_plane::config::{Cli, Command, ServeConfig};
use tracing_subscriber::EnvFilter;

/// jemalloc, with its background thread returning freed pages to the system
/// within about ten seconds. With glibc's malloc, ten 10,000-node swarms
/// that came and left one after another kept 234 MiB resident after the
/// first and 376 MiB after the ninth (over 95 % of it free, held by the
/// worker threads' arenas); with jemalloc, 37–51 MiB after each
/// (`cargo bench -p control-plane --bench load`, part d).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        // memory-serve lists every dashboard file it serves at info.
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,memory_serve=warn")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve(args) = cli.command;
    let config = match ServeConfig::try_from(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    match serve(args.listen, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: std::net::SocketAddr, config: ServeConfig) -> anyhow::Result<()> {
    let api = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let indexer = match config.indexer {
        Some(indexer) => Some(
            tokio::net::TcpListener::bind(indexer.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} for the catalog's line protocol (--indexer-listen)",
                        indexer.listen
                    )
                })?,
        ),
        None => None,
    };
    let listeners = control_plane::serve::Listeners { api, indexer };
    control_plane::serve::run(config, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(cause = %err, "cannot watch SIGTERM; only Ctrl-C stops the control plane");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
