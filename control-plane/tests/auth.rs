//! Tokens and roles: every `farm.v1` RPC against every kind of caller, the
//! open services, gRPC-Web, grpcurl and a generated Python client with
//! tokens, the refusal to listen beyond loopback without them, and farms
//! whose nodes register with the node token.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use farm_api::v1::{
    DeregisterRequest, DiffRequest, DiscoverRequest, GetConfigRequest, GetEffectiveConfigRequest,
    GetRequest, HeartbeatRequest, HistoryRequest, IndexRequest, ListGroupsRequest,
    ListNodesRequest, ListRequest, NodeActionKind, NodeActionRequest, PutConfigRequest,
    QueryRequest, RegisterRequest, RemoveRequest, RollbackRequest, ScaleRequest,
    WatchConfigRequest, WatchRequest,
};
use farm_testkit::{
    ADMIN, Api, Farm, NODE, TOKENS, VIEWER, binary,
    docker::{self, DockerCleanup, containers_labelled},
    grpc_web,
    http::{self, Request},
    interop::{python_client, run, stdout},
    pid,
    process::serve_refused,
};
use futures::StreamExt;
use prost::Message;
use tonic::{Code, Status};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// No `authorization` at all.
    Nobody,
    /// A token the control plane does not know.
    Stranger,
    Admin,
    Node,
    Viewer,
}

const CALLERS: [Caller; 5] = [
    Caller::Nobody,
    Caller::Stranger,
    Caller::Admin,
    Caller::Node,
    Caller::Viewer,
];

impl Caller {
    fn token(self) -> Option<&'static str> {
        match self {
            Self::Nobody => None,
            Self::Stranger => Some("stranger-0000000000"),
            Self::Admin => Some(ADMIN),
            Self::Node => Some(NODE),
            Self::Viewer => Some(VIEWER),
        }
    }
}

/// The farm's clients calling as `caller`.
fn as_caller(farm: &Farm, caller: Caller) -> Api {
    farm.with_token(caller.token())
}

/// Who may call what: admin, node, viewer. The policy the control plane
/// promises, written out independently of its own table.
const MATRIX: &[(&str, [bool; 3])] = &[
    ("farm.v1.Registry/Register", [true, true, false]),
    ("farm.v1.Registry/Heartbeat", [true, true, false]),
    ("farm.v1.Registry/Deregister", [true, true, false]),
    ("farm.v1.Discovery/Discover", [true, true, true]),
    ("farm.v1.Discovery/Watch", [true, true, true]),
    ("farm.v1.Discovery/ListGroups", [true, true, true]),
    ("farm.v1.Farm/ListNodes", [true, false, true]),
    ("farm.v1.Farm/Scale", [true, false, false]),
    ("farm.v1.Farm/NodeAction", [true, false, false]),
    ("farm.v1.Farm/SimulateLoad", [true, false, false]),
    ("farm.v1.Farm/Broadcast", [true, false, false]),
    ("farm.v1.LoadTest/Run", [true, false, false]),
    ("farm.v1.Metrics/GetFarmMetrics", [true, true, true]),
    ("farm.v1.Metrics/GetNodeMetrics", [true, true, true]),
    ("farm.v1.Metrics/WatchMetrics", [true, true, true]),
    ("farm.v1.Metrics/GetFarmHistory", [true, true, true]),
    ("farm.v1.Config/GetConfig", [true, true, true]),
    ("farm.v1.Config/History", [true, true, true]),
    ("farm.v1.Config/Diff", [true, true, true]),
    ("farm.v1.Config/GetEffectiveConfig", [true, true, true]),
    ("farm.v1.Config/WatchConfig", [true, true, true]),
    ("farm.v1.Config/PutConfig", [true, false, false]),
    ("farm.v1.Config/Rollback", [true, false, false]),
    ("farm.v1.Catalog/Index", [true, false, false]),
    ("farm.v1.Catalog/Remove", [true, false, false]),
    ("farm.v1.Catalog/Query", [true, true, true]),
    ("farm.v1.Catalog/Get", [true, true, true]),
    ("farm.v1.Catalog/List", [true, true, true]),
    ("farm.v1.ControlPlane/GetStatus", [true, true, true]),
];

