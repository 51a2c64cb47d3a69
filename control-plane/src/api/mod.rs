//! gRPC adapters: thin translations between `farm.v1` messages and the
//! domain. Wire types are converted here (bad input becomes
//! `INVALID_ARGUMENT`), and the `From` impls below decide every status code
//! the control plane returns, in one place.

mod broadcast;
pub mod config;
mod discovery;
mod farm;
mod loadtest;
mod metrics;
mod registry;

use std::{collections::BTreeMap, time::SystemTime};

use farm_api::v1;
use tonic::Status;

pub use config::ConfigService;
pub use discovery::DiscoveryService;
pub use farm::FarmService;
pub use loadtest::LoadTestService;
pub use metrics::MetricsService;
pub use registry::RegistryService;

use crate::{
    core::{DomainError, NodeId, NodeState, NodeView},
    state::StateError,
    supervisor::FarmError,
    transport::auth::Refusal,
};

impl From<DomainError> for Status {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::InvalidArgument(m) => Status::invalid_argument(m),
            DomainError::NotFound(m) => Status::not_found(m),
            DomainError::AlreadyExists(m) => Status::already_exists(m),
            DomainError::PermissionDenied(m) => Status::permission_denied(m),
            DomainError::ResourceExhausted(m) => Status::resource_exhausted(m),
            DomainError::FailedPrecondition(m) => Status::failed_precondition(m),
            DomainError::Aborted(m) => Status::aborted(m),
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            Refusal::NotAllowed { .. } => Status::permission_denied(message),
            Refusal::NoToken { .. }
            | Refusal::NotBearer
            | Refusal::EmptyToken
            | Refusal::UnknownToken => Status::unauthenticated(message),
        }
    }
}

/// The answer to a gRPC call of a path no service here serves.
pub fn unimplemented(path: &str) -> Status {
    Status::unimplemented(format!("{path} is not served here"))
}

impl From<StateError> for Status {
    fn from(err: StateError) -> Self {
        match err {
            StateError::Domain(err) => err.into(),
            // The write was not acknowledged; the client may retry.
            StateError::Store(err) => Status::unavailable(err.to_string()),
        }
    }
}

impl From<FarmError> for Status {
    fn from(err: FarmError) -> Self {
        match err {
            FarmError::Domain(err) => err.into(),
            FarmError::State(err) => err.into(),
            FarmError::TooMany { .. } => Status::invalid_argument(err.to_string()),
            FarmError::NoRuntime | FarmError::NotManaged(_) | FarmError::NotRunning { .. } => {
                Status::failed_precondition(err.to_string())
            }
            FarmError::Runtime(_) => Status::internal(err.to_string()),
            FarmError::ShuttingDown => Status::unavailable(err.to_string()),
        }
    }
}

/// Parses a node id field; `field` names it in the error.
fn parse_node_id(field: &str, value: &str) -> Result<NodeId, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(value.parse()?)
}

fn labels(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

fn node_state(state: NodeState) -> v1::NodeState {
    match state {
        NodeState::Starting => v1::NodeState::Starting,
        NodeState::Healthy => v1::NodeState::Healthy,
        NodeState::Unhealthy => v1::NodeState::Unhealthy,
        NodeState::Stopped => v1::NodeState::Stopped,
    }
}

fn node_info(view: NodeView) -> v1::NodeInfo {
    v1::NodeInfo {
        id: view.id.to_string(),
        name: view.name,
        address: view.address,
        group: view.group,
        state: node_state(view.state).into(),
        config_version: view.config_version,
        labels: view.labels.into_iter().collect(),
        state_reason: view.reason,
        registered_at: Some(timestamp(view.registered_at)),
        last_heartbeat: view.last_heartbeat.map(timestamp),
        managed: view.managed,
        runtime_id: view.runtime_id,
        starts: view.starts,
        leader: view.leader,
    }
}

fn peer(view: NodeView) -> v1::Peer {
    v1::Peer {
        id: view.id.to_string(),
        name: view.name,
        address: view.address,
        group: view.group,
        labels: view.labels.into_iter().collect(),
    }
}
