//! `Farm.Broadcast` and `Farm.SimulateLoad`: one command sent to many nodes
//! at once, through each node's own `Workload` service, with every node's
//! result (failures included) in the answer.

use std::time::{Duration, Instant};

use farm_api::{
    node::{DEFAULT_LOAD_DURATION_MS, MAX_LOAD_DURATION_MS, MAX_LOAD_MEMORY_MIB},
    v1::{
        BroadcastResponse, InfoRequest, LoadSpec, NodeResult, NodeSelector, SetLogLevelRequest,
        broadcast_request, workload_client::WorkloadClient,
    },
};
use futures::{StreamExt, stream};
use tonic::{Status, transport::Endpoint};

use super::{ApiError, BadRequest, NodeCallError, resolve_node};
use crate::{core::NodeView, state::Members};

/// Nodes contacted at once.
const PARALLEL: usize = 32;
/// How long a node may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node may take to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What to ask each node.
#[derive(Debug, Clone)]
pub enum Command {
    Info,
    SimulateLoad(Load),
    LogLevel(String),
}

impl TryFrom<Option<broadcast_request::Command>> for Command {
    type Error = BadRequest;

    fn try_from(command: Option<broadcast_request::Command>) -> Result<Self, BadRequest> {
        use broadcast_request::Command as Wire;
        match command {
            Some(Wire::Info(_)) => Ok(Self::Info),
            Some(Wire::SimulateLoad(load)) => Ok(Self::SimulateLoad(load.try_into()?)),
            Some(Wire::LogLevel(level)) if level.filter.trim().is_empty() => {
                Err(BadRequest::missing("log_level.filter"))
            }
            Some(Wire::LogLevel(level)) => Ok(Self::LogLevel(level.filter)),
            None => Err(BadRequest::Missing {
                field: "command",
                hint: ": info, simulate_load or log_level",
            }),
        }
    }
}

/// A load checked before any node is asked, so a bad one fails the call as
/// a whole instead of every node one by one.
#[derive(Debug, Clone)]
pub struct Load(LoadSpec);

impl TryFrom<LoadSpec> for Load {
    type Error = BadRequest;

    fn try_from(spec: LoadSpec) -> Result<Self, BadRequest> {
        if !(0.0..=100.0).contains(&spec.cpu_percent) {
            return Err(BadRequest::out_of_range(
                "cpu_percent",
                spec.cpu_percent,
                "between 0 and 100",
            ));
        }
        if spec.memory_mib > MAX_LOAD_MEMORY_MIB {
            return Err(BadRequest::out_of_range(
                "memory_mib",
                spec.memory_mib,
                format!("at most {MAX_LOAD_MEMORY_MIB}"),
            ));
        }
        if spec.duration_ms > MAX_LOAD_DURATION_MS {
            return Err(BadRequest::out_of_range(
                "duration_ms",
                spec.duration_ms,
                format!("at most {MAX_LOAD_DURATION_MS} (0: {DEFAULT_LOAD_DURATION_MS})"),
            ));
        }
        Ok(Self(spec))
    }
}

impl Load {
    /// The load as asked.
    pub fn spec(&self) -> &LoadSpec {
        &self.0
    }
}

/// The selected nodes: the listed ones, by id or name (each must exist), else the group's
/// members, else every node.
pub fn select(
    members: &Members,
    selector: Option<NodeSelector>,
) -> Result<Vec<NodeView>, ApiError> {
    let selector = selector.unwrap_or_default();
    let nodes = if selector.node_ids.is_empty() {
        members.list_nodes(&selector.group)?
    } else {
        if !selector.group.is_empty() {
            return Err(BadRequest::Rule("give node_ids or group, not both").into());
        }
        let mut nodes = Vec::with_capacity(selector.node_ids.len());
        for id in &selector.node_ids {
            nodes.push(members.node(resolve_node(members, "node_ids", id)?)?);
        }
        nodes.sort_by_key(|n| n.id);
        nodes.dedup_by_key(|n| n.id);
        nodes
    };
    if nodes.is_empty() {
        return Err(ApiError::NoNodeSelected);
    }
    Ok(nodes)
}

/// Sends `command` to every node in parallel (bounded) and collects the
/// results in node order.
pub async fn broadcast(nodes: Vec<NodeView>, command: Command) -> BroadcastResponse {
    let mut results: Vec<NodeResult> = stream::iter(nodes)
        .map(|node| {
            let command = command.clone();
            async move { ask(node, command).await }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    results.sort_by(|a, b| {
        let key = |r: &NodeResult| {
            r.node_id
                .trim_start_matches('n')
                .parse::<u64>()
                .unwrap_or(0)
        };
        key(a).cmp(&key(b))
    });
    let succeeded = results.iter().filter(|r| r.code == 0).count();
    BroadcastResponse {
        failed: u32::try_from(results.len() - succeeded).unwrap_or(u32::MAX),
        succeeded: u32::try_from(succeeded).unwrap_or(u32::MAX),
        results,
    }
}

async fn ask(node: NodeView, command: Command) -> NodeResult {
    let started = Instant::now();
    let outcome = call(&node.address, command).await;
    let (code, message, output) = match outcome {
        Ok(output) => (0, String::new(), output),
        Err(err) => {
            let status = Status::from(err);
            (
                status.code() as u32,
                status.message().to_owned(),
                String::new(),
            )
        }
    };
    NodeResult {
        node_id: node.id.to_string(),
        name: node.name,
        code,
        message,
        output,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// One node's answer as JSON.
async fn call(address: &str, command: Command) -> Result<String, NodeCallError> {
    let unreachable = |e: String| NodeCallError::Unreachable {
        address: address.to_owned(),
        cause: e,
    };
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut client = WorkloadClient::new(channel);
    let output = match command {
        Command::Info => {
            let info = client.info(InfoRequest {}).await?.into_inner();
            serde_json::json!({
                "node_id": info.node_id,
                "name": info.name,
                "group": info.group,
                "address": info.address,
                "pid": info.pid,
                "uptime_s": info.uptime_s,
                "version": info.version,
                "requests": info.requests,
                "connected": info.connected,
            })
        }
        Command::SimulateLoad(load) => {
            let until = client.simulate_load(load.0).await?.into_inner().until;
            serde_json::json!({ "until": until.map(|t| t.to_string()) })
        }
        Command::LogLevel(filter) => {
            let previous = client
                .set_log_level(SetLogLevelRequest { filter })
                .await?
                .into_inner()
                .previous;
            serde_json::json!({ "previous": previous })
        }
    };
    Ok(output.to_string())
}
