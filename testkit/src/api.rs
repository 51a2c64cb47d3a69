//! The farm's API as one caller sees it: typed clients of every service
//! over one lazily connected channel, each call carrying that caller's
//! bearer token (`farm_api::Bearer`, the interceptor the farm's own
//! clients use) or none; and the questions tests ask of the node list,
//! with the waits on it.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use farm_api::{
    Bearer,
    v1::{
        DiscoverRequest, GetConfigRequest, GetConfigResponse, HistoryRequest, ListNodesRequest,
        NodeActionKind, NodeActionRequest, NodeInfo, NodeState, Peer, PutConfigRequest, WatchEvent,
        WatchRequest, catalog_client::CatalogClient, config_client::ConfigClient,
        control_plane_client::ControlPlaneClient, discovery_client::DiscoveryClient,
        farm_client::FarmClient, load_test_client::LoadTestClient, metrics_client::MetricsClient,
        registry_client::RegistryClient,
    },
};
use tonic::{
    Status, Streaming,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::wait::{eventually, eventually_every};

/// The channel every client of an [`Api`] calls through.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Clients of one control plane, calling as the holder of one token (or
/// of none).
#[derive(Debug, Clone)]
pub struct Api {
    channel: Channel,
    bearer: Bearer,
}

impl Api {
    /// Calls over `channel`, without a token.
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            bearer: Bearer::default(),
        }
    }

    /// Calls the control plane at `addr` (connecting at the first call),
    /// without a token.
    pub fn at(addr: SocketAddr) -> Self {
        Self::new(lazy_channel(&format!("http://{addr}")))
    }

    /// The same control plane, called with `token` (none: without one).
    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self {
            channel: self.channel.clone(),
            bearer: Bearer::new(token).expect("a token that fits in a header"),
        }
    }

    /// The channel itself, for clients of other services (health,
    /// reflection) or calls of raw bytes.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn registry(&self) -> RegistryClient<Authed> {
        RegistryClient::with_interceptor(self.channel(), self.bearer.clone())
    }

    pub fn discovery(&self) -> DiscoveryClient<Authed> {
        DiscoveryClient::with_interceptor(self.channel(), self.bearer.clone())
    }

    pub fn farm(&self) -> FarmClient<Authed> {
        FarmClient::with_interceptor(self.channel(), self.bearer.clone())
    }

    pub fn config(&self) -> ConfigClient<Authed> {
        ConfigClient::with_interceptor(self.channel(), self.bearer.clone())
    }

    pub fn metrics(&self) -> MetricsClient<Authed> {
        MetricsClient::with_interceptor(self.channel(), self.bearer.clone())
    }

    pub fn load_test(&self) -> LoadTestClient<Authed> {
        LoadTestClient::with_interceptor(self.channel(), self.bearer.clone())
    }

    pub fn catalog(&self) -> CatalogClient<Authed> {
        CatalogClient::with_interceptor(self.channel(), self.bearer.clone())
    }

    pub fn control_plane(&self) -> ControlPlaneClient<Authed> {
        ControlPlaneClient::with_interceptor(self.channel(), self.bearer.clone())
    }

    /// Every node `ListNodes` shows this caller.
    pub async fn try_nodes(&self) -> Result<Vec<NodeInfo>, Status> {
        self.farm()
            .list_nodes(ListNodesRequest::default())
            .await
            .map(|r| r.into_inner().nodes)
    }

    /// Every node; panics when `ListNodes` fails.
    pub async fn nodes(&self) -> Vec<NodeInfo> {
        self.try_nodes().await.expect("ListNodes")
    }

    /// Waits until `holds` is true of the node list; returns that list.
    /// A failing `ListNodes` (a control plane still starting) counts as not
    /// yet. Panics after `timeout`, showing the last list or error.
    pub async fn wait_nodes(
        &self,
        what: &str,
        timeout: Duration,
        holds: impl Fn(&[NodeInfo]) -> bool,
    ) -> Vec<NodeInfo> {
        eventually(what, timeout, || self.look_at_nodes(&holds)).await
    }

    /// Waits until exactly `n` nodes exist and all are healthy.
    pub async fn wait_healthy(&self, n: usize, timeout: Duration) -> Vec<NodeInfo> {
        let what = format!("{n} healthy nodes");
        self.wait_nodes(&what, timeout, |nodes| all_healthy(nodes, n))
            .await
    }

    /// [`Api::wait_healthy`], looking every `every`: for measurements,
    /// where the pause bounds how late it is seen.
    pub async fn wait_healthy_every(
        &self,
        n: usize,
        timeout: Duration,
        every: Duration,
    ) -> Vec<NodeInfo> {
        let what = format!("{n} healthy nodes");
        let holds = |nodes: &[NodeInfo]| all_healthy(nodes, n);
        eventually_every(what, timeout, every, || self.look_at_nodes(&holds)).await
    }

    /// The node list if `holds` of it, else what was seen instead.
    async fn look_at_nodes(
        &self,
        holds: &impl Fn(&[NodeInfo]) -> bool,
    ) -> Result<Vec<NodeInfo>, Seen> {
        match self.try_nodes().await {
            Ok(nodes) if holds(&nodes) => Ok(nodes),
            Ok(nodes) => Err(Seen::Nodes(nodes)),
            Err(status) => Err(Seen::Failed(status)),
        }
    }

    /// Waits until the node named `name` exists and `holds` of it; returns
    /// it.
    pub(crate) async fn wait_node(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        holds: impl Fn(&NodeInfo) -> bool,
    ) -> NodeInfo {
        let nodes = self
            .wait_nodes(&format!("{name} {what}"), timeout, |nodes| {
                nodes.iter().any(|n| n.name == name && holds(n))
            })
            .await;
        by_name(&nodes, name).clone()
    }

    /// Waits until the node named `name` is in `state`; returns it.
    pub async fn wait_state(&self, name: &str, state: NodeState, timeout: Duration) -> NodeInfo {
        self.wait_node(name, &format!("{state:?}"), timeout, |n| {
            n.state == state as i32
        })
        .await
    }

    /// Waits until the node named `name` reports applying configuration
    /// `version`; returns it.
    pub async fn wait_config(&self, name: &str, version: u64, timeout: Duration) -> NodeInfo {
        let what = format!("applying configuration {version}");
        self.wait_node(name, &what, timeout, |n| n.config_version == version)
            .await
    }

    /// Ids of up to `count` healthy peers of `group` (empty: any).
    pub async fn discover(&self, group: &str, count: u32) -> Vec<String> {
        self.discover_peers(group, count)
            .await
            .into_iter()
            .map(|p| p.id)
            .collect()
    }

    /// Up to `count` healthy peers of `group` (empty: any).
    pub async fn discover_peers(&self, group: &str, count: u32) -> Vec<Peer> {
        self.discovery()
            .discover(DiscoverRequest {
                group: group.into(),
                count,
                ..Default::default()
            })
            .await
            .expect("Discover")
            .into_inner()
            .peers
    }

    /// `Discovery.Watch` from the start: the snapshot, then every change.
    pub async fn watch(&self) -> Streaming<WatchEvent> {
        self.discovery()
            .watch(WatchRequest::default())
            .await
            .expect("Watch")
            .into_inner()
    }

    /// `Farm.NodeAction` on the node `id`; the node as it is after.
    pub async fn act(&self, id: &str, action: NodeActionKind) -> Result<NodeInfo, Status> {
        self.farm()
            .node_action(NodeActionRequest {
                node_id: id.into(),
                action: action.into(),
            })
            .await
            .map(|r| r.into_inner().node.expect("the node acted on"))
    }

    /// Writes `data` (a JSON object) as the configuration of `scope`
    /// whatever version is there; returns the new version.
    pub async fn put_config(&self, scope: &str, data: serde_json::Value) -> u64 {
        self.config()
            .put_config(PutConfigRequest {
                scope: scope.into(),
                data: Some(config_data(data)),
                expected_version: 0,
                merge: false,
            })
            .await
            .expect("PutConfig")
            .into_inner()
            .version
    }

    /// The versions `scope`'s history keeps, newest first.
    pub async fn versions(&self, scope: &str) -> Vec<u64> {
        self.config()
            .history(HistoryRequest {
                scope: scope.into(),
                ..Default::default()
            })
            .await
            .expect("History")
            .into_inner()
            .versions
            .iter()
            .map(|v| v.version)
            .collect()
    }

    /// `scope`'s current configuration.
    pub async fn current_config(&self, scope: &str) -> GetConfigResponse {
        self.config()
            .get_config(GetConfigRequest {
                scope: scope.into(),
            })
            .await
            .expect("GetConfig")
            .into_inner()
    }
}

