//! `loadgen run --control-plane`: targets discovered from a control plane
//! running in this process, with farm-node agents registered to it.

use std::{process::Command, time::Duration};

use farm_node::NodeConfig;
use farm_testkit::{Farm, NODE, Node, TOKENS, VIEWER, healthy, node::served, process::run_within};
use tokio::net::TcpListener;

/// Starts a farm-node in this process that registers into `group`.
async fn node(cp: &Farm, name: &str, group: &str) -> (String, Node) {
    let mut config = NodeConfig::new(cp.url(), name);
    config.group = group.to_owned();
    config.token = Some(NODE.to_owned());
    let node = Node::start(config).await;
    (node.addr.to_string(), node)
}

/// How long one run of the binary may take before it is killed (each
/// asks for 1 s).
const LIMIT: Duration = Duration::from_secs(30);

/// Runs the loadgen binary with `token` as `FARM_TOKEN`, killed after
/// [`LIMIT`]; exit code, stdout and stderr.
async fn loadgen(args: Vec<String>, token: Option<&str>) -> (Option<i32>, String, String) {
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
        command.args(&args).env_remove("FARM_TOKEN");
        if let Some(token) = token {
            command.env("FARM_TOKEN", token);
        }
        let ran = run_within(&mut command, LIMIT).expect("loadgen runs");
        let status = ran
            .status
            .unwrap_or_else(|| panic!("loadgen {args:?} still running after {LIMIT:?}"));
        (status.code(), ran.stdout, ran.stderr)
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_come_from_the_control_plane_by_group() {
    // The product's timing; no reads shed, as the farm is read to check.
    let cp = Farm::builder()
        .timing(&["--shed-lag", "0s"])
        .flags(TOKENS)
        .start()
        .await;
    let viewer = cp.with_token(Some(VIEWER));
    let (blue_a, _a) = node(&cp, "blue-a", "blue").await;
    let (blue_b, _b) = node(&cp, "blue-b", "blue").await;
    let (green, green_node) = node(&cp, "green-a", "green").await;
    viewer.wait_healthy(3, Duration::from_secs(15)).await;

    let found = loadgen::discover::healthy_nodes(&cp.url(), Some(VIEWER), None)
        .await
        .expect("discovered");
    // In address order: the port as a number (the same IP throughout).
    let mut all = vec![blue_a.clone(), blue_b.clone(), green.clone()];
    all.sort_by_key(|a| a.parse::<std::net::SocketAddr>().expect("an address"));
    assert_eq!(found, all);

    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let url = cp.url();
    let args = [
        "run",
        "--control-plane",
        &url,
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
    let mut blue = [blue_a.clone(), blue_b.clone()];
    blue.sort_by_key(|a| a.parse::<std::net::SocketAddr>().expect("an address"));
    assert_eq!(targets, blue.map(|a| format!("http://{a}")));
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
    drop(green_node);
    viewer
        .wait_nodes("green to leave", Duration::from_secs(15), |nodes| {
            nodes.iter().filter(|n| healthy(n)).count() == 2
        })
        .await;
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
