//! Configuration on the node: pushes from a real control plane applied at
//! once and reported, the cached configuration applied at start with no
//! control plane, corrupt caches ignored, and configured defaults seen
//! through real Workload clients and the HTTP page.
//!
//! The tests of a node alone run on tokio's paused clock: the delays they
//! measure are the node's own tokio timers, so they are exact. With a
//! control plane (health deadlines on the real clock, identities written by
//! a thread of its own) they run in real time.

use std::{path::Path, time::Duration};

use farm_api::v1::{NodeState, PutConfigRequest, WorkRequest};
use farm_node::NodeConfig;
use farm_testkit::{Farm, Node, api::config_data, eventually, http, node::NOWHERE, ready_if};
use serde_json::json;
use tokio::{net::TcpListener, time::Instant};
use tokio_stream::StreamExt;
use tonic::Code;

/// How long a node may take to register or apply a configuration.
const WAIT: Duration = Duration::from_secs(15);

/// A node whose control plane never answers, keeping its cache in `cache`.
async fn cached_node(name: &str, cache: &Path) -> Node {
    let mut config = NodeConfig::new(NOWHERE, name);
    config.cache_dir = Some(cache.to_owned());
    Node::start(config).await
}

/// A node of `cp` in group `blue`, keeping its cache in `cache`.
async fn node_of(cp: &Farm, name: &str, cache: &Path) -> Node {
    let mut config = NodeConfig::new(cp.url(), name);
    config.cache_dir = Some(cache.to_owned());
    config.group = "blue".into();
    Node::start(config).await
}

/// How long a `Work` call that asks for nothing takes, and its result.
async fn timed_work(node: &Node) -> (Duration, Result<usize, tonic::Status>) {
    let started = Instant::now();
    let result = node
        .workload()
        .work(WorkRequest::default())
        .await
        .map(|r| r.into_inner().payload.len());
    (started.elapsed(), result)
}

/// Waits until the cached `config.json` holds `version` (the node reports a
/// version first and caches it right after).
async fn wait_cached(cache: &Path, version: u64) {
    let what = format!("config.json to hold version {version}");
    eventually(what, Duration::from_secs(10), || async {
        let cached = std::fs::read(cache.join("config.json"))
            .ok()
            .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
            .and_then(|json| json["version"].as_u64());
        ready_if(cached == Some(version), cached)
    })
    .await;
}

/// Waits until the node's `/` page shows configuration `version` applied.
async fn wait_applied(node: &Node, version: u64) {
    let want = format!("config:    version {version} ");
    let what = format!("the node's page to show version {version} applied");
    eventually(what, Duration::from_secs(10), || async {
        let index = http::get(node.addr, "/").await.text();
        ready_if(index.contains(&want), index)
    })
    .await;
}

fn write_cache(cache: &Path, json: &str) {
    std::fs::write(cache.join("config.json"), json).expect("write config.json");
}