/// `Deref` to the [`Api`] held in a field `api`: a control plane, in this
/// process or not, is used through its clients.
macro_rules! deref_to_api {
    ($type:ty) => {
        impl std::ops::Deref for $type {
            type Target = $crate::api::Api;

            fn deref(&self) -> &$crate::api::Api {
                &self.api
            }
        }
    };
}
pub(crate) use deref_to_api;

/// A channel to `url` that connects at its first call.
pub fn lazy_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("a URL")
        .connect_lazy()
}

/// A JSON object as configuration data (`google.protobuf.Struct`).
pub fn config_data(data: serde_json::Value) -> prost_types::Struct {
    let serde_json::Value::Object(fields) = data else {
        panic!("configuration data must be a JSON object, got {data}")
    };
    farm_api::json::json_to_struct(&fields)
}

/// Whether there are exactly `n` nodes, all healthy.
/// What a look at the nodes saw instead of what was waited for. Formatted
/// only when the wait fails: pretty-printing 500 nodes takes about 2 ms of
/// CPU, at every look of a bench waiting for a large farm.
enum Seen {
    Nodes(Vec<NodeInfo>),
    Failed(Status),
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Nodes(nodes) => nodes.fmt(f),
            Seen::Failed(status) => write!(f, "ListNodes failed: {status:?}"),
        }
    }
}

fn all_healthy(nodes: &[NodeInfo], n: usize) -> bool {
    nodes.len() == n && nodes.iter().all(healthy)
}

/// Whether the node is healthy.
pub fn healthy(node: &NodeInfo) -> bool {
    node.state == NodeState::Healthy as i32
}

/// The pid of a process node (its runtime id is `pid:<pid>`).
pub fn pid(node: &NodeInfo) -> i32 {
    node.runtime_id
        .strip_prefix("pid:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("node {} has no pid: {:?}", node.name, node.runtime_id))
}

/// Each node's id by its name: what must survive a restart.
pub fn ids_by_name(nodes: &[NodeInfo]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .map(|n| (n.name.clone(), n.id.clone()))
        .collect()
}

/// The node named `name`.
pub fn by_name<'a>(nodes: &'a [NodeInfo], name: &str) -> &'a NodeInfo {
    nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node named {name}"))
}
