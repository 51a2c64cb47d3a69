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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{error, info, warn};

use crate::{
    config::ServeConfig,
    core::DEFAULT_GROUP,
    indexer::LineServer,
    runtime::{
        Runtime,
        select::{self, Nodes, SetupError},
        swarm::SwarmError,
    },
    state::{FarmState, Members},
    store::StoreError,
    supervisor::{Supervisor, SupervisorConfig},
    transport::{
        self, Api,
        gate::{self, FileLimit, Gate, RESERVED_DESCRIPTORS},
        services, shed,
    },
};

/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long open connections may take to drain at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a running load test may take to send its partial report at
/// shutdown before the nodes it drives are stopped anyway.
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The data folder could not be created.
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The runtime could not be set up.
    #[error(transparent)]
    Runtime(#[from] SetupError),
    /// The listener's own address could not be read.
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    /// The farm's network gateway could not be listened on.
    #[error("cannot listen for nodes on the farm's network at {gateway}: {source}")]
    NodeListener {
        gateway: IpAddr,
        source: std::io::Error,
    },
    /// Reflection could not read the descriptor sets.
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server failed.
    #[error("the server failed: {0}")]
    Server(#[from] tonic::transport::Error),
    /// The catalog's line-protocol listener's own address could not be
    /// read.
    #[error("cannot read the catalog listener's address: {0}")]
    IndexerListener(std::io::Error),
    /// The server task panicked or was cancelled.
    #[error("the server task failed: {0}")]
    Task(String),
    /// `--advertise-url` does not lead to this control plane.
    #[error(
        "--advertise-url {url} does not reach this control plane: {cause}. \
Give an address of this host that every host of the swarm can route to, on the port of --listen (listen on 0.0.0.0 or that address)"
    )]
    Advertise { url: String, cause: String },
    /// The farm's Swarm service could not be set up.
    #[error(transparent)]
    Swarm(#[from] SwarmError),
}

/// The sockets the control plane serves, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC, gRPC-Web and HTTP.
    pub api: TcpListener,
    /// The catalog's line protocol, if served (its limits come from
    /// [`ServeConfig::indexer`], or the defaults).
    pub indexer: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(api: TcpListener) -> Self {
        Self { api, indexer: None }
    }
}

