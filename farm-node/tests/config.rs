//! Configuration on the node: the cached configuration applied at start
//! with no control plane, corrupt caches ignored, and configured defaults
//! seen through real Workload clients and the HTTP page.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{Node, http_get};
use farm_api::v1::{WorkRequest, workload_client::WorkloadClient};
use farm_node::NodeConfig;
use tokio_stream::StreamExt;
use tonic::Code;

/// A node whose control plane never answers, keeping its cache in `cache`.
async fn cached_node(name: &str, cache: &Path) -> Node {
    let mut config = NodeConfig::new("http://127.0.0.1:1", name);
    config.cache_dir = Some(cache.to_owned());
    Node::start(config).await
}

fn write_cache(cache: &Path, json: &str) {
    std::fs::write(cache.join("config.json"), json).expect("write config.json");
}

#[tokio::test]
async fn a_node_without_a_control_plane_runs_with_its_cached_configuration() {
    let cache = tempfile::tempdir().expect("tempdir");
    write_cache(
        cache.path(),
        r#"{"version": 42, "data": {"workload": {"delay_ms": 150}, "workload.response_bytes": 2000}}"#,
    );
    let node = cached_node("k1", cache.path()).await;
    let mut client = WorkloadClient::new(node.channel());

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

    let index = http_get(node.addr, "/").await.text();
    assert!(
        index.contains("config:    version 42 (workload.delay_ms=150"),
        "{index}"
    );
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_corrupt_or_partly_bad_cache_is_not_fatal() {
    let cache = tempfile::tempdir().expect("tempdir");
    write_cache(cache.path(), r#"{"version": 3, "data": {"workload": {"#);
    let node = cached_node("k2", cache.path()).await;
    let mut client = WorkloadClient::new(node.channel());
    let started = Instant::now();
    client.work(WorkRequest::default()).await.expect("Work");
    assert!(started.elapsed() < Duration::from_millis(100));
    let index = http_get(node.addr, "/").await.text();
    assert!(index.contains("config:    none"), "{index}");
    node.stop().await.expect("clean stop");

    // A bad value is ignored; the rest applies.
    write_cache(
        cache.path(),
        r#"{"version": 4, "data": {"workload": {"delay_ms": "slow", "response_bytes": 7}}}"#,
    );
    let node = cached_node("k2", cache.path()).await;
    let mut client = WorkloadClient::new(node.channel());
    let started = Instant::now();
    let response = client
        .work(WorkRequest::default())
        .await
        .expect("Work")
        .into_inner();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(response.payload.len(), 7);
    let index = http_get(node.addr, "/").await.text();
    assert!(index.contains("config:    version 4 "), "{index}");
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn work_stream_applies_the_configuration_concurrently_and_in_band() {
    let cache = tempfile::tempdir().expect("tempdir");
    write_cache(
        cache.path(),
        r#"{"version": 5, "data": {"workload": {"delay_ms": 200, "error_rate": 1.0}}}"#,
    );
    let node = cached_node("k3", cache.path()).await;
    let mut client = WorkloadClient::new(node.channel());
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
