//! Every RPC of the farm's API called with what a careless or hostile
//! client sends: an empty message, fields past their documented limits,
//! numbers out of range, fields of the wrong wire type, a message just over
//! the port's 4 MiB limit, and nesting past the decoder's depth. Each row
//! expects the status `docs/contract.md` and `proto/` document, and after
//! the table the farm holds exactly what it held before: no node, group,
//! configuration version, catalog name or load test came from a refused
//! call, and the control plane still serves.
//!
//! The RPCs come from `farm_api::FILE_DESCRIPTOR_SET`: a method with no
//! entry in the table fails the test, so a new RPC cannot go untested.
//! The rows that need no knowledge of the method (wrong wire types, the
//! size limit, nesting) are made from its request's descriptor.

use std::{collections::BTreeMap, time::Duration};

use farm_api::v1::{
    BroadcastRequest, DeregisterRequest, DiffRequest, DiscoverRequest, GetConfigRequest,
    GetEffectiveConfigRequest, GetFarmMetricsRequest, GetNodeMetricsRequest, GetRequest,
    GetStatusRequest, HeartbeatRequest, HistoryRequest, IndexRequest, ListGroupsRequest,
    ListNodesRequest, ListRequest, LoadSpec, LoadTestRequest, LogLevelCommand, NodeActionRequest,
    NodeSelector, PutConfigRequest, QueryRequest, RegisterRequest, RemoveRequest, RollbackRequest,
    ScaleRequest, SimulateLoadRequest, WatchConfigRequest, WatchMetricsRequest, WatchRequest,
    broadcast_request::Command,
};
use farm_testkit::{Farm, api::config_data, raw::Raw};
use futures::StreamExt;
use prost::Message;
use prost_types::{
    FileDescriptorSet, MethodDescriptorProto,
    field_descriptor_proto::{Label, Type},
};
use serde_json::json;
use tonic::{Code, Request, Status, transport::Channel};

/// The largest request message the port takes (`transport/routes.rs`).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// How deep a configuration document may nest (`core/config.rs`).
const MAX_CONFIG_DEPTH: usize = 32;
/// How deep prost decodes nested messages and groups.
const RECURSION_LIMIT: usize = 100;
/// A field number no request message uses.
const UNKNOWN_FIELD: u32 = 4095;
/// How long one row's call may take before the test gives up on it.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// How long an accepted stream may stay quiet before it counts as
/// answered: refusals come at once.
const QUIET: Duration = Duration::from_secs(1);

/// One call of the table and the status it must get.
struct Row {
    /// `Service/Method`, under `farm.v1`.
    method: String,
    /// What the row sends, in a few words.
    what: String,
    body: Vec<u8>,
    expect: Code,
}

/// The rows of one RPC written by hand: what an empty message gets, and
/// the RPC's own oversized and out-of-range fields.
struct Rpc {
    method: &'static str,
    /// The answer to an empty message (every field at its default).
    empty: Code,
    rows: Vec<(&'static str, Vec<u8>, Code)>,
}

/// What the rows may name: a node registered before the table (no process
/// behind it) and its secret.
struct Fixture {
    id: String,
    secret: String,
}

fn rpc(method: &'static str, empty: Code, rows: Vec<(&'static str, Vec<u8>, Code)>) -> Rpc {
    Rpc {
        method,
        empty,
        rows,
    }
}

/// A row: `what`, `message` encoded, `expect`.
fn row(what: &'static str, message: impl Message, expect: Code) -> (&'static str, Vec<u8>, Code) {
    (what, message.encode_to_vec(), expect)
}

fn long(n: usize) -> String {
    "a".repeat(n)
}

