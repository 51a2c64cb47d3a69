//! gRPC adapters: thin translations between `farm.v1` messages and the
//! domain. Requests become domain types through `TryFrom` (a malformed one
//! is a [`BadRequest`]), and [`error`] decides every status code the
//! control plane returns, in one place.

mod broadcast;
mod catalog;
pub mod config;
mod control_plane;
mod discovery;
mod error;
mod farm;
mod loadtest;
mod metrics;
mod registry;

use std::{collections::BTreeMap, time::SystemTime};

use farm_api::v1;

pub use catalog::CatalogService;
pub use config::ConfigService;
pub use control_plane::ControlPlaneService;
pub use discovery::DiscoveryService;
pub use error::{
    ApiError, BadRequest, NodeCallError, deadline_exceeded, overloaded, unimplemented,
};
pub use farm::FarmService;
pub use loadtest::LoadTestService;
pub use metrics::{FarmHistory, MetricsService};
pub use registry::RegistryService;

use crate::{
    core::{NodeId, NodeState, NodeView},
    state::Members,
};

/// The node a request names in `field`: by its id (`n7`) or by its name
/// (`node-007`), the way every call that takes a node lets a user write it.
fn resolve_node(members: &Members, field: &'static str, value: &str) -> Result<NodeId, ApiError> {
    if value.is_empty() {
        return Err(BadRequest::missing(field).into());
    }
    Ok(members.resolve(value)?)
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
        host: view.host,
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
