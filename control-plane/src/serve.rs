//! `control-plane serve`: wires the store, state, runtime, supervisor and the
//! listener together, and shuts them down in order.
//!
//! Like mini-redis, this never binds a port or installs a signal handler:
//! the caller hands in a bound listener and a shutdown future, so tests run
//! the whole control plane on `127.0.0.1:0`.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::{
    config::{RuntimeKind, ServeConfig},
    core::{DEFAULT_GROUP, NodeState},
    runtime::{ProcessRuntime, ProcessRuntimeConfig, Runtime},
    server::{self, Api},
    state::FarmState,
    store::{Store, StoreError},
    supervisor::{Supervisor, SupervisorConfig},
};

/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long open connections may take to drain at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// Services whose health `grpc.health.v1` reports; "" is the whole server.
const SERVICES: [&str; 4] = ["", "farm.v1.Registry", "farm.v1.Discovery", "farm.v1.Farm"];
/// Starts in flight at once (a process starts in about a millisecond).
const START_PARALLELISM: usize = 16;

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the farm-node program was not found at {0}; build it with `cargo build --release -p farm-node` or pass --node-binary"
    )]
    NodeBinary(PathBuf),
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the server failed: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error("the server task failed: {0}")]
    Task(String),
}

/// Runs the control plane on `listener` until `shutdown` resolves.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let started = Instant::now();
    let local = listener.local_addr().map_err(ServeError::Listener)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = Store::open(&config.data_dir)?;
    let state = FarmState::open(store, config.policy, config.limits)?;
    let ticker = state.spawn_ticker(TICK);
    let cancel = CancellationToken::new();

    let runtime = build_runtime(&config)?;
    let supervisor = runtime.map(|(runtime, exits)| {
        info!(
            runtime = runtime.name(),
            nodes = config.nodes,
            "starting the farm"
        );
        Supervisor::spawn(
            runtime,
            state.clone(),
            SupervisorConfig {
                desired: config.nodes,
                max_nodes: config.max_nodes,
                group: DEFAULT_GROUP.to_owned(),
                control_plane: format!("http://{}", reachable(local)),
                stop_grace: config.stop_grace,
                start_parallelism: START_PARALLELISM,
            },
            exits,
        )
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    let api = Api {
        state: state.clone(),
        supervisor: supervisor.as_ref().map(|(s, _)| s.clone()),
        shutdown: cancel.clone(),
    };
    let routes = server::routes(&api, health_service)?;
    let server_stop = CancellationToken::new();
    let mut server = tokio::spawn(server::serve(
        listener,
        routes,
        server_stop.clone().cancelled_owned(),
    ));
    for service in SERVICES {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    info!(address = %local, "serving gRPC, gRPC-Web and HTTP");
    let bring_up = api
        .supervisor
        .clone()
        .map(|s| tokio::spawn(report_bring_up(state.clone(), s, started)));

    tokio::select! {
        () = shutdown => info!("shutting down"),
        result = &mut server => {
            // The server ended on its own: only an error does that.
            ticker.abort();
            return match result {
                Ok(result) => result.map_err(ServeError::from),
                Err(err) => Err(ServeError::Task(err.to_string())),
            };
        }
    }

    // Stop taking work, then stop the nodes while their streams are still
    // served (so they leave cleanly), then end streams and drain.
    for service in SERVICES {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    if let Some(task) = bring_up {
        task.abort();
    }
    if let Some((supervisor, task)) = supervisor {
        supervisor.shutdown().await;
        if let Err(err) = task.await {
            error!(cause = %err, "supervisor task failed");
        }
    }
    cancel.cancel();
    server_stop.cancel();
    ticker.abort();
    match tokio::time::timeout(DRAIN, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => warn!(cause = %err, "the server failed while draining"),
        Ok(Err(err)) => warn!(cause = %err, "the server task failed while draining"),
        Err(_) => warn!(after = ?DRAIN, "connections still open after draining; closing them"),
    }
    info!("stopped");
    Ok(())
}

type RuntimeParts = (
    Arc<dyn Runtime>,
    mpsc::UnboundedReceiver<crate::runtime::InstanceExit>,
);

fn build_runtime(config: &ServeConfig) -> Result<Option<RuntimeParts>, ServeError> {
    match config.runtime {
        RuntimeKind::None => Ok(None),
        RuntimeKind::Auto | RuntimeKind::Process => {
            let node_binary = match &config.node_binary {
                Some(path) => path.clone(),
                None => default_node_binary(),
            };
            if !node_binary.is_file() {
                return Err(ServeError::NodeBinary(node_binary));
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = ProcessRuntime::new(
                ProcessRuntimeConfig {
                    node_binary,
                    nodes_dir: config.data_dir.join("nodes"),
                },
                tx,
            );
            Ok(Some((Arc::new(runtime), rx)))
        }
    }
}

/// `farm-node` next to this executable, where cargo puts it.
fn default_node_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("farm-node")))
        .unwrap_or_else(|| PathBuf::from("farm-node"))
}

/// The address nodes on this machine dial: a wildcard listen address is
/// reached through loopback.
fn reachable(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local.port())
        }
        _ => local,
    }
}

/// Logs once when every managed node is healthy, with the time it took.
async fn report_bring_up(state: FarmState, supervisor: Supervisor, started: Instant) {
    let mut events = state.subscribe();
    let mut warned = false;
    loop {
        let desired = supervisor.desired() as usize;
        let healthy = state.count_by_state(NodeState::Healthy);
        if desired > 0 && healthy >= desired {
            info!(
                nodes = healthy,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "all {healthy} nodes registered and healthy in {:.2?}",
                started.elapsed()
            );
            return;
        }
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) => return,
            Err(_) if !warned => {
                warned = true;
                warn!(
                    healthy,
                    desired,
                    "the farm is still not fully healthy after 30s; see each node's node.log under the data folder"
                );
            }
            Err(_) => {}
        }
    }
}
