//! `loadgen run --control-plane`: targets discovered from a control plane
//! running in this process, with farm-node agents registered to it.

mod common;

use std::{process::Command, time::Duration};

use common::ControlPlane;
use farm_api::v1::{
    InfoRequest, ListNodesRequest, NodeState, farm_client::FarmClient,
    workload_client::WorkloadClient,
};
use farm_node::NodeConfig;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Request, metadata::MetadataValue};

const VIEWER: &str = "viewer-secret-token";
const NODE: &str = "node-secret-token";

/// Starts a farm-node in this process that registers into `group`.
async fn node(cp: &ControlPlane, name: &str, group: &str) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut config = NodeConfig::new(cp.url.clone(), name);
    config.group = group.to_owned();
    config.token = Some(NODE.to_owned());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(farm_node::run(config, listener, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn healthy(cp: &ControlPlane) -> usize {
    let mut request = Request::new(ListNodesRequest::default());
    let token: MetadataValue<_> = format!("Bearer {VIEWER}").parse().expect("header");
    request.metadata_mut().insert("authorization", token);
    FarmClient::new(cp.channel())
        .list_nodes(request)
        .await
        .expect("list")
        .into_inner()
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Healthy as i32)
        .count()
}

async fn served(addr: &str) -> u64 {
    WorkloadClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .info(InfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .requests
}

/// Runs the loadgen binary; exit code, stdout and stderr.
async fn loadgen(args: Vec<String>, token: Option<&str>) -> (Option<i32>, String, String) {
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
        command.args(&args).env_remove("FARM_TOKEN");
        if let Some(token) = token {
            command.env("FARM_TOKEN", token);
        }
        let out = command.output().expect("loadgen runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_come_from_the_control_plane_by_group() {
    let cp = ControlPlane::start(&[
        "--viewer-token",
        VIEWER,
        "--node-token",
        NODE,
        "--admin-token",
        "admin-secret-token",
    ])
    .await;
    let (blue_a, _a) = node(&cp, "blue-a", "blue").await;
    let (blue_b, _b) = node(&cp, "blue-b", "blue").await;
    let (green, green_stop) = node(&cp, "green-a", "green").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while healthy(&cp).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let found = loadgen::discover::healthy_nodes(&cp.url, Some(VIEWER), None)
        .await
        .expect("discovered");
    let mut all = vec![blue_a.clone(), blue_b.clone(), green.clone()];
    all.sort();
    assert_eq!(found, all);

    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let args = [
        "run",
        "--control-plane",
        &cp.url,
        "--group",
        "blue",
        "--max",
        "--duration",
        "1s",
        "--json",
        json.to_str().expect("utf-8"),
    ];
    let (code, stdout, stderr) =
        loadgen(args.iter().map(|a| (*a).to_owned()).collect(), Some(VIEWER)).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("2 targets"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parse");
    let targets: Vec<&str> = report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    let mut blue = [format!("http://{blue_a}"), format!("http://{blue_b}")];
    blue.sort();
    assert_eq!(targets, blue);
    assert!(served(&blue_a).await > 0 && served(&blue_b).await > 0);
    assert_eq!(served(&green).await, 0, "green is not in the group asked");

    // Without the token the control plane refuses to list its nodes.
    let (code, _, stderr) = loadgen(args.iter().map(|a| (*a).to_owned()).collect(), None).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("Unauthenticated"),
        "{stderr}"
    );

    // A group that does not exist, and one whose nodes are all gone.
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args[4] = "red".to_owned();
    let (code, _, stderr) = loadgen(args.clone(), Some(VIEWER)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no group \"red\""), "{stderr}");
    drop(green_stop);
    while healthy(&cp).await > 2 {
        assert!(tokio::time::Instant::now() < deadline, "green never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    args[4] = "green".to_owned();
    let (code, _, stderr) = loadgen(args, Some(VIEWER)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no healthy node in group \"green\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_control_plane_is_bad_input() {
    // A port that was just free: nothing answers there.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let args = ["run", "--control-plane", &url, "--max", "--duration", "1s"];
    let (code, _, stderr) = loadgen(args.iter().map(|a| (*a).to_owned()).collect(), None).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot reach the control plane"),
        "{stderr}"
    );
}