fn allowed(method: &str, caller: Caller) -> bool {
    let (_, roles) = MATRIX
        .iter()
        .find(|(m, _)| *m == method)
        .unwrap_or_else(|| panic!("{method} is not in the matrix"));
    match caller {
        Caller::Nobody | Caller::Stranger => false,
        Caller::Admin => roles[0],
        Caller::Node => roles[1],
        Caller::Viewer => roles[2],
    }
}

/// Every method of the `farm.v1` services the control plane serves.
fn api_methods() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(farm_api::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    set.file
        .iter()
        .filter(|f| f.package() == "farm.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() != "Workload")
        .flat_map(|s| {
            s.method
                .iter()
                .map(move |m| format!("farm.v1.{}/{}", s.name(), m.name()))
        })
        .collect()
}

/// A node registered (by an admin) for the calls that need one.
struct Registered {
    id: String,
    secret: String,
}

static NAMES: AtomicU32 = AtomicU32::new(0);

async fn register(farm: &Farm) -> Registered {
    let n = NAMES.fetch_add(1, Ordering::Relaxed);
    let reply = as_caller(farm, Caller::Admin)
        .registry()
        .register(RegisterRequest {
            name: format!("matrix-{n}"),
            address: format!("127.0.0.1:{}", 20_000 + n),
            ..Default::default()
        })
        .await
        .expect("Register as admin")
        .into_inner();
    Registered {
        id: reply.node_id,
        secret: reply.secret,
    }
}

/// Calls `method` as `caller` with a request its handler can serve. A
/// streaming call counts as answered once its response starts (for
/// Heartbeat, once the first acknowledgement arrives).
async fn call(farm: &Farm, method: &str, caller: Caller, node: &Registered) -> Result<(), Status> {
    let client = as_caller(farm, caller);
    let scope = || "global".to_owned();
    match method {
        "farm.v1.Registry/Register" => {
            let n = NAMES.fetch_add(1, Ordering::Relaxed);
            client
                .registry()
                .register(RegisterRequest {
                    name: format!("caller-{n}"),
                    address: format!("127.0.0.1:{}", 30_000 + n),
                    ..Default::default()
                })
                .await
                .map(drop)
        }
        "farm.v1.Registry/Heartbeat" => {
            let first = HeartbeatRequest {
                node_id: node.id.clone(),
                secret: node.secret.clone(),
                seq: 1,
                serving: true,
                ..Default::default()
            };
            // Keep the stream open until the acknowledgement is read.
            let outbound = futures::stream::iter([first]).chain(futures::stream::pending());
            let mut acks = client.registry().heartbeat(outbound).await?.into_inner();
            match acks.message().await? {
                Some(ack) if ack.ack_seq == 1 => Ok(()),
                other => panic!("Heartbeat as {caller:?}: {other:?}"),
            }
        }
        "farm.v1.Registry/Deregister" => {
            // A node of its own, so the shared one stays.
            let own = register(farm).await;
            client
                .registry()
                .deregister(DeregisterRequest {
                    node_id: own.id,
                    secret: own.secret,
                })
                .await
                .map(drop)
        }
        "farm.v1.Discovery/Discover" => client
            .discovery()
            .discover(DiscoverRequest {
                count: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        "farm.v1.Discovery/Watch" => client
            .discovery()
            .watch(WatchRequest::default())
            .await
            .map(drop),
        "farm.v1.Discovery/ListGroups" => client
            .discovery()
            .list_groups(ListGroupsRequest::default())
            .await
            .map(drop),
        "farm.v1.Farm/ListNodes" => client
            .farm()
            .list_nodes(ListNodesRequest::default())
            .await
            .map(drop),
        "farm.v1.Farm/Scale" => client
            .farm()
            .scale(ScaleRequest { nodes: Some(0) })
            .await
            .map(drop),
        "farm.v1.Farm/NodeAction" => client
            .farm()
            .node_action(NodeActionRequest {
                node_id: "n999999".into(),
                action: NodeActionKind::Restart.into(),
            })
            .await
            .map(drop),
        "farm.v1.Farm/SimulateLoad" => client
            .farm()
            .simulate_load(farm_api::v1::SimulateLoadRequest {
                nodes: Some(farm_api::v1::NodeSelector {
                    node_ids: vec!["n999999".into()],
                    group: String::new(),
                }),
                load: Some(farm_api::v1::LoadSpec {
                    cpu_percent: 1.0,
                    memory_mib: 0,
                    duration_ms: 1,
                }),
            })
            .await
            .map(drop),
        "farm.v1.Farm/Broadcast" => client
            .farm()
            .broadcast(farm_api::v1::BroadcastRequest {
                nodes: None,
                command: Some(farm_api::v1::broadcast_request::Command::Info(
                    farm_api::v1::InfoRequest {},
                )),
            })
            .await
            .map(drop),
        // No node in this farm: an admin gets FAILED_PRECONDITION, past
        // the check of roles.
        "farm.v1.LoadTest/Run" => client
            .load_test()
            .run(farm_api::v1::LoadTestRequest {
                concurrency: 1,
                duration_ms: 100,
                ..Default::default()
            })
            .await
            .map(drop),
        "farm.v1.Metrics/GetFarmMetrics" => client
            .metrics()
            .get_farm_metrics(farm_api::v1::GetFarmMetricsRequest::default())
            .await
            .map(drop),
        "farm.v1.Metrics/GetNodeMetrics" => client
            .metrics()
            .get_node_metrics(farm_api::v1::GetNodeMetricsRequest {
                node_id: "n999999".into(),
            })
            .await
            .map(drop),
        "farm.v1.Metrics/WatchMetrics" => client
            .metrics()
            .watch_metrics(farm_api::v1::WatchMetricsRequest::default())
            .await
            .map(drop),
        "farm.v1.Metrics/GetFarmHistory" => client
            .metrics()
            .get_farm_history(farm_api::v1::GetFarmHistoryRequest::default())
            .await
            .map(drop),
        "farm.v1.Config/GetConfig" => client
            .config()
            .get_config(GetConfigRequest { scope: scope() })
            .await
            .map(drop),
        "farm.v1.Config/History" => client
            .config()
            .history(HistoryRequest {
                scope: scope(),
                ..Default::default()
            })
            .await
            .map(drop),
        "farm.v1.Config/Diff" => client
            .config()
            .diff(DiffRequest {
                scope: scope(),
                ..Default::default()
            })
            .await
            .map(drop),
        "farm.v1.Config/GetEffectiveConfig" => client
            .config()
            .get_effective_config(GetEffectiveConfigRequest {
                node_id: node.id.clone(),
            })
            .await
            .map(drop),
        "farm.v1.Config/WatchConfig" => client
            .config()
            .watch_config(WatchConfigRequest {
                scope: scope(),
                ..Default::default()
            })
            .await
            .map(drop),
        "farm.v1.Config/PutConfig" => client
            .config()
            .put_config(PutConfigRequest {
                scope: scope(),
                data: Some(prost_types::Struct::default()),
                expected_version: 0,
                merge: false,
            })
            .await
            .map(drop),
        "farm.v1.Config/Rollback" => client
            .config()
            .rollback(RollbackRequest {
                scope: scope(),
                version: 1,
                expected_version: 0,
            })
            .await
            .map(drop),
        // The name is indexed once an admin's Index went through; Get of a
        // name not indexed answers NOT_FOUND, which is not a refusal.
        "farm.v1.Catalog/Index" => client
            .catalog()
            .index(IndexRequest {
                name: "matrix-zlib".into(),
                dependencies: vec![],
            })
            .await
            .map(drop),
        "farm.v1.Catalog/Remove" => client
            .catalog()
            .remove(RemoveRequest {
                name: "matrix-absent".into(),
            })
            .await
            .map(drop),
        "farm.v1.ControlPlane/GetStatus" => client
            .control_plane()
            .get_status(farm_api::v1::GetStatusRequest::default())
            .await
            .map(drop),
        "farm.v1.Catalog/Query" => client
            .catalog()
            .query(QueryRequest {
                name: "matrix-zlib".into(),
            })
            .await
            .map(drop),
        "farm.v1.Catalog/Get" => match client
            .catalog()
            .get(GetRequest {
                name: "matrix-zlib".into(),
            })
            .await
        {
            Err(status) if status.code() == Code::NotFound => Ok(()),
            other => other.map(drop),
        },
        "farm.v1.Catalog/List" => client
            .catalog()
            .list(ListRequest::default())
            .await
            .map(drop),
        _ => panic!("no call written for {method}"),
    }
}

fn refused(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_role_as_the_table_says() {
    let methods = api_methods();
    let listed: BTreeSet<String> = MATRIX.iter().map(|(m, _)| (*m).to_owned()).collect();
    assert_eq!(methods, listed, "the matrix covers every farm.v1 RPC");

    let farm = Farm::start(0, TOKENS).await;
    let node = register(&farm).await;
    let mut failures = Vec::new();
    for (method, _) in MATRIX {
        for caller in CALLERS {
            let result =
                tokio::time::timeout(Duration::from_secs(10), call(&farm, method, caller, &node))
                    .await
                    .unwrap_or_else(|_| panic!("{method} as {caller:?} timed out"));
            let code = result.as_ref().err().map(Status::code);
            let ok = match caller {
                Caller::Nobody | Caller::Stranger => code == Some(Code::Unauthenticated),
                _ if allowed(method, caller) => !code.is_some_and(refused),
                _ => code == Some(Code::PermissionDenied),
            };
            if !ok {
                failures.push(format!("{method} as {caller:?}: {result:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_writers(&farm, "admin").await;
}

/// Every configuration version is recorded as written by `role`: the role
/// the layer granted reaches the handlers.
async fn assert_writers(farm: &Farm, role: &str) {
    let caller = if role == "open" {
        Caller::Nobody
    } else {
        Caller::Viewer
    };
    let versions = as_caller(farm, caller)
        .config()
        .history(HistoryRequest {
            scope: "global".into(),
            ..Default::default()
        })
        .await
        .expect("History")
        .into_inner()
        .versions;
    assert!(!versions.is_empty(), "PutConfig wrote versions");
    for version in &versions {
        assert_eq!(version.role, role, "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_everything_is_open() {
    let farm = Farm::start(0, &[]).await;
    let node = register(&farm).await;
    for (method, _) in MATRIX {
        // A token sent to a control plane without tokens is ignored.
        for caller in [Caller::Nobody, Caller::Stranger] {
            let result =
                tokio::time::timeout(Duration::from_secs(10), call(&farm, method, caller, &node))
                    .await
                    .unwrap_or_else(|_| panic!("{method} timed out"));
            assert!(
                !result.as_ref().is_err_and(|s| refused(s.code())),
                "{method} as {caller:?} with no tokens configured: {result:?}"
            );
        }
    }
    assert_writers(&farm, "open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_http_stay_open() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let farm = Farm::start(0, TOKENS).await;
    let status = HealthClient::new(farm.channel())
        .check(HealthCheckRequest {
            service: "farm.v1.Farm".into(),
        })
        .await
        .expect("health without a token")
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(farm.channel())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let reply = replies
        .message()
        .await
        .expect("reflection reply")
        .expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"farm.v1.Farm"), "{names:?}");

    for path in ["/", "/healthz", "/readyz"] {
        let response = Request::get(farm.addr, path).host("localhost").send().await;
        assert_eq!(response.status, 200, "{path}: {response}");
    }
}

/// `Discovery/ListGroups` over gRPC-Web with an empty message (a 5-byte
/// frame) from a page of the configured origin, with `authorization` when
/// given.
async fn grpc_web_list_groups(farm: &Farm, authorization: Option<&str>) -> http::Response {
    let mut request = grpc_web::call(farm.addr, "/farm.v1.Discovery/ListGroups", &[])
        .host("localhost")
        .header("origin", "http://localhost:5173");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await
}

#[tokio::test]
async fn grpc_web_calls_need_a_token_too() {
    let flags = [TOKENS, &["--cors-origin", "http://localhost:5173"]].concat();
    let farm = Farm::start(0, &flags).await;

    let shown = grpc_web_list_groups(&farm, None).await;
    assert_eq!(shown.grpc_status(), Some(16), "UNAUTHENTICATED: {shown}");
    assert!(
        !shown.to_string().contains("default"),
        "no data without a token: {shown}"
    );
    assert_eq!(
        shown.header("access-control-allow-origin"),
        Some("http://localhost:5173"),
        "a browser can read the refusal: {shown}"
    );

    let stranger = format!("Bearer {}", Caller::Stranger.token().expect("token"));
    let shown = grpc_web_list_groups(&farm, Some(&stranger)).await;
    assert_eq!(shown.grpc_status(), Some(16), "{shown}");

    let viewer = format!("Bearer {VIEWER}");
    let shown = grpc_web_list_groups(&farm, Some(&viewer)).await;
    assert_eq!(shown.status, 200, "{shown}");
    assert!(
        shown.text().contains("default"),
        "the default group: {shown}"
    );
    assert_eq!(shown.grpc_status(), Some(0), "OK: {shown}");

    // A viewer may not scale the farm from a browser either.
    let shown = grpc_web::call(farm.addr, "/farm.v1.Farm/Scale", &[])
        .host("localhost")
        .header("authorization", &viewer)
        .send()
        .await;
    assert_eq!(shown.grpc_status(), Some(7), "PERMISSION_DENIED: {shown}");

    // Preflights carry no token and still pass.
    let shown = grpc_web::preflight(
        farm.addr,
        "/farm.v1.Farm/ListNodes",
        "http://localhost:5173",
    )
    .host("localhost")
    .send()
    .await;
    assert_eq!(shown.status, 200, "{shown}");
    assert!(
        shown
            .header("access-control-allow-headers")
            .is_some_and(|h| h.to_ascii_lowercase().contains("authorization")),
        "{shown}"
    );
}

/// Waits until exactly `n` nodes exist, all healthy (seen as the viewer).
async fn wait_healthy(farm: &Farm, n: usize, timeout: Duration) -> Vec<farm_api::v1::NodeInfo> {
    as_caller(farm, Caller::Viewer)
        .wait_healthy(n, timeout)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_nodes_register_with_the_node_token() {
    let farm = Farm::start(3, TOKENS).await;
    let nodes = wait_healthy(&farm, 3, Duration::from_secs(20)).await;
    for node in &nodes {
        let pid = pid(node);
        // Given through the environment, never on the command line.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(NODE),
            "the token is not on the command line"
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let environ: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let expected = format!("FARM_NODE_TOKEN={NODE}");
        assert!(
            environ.contains(&expected.as_bytes()),
            "{} got the node token",
            node.name
        );
        assert!(
            !environ
                .iter()
                .any(|e| e.starts_with(b"FARM_ADMIN_TOKEN") || e.starts_with(b"FARM_VIEWER_TOKEN")),
            "{} got no other token",
            node.name
        );
        let log = farm
            .dir
            .path()
            .join("nodes")
            .join(&node.name)
            .join("node.log");
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!log.contains(NODE), "the node never logs its token");
    }
    // Without a token, nobody sees them.
    let status = farm
        .farm()
        .list_nodes(ListNodesRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_nodes_register_with_the_node_token() {
    if !docker::available("docker_nodes_register_with_the_node_token") {
        return;
    }
    let binary = docker::static_node_binary();
    let binary = binary.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let cleanup = DockerCleanup::new(dir.path());
    let mut flags = vec!["--runtime", "docker", "--node-image-binary", binary];
    flags.extend_from_slice(TOKENS);
    let farm = Farm::start_in(dir, 2, &flags).await;
    let nodes = wait_healthy(&farm, 2, Duration::from_secs(120)).await;
    let containers = containers_labelled(&cleanup.label());
    assert_eq!(containers.len(), 2);
    for node in &nodes {
        let env = docker::docker(&[
            "inspect",
            "--format",
            "{{range .Config.Env}}{{println .}}{{end}}",
            &node.runtime_id,
        ]);
        assert!(
            env.lines().any(|l| l == format!("FARM_NODE_TOKEN={NODE}")),
            "{} got the node token",
            node.name
        );
        let cmd = docker::docker(&[
            "inspect",
            "--format",
            "{{json .Config.Cmd}}",
            &node.runtime_id,
        ]);
        assert!(!cmd.contains(NODE), "not on the command line: {cmd}");
    }
}

// Clients nobody here wrote. `scripts/test` installs them and sets
// FARM_REQUIRE_INTEROP=1, which turns a missing tool into a failure.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_calls_with_a_bearer_header() {
    let farm = Farm::start(2, TOKENS).await;
    wait_healthy(&farm, 2, Duration::from_secs(20)).await;
    let addr = farm.addr.to_string();
    let viewer = format!("authorization: Bearer {VIEWER}");

    // Reflection needs no token.
    let Some(output) = run("grpcurl", &["-plaintext", &addr, "list"]).await else {
        return;
    };
    let listed = stdout(&output, "grpcurl list");
    assert!(listed.lines().any(|l| l == "farm.v1.Farm"), "{listed}");

    let output = run(
        "grpcurl",
        &["-plaintext", "-H", &viewer, &addr, "farm.v1.Farm/ListNodes"],
    )
    .await
    .expect("grpcurl");
    let reply: serde_json::Value =
        serde_json::from_str(&stdout(&output, "grpcurl ListNodes as viewer")).expect("JSON");
    let nodes = reply["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{reply}");
    assert!(
        nodes.iter().all(|n| n["state"] == "NODE_STATE_HEALTHY"),
        "{reply}"
    );

    let output = run("grpcurl", &["-plaintext", &addr, "farm.v1.Farm/ListNodes"])
        .await
        .expect("grpcurl");
    assert!(!output.status.success(), "refused without a token");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(
        !stderr.contains(VIEWER) && !stderr.contains(ADMIN),
        "{stderr}"
    );

    let output = run(
        "grpcurl",
        &[
            "-plaintext",
            "-H",
            &viewer,
            "-d",
            r#"{"nodes": 1}"#,
            &addr,
            "farm.v1.Farm/Scale",
        ],
    )
    .await
    .expect("grpcurl");
    assert!(!output.status.success(), "a viewer may not scale");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    assert_eq!(
        nodes_now(&farm).await,
        2,
        "the farm kept its size after the refused Scale"
    );
}

async fn nodes_now(farm: &Farm) -> usize {
    as_caller(farm, Caller::Admin)
        .farm()
        .list_nodes(ListNodesRequest::default())
        .await
        .expect("ListNodes as admin")
        .into_inner()
        .desired as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_sends_tokens_as_metadata() {
    let farm = Farm::start(1, TOKENS).await;
    wait_healthy(&farm, 1, Duration::from_secs(20)).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/auth_client.py");
    let env = [("NODE_TOKEN", NODE), ("VIEWER_TOKEN", VIEWER)];
    let Some(seen) = python_client(&script, &farm.addr.to_string(), &env).await else {
        return;
    };
    assert_eq!(seen["acks"], serde_json::json!([3]), "{seen}");
    assert_eq!(
        seen["peers"],
        serde_json::json!(["node-001", "py-token"]),
        "{seen}"
    );
    assert_eq!(
        seen["listed"],
        serde_json::json!(["node-001", "py-token"]),
        "{seen}"
    );
    assert_eq!(seen["viewer_scale"], "PERMISSION_DENIED", "{seen}");
    assert_eq!(seen["node_list"], "PERMISSION_DENIED", "{seen}");
    assert_eq!(seen["no_token"], "UNAUTHENTICATED", "{seen}");
    assert_eq!(seen["wrong_token"], "UNAUTHENTICATED", "{seen}");
}

// These use 192.0.2.1 (TEST-NET-1, never assigned here): even a control
// plane that wrongly accepted the flags could not listen there.

#[test]
fn listening_beyond_loopback_without_tokens_refuses_to_start() {
    let (code, stderr) = serve_refused(&["--listen", "192.0.2.1:0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("reachable from other machines"), "{stderr}");
    assert!(stderr.contains("--admin-token"), "{stderr}");
    // The same through the environment.
    let (code, stderr) = serve_refused(&[], &[("FARM_LISTEN", "192.0.2.1:0")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("reachable from other machines"), "{stderr}");
}

#[test]
fn bad_tokens_are_refused_without_being_shown() {
    let (code, stderr) = serve_refused(
        &["--listen", "192.0.2.1:0"],
        &[("FARM_ADMIN_TOKEN", "not a token")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--admin-token"), "{stderr}");
    assert!(!stderr.contains("not a token"), "{stderr}");

    let (code, stderr) = serve_refused(
        &["--listen", "192.0.2.1:0", "--node-token", "twice"],
        &[("FARM_VIEWER_TOKEN", "twice")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("same token"), "{stderr}");
    assert!(!stderr.contains("twice"), "{stderr}");

    // --help shows which variables are read, never their values.
    let help = std::process::Command::new(binary("control-plane"))
        .args(["serve", "--help"])
        .env("FARM_ADMIN_TOKEN", "help-must-not-show-this")
        .output()
        .expect("run control-plane");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("FARM_ADMIN_TOKEN"), "{help}");
    assert!(!help.contains("help-must-not-show-this"), "{help}");
}

/// Calls of `farm`'s port from `source`, a loopback address of their own,
/// as the holder of `token`.
fn from_address(farm: &Farm, source: &str, token: &str) -> Api {
    let channel = tonic::transport::Endpoint::from_shared(farm.url())
        .expect("the farm's URL")
        .local_address(Some(source.parse().expect("an address")))
        .connect_lazy();
    Api::new(channel).with_token(Some(token))
}

#[tokio::test]
async fn an_address_that_guesses_tokens_is_refused_for_a_while_and_others_are_not() {
    let flags = [TOKENS, &["--auth-failure-limit", "5"]].concat();
    let farm = Farm::start(0, &flags).await;
    let guesser = from_address(&farm, "127.0.0.1", "guess-00000000000");
    for guess in 1..=5 {
        let refused = guesser.try_nodes().await.expect_err("an unknown token");
        assert_eq!(refused.code(), Code::Unauthenticated, "guess {guess}");
    }
    // Past the limit, the guesser is refused without its token being
    // looked at: the right one fares no better from that address.
    let refused = guesser.try_nodes().await.expect_err("too many guesses");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("127.0.0.1"), "{refused:?}");
    assert!(
        refused.message().contains("--auth-failure-limit"),
        "{refused:?}"
    );
    let same_address = from_address(&farm, "127.0.0.1", VIEWER);
    let refused = same_address.try_nodes().await.expect_err("still refused");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // Another address, with the right token, is served.
    let other = from_address(&farm, "127.0.0.2", VIEWER);
    assert!(other.try_nodes().await.is_ok());
    // A wrong role is not a guess: the viewer calling Scale is refused as
    // not permitted, as often as it likes, and still served after.
    let viewer = from_address(&farm, "127.0.0.3", VIEWER);
    for _ in 0..10 {
        let refused = viewer
            .farm()
            .scale(ScaleRequest { nodes: Some(1) })
            .await
            .expect_err("viewers may not scale");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    assert!(viewer.try_nodes().await.is_ok());
}
