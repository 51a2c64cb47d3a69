//! `farm.v1.Farm`: the nodes the control plane runs.

use farm_api::v1::{
    BroadcastRequest, BroadcastResponse, ListNodesRequest, ListNodesResponse, NodeActionKind,
    NodeActionRequest, NodeActionResponse, ScaleRequest, ScaleResponse, SimulateLoadRequest,
    broadcast_request, farm_server::Farm,
};
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::{
    broadcast::{self, Command},
    node_info, parse_node_id,
};
use crate::{
    state::FarmState,
    supervisor::{FarmError, NodeAction, Supervisor},
};

/// The Farm service.
#[derive(Debug, Clone)]
pub struct FarmService {
    state: FarmState,
    /// `None` with `--runtime none`: mutations fail with FAILED_PRECONDITION.
    supervisor: Option<Supervisor>,
}

impl FarmService {
    pub fn new(state: FarmState, supervisor: Option<Supervisor>) -> Self {
        Self { state, supervisor }
    }

    fn supervisor(&self) -> Result<&Supervisor, Status> {
        self.supervisor
            .as_ref()
            .ok_or_else(|| FarmError::NoRuntime.into())
    }
}

fn action(kind: i32) -> Result<NodeAction, Status> {
    match NodeActionKind::try_from(kind) {
        Ok(NodeActionKind::Start) => Ok(NodeAction::Start),
        Ok(NodeActionKind::Stop) => Ok(NodeAction::Stop),
        Ok(NodeActionKind::Restart) => Ok(NodeAction::Restart),
        Ok(NodeActionKind::Pause) => Ok(NodeAction::Pause),
        Ok(NodeActionKind::Unpause) => Ok(NodeAction::Unpause),
        Ok(NodeActionKind::Kill) => Ok(NodeAction::Kill),
        Ok(NodeActionKind::Remove) => Ok(NodeAction::Remove),
        Ok(NodeActionKind::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "action {kind} is not one of START, STOP, RESTART, PAUSE, UNPAUSE, KILL, REMOVE"
        ))),
    }
}

#[tonic::async_trait]
impl Farm for FarmService {
    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self.state.list_nodes(&request.into_inner().group)?;
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
        let nodes = request.into_inner().nodes;
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
        let request = request.into_inner();
        let id = parse_node_id("node_id", &request.node_id)?;
        let action = action(request.action)?;
        let before = self.state.node(id)?;
        let supervisor = self.supervisor()?;
        supervisor.act(id, action).await?;
        let node = if action == NodeAction::Remove {
            before
        } else {
            self.state.node(id)?
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
        let load = request
            .load
            .ok_or_else(|| Status::invalid_argument("load is required"))?;
        broadcast::validate_load(&load)?;
        let nodes = broadcast::select(&self.state, request.nodes)?;
        info!(
            nodes = nodes.len(),
            cpu_percent = load.cpu_percent,
            memory_mib = load.memory_mib,
            duration_ms = load.duration_ms,
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
        let command = match request.command {
            Some(broadcast_request::Command::Info(_)) => Command::Info,
            Some(broadcast_request::Command::SimulateLoad(load)) => {
                broadcast::validate_load(&load)?;
                Command::SimulateLoad(load)
            }
            Some(broadcast_request::Command::LogLevel(level)) => {
                if level.filter.trim().is_empty() {
                    return Err(Status::invalid_argument("log_level.filter is required"));
                }
                Command::LogLevel(level.filter)
            }
            None => {
                return Err(Status::invalid_argument(
                    "command is required: info, simulate_load or log_level",
                ));
            }
        };
        let nodes = broadcast::select(&self.state, request.nodes)?;
        let response = broadcast::broadcast(nodes, command).await;
        info!(
            succeeded = response.succeeded,
            failed = response.failed,
            "broadcast"
        );
        Ok(Response::new(response))
    }
}
