//! The farm's node agent. One port serves `farm.v1.Workload`,
//! `grpc.health.v1.Health` and plain HTTP; beside it the agent registers with
//! the control plane and keeps a heartbeat stream open, reconnecting with
//! backoff when the control plane goes away, and applies the configuration
//! the control plane pushes (or, until it answers, the cached one).
//!
//! [`run`] receives a bound listener and a shutdown future, so tests and
//! embedders start nodes on `127.0.0.1:0` in-process; `main.rs` only parses
//! flags, binds and waits for a signal.

pub mod agent;
pub mod cache;
pub mod config;
pub mod http;
pub mod identity;
pub mod latency;
pub mod load;
pub mod sampler;
pub mod settings;
pub mod workload;

use std::{future::Future, sync::Arc, time::Duration};

use farm_api::{node::MAX_RESPONSE_BYTES, v1::workload_server::WorkloadServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::TcpIncoming};
use tracing::{info, warn};

pub use crate::config::{NodeArgs, NodeConfig};
use crate::{
    agent::{Agent, AgentError, Backoff},
    sampler::{CGROUP_ROOT, SAMPLE_INTERVAL, Sampler},
    workload::{NodeStatus, WorkloadService},
};

/// Largest Workload message in either direction: the biggest allowed
/// response plus room for the other fields.
const MAX_MESSAGE: usize = MAX_RESPONSE_BYTES as usize + 64 * 1024;
/// How long open connections may take to finish once shutdown starts.
const DRAIN: Duration = Duration::from_secs(5);

/// How a node's run ended, other than with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The shutdown future resolved (a signal).
    Shutdown,
    /// The control plane asked the node to end its process (a node action
    /// on a host the control plane cannot act on itself).
    Asked {
        /// End as if killed, without draining connections.
        immediate: bool,
    },
}

impl Ended {
    /// The process's exit status: 137 (as after SIGKILL) for an immediate
    /// end, 0 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            Ended::Asked { immediate: true } => 137,
            _ => 0,
        }
    }
}

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The listener's address could not be read.
    #[error("cannot read the listening address: {0}")]
    Listener(#[source] std::io::Error),
    /// The control plane connection could not be set up.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The server failed.
    #[error("serving failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// How long a node waits for the control plane's name to resolve before it
/// registers loopback. In a stack (or any farm whose parts start together)
/// a node may start before the control plane's task has a name; a node
/// that registered loopback then would be listed at an address nobody can
/// reach.
const RESOLVE_WAIT: Duration = Duration::from_secs(60);

/// The local address of the route to `authority` (`host:port`): where the
/// control plane sees this node come from. A UDP `connect` sends nothing;
/// it only makes the kernel pick the route. A name that does not resolve
/// is looked up again with backoff, for [`RESOLVE_WAIT`] at most.
async fn route_to(authority: &str) -> Option<std::net::IpAddr> {
    let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
    let mut backoff = Backoff::new();
    let mut waiting = false;
    let target = loop {
        match tokio::net::lookup_host(authority).await {
            Ok(mut addrs) => break addrs.next()?,
            Err(err) if tokio::time::Instant::now() < deadline => {
                if !std::mem::replace(&mut waiting, true) {
                    info!(control_plane = authority, cause = %err, wait = ?RESOLVE_WAIT, "the control plane's name does not resolve yet; waiting for it to find this node's address");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(err) => {
                warn!(control_plane = authority, cause = %err, "cannot resolve the control plane to find this node's address; registering loopback (use --advertise)");
                return None;
            }
        }
    };
    let any: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(any).await.ok()?;
    socket.connect(target).await.ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Serves the node on `listener` and runs its agent until `shutdown`
/// resolves or the control plane asks the node to end; then stops
/// heartbeating (without deregistering: the identity is kept for the next
/// start), ends open streams and drains connections (not when asked to end
/// at once).
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<Ended, NodeError> {
    let bound = listener.local_addr().map_err(NodeError::Listener)?;
    let mut shutdown = std::pin::pin!(shutdown);
    let route = if bound.ip().is_unspecified() && config.advertise.is_none() {
        tokio::select! {
            route = route_to(config.control_plane_authority()) => route,
            () = &mut shutdown => return Ok(Ended::Shutdown),
        }
    } else {
        None
    };
    let address = config.registered_address(bound, route);
    let status = Arc::new(NodeStatus::new(
        config.name.clone(),
        config.group.clone(),
        address.clone(),
    ));
    let cancel = CancellationToken::new();
    // Samples at once, then every second, for the heartbeats to carry.
    match Sampler::new(
        status.metrics.clone(),
        config.cache_dir.as_deref(),
        std::path::Path::new(CGROUP_ROOT),
    ) {
        Ok(sampler) => drop(tokio::spawn(sampler.run(SAMPLE_INTERVAL, cancel.clone()))),
        Err(err) => {
            warn!(cause = %err, "cannot read this system's figures; heartbeats carry no metrics")
        }
    }
    let log_filter = config.log_filter.clone();
    let (asked_tx, mut asked) = tokio::sync::watch::channel(None);
    let mut agent = Agent::new(config, status.clone(), cancel.clone(), asked_tx)?;
    // Before the port opens: the first request already gets the settings.
    agent.apply_cached_config();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<WorkloadServer<WorkloadService>>()
        .await;
    let workload = WorkloadServer::new(
        WorkloadService::new(status.clone(), cancel.clone()).with_log_filter(log_filter),
    )
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(workload).add_service(health_service);
    let mut routes = routes.routes();
    let grpc = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = grpc
        .merge(http::router(status.clone(), cancel.clone()))
        .fallback(http::not_found);

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server_stop = CancellationToken::new();
    let mut server = tokio::spawn(
        Server::builder()
            // Plain HTTP/1.1 for the HTTP endpoints.
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, server_stop.clone().cancelled_owned()),
    );
    info!(listen = %bound, address = %address, "serving Workload, health and HTTP");
    let agent = tokio::spawn(agent.run());

    let (ended, failed) = tokio::select! {
        () = &mut shutdown => (Ended::Shutdown, None),
        result = &mut server => (Ended::Shutdown, Some(result)),
        Ok(exit) = asked.wait_for(Option::is_some) => {
            let immediate = exit.as_ref().is_some_and(|e| e.immediate);
            (Ended::Asked { immediate }, None)
        }
    };
    if ended == (Ended::Asked { immediate: true }) {
        info!("ending at once, as the control plane asked");
        cancel.cancel();
        server.abort();
        return Ok(ended);
    }
    info!("shutting down");
    cancel.cancel();
    health
        .set_not_serving::<WorkloadServer<WorkloadService>>()
        .await;
    if let Err(err) = agent.await {
        warn!(cause = %err, "the agent task failed");
    }
    let result = match failed {
        Some(result) => result,
        None => {
            server_stop.cancel();
            match tokio::time::timeout(DRAIN, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    warn!(after = ?DRAIN, "connections still open; closing them");
                    server.abort();
                    return Ok(ended);
                }
            }
        }
    };
    match result {
        Ok(served) => served.map(|()| ended).map_err(NodeError::from),
        Err(err) => {
            warn!(cause = %err, "the server task failed");
            Ok(ended)
        }
    }
}