#[tokio::test(start_paused = true)]
async fn a_node_without_a_control_plane_runs_with_its_cached_configuration() {
    let cache = tempfile::tempdir().expect("tempdir");
    write_cache(
        cache.path(),
        r#"{"version": 42, "data": {"workload": {"delay_ms": 150}, "workload.response_bytes": 2000}}"#,
    );
    let node = cached_node("k1", cache.path()).await;
    let mut client = node.workload();

    let started = Instant::now();
    let response = client
        .work(WorkRequest::default())
        .await
        .expect("Work")
        .into_inner();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.payload.len(), 2000);

    // What the request asks for wins over the configuration.
    let started = Instant::now();
    let response = client
        .work(WorkRequest {
            delay_ms: 1,
            response_bytes: 5,
            ..Default::default()
        })
        .await
        .expect("Work")
        .into_inner();
    assert!(started.elapsed() < Duration::from_millis(150));
    assert_eq!(response.payload.len(), 5);

    let index = http::get(node.addr, "/").await.text();
    assert!(
        index.contains("config:    version 42 (workload.delay_ms=150"),
        "{index}"
    );
    node.stop().await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_or_partly_bad_cache_is_not_fatal() {
    let cache = tempfile::tempdir().expect("tempdir");
    write_cache(cache.path(), r#"{"version": 3, "data": {"workload": {"#);
    let node = cached_node("k2", cache.path()).await;
    let mut client = node.workload();
    let started = Instant::now();
    client.work(WorkRequest::default()).await.expect("Work");
    assert!(started.elapsed() < Duration::from_millis(100));
    let index = http::get(node.addr, "/").await.text();
    assert!(index.contains("config:    none"), "{index}");
    node.stop().await.expect("clean stop");

    // A bad value is ignored; the rest applies.
    write_cache(
        cache.path(),
        r#"{"version": 4, "data": {"workload": {"delay_ms": "slow", "response_bytes": 7}}}"#,
    );
    let node = cached_node("k2", cache.path()).await;
    let mut client = node.workload();
    let started = Instant::now();
    let response = client
        .work(WorkRequest::default())
        .await
        .expect("Work")
        .into_inner();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(response.payload.len(), 7);
    let index = http::get(node.addr, "/").await.text();
    assert!(index.contains("config:    version 4 "), "{index}");
    node.stop().await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn work_stream_applies_the_configuration_concurrently_and_in_band() {
    let cache = tempfile::tempdir().expect("tempdir");
    write_cache(
        cache.path(),
        r#"{"version": 5, "data": {"workload": {"delay_ms": 200, "error_rate": 1.0}}}"#,
    );
    let node = cached_node("k3", cache.path()).await;
    let mut client = node.workload();
    let count = 20u64;
    let requests: Vec<WorkRequest> = (0..count)
        .map(|id| WorkRequest {
            id,
            // The odd ones ask for a failure of their own.
            fail_code: if id % 2 == 1 {
                Code::NotFound as u32
            } else {
                0
            },
            ..Default::default()
        })
        .collect();
    let started = Instant::now();
    let mut responses = client
        .work_stream(tokio_stream::iter(requests))
        .await
        .expect("WorkStream")
        .into_inner();
    let mut answered = 0;
    while let Some(response) = responses.next().await {
        let response = response.expect("failures travel in-band");
        answered += 1;
        if response.id % 2 == 1 {
            assert_eq!(response.code, Code::NotFound as u32);
        } else {
            assert_eq!(response.code, Code::Unavailable as u32);
            assert!(
                response.message.contains("configured error rate"),
                "{}",
                response.message
            );
        }
    }
    assert_eq!(answered, count);
    let elapsed = started.elapsed();
    // 20 requests of 200 ms each, waited side by side rather than in turn.
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    node.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_put_reaches_the_node_at_once() {
    let cache = tempfile::tempdir().expect("tempdir");
    let cp = Farm::start(0, &[]).await;
    let node = node_of(&cp, "p1", cache.path()).await;
    let registered = cp.wait_state("p1", NodeState::Healthy, WAIT).await;
    assert_eq!(registered.config_version, 0, "nothing configured yet");
    let (took, result) = timed_work(&node).await;
    assert!(took < Duration::from_millis(150), "{took:?}");
    assert_eq!(result.expect("Work"), 0);

    let version = cp
        .put_config("global", json!({"workload": {"delay_ms": 150}}))
        .await;
    let started = Instant::now();
    let seen = cp.wait_config("p1", version, WAIT).await;
    assert_eq!(seen.id, registered.id);
    // Reported by a heartbeat sent right after applying, not at the next
    // tick (200 ms here); generous for a loaded test machine.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (took, result) = timed_work(&node).await;
    assert!(took >= Duration::from_millis(150), "{took:?}");
    result.expect("Work");
    wait_cached(cache.path(), version).await;
    let index = http::get(node.addr, "/").await.text();
    assert!(
        index.contains(&format!(
            "config:    version {version} (workload.delay_ms=150"
        )),
        "{index}"
    );

    // A value the node could not apply is refused before it is stored.
    let refused = cp
        .config()
        .put_config(PutConfigRequest {
            scope: "group:blue".into(),
            data: Some(config_data(
                json!({"workload.response_bytes": 64, "workload.error_rate": "often"}),
            )),
            expected_version: 0,
            merge: false,
        })
        .await
        .expect_err("a bad error rate");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("workload.error_rate is \"often\""),
        "{refused:?}"
    );

    // Layers merge: the group's dotted keys add to the global delay.
    let version = cp
        .put_config("group:blue", json!({"workload.response_bytes": 64}))
        .await;
    cp.wait_config("p1", version, WAIT).await;
    let (took, result) = timed_work(&node).await;
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert_eq!(result.expect("Work"), 64);

    // The node's own scope wins; an error rate of 1 fails every request
    // that asks for no failure.
    let version = cp
        .put_config(
            &format!("node:{}", registered.id),
            json!({"workload": {"delay_ms": 0, "error_rate": 1}}),
        )
        .await;
    cp.wait_config("p1", version, WAIT).await;
    let (took, result) = timed_work(&node).await;
    assert!(took < Duration::from_millis(150), "{took:?}");
    let status = result.expect_err("configured to fail");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("configured error rate"),
        "{status:?}"
    );

    node.stop().await.expect("clean stop");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_while_the_control_plane_is_down_runs_from_its_cache() {
    let cache = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cp = Farm::builder().listener(listener).start().await;
    let node = node_of(&cp, "r1", cache.path()).await;
    cp.wait_state("r1", NodeState::Healthy, WAIT).await;
    let version = cp
        .put_config("global", json!({"workload": {"delay_ms": 150}}))
        .await;
    cp.wait_config("r1", version, WAIT).await;
    node.stop().await.expect("clean stop");
    let url = cp.url();
    let data = cp.stop().await;

    // No control plane answers: the cached configuration applies anyway.
    let mut config = NodeConfig::new(url, "r1");
    config.cache_dir = Some(cache.path().to_owned());
    config.group = "blue".into();
    let node = Node::start(config).await;
    let (took, result) = timed_work(&node).await;
    assert!(took >= Duration::from_millis(150), "{took:?}");
    result.expect("Work");
    let index = http::get(node.addr, "/").await.text();
    assert!(index.contains("connected: false"), "{index}");
    assert!(
        index.contains(&format!("config:    version {version} ")),
        "{index}"
    );

    // The control plane comes back: the node re-attaches reporting the
    // cached version, and later changes reach it.
    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let cp = Farm::builder().dir(data).listener(listener).start().await;
    let back = cp.wait_state("r1", NodeState::Healthy, WAIT).await;
    assert_eq!(back.config_version, version);
    let newer = cp
        .put_config("global", json!({"workload.delay_ms": 0}))
        .await;
    cp.wait_config("r1", newer, WAIT).await;
    let (took, result) = timed_work(&node).await;
    assert!(took < Duration::from_millis(150), "{took:?}");
    result.expect("Work");
    wait_cached(cache.path(), newer).await;
    node.stop().await.expect("clean stop");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_is_replaced_by_the_pushed_configuration() {
    let cache = tempfile::tempdir().expect("tempdir");
    let cp = Farm::start(0, &[]).await;
    let version = cp
        .put_config("global", json!({"workload": {"response_bytes": 33}}))
        .await;
    write_cache(cache.path(), "{\"version\": 99, \"data\": ");
    let node = node_of(&cp, "c1", cache.path()).await;
    // Configured before the node came: pushed when its stream opens.
    cp.wait_config("c1", version, WAIT).await;
    let (_, result) = timed_work(&node).await;
    assert_eq!(result.expect("Work"), 33);
    wait_cached(cache.path(), version).await;
    node.stop().await.expect("clean stop");

    // A cache from another farm (a version this one never wrote) gives way
    // to this farm's configuration.
    write_cache(
        cache.path(),
        r#"{"version": 1000, "data": {"workload": {"delay_ms": 500}}}"#,
    );
    let node = node_of(&cp, "c1", cache.path()).await;
    wait_applied(&node, version).await;
    let (took, result) = timed_work(&node).await;
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(result.expect("Work"), 33);
    node.stop().await.expect("clean stop");
    cp.stop().await;
}

/// A node receiving many versions quickly ends with the latest in
/// `config.json`: the cache is written in the background, the versions
/// that arrive during a write coalesced, and the node's stop waits for the
/// latest (the file is read right after it, without waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receiving_many_versions_quickly_caches_the_latest() {
    let cache = tempfile::tempdir().expect("tempdir");
    let cp = Farm::start(0, &[]).await;
    let node = node_of(&cp, "q1", cache.path()).await;
    cp.wait_state("q1", NodeState::Healthy, WAIT).await;
    let writers: Vec<_> = (0..8u32)
        .map(|w| {
            let mut client = cp.config();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..25 {
                    let n = w * 100 + i;
                    let version = client
                        .put_config(PutConfigRequest {
                            scope: "global".into(),
                            data: Some(config_data(json!({"n": n}))),
                            expected_version: 0,
                            merge: false,
                        })
                        .await
                        .expect("PutConfig")
                        .into_inner()
                        .version;
                    written.push((version, n));
                }
                written
            })
        })
        .collect();
    let mut last = (0, 0);
    for writer in writers {
        for written in writer.await.expect("writer") {
            last = last.max(written);
        }
    }
    let (version, n) = last;
    cp.wait_config("q1", version, WAIT).await;
    node.stop().await.expect("clean stop");
    let text = std::fs::read(cache.path().join("config.json")).expect("config.json");
    let cached: serde_json::Value = serde_json::from_slice(&text).expect("JSON");
    assert_eq!(cached["version"].as_u64(), Some(version), "{cached}");
    assert_eq!(cached["data"]["n"].as_f64(), Some(f64::from(n)), "{cached}");
    cp.stop().await;
}
