//! `farm.v1.Farm`: the nodes the control plane runs.

use farm_api::v1::{
    BroadcastRequest, BroadcastResponse, ListNodesRequest, ListNodesResponse, NodeActionKind,
    NodeActionRequest, NodeActionResponse, ScaleRequest, ScaleResponse, SimulateLoadRequest,
    farm_server::Farm,
};
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::{
    ApiError, BadRequest,
    broadcast::{self, Command, Load},
    node_info, resolve_node,
};
use crate::{
    state::Members,
    supervisor::{FarmError, NodeAction, Supervisor},
};

/// The Farm service.
#[derive(Debug, Clone)]
pub struct FarmService {
    members: Members,
    /// `None` with `--runtime none`: mutations fail with FAILED_PRECONDITION.
    supervisor: Option<Supervisor>,
}

impl FarmService {
    pub fn new(members: Members, supervisor: Option<Supervisor>) -> Self {
        Self {
            members,
            supervisor,
        }
    }

    fn supervisor(&self) -> Result<&Supervisor, FarmError> {
        self.supervisor.as_ref().ok_or(FarmError::NoRuntime)
    }
}

/// One action on one node, as a `NodeAction` request asks; the node as
/// the caller named it (id or name), resolved against the registry.
struct Act {
    node: String,
    action: NodeAction,
}

impl TryFrom<NodeActionRequest> for Act {
    type Error = ApiError;

    fn try_from(request: NodeActionRequest) -> Result<Self, ApiError> {
        let action = match NodeActionKind::try_from(request.action) {
            Ok(NodeActionKind::Start) => NodeAction::Start,
            Ok(NodeActionKind::Stop) => NodeAction::Stop,
            Ok(NodeActionKind::Restart) => NodeAction::Restart,
            Ok(NodeActionKind::Pause) => NodeAction::Pause,
            Ok(NodeActionKind::Unpause) => NodeAction::Unpause,
            Ok(NodeActionKind::Kill) => NodeAction::Kill,
            Ok(NodeActionKind::Remove) => NodeAction::Remove,
            Ok(NodeActionKind::Unspecified) | Err(_) => {
                return Err(BadRequest::out_of_range(
                    "action",
                    request.action,
                    "one of START, STOP, RESTART, PAUSE, UNPAUSE, KILL, REMOVE",
                )
                .into());
            }
        };
        Ok(Self {
            node: request.node_id,
            action,
        })
    }
}

#[tonic::async_trait]
impl Farm for FarmService {
    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self.members.list_nodes(&request.into_inner().group)?;
        Ok(Response::new(ListNodesResponse {
            nodes: nodes.into_iter().map(node_info).collect(),
            desired: self.supervisor.as_ref().map_or(0, Supervisor::desired),
        }))
    }

    #[instrument(skip_all, fields(nodes = request.get_ref().nodes))]
    async fn scale(
        &self,
        request: Request<ScaleRequest>,
    ) -> Result<Response<ScaleResponse>, Status> {
        let nodes = request.into_inner().nodes.ok_or(BadRequest::Missing {
            field: "nodes",
            hint: " (the number of nodes wanted; 0 stops them all)",
        })?;
        let previous = self.supervisor()?.scale(nodes).await?;
        Ok(Response::new(ScaleResponse {
            previous,
            desired: nodes,
        }))
    }

    #[instrument(skip_all, fields(node.id = %request.get_ref().node_id))]
    async fn node_action(
        &self,
        request: Request<NodeActionRequest>,
    ) -> Result<Response<NodeActionResponse>, Status> {
        let Act { node, action } = request.into_inner().try_into()?;
        let id = resolve_node(&self.members, "node_id", &node)?;
        let before = self.members.node(id)?;
        let supervisor = self.supervisor()?;
        supervisor.act(id, action).await?;
        let node = if action == NodeAction::Remove {
            before
        } else {
            self.members.node(id)?
        };
        Ok(Response::new(NodeActionResponse {
            node: Some(node_info(node)),
        }))
    }

    async fn simulate_load(
        &self,
        request: Request<SimulateLoadRequest>,
    ) -> Result<Response<BroadcastResponse>, Status> {
        let request = request.into_inner();
        let load: Load = request
            .load
            .ok_or(BadRequest::missing("load"))?
            .try_into()?;
        let nodes = broadcast::select(&self.members, request.nodes)?;
        let spec = load.spec();
        info!(
            nodes = nodes.len(),
            cpu_percent = spec.cpu_percent,
            memory_mib = spec.memory_mib,
            duration_ms = spec.duration_ms,
            "simulating load"
        );
        Ok(Response::new(
            broadcast::broadcast(nodes, Command::SimulateLoad(load)).await,
        ))
    }

    async fn broadcast(
        &self,
        request: Request<BroadcastRequest>,
    ) -> Result<Response<BroadcastResponse>, Status> {
        let request = request.into_inner();
        let command = Command::try_from(request.command)?;
        let nodes = broadcast::select(&self.members, request.nodes)?;
        let response = broadcast::broadcast(nodes, command).await;
        info!(
            succeeded = response.succeeded,
            failed = response.failed,
            "broadcast"
        );
        Ok(Response::new(response))
    }
}
