//! The agent against a real control plane: registration, the heartbeat
//! stream, the identity cache, and reconnecting when the control plane
//! comes back.

use std::time::Duration;

use farm_api::v1::{InfoRequest, InfoResponse, NodeState};
use farm_node::NodeConfig;
use farm_testkit::{Farm, Node, eventually, ready_if};
use tokio::net::TcpListener;

/// How long a node may take to register, connect or leave.
const WAIT: Duration = Duration::from_secs(15);

async fn info(node: &Node) -> InfoResponse {
    node.workload()
        .info(InfoRequest {})
        .await
        .expect("Info")
        .into_inner()
}

/// Waits until the node says it is connected (or not).
async fn wait_connected(node: &Node, connected: bool) -> InfoResponse {
    let what = format!("the node to say connected={connected}");
    eventually(what, WAIT, || async {
        let info = info(node).await;
        ready_if(info.connected == connected, info)
    })
    .await
}

fn config(cp: &Farm, name: &str, cache: &tempfile::TempDir) -> NodeConfig {
    let mut config = NodeConfig::new(cp.url(), name);
    config.cache_dir = Some(cache.path().to_owned());
    config.group = "blue".into();
    config.labels.insert("zone".into(), "west".into());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_reattaches_under_its_cached_identity() {
    let cache = tempfile::tempdir().expect("tempdir");
    let cp = Farm::start(0, &[]).await;

    let node = Node::start(config(&cp, "a1", &cache)).await;
    let registered = cp.wait_state("a1", NodeState::Healthy, WAIT).await;
    assert_eq!(registered.address, node.addr.to_string());
    assert_eq!(registered.group, "blue");
    assert_eq!(
        registered.labels.get("zone").map(String::as_str),
        Some("west")
    );
    assert!(!registered.managed);
    let seen = wait_connected(&node, true).await;
    assert_eq!(seen.node_id, registered.id);
    assert!(cache.path().join("identity.json").is_file());

    // A stopped node closes its stream (unhealthy at once) but keeps its
    // identity: it does not deregister.
    node.stop().await.expect("clean stop");
    let stopped = cp.wait_state("a1", NodeState::Unhealthy, WAIT).await;
    assert_eq!(stopped.id, registered.id);

    let again = Node::start(config(&cp, "a1", &cache)).await;
    let back = cp.wait_state("a1", NodeState::Healthy, WAIT).await;
    assert_eq!(back.id, registered.id, "same identity after a restart");
    assert_eq!(back.address, again.addr.to_string(), "new address recorded");
    assert_eq!(cp.nodes().await.len(), 1, "no duplicate");
    again.stop().await.expect("clean stop");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_unknown_identity_is_replaced_not_fatal() {
    let cp = Farm::start(0, &[]).await;

    let corrupt = tempfile::tempdir().expect("tempdir");
    std::fs::write(corrupt.path().join("identity.json"), b"{\"node_id\": tru").expect("write");
    let first = Node::start(config(&cp, "c1", &corrupt)).await;
    let c1 = cp.wait_state("c1", NodeState::Healthy, WAIT).await;
    let cached = std::fs::read_to_string(corrupt.path().join("identity.json")).expect("cache");
    assert!(cached.contains(&c1.id), "the cache was rewritten: {cached}");

    // An identity this control plane never issued (another farm's cache).
    let foreign = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        foreign.path().join("identity.json"),
        br#"{"node_id":"n999","secret":"not-this-farms"}"#,
    )
    .expect("write");
    let second = Node::start(config(&cp, "c2", &foreign)).await;
    let c2 = cp.wait_state("c2", NodeState::Healthy, WAIT).await;
    assert_ne!(c2.id, "n999");

    // Someone else's valid id with a wrong secret is refused, and the node
    // registers under a new identity instead of taking that one over.
    let thief = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        thief.path().join("identity.json"),
        format!(r#"{{"node_id":"{}","secret":"guess"}}"#, c1.id),
    )
    .expect("write");
    let third = Node::start(config(&cp, "c3", &thief)).await;
    let c3 = cp.wait_state("c3", NodeState::Healthy, WAIT).await;
    assert_ne!(c3.id, c1.id);
    assert_eq!(
        cp.wait_state("c1", NodeState::Healthy, WAIT).await.name,
        "c1",
        "c1 untouched"
    );

    for node in [first, second, third] {
        node.stop().await.expect("clean stop");
    }
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_when_the_control_plane_comes_back() {
    let cache = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cp = Farm::builder().listener(listener).start().await;
    let node = Node::start(config(&cp, "r1", &cache)).await;
    let before = cp.wait_state("r1", NodeState::Healthy, WAIT).await;
    wait_connected(&node, true).await;

    let data = cp.stop().await;
    wait_connected(&node, false).await;
    // Down for a while: the node keeps retrying (with backoff) and serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(info(&node).await.name, "r1");

    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let cp = Farm::builder().dir(data).listener(listener).start().await;
    let after = cp.wait_state("r1", NodeState::Healthy, WAIT).await;
    assert_eq!(after.id, before.id, "re-attached under the same id");
    wait_connected(&node, true).await;
    node.stop().await.expect("clean stop");
    cp.stop().await;
}
