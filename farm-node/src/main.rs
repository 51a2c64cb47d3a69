//! `farm-node`: parses flags, binds the port, installs the shutdown signal,
//! and runs [`farm_node::run`].

use std::{io::IsTerminal, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use farm_node::{Ended, NodeArgs, NodeConfig};
use std::sync::{Arc, Mutex, PoisonError};

use farm_node::workload::SetLogFilter;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, reload, util::SubscriberInitExt};

fn main() -> ExitCode {
    let args = NodeArgs::parse();
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(n));
            builder
        }
    }
    .enable_all()
    .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: NodeArgs) -> ExitCode {
    let initial = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .init();
    let current = Arc::new(Mutex::new(initial));
    let set_filter: SetLogFilter = Arc::new(move |text: &str| {
        let new =
            EnvFilter::try_new(text).map_err(|e| format!("{text:?} is not a log filter: {e}"))?;
        handle.reload(new).map_err(|e| e.to_string())?;
        let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(std::mem::replace(&mut *current, text.to_owned()))
    });
    let listen = args.listen;
    let mut args = args;
    let config = match args
        .read_token_file()
        .and_then(|()| NodeConfig::try_from(args))
    {
        Ok(mut config) => {
            config.log_filter = Some(set_filter);
            config
        }
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    match serve(listen, config).await {
        Ok(ended) => ExitCode::from(ended.exit_status()),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: std::net::SocketAddr, config: NodeConfig) -> anyhow::Result<Ended> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    Ok(farm_node::run(config, listener, shutdown_signal()).await?)
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(cause = %err, "cannot watch SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