/// Runs the control plane on `listeners` until `shutdown` resolves.
///
/// Shutdown goes in order: readiness goes off (health `NOT_SERVING`,
/// `/readyz` 503); services are told to stop, so streams end and a running
/// load test sends its partial report, and the catalog's listener stops
/// accepting and answers what its connections sent; then the nodes stop;
/// then the server drains; then the store closes.
pub async fn run(
    config: ServeConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Listeners {
        api: listener,
        indexer: indexer_listener,
    } = listeners.into();
    let started = Instant::now();
    let local = listener.local_addr().map_err(ServeError::Listener)?;
    let files = gate::raise_file_limit();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let state = FarmState::open(config.data_dir.clone(), config.policy, config.limits).await?;
    let ticker = state.spawn_ticker(TICK);
    let lag = tokio::spawn(shed::measure_lag(Arc::downgrade(state.telemetry())));

    let runtime = select::build(&config).await?;
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
    if let Some(url) = &config.swarm.advertise_url {
        let listeners: Vec<&TcpListener> =
            std::iter::once(&listener).chain(&node_listener).collect();
        check_advertise(url, &listeners).await?;
        info!(url = %url, "nodes reach this control plane at --advertise-url");
        node_url.clone_from(url);
    }
    let runtime_name = runtime.as_ref().map_or("none", |r| r.name());
    let supervisor_config = |start_parallelism| SupervisorConfig {
        desired: config.nodes,
        max_nodes: config.max_nodes,
        group: DEFAULT_GROUP.to_owned(),
        control_plane: node_url.clone(),
        stop_grace: config.stop_grace,
        start_parallelism: config.start_parallelism.unwrap_or(start_parallelism),
        keep_on_shutdown: config.keep_nodes,
    };
    let mut farm_runtime: Option<Arc<dyn Runtime>> = None;
    let supervisor = match runtime.map(|parts| parts.nodes) {
        None => None,
        Some(Nodes::Slots {
            runtime,
            exits,
            start_parallelism,
        }) => {
            info!(
                runtime = runtime.name(),
                nodes = config.nodes,
                "starting the farm"
            );
            farm_runtime = Some(Arc::clone(&runtime));
            Some(Supervisor::spawn(
                runtime,
                state.members(),
                supervisor_config(start_parallelism),
                exits,
            ))
        }
        Some(Nodes::Swarm(swarm)) => {
            info!(runtime = "swarm", nodes = config.nodes, "starting the farm");
            swarm.deploy(&node_url, DEFAULT_GROUP, config.nodes).await?;
            Some(Supervisor::spawn_swarm(
                swarm,
                state.members(),
                supervisor_config(1),
            ))
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    let mut api = Api::new(
        state.clone(),
        supervisor.as_ref().map(|(s, _)| s.clone()),
        runtime_name,
    );
    // A point of the farm's history every fifth sample.
    api.record_history(config.policy.heartbeat_interval * 5);
    let line_server = match indexer_listener {
        Some(listener) => {
            let limits = config.indexer.map(|i| i.limits).unwrap_or_default();
            let server = LineServer::new(
                listener,
                state.catalog(),
                limits,
                Arc::clone(state.telemetry()),
            )
            .map_err(ServeError::IndexerListener)?;
            api.control_plane = api.control_plane.with_indexer(server.status());
            Some(tokio::spawn(server.run(api.shutdown.clone(), DRAIN)))
        }
        None => None,
    };
    let routes = transport::routes(&api, health_service)?;
    let server_stop = CancellationToken::new();
    let gate = Gate::new(
        max_connections(&config, files),
        config.connections,
        Arc::clone(state.telemetry()),
    );
    // Both listeners serve the same routes behind the same checks, and
    // share one connection limit.
    let serve_on = |listener| {
        tokio::spawn(transport::serve(
            listener,
            (Arc::clone(&gate), config.serving),
            routes.clone(),
            config.tokens.clone(),
            config.browser.clone(),
            Arc::clone(state.telemetry()),
            server_stop.clone().cancelled_owned(),
        ))
    };
    let node_server = node_listener.map(serve_on);
    let mut server = serve_on(listener);
    set_health(&health, ServingStatus::Serving).await;
    info!(address = %local, "serving gRPC, gRPC-Web and HTTP");
    let bring_up = api
        .supervisor
        .clone()
        .map(|s| tokio::spawn(report_bring_up(state.members(), s, started)));

    tokio::select! {
        () = shutdown => info!("shutting down"),
        result = &mut server => {
            // The server ended on its own: only an error does that.
            ticker.abort();
            lag.abort();
            return match result {
                Ok(result) => result.map_err(ServeError::from),
                Err(err) => Err(ServeError::Task(err.to_string())),
            };
        }
    }

    // Readiness goes off: health checks and load balancers stop sending.
    set_health(&health, ServingStatus::NotServing).await;
    if let Some(task) = bring_up {
        task.abort();
    }
    // Services stop: streams end, and a running load test stops and sends
    // its partial report while the nodes it drives still answer; the
    // catalog's listener stops accepting, and its connections answer what
    // they received and close (within the drain time).
    api.stop();
    if let Some(line_server) = line_server
        && let Err(err) = line_server.await
    {
        error!(cause = %err, "the catalog's line server failed");
    }
    if tokio::time::timeout(REPORT_GRACE, api.idle())
        .await
        .is_err()
    {
        warn!(after = ?REPORT_GRACE, "a load test still runs; stopping the nodes anyway");
    }
    // Then the nodes.
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
    // Then the connections drain.
    server_stop.cancel();
    ticker.abort();
    lag.abort();
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
    // Last, the store: every acknowledged write is on disk already; this
    // folds the log into the database and releases it.
    if let Err(err) = state.close().await {
        warn!(cause = %err, "could not close the store cleanly");
    }
    info!("stopped");
    Ok(())
}

/// The connections the port may hold: `--max-connections`, else three
/// quarters of the file limit; says which, and warns when the limit leaves
/// the farm few descriptors of its own.
fn max_connections(config: &ServeConfig, files: FileLimit) -> usize {
    let max = config
        .connections
        .max_connections
        .unwrap_or_else(|| files.default_connections());
    if files.now == u64::MAX {
        // Unlimited, or unreadable.
        info!(max_connections = max, "connection limit");
    } else {
        info!(
            file_limit = files.now,
            raised_from = files.before,
            max_connections = max,
            "connection limit: {max} of {} file descriptors",
            files.now
        );
    }
    if (max as u64).saturating_add(RESERVED_DESCRIPTORS) > files.now {
        warn!(
            max_connections = max,
            file_limit = files.now,
            "--max-connections leaves fewer than {RESERVED_DESCRIPTORS} of the process's file descriptors for the nodes, the database and the Docker socket; \
raise the limit (ulimit -n) or lower --max-connections"
        );
    }
    max
}

/// Sets the health of the server as a whole ("") and of every service it
/// serves.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in std::iter::once("").chain(services::names()) {
        health.set_service_status(service, status).await;
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

/// Checks that `url` leads to one of `listeners`: connects to it, and waits
/// for that very connection (told by its address) to arrive. The listeners
/// are bound but not served yet, so the kernel holds the connection for
/// them; other connections accepted meanwhile (nodes retrying) are closed,
/// and they dial again.
async fn check_advertise(url: &str, listeners: &[&TcpListener]) -> Result<(), ServeError> {
    let fail = |cause: String| ServeError::Advertise {
        url: url.to_owned(),
        cause,
    };
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    let default_port = if url.starts_with("https://") { 443 } else { 80 };
    let target = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let wait = Duration::from_secs(5);
    let stream = tokio::time::timeout(wait, tokio::net::TcpStream::connect(&target))
        .await
        .map_err(|_| fail(format!("no connection to {target} within {wait:?}")))?
        .map_err(|e| fail(format!("cannot connect to {target}: {e}")))?;
    let ours = stream.local_addr().map_err(|e| fail(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
        let accepted =
            tokio::time::timeout_at(deadline, futures::future::select_all(accepts)).await;
        match accepted {
            Err(_) => {
                return Err(fail(format!(
                    "{target} accepts connections, but they do not arrive at this control plane"
                )));
            }
            Ok((Ok((_, peer)), _, _)) if peer == ours => return Ok(()),
            Ok(_) => {} // someone else, or a failed accept: dropped
        }
    }
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
async fn report_bring_up(members: Members, supervisor: Supervisor, started: Instant) {
    let mut events = members.subscribe();
    let mut warned = false;
    loop {
        let desired = supervisor.desired() as usize;
        let healthy = members.healthy_count();
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