/// `n` labels `k0=v` … .
fn labels(n: usize) -> std::collections::HashMap<String, String> {
    (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect()
}

/// A configuration document `depth` objects deep.
fn nested_config(depth: usize) -> serde_json::Value {
    (1..depth).fold(json!({}), |inner, _| json!({ "a": inner }))
}

/// Every RPC's own rows. Statuses are those `proto/farm/v1/` gives for the
/// method and `docs/contract.md` for the kind of refusal.
#[allow(clippy::too_many_lines)]
fn table(fx: &Fixture) -> Vec<Rpc> {
    use Code::{
        Aborted, FailedPrecondition, InvalidArgument, NotFound, Ok as Answered, PermissionDenied,
    };
    let id = || fx.id.clone();
    let put = |scope: &str, data: serde_json::Value| PutConfigRequest {
        scope: scope.into(),
        data: Some(config_data(data)),
        expected_version: 0,
        merge: false,
    };
    let spec = |cpu_percent: f64, memory_mib: u32, duration_ms: u32| LoadSpec {
        cpu_percent,
        memory_mib,
        duration_ms,
    };
    let simulate = |load: LoadSpec| SimulateLoadRequest {
        nodes: None,
        load: Some(load),
    };
    let run = |f: fn(&mut LoadTestRequest)| {
        let mut request = LoadTestRequest::default();
        f(&mut request);
        request
    };
    vec![
        rpc(
            "Registry/Register",
            InvalidArgument,
            vec![
                row(
                    "name of 64 characters",
                    RegisterRequest {
                        name: long(64),
                        address: "127.0.0.1:9".into(),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "address of 256 characters",
                    RegisterRequest {
                        name: "n-long-address".into(),
                        address: format!("{}:9", long(254)),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "port 0",
                    RegisterRequest {
                        name: "n-port".into(),
                        address: "127.0.0.1:0".into(),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "group of 64 characters",
                    RegisterRequest {
                        name: "n-group".into(),
                        address: "127.0.0.1:9".into(),
                        group: long(64),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "33 labels",
                    RegisterRequest {
                        name: "n-labels".into(),
                        address: "127.0.0.1:9".into(),
                        labels: labels(33),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "label value of 256 characters",
                    RegisterRequest {
                        name: "n-label".into(),
                        address: "127.0.0.1:9".into(),
                        labels: [("k".to_owned(), long(256))].into(),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "secret without node_id",
                    RegisterRequest {
                        name: "n-secret".into(),
                        address: "127.0.0.1:9".into(),
                        secret: "s".into(),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "node_id of 1 MiB",
                    RegisterRequest {
                        name: "n-id".into(),
                        address: "127.0.0.1:9".into(),
                        node_id: long(1 << 20),
                        secret: "s".into(),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "the fixture's id, a wrong secret",
                    RegisterRequest {
                        name: "fixture".into(),
                        address: "127.0.0.1:9".into(),
                        node_id: id(),
                        secret: "wrong".into(),
                        ..Default::default()
                    },
                    PermissionDenied,
                ),
            ],
        ),
        rpc(
            "Registry/Heartbeat",
            InvalidArgument,
            vec![
                row(
                    "node_id of 1 MiB",
                    HeartbeatRequest {
                        node_id: long(1 << 20),
                        secret: "s".into(),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "no secret",
                    HeartbeatRequest {
                        node_id: id(),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "a wrong secret",
                    HeartbeatRequest {
                        node_id: id(),
                        secret: "wrong".into(),
                        seq: u64::MAX,
                        ..Default::default()
                    },
                    PermissionDenied,
                ),
            ],
        ),
        rpc(
            "Registry/Deregister",
            InvalidArgument,
            vec![
                row(
                    "node_id of 1 MiB",
                    DeregisterRequest {
                        node_id: long(1 << 20),
                        secret: "s".into(),
                    },
                    InvalidArgument,
                ),
                row(
                    "a wrong secret",
                    DeregisterRequest {
                        node_id: id(),
                        secret: "wrong".into(),
                    },
                    PermissionDenied,
                ),
            ],
        ),
        rpc(
            "Discovery/Discover",
            Answered,
            vec![
                row(
                    "count 1001",
                    DiscoverRequest {
                        count: 1001,
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "count u32::MAX",
                    DiscoverRequest {
                        count: u32::MAX,
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "a group of 64 characters (none can exist)",
                    DiscoverRequest {
                        group: long(64),
                        ..Default::default()
                    },
                    NotFound,
                ),
                row(
                    "33 labels",
                    DiscoverRequest {
                        labels: labels(33),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "exclude_id of 1 MiB",
                    DiscoverRequest {
                        exclude_id: long(1 << 20),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
            ],
        ),
        rpc(
            "Discovery/Watch",
            Answered,
            vec![
                row(
                    "group of 64 characters",
                    WatchRequest {
                        group: long(64),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "from_revision u64::MAX",
                    WatchRequest {
                        from_revision: u64::MAX,
                        ..Default::default()
                    },
                    Answered,
                ),
            ],
        ),
        rpc("Discovery/ListGroups", Answered, vec![]),
        rpc(
            "Config/GetConfig",
            InvalidArgument,
            vec![
                row(
                    "scope of 1 MiB",
                    GetConfigRequest {
                        scope: format!("group:{}", long(1 << 20)),
                    },
                    InvalidArgument,
                ),
                row(
                    "scope of no kind",
                    GetConfigRequest {
                        scope: "everything".into(),
                    },
                    InvalidArgument,
                ),
            ],
        ),
        rpc(
            "Config/PutConfig",
            InvalidArgument,
            vec![
                row(
                    "no data",
                    PutConfigRequest {
                        scope: "global".into(),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "data just over 64 KiB as JSON",
                    put("global", json!({ "blob": long(64 * 1024) })),
                    InvalidArgument,
                ),
                row(
                    "scope of 1 MiB",
                    put(&format!("group:{}", long(1 << 20)), json!({})),
                    InvalidArgument,
                ),
                row(
                    "workload.delay_ms negative",
                    put("global", json!({ "workload.delay_ms": -1 })),
                    InvalidArgument,
                ),
                row(
                    "workload.delay_ms huge",
                    put("global", json!({ "workload": { "delay_ms": 1e300 } })),
                    InvalidArgument,
                ),
                row(
                    "workload.delay_ms as text",
                    put("global", json!({ "workload.delay_ms": "5" })),
                    InvalidArgument,
                ),
                row(
                    "workload.error_rate 1.5",
                    put("global", json!({ "workload.error_rate": 1.5 })),
                    InvalidArgument,
                ),
                row(
                    "workload.response_bytes past 4000000",
                    put("global", json!({ "workload.response_bytes": 4_000_001 })),
                    InvalidArgument,
                ),
                row(
                    "heartbeat_interval_ms 0",
                    put("global", json!({ "heartbeat_interval_ms": 0 })),
                    InvalidArgument,
                ),
                row(
                    "expected_version u64::MAX",
                    PutConfigRequest {
                        expected_version: u64::MAX,
                        ..put("global", json!({}))
                    },
                    Aborted,
                ),
                row(
                    "a document nested past the decoder's depth",
                    put("global", nested_config(RECURSION_LIMIT)),
                    InvalidArgument,
                ),
                // Decodes here, but would not in `History` or a heartbeat.
                row(
                    "a document just past the depth limit",
                    put("global", nested_config(MAX_CONFIG_DEPTH + 1)),
                    InvalidArgument,
                ),
                row(
                    "an unknown node's scope",
                    put("node:n999999", json!({})),
                    NotFound,
                ),
            ],
        ),
        rpc(
            "Config/History",
            InvalidArgument,
            vec![
                row(
                    "limit 1001",
                    HistoryRequest {
                        scope: "global".into(),
                        limit: 1001,
                        before_version: 0,
                    },
                    InvalidArgument,
                ),
                row(
                    "limit u32::MAX",
                    HistoryRequest {
                        scope: "global".into(),
                        limit: u32::MAX,
                        before_version: 0,
                    },
                    InvalidArgument,
                ),
                row(
                    "before_version u64::MAX",
                    HistoryRequest {
                        scope: "global".into(),
                        limit: 0,
                        before_version: u64::MAX,
                    },
                    Answered,
                ),
            ],
        ),
        rpc(
            "Config/Rollback",
            InvalidArgument,
            vec![
                row(
                    "version u64::MAX",
                    RollbackRequest {
                        scope: "global".into(),
                        version: u64::MAX,
                        expected_version: 0,
                    },
                    NotFound,
                ),
                row(
                    "a scope never written",
                    RollbackRequest {
                        scope: "global".into(),
                        version: 0,
                        expected_version: 0,
                    },
                    FailedPrecondition,
                ),
            ],
        ),
        rpc(
            "Config/Diff",
            InvalidArgument,
            vec![
                row(
                    "from_version u64::MAX",
                    DiffRequest {
                        scope: "global".into(),
                        from_version: u64::MAX,
                        to_version: 0,
                    },
                    NotFound,
                ),
                row(
                    "to_version u64::MAX",
                    DiffRequest {
                        scope: "global".into(),
                        from_version: 0,
                        to_version: u64::MAX,
                    },
                    NotFound,
                ),
            ],
        ),
        rpc(
            "Config/GetEffectiveConfig",
            InvalidArgument,
            vec![
                row(
                    "node_id of 1 MiB",
                    GetEffectiveConfigRequest {
                        node_id: long(1 << 20),
                    },
                    InvalidArgument,
                ),
                row(
                    "an unknown node",
                    GetEffectiveConfigRequest {
                        node_id: "n999999".into(),
                    },
                    NotFound,
                ),
            ],
        ),
        rpc(
            "Config/WatchConfig",
            InvalidArgument,
            vec![
                row(
                    "both scope and node_id",
                    WatchConfigRequest {
                        scope: "global".into(),
                        node_id: id(),
                        from_version: 0,
                    },
                    InvalidArgument,
                ),
                row(
                    "scope of 1 MiB",
                    WatchConfigRequest {
                        scope: format!("group:{}", long(1 << 20)),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "from_version u64::MAX",
                    WatchConfigRequest {
                        scope: "global".into(),
                        node_id: String::new(),
                        from_version: u64::MAX,
                    },
                    Answered,
                ),
            ],
        ),
        rpc(
            "Metrics/GetFarmMetrics",
            Answered,
            vec![
                row(
                    "a group of 64 characters (none can exist)",
                    GetFarmMetricsRequest {
                        group: long(64),
                        ..Default::default()
                    },
                    NotFound,
                ),
                row(
                    "an unknown group",
                    GetFarmMetricsRequest {
                        group: "nowhere".into(),
                        ..Default::default()
                    },
                    NotFound,
                ),
            ],
        ),
        rpc(
            "Metrics/GetNodeMetrics",
            InvalidArgument,
            vec![row(
                "node_id of 1 MiB",
                GetNodeMetricsRequest {
                    node_id: long(1 << 20),
                },
                InvalidArgument,
            )],
        ),
        rpc(
            "Metrics/WatchMetrics",
            Answered,
            vec![
                row(
                    "interval_ms 99",
                    WatchMetricsRequest {
                        interval_ms: 99,
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "interval_ms 60001",
                    WatchMetricsRequest {
                        interval_ms: 60_001,
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "interval_ms u32::MAX",
                    WatchMetricsRequest {
                        interval_ms: u32::MAX,
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "a group of 64 characters (none can exist)",
                    WatchMetricsRequest {
                        group: long(64),
                        ..Default::default()
                    },
                    NotFound,
                ),
            ],
        ),
        rpc("Metrics/GetFarmHistory", Answered, vec![]),
        rpc(
            "Farm/ListNodes",
            Answered,
            vec![row(
                "a group of 64 characters (none can exist)",
                ListNodesRequest { group: long(64) },
                NotFound,
            )],
        ),
        rpc(
            "Farm/Scale",
            InvalidArgument,
            vec![
                row(
                    "nodes 1001",
                    ScaleRequest { nodes: Some(1001) },
                    InvalidArgument,
                ),
                row(
                    "nodes u32::MAX",
                    ScaleRequest {
                        nodes: Some(u32::MAX),
                    },
                    InvalidArgument,
                ),
            ],
        ),
        rpc(
            "Farm/NodeAction",
            InvalidArgument,
            vec![
                row(
                    "an action that does not exist",
                    NodeActionRequest {
                        node_id: id(),
                        action: 99,
                    },
                    InvalidArgument,
                ),
                row(
                    "no action",
                    NodeActionRequest {
                        node_id: id(),
                        action: 0,
                    },
                    InvalidArgument,
                ),
                row(
                    "node_id of 1 MiB",
                    NodeActionRequest {
                        node_id: long(1 << 20),
                        action: 2,
                    },
                    InvalidArgument,
                ),
                row(
                    "a node this control plane does not run",
                    NodeActionRequest {
                        node_id: id(),
                        action: 2,
                    },
                    FailedPrecondition,
                ),
            ],
        ),
        rpc(
            "Farm/SimulateLoad",
            InvalidArgument,
            vec![
                row(
                    "cpu_percent 101",
                    simulate(spec(101.0, 0, 0)),
                    InvalidArgument,
                ),
                row(
                    "cpu_percent -1",
                    simulate(spec(-1.0, 0, 0)),
                    InvalidArgument,
                ),
                row(
                    "cpu_percent NaN",
                    simulate(spec(f64::NAN, 0, 0)),
                    InvalidArgument,
                ),
                row(
                    "cpu_percent infinite",
                    simulate(spec(f64::INFINITY, 0, 0)),
                    InvalidArgument,
                ),
                row(
                    "memory_mib 1025",
                    simulate(spec(0.0, 1025, 0)),
                    InvalidArgument,
                ),
                row(
                    "duration_ms 600001",
                    simulate(spec(0.0, 0, 600_001)),
                    InvalidArgument,
                ),
                row(
                    "an unknown node",
                    SimulateLoadRequest {
                        nodes: Some(NodeSelector {
                            node_ids: vec!["n999999".into()],
                            group: String::new(),
                        }),
                        load: Some(spec(10.0, 0, 0)),
                    },
                    NotFound,
                ),
                row(
                    "a node id of 1 MiB",
                    SimulateLoadRequest {
                        nodes: Some(NodeSelector {
                            node_ids: vec![long(1 << 20)],
                            group: String::new(),
                        }),
                        load: Some(spec(10.0, 0, 0)),
                    },
                    InvalidArgument,
                ),
            ],
        ),
        rpc(
            "Farm/Broadcast",
            InvalidArgument,
            vec![
                row(
                    "simulate_load with cpu_percent 101",
                    BroadcastRequest {
                        nodes: None,
                        command: Some(Command::SimulateLoad(spec(101.0, 0, 0))),
                    },
                    InvalidArgument,
                ),
                row(
                    "a blank log filter",
                    BroadcastRequest {
                        nodes: None,
                        command: Some(Command::LogLevel(LogLevelCommand {
                            filter: " \t".into(),
                        })),
                    },
                    InvalidArgument,
                ),
                row(
                    "a group of 64 characters (none can exist)",
                    BroadcastRequest {
                        nodes: Some(NodeSelector {
                            node_ids: vec![],
                            group: long(64),
                        }),
                        command: Some(Command::Info(Default::default())),
                    },
                    NotFound,
                ),
            ],
        ),
        rpc(
            "LoadTest/Run",
            FailedPrecondition,
            vec![
                row("rate -1", run(|r| r.rate = -1.0), InvalidArgument),
                row("rate NaN", run(|r| r.rate = f64::NAN), InvalidArgument),
                row(
                    "rate infinite",
                    run(|r| r.rate = f64::INFINITY),
                    InvalidArgument,
                ),
                row(
                    "concurrency 10001",
                    run(|r| r.concurrency = 10_001),
                    InvalidArgument,
                ),
                row(
                    "connections 101",
                    run(|r| r.connections = 101),
                    InvalidArgument,
                ),
                row("streams 101", run(|r| r.streams = 101), InvalidArgument),
                row(
                    "duration_ms 600001",
                    run(|r| r.duration_ms = 600_001),
                    InvalidArgument,
                ),
                row(
                    "warmup_ms 600001",
                    run(|r| r.warmup_ms = 600_001),
                    InvalidArgument,
                ),
                row(
                    "payload_bytes 4000001",
                    run(|r| r.payload_bytes = 4_000_001),
                    InvalidArgument,
                ),
                row(
                    "response_bytes 4000001",
                    run(|r| r.response_bytes = 4_000_001),
                    InvalidArgument,
                ),
                row(
                    "delay_ms 60001",
                    run(|r| r.delay_ms = 60_001),
                    InvalidArgument,
                ),
                row(
                    "error_rate 1.5",
                    run(|r| r.error_rate = 1.5),
                    InvalidArgument,
                ),
                row(
                    "error_rate -0.1",
                    run(|r| r.error_rate = -0.1),
                    InvalidArgument,
                ),
                row("fail_code 17", run(|r| r.fail_code = 17), InvalidArgument),
                row(
                    "a mode that does not exist",
                    run(|r| r.mode = 9),
                    InvalidArgument,
                ),
                row(
                    "an unknown group",
                    run(|r| r.group = "nowhere".into()),
                    NotFound,
                ),
                row(
                    "node_ids of 1 MiB",
                    run(|r| r.node_ids = vec![long(1 << 20)]),
                    InvalidArgument,
                ),
            ],
        ),
        rpc(
            "Catalog/Index",
            InvalidArgument,
            vec![
                row(
                    "name of 1025 characters",
                    IndexRequest {
                        name: long(1025),
                        dependencies: vec![],
                    },
                    InvalidArgument,
                ),
                row(
                    "10,001 dependencies",
                    IndexRequest {
                        name: "many".into(),
                        dependencies: (0..10_001).map(|i| format!("d{i}")).collect(),
                    },
                    InvalidArgument,
                ),
                row(
                    "a dependency of 1025 characters",
                    IndexRequest {
                        name: "one".into(),
                        dependencies: vec![long(1025)],
                    },
                    InvalidArgument,
                ),
                row(
                    "a name with a control character",
                    IndexRequest {
                        name: "a\u{7}b".into(),
                        dependencies: vec![],
                    },
                    InvalidArgument,
                ),
                row(
                    "a dependency not indexed",
                    IndexRequest {
                        name: "top".into(),
                        dependencies: vec!["missing".into()],
                    },
                    FailedPrecondition,
                ),
            ],
        ),
        rpc(
            "Catalog/Remove",
            InvalidArgument,
            vec![row(
                "name of 1025 characters",
                RemoveRequest { name: long(1025) },
                InvalidArgument,
            )],
        ),
        rpc(
            "Catalog/Query",
            InvalidArgument,
            vec![row(
                "name of 1025 characters",
                QueryRequest { name: long(1025) },
                InvalidArgument,
            )],
        ),
        rpc(
            "Catalog/Get",
            InvalidArgument,
            vec![
                row(
                    "name of 1025 characters",
                    GetRequest { name: long(1025) },
                    InvalidArgument,
                ),
                row(
                    "a name not indexed",
                    GetRequest {
                        name: "missing".into(),
                    },
                    NotFound,
                ),
            ],
        ),
        rpc(
            "Catalog/List",
            Answered,
            vec![
                row(
                    "page_size 1001",
                    ListRequest {
                        page_size: 1001,
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "page_size u32::MAX",
                    ListRequest {
                        page_size: u32::MAX,
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                row(
                    "a page token of 1 MiB",
                    ListRequest {
                        page_token: long(1 << 20),
                        ..Default::default()
                    },
                    InvalidArgument,
                ),
                // Longer than any name: an empty page.
                row(
                    "a prefix of 1 MiB",
                    ListRequest {
                        prefix: long(1 << 20),
                        ..Default::default()
                    },
                    Answered,
                ),
            ],
        ),
        rpc("ControlPlane/GetStatus", Answered, vec![]),
    ]
}

/// Appends a varint.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a field's key.
fn key(field: u32, wire_type: u8, out: &mut Vec<u8>) {
    varint(u64::from(field) << 3 | u64::from(wire_type), out);
}

/// A message of exactly `size` bytes: one unknown length-delimited field.
fn padded(size: usize) -> Vec<u8> {
    let mut head = Vec::new();
    key(UNKNOWN_FIELD, 2, &mut head);
    // The length's own varint is 3 or 4 bytes at these sizes: find the
    // payload length that makes the whole exactly `size`.
    let mut payload = size - head.len() - 4;
    loop {
        let mut probe = head.clone();
        varint(payload as u64, &mut probe);
        match (probe.len() + payload).cmp(&size) {
            std::cmp::Ordering::Equal => {
                probe.resize(size, 0);
                return probe;
            }
            std::cmp::Ordering::Less => payload += 1,
            std::cmp::Ordering::Greater => payload -= 1,
        }
    }
}

/// An unknown field of groups nested `depth` deep: any message type can be
/// sent it, and the decoder must skip it level by level.
fn groups(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        key(UNKNOWN_FIELD, 3, &mut out);
    }
    for _ in 0..depth {
        key(UNKNOWN_FIELD, 4, &mut out);
    }
    out
}

/// Field `number` of type `kind` holding a value of another wire type.
fn wrong_type(number: u32, kind: Type) -> Vec<u8> {
    let mut out = Vec::new();
    match kind {
        // Length-delimited fields sent a varint.
        Type::String | Type::Bytes | Type::Message | Type::Group => {
            key(number, 0, &mut out);
            varint(1, &mut out);
        }
        // 32-bit fields sent 64 bits.
        Type::Float | Type::Fixed32 | Type::Sfixed32 => {
            key(number, 1, &mut out);
            out.extend([0; 8]);
        }
        // Varints and 64-bit fields sent 32 bits.
        _ => {
            key(number, 5, &mut out);
            out.extend([0; 4]);
        }
    }
    out
}

/// Every `farm.v1` method the control plane serves (all but the nodes'
/// `Workload`), with its request's descriptor.
fn methods() -> Vec<(String, MethodDescriptorProto, prost_types::DescriptorProto)> {
    let set = FileDescriptorSet::decode(farm_api::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let messages: BTreeMap<String, prost_types::DescriptorProto> = set
        .file
        .iter()
        .flat_map(|f| {
            f.message_type
                .iter()
                .map(move |m| (format!(".{}.{}", f.package(), m.name()), m.clone()))
        })
        .collect();
    let mut methods = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "farm.v1") {
        for service in file.service.iter().filter(|s| s.name() != "Workload") {
            for method in &service.method {
                let request = messages[method.input_type()].clone();
                methods.push((
                    format!("{}/{}", service.name(), method.name()),
                    method.clone(),
                    request,
                ));
            }
        }
    }
    methods
}

/// All the rows: each method's own, then those made from its descriptor.
/// Panics naming the methods the table has no entry for.
fn rows(fx: &Fixture) -> Vec<Row> {
    let mut table: BTreeMap<&str, Rpc> = table(fx).into_iter().map(|r| (r.method, r)).collect();
    let methods = methods();
    let missing: Vec<_> = methods
        .iter()
        .filter(|(name, ..)| !table.contains_key(name.as_str()))
        .map(|(name, ..)| name.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "no rows for {missing:?}: add them to malformed.rs's table"
    );
    assert_eq!(
        table.len(),
        methods.len(),
        "the table names a method not served"
    );
    let mut rows = Vec::new();
    for (name, _, request) in &methods {
        let rpc = table.remove(name.as_str()).expect("checked above");
        let mut push = |what: String, body: Vec<u8>, expect: Code| {
            rows.push(Row {
                method: name.clone(),
                what,
                body,
                expect,
            });
        };
        push("an empty message".into(), Vec::new(), rpc.empty);
        for (what, body, expect) in rpc.rows {
            push(what.into(), body, expect);
        }
        for field in &request.field {
            let kind = field.r#type();
            push(
                format!(
                    "field {} ({:?}{}) of the wrong wire type",
                    field.name(),
                    kind,
                    if field.label() == Label::Repeated {
                        ", repeated"
                    } else {
                        ""
                    }
                ),
                wrong_type(field.number().unsigned_abs(), kind),
                Code::InvalidArgument,
            );
        }
        // Unknown fields are skipped: at the limit, the message is the
        // empty one; a byte past it is refused before it is read.
        push("4 MiB exactly".into(), padded(MAX_MESSAGE), rpc.empty);
        push(
            "one byte over 4 MiB".into(),
            padded(MAX_MESSAGE + 1),
            Code::OutOfRange,
        );
        push(
            format!("groups nested {} deep", RECURSION_LIMIT / 2),
            groups(RECURSION_LIMIT / 2),
            rpc.empty,
        );
        push(
            format!("groups nested {} deep", RECURSION_LIMIT + 1),
            groups(RECURSION_LIMIT + 1),
            Code::InvalidArgument,
        );
    }
    rows
}

/// Calls `method` with `body` as its one request message, as the method's
/// kind of call; the status it ends with, or OK once a stream's first
/// message arrives.
async fn call(
    channel: Channel,
    method: &MethodDescriptorProto,
    path: &str,
    body: Vec<u8>,
) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("connected");
    let path: http::uri::PathAndQuery = format!("/farm.v1.{path}").parse().expect("a path");
    let first = if method.client_streaming() {
        // The request stream stays open: only the message can end the call.
        let requests = futures::stream::iter([body]).chain(futures::stream::pending());
        match grpc.streaming(Request::new(requests), path, Raw).await {
            Ok(response) => first_message(response.into_inner()).await,
            Err(status) => Err(status),
        }
    } else if method.server_streaming() {
        match grpc.server_streaming(Request::new(body), path, Raw).await {
            Ok(response) => first_message(response.into_inner()).await,
            Err(status) => Err(status),
        }
    } else {
        grpc.unary(Request::new(body), path, Raw).await.map(drop)
    };
    first.err().unwrap_or_else(|| Status::ok(""))
}

/// A stream's first message, or its end: an error, or fine when a
/// message comes or the stream stays open and quiet (a watch from a
/// version still to come).
async fn first_message(mut stream: tonic::Streaming<Vec<u8>>) -> Result<(), Status> {
    match tokio::time::timeout(QUIET, stream.message()).await {
        Ok(message) => message.map(drop),
        Err(_) => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_malformed_requests_with_its_documented_status_and_stores_nothing() {
    // A runtime with no nodes: `Scale` checks its range, and no node
    // process is started unless a refused call started one.
    let node_binary = farm_testkit::binary("farm-node");
    let node_binary = node_binary.to_str().expect("a UTF-8 path");
    let farm = Farm::start(0, &["--runtime", "process", "--node-binary", node_binary]).await;
    // One node's identity (no process behind it) for rows to name.
    let registered = farm
        .registry()
        .register(RegisterRequest {
            name: "fixture".into(),
            address: "127.0.0.1:9".into(),
            ..Default::default()
        })
        .await
        .expect("Register")
        .into_inner();
    let fx = Fixture {
        id: registered.node_id.clone(),
        secret: registered.secret.clone(),
    };
    let before = farm.nodes().await;

    let methods: BTreeMap<String, MethodDescriptorProto> = methods()
        .into_iter()
        .map(|(name, method, _)| (name, method))
        .collect();
    let rows = rows(&fx);
    let started = std::time::Instant::now();
    let mut wrong = Vec::new();
    for row in &rows {
        let answer = tokio::time::timeout(
            CALL_LIMIT,
            call(
                farm.channel(),
                &methods[&row.method],
                &row.method,
                row.body.clone(),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} with {}: no answer within {CALL_LIMIT:?}",
                row.method, row.what
            )
        });
        if answer.code() != row.expect {
            wrong.push(format!(
                "{} with {}: {:?} expected, got {:?} {:?}",
                row.method,
                row.what,
                row.expect,
                answer.code(),
                answer.message()
            ));
        }
    }
    println!(
        "{} rows over {} RPCs in {:.1?}",
        rows.len(),
        methods.len(),
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} rows:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );

    // Nothing was stored: the one node, its one group, no configuration
    // version in any scope, an empty catalog, no farm size, no load test.
    let after = farm.nodes().await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(
        (
            &after[0].id,
            &after[0].name,
            &after[0].address,
            &after[0].labels
        ),
        (
            &before[0].id,
            &before[0].name,
            &before[0].address,
            &before[0].labels
        )
    );
    let groups = farm
        .discovery()
        .list_groups(ListGroupsRequest {})
        .await
        .expect("ListGroups")
        .into_inner()
        .groups;
    let names: Vec<_> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["default"]);
    for scope in ["global", "group:default", &format!("node:{}", fx.id)] {
        assert!(
            farm.versions(scope).await.is_empty(),
            "{scope} has versions"
        );
    }
    let catalog = farm
        .catalog()
        .list(ListRequest::default())
        .await
        .expect("List")
        .into_inner();
    assert_eq!((catalog.total, catalog.names.len()), (0, 0));
    let status = farm
        .control_plane()
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    assert_eq!(status.desired_nodes, 0);
    assert!(status.ready, "{status:?}");
    assert_eq!(status.catalog_names, 0);

    // And it still serves: the fixture's secret still works, a write takes
    // the first version of all (no refused write used one up), and the
    // load test slot is free (no healthy node: FAILED_PRECONDITION, not
    // RESOURCE_EXHAUSTED).
    farm.registry()
        .register(RegisterRequest {
            name: "fixture".into(),
            address: "127.0.0.1:9".into(),
            node_id: fx.id.clone(),
            secret: fx.secret.clone(),
            ..Default::default()
        })
        .await
        .expect("the fixture re-attaches");
    assert_eq!(
        farm.put_config("global", json!({ "workload.delay_ms": 1 }))
            .await,
        1
    );
    // The deepest document taken is read back by every answer carrying
    // it, the history's included (a level further down).
    let deepest = nested_config(MAX_CONFIG_DEPTH);
    assert_eq!(farm.put_config("group:default", deepest.clone()).await, 2);
    let history = farm
        .config()
        .history(HistoryRequest {
            scope: "group:default".into(),
            ..Default::default()
        })
        .await
        .expect("History decodes")
        .into_inner();
    assert_eq!(history.versions[0].data, Some(config_data(deepest)));
    farm.catalog()
        .index(IndexRequest {
            name: "zlib".into(),
            dependencies: vec![],
        })
        .await
        .expect("Index");
    let refused = farm
        .load_test()
        .run(LoadTestRequest::default())
        .await
        .expect_err("no healthy node");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}
