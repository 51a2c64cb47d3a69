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
    runtime::{
        DockerRuntime, DockerRuntimeConfig, InstanceEvent, ProcessRuntime, ProcessRuntimeConfig,
        Runtime, docker,
    },
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
const SERVICES: [&str; 6] = [
    "",
    "farm.v1.Registry",
    "farm.v1.Discovery",
    "farm.v1.Farm",
    "farm.v1.Config",
    "farm.v1.Metrics",
];
/// Process starts in flight at once (a process starts in about a millisecond).
const PROCESS_START_PARALLELISM: usize = 16;
/// Container creates and starts in flight at once: the engine serialises
/// much of the work, and more in flight only queues there.
const DOCKER_START_PARALLELISM: usize = 8;

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
    #[error(transparent)]
    Docker(#[from] crate::runtime::DockerError),
    #[error(
        "the node image needs a statically linked farm-node; {0} is not one (build one with scripts/build-static)"
    )]
    NotStatic(PathBuf),
    #[error(
        "the node image needs a statically linked farm-node and none was found (looked at {0:?}); build one with scripts/build-static or pass --node-image-binary"
    )]
    NoStaticNode(Vec<PathBuf>),
    #[error("cannot keep the farm id in {path}: {source}")]
    FarmId {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for nodes on the farm's network at {gateway}: {source}")]
    NodeListener {
        gateway: IpAddr,
        source: std::io::Error,
    },
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

    let runtime = build_runtime(&config).await?;
    // Nodes on a network of their own reach the control plane on that
    // network's gateway: a second listener there serves the same routes.
    let mut node_listener = None;
    let mut node_url = format!("http://{}", reachable(local));
    if let Some(gateway) = runtime.as_ref().and_then(|r| r.node_side) {
        let listener = bind_node_side(gateway, local.port()).await?;
        let addr = listener.local_addr().map_err(ServeError::Listener)?;
        info!(address = %addr, "serving the farm's network");
        node_url = format!("http://{addr}");
        node_listener = Some(listener);
    }
    let farm_runtime = runtime.as_ref().map(|r| Arc::clone(&r.runtime));
    let supervisor = runtime.map(|parts| {
        info!(
            runtime = parts.runtime.name(),
            nodes = config.nodes,
            "starting the farm"
        );
        Supervisor::spawn(
            parts.runtime,
            state.clone(),
            SupervisorConfig {
                desired: config.nodes,
                max_nodes: config.max_nodes,
                group: DEFAULT_GROUP.to_owned(),
                control_plane: node_url,
                stop_grace: config.stop_grace,
                start_parallelism: config.start_parallelism.unwrap_or(parts.start_parallelism),
                keep_on_shutdown: config.keep_nodes,
            },
            parts.exits,
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
    let node_server = node_listener.map(|listener| {
        tokio::spawn(server::serve(
            listener,
            routes.clone(),
            config.tokens.clone(),
            server_stop.clone().cancelled_owned(),
        ))
    });
    let mut server = tokio::spawn(server::serve(
        listener,
        routes,
        config.tokens.clone(),
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
    if let Some(runtime) = farm_runtime
        && !config.keep_nodes
    {
        runtime.close().await;
    }
    cancel.cancel();
    server_stop.cancel();
    ticker.abort();
    if let Some(node_server) = node_server
        && tokio::time::timeout(DRAIN, node_server).await.is_err()
    {
        warn!(after = ?DRAIN, "node connections still open after draining; closing them");
    }
    match tokio::time::timeout(DRAIN, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => warn!(cause = %err, "the server failed while draining"),
        Ok(Err(err)) => warn!(cause = %err, "the server task failed while draining"),
        Err(_) => warn!(after = ?DRAIN, "connections still open after draining; closing them"),
    }
    info!("stopped");
    Ok(())
}

/// The runtime the farm runs on.
struct RuntimeParts {
    runtime: Arc<dyn Runtime>,
    exits: mpsc::UnboundedReceiver<InstanceEvent>,
    /// Where nodes reach the control plane when not through the listener's
    /// own address: the gateway of the farm's network.
    node_side: Option<IpAddr>,
    /// Starts in flight at once.
    start_parallelism: usize,
}

async fn build_runtime(config: &ServeConfig) -> Result<Option<RuntimeParts>, ServeError> {
    match config.runtime {
        RuntimeKind::None => Ok(None),
        RuntimeKind::Process => process_runtime(config).map(Some),
        RuntimeKind::Docker => {
            let binary = image_binary(config)?;
            docker_runtime(config, binary).await.map(Some)
        }
        RuntimeKind::Auto => {
            if let Err(err) = docker::connect(&config.docker.host).await {
                info!(cause = %err, "no Docker engine: nodes run as processes");
                return process_runtime(config).map(Some);
            }
            match image_binary(config) {
                Ok(binary) => docker_runtime(config, binary).await.map(Some),
                Err(err) => {
                    warn!(cause = %err, "a Docker engine answers, but nodes run as processes");
                    process_runtime(config).map(Some)
                }
            }
        }
    }
}

fn process_runtime(config: &ServeConfig) -> Result<RuntimeParts, ServeError> {
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
            node_token: config.tokens.node.clone(),
        },
        tx,
    );
    Ok(RuntimeParts {
        runtime: Arc::new(runtime),
        exits: rx,
        node_side: None,
        start_parallelism: PROCESS_START_PARALLELISM,
    })
}

async fn docker_runtime(
    config: &ServeConfig,
    node_binary: PathBuf,
) -> Result<RuntimeParts, ServeError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = DockerRuntime::start(
        DockerRuntimeConfig {
            host: config.docker.host.clone(),
            node_binary,
            nodes_dir: config.data_dir.join("nodes"),
            farm_id: farm_id(&config.data_dir)?,
            cpus: config.docker.cpus,
            memory: config.docker.memory,
            node_token: config.tokens.node.clone(),
        },
        tx,
    )
    .await?;
    let gateway = runtime.gateway();
    Ok(RuntimeParts {
        runtime: Arc::new(runtime),
        exits: rx,
        node_side: Some(gateway),
        start_parallelism: DOCKER_START_PARALLELISM,
    })
}

/// The statically linked farm-node the node image is built from.
fn image_binary(config: &ServeConfig) -> Result<PathBuf, ServeError> {
    if let Some(path) = &config.docker.image_binary {
        return if docker::is_static_executable(path) {
            Ok(path.clone())
        } else {
            Err(ServeError::NotStatic(path.clone()))
        };
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .unwrap_or_default();
    // Next to this program, then where scripts/build-static puts it.
    let target = exe_dir.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        exe_dir.join("farm-node"),
        target.join("x86_64-unknown-linux-gnu/container/farm-node"),
        exe_dir.join("../x86_64-unknown-linux-gnu/container/farm-node"),
    ];
    candidates
        .iter()
        .find(|path| docker::is_static_executable(path))
        .cloned()
        .ok_or_else(|| ServeError::NoStaticNode(candidates.to_vec()))
}

/// This farm's id: made up once, then kept in the data folder, so a
/// restarted control plane recognises its containers.
fn farm_id(data_dir: &std::path::Path) -> Result<String, ServeError> {
    let path = data_dir.join("farm-id");
    let err = |source| ServeError::FarmId {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Ok(id.to_owned());
            }
            Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{id:?} is not a farm id (1 to 32 of a-z 0-9)"),
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:08x}", rand::random::<u32>());
            std::fs::write(&path, format!("{id}\n")).map_err(err)?;
            Ok(id)
        }
        Err(e) => Err(err(e)),
    }
}

/// Binds the listener nodes dial on the farm's network: the control plane's
/// port if free there, any port otherwise.
async fn bind_node_side(gateway: IpAddr, port: u16) -> Result<TcpListener, ServeError> {
    match TcpListener::bind(SocketAddr::new(gateway, port)).await {
        Ok(listener) => Ok(listener),
        Err(_) => TcpListener::bind(SocketAddr::new(gateway, 0))
            .await
            .map_err(|source| ServeError::NodeListener { gateway, source }),
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
