//! The node's port: `farm.v1.Workload`, `grpc.health.v1.Health` and the HTTP
//! endpoints, through real clients over real sockets, on nodes with no
//! control plane to talk to (their agents keep retrying a closed loopback
//! port): the workload side serves regardless.
//!
//! The delays asked for are the node's own tokio timers: the tests that
//! measure them run on tokio's paused clock, where they are exact. CPU
//! work is measured on the real clock.

use std::time::Duration;

use farm_api::v1::{InfoRequest, WorkRequest};
use farm_testkit::{Node, http};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test(start_paused = true)]
async fn work_does_what_it_is_asked() {
    let node = Node::lone("w1").await;
    let mut client = node.workload();

    let response = client
        .work(WorkRequest {
            id: 42,
            payload: vec![1; 100],
            response_bytes: 1000,
            ..Default::default()
        })
        .await
        .expect("Work")
        .into_inner();
    assert_eq!(response.id, 42);
    assert_eq!(response.payload.len(), 1000);
    assert_eq!(response.code, 0);

    let started = Instant::now();
    client
        .work(WorkRequest {
            delay_ms: 150,
            ..Default::default()
        })
        .await
        .expect("Work with delay");
    assert!(started.elapsed() >= Duration::from_millis(150));

    // Spun on a blocking thread, which holds the paused clock still.
    let started = std::time::Instant::now();
    client
        .work(WorkRequest {
            cpu_us: 20_000,
            ..Default::default()
        })
        .await
        .expect("Work with CPU");
    assert!(started.elapsed() >= Duration::from_millis(20));

    let failed = client
        .work(WorkRequest {
            fail_code: Code::ResourceExhausted as u32,
            fail_message: "too busy".into(),
            ..Default::default()
        })
        .await
        .expect_err("asked to fail");
    assert_eq!(failed.code(), Code::ResourceExhausted);
    assert_eq!(failed.message(), "too busy");

    let info = client
        .info(InfoRequest {})
        .await
        .expect("Info")
        .into_inner();
    assert_eq!(info.name, "w1");
    assert_eq!(info.group, "default");
    assert_eq!(info.address, node.addr.to_string());
    assert_eq!(info.pid, std::process::id());
    assert_eq!(info.requests, 4);
    assert!(!info.connected);
    assert!(info.node_id.is_empty());
}

#[tokio::test]
async fn asks_beyond_the_limits_are_refused() {
    let node = Node::lone("w2").await;
    let mut client = node.workload();
    #[track_caller]
    fn check(result: Result<tonic::Response<farm_api::v1::WorkResponse>, tonic::Status>) {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    check(
        client
            .work(WorkRequest {
                delay_ms: 60_001,
                ..Default::default()
            })
            .await,
    );
    check(
        client
            .work(WorkRequest {
                response_bytes: 4_000_001,
                ..Default::default()
            })
            .await,
    );
    check(
        client
            .work(WorkRequest {
                cpu_us: 1_000_001,
                ..Default::default()
            })
            .await,
    );
    check(
        client
            .work(WorkRequest {
                fail_code: 17,
                ..Default::default()
            })
            .await,
    );
    // The largest response allowed goes through.
    let big = client
        .work(WorkRequest {
            response_bytes: 4_000_000,
            ..Default::default()
        })
        .await
        .expect("largest response, within a default client's limit")
        .into_inner();
    assert_eq!(big.payload.len(), 4_000_000);
}

#[tokio::test(start_paused = true)]
async fn work_stream_answers_every_request_and_keeps_going_after_failures() {
    let node = Node::lone("w3").await;
    let mut client = node.workload();
    let count = 300u64;
    let requests: Vec<WorkRequest> = (0..count)
        .map(|id| WorkRequest {
            id,
            // Every third waits, so answers come back out of order.
            delay_ms: if id % 3 == 0 { 30 } else { 0 },
            response_bytes: 10,
            fail_code: if id % 10 == 7 {
                Code::Unavailable as u32
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
    let mut seen = vec![false; count as usize];
    let mut order = Vec::new();
    while let Some(response) = responses.next().await {
        let response = response.expect("stream stays up");
        assert!(
            !seen[response.id as usize],
            "answered twice: {}",
            response.id
        );
        seen[response.id as usize] = true;
        order.push(response.id);
        if response.id % 10 == 7 {
            assert_eq!(response.code, Code::Unavailable as u32);
            assert!(!response.message.is_empty());
        } else {
            assert_eq!(response.code, 0);
            assert_eq!(response.payload.len(), 10);
        }
    }
    assert!(seen.iter().all(|s| *s), "every request answered");
    assert!(
        order.windows(2).any(|w| w[0] > w[1]),
        "delayed requests did not hold back the others"
    );
    // 100 delayed requests of 30 ms ran concurrently, not one after another.
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn health_reports_serving_then_stops_with_the_node() {
    let node = Node::lone("w4").await;
    let mut health = HealthClient::new(node.channel());
    let status = health
        .check(HealthCheckRequest {
            service: "farm.v1.Workload".into(),
        })
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);
    // A service the node does not serve is UNIMPLEMENTED, as gRPC expects.
    let missing = farm_api::v1::registry_client::RegistryClient::new(node.channel())
        .deregister(farm_api::v1::DeregisterRequest::default())
        .await
        .expect_err("not served by a node");
    assert_eq!(missing.code(), Code::Unimplemented);
    node.stop().await.expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn http_endpoints_answer_ordinary_http_clients() {
    let node = Node::lone("h1").await;
    let addr = node.addr;

    let index = http::get(addr, "/").await;
    assert_eq!(index.status, 200);
    assert!(index.text().contains("name:      h1"), "{}", index.text());

    let health = http::get(addr, "/health").await;
    assert_eq!(
        (health.status.as_u16(), health.text().as_str()),
        (200, "ok\n")
    );

    let started = Instant::now();
    let slow = http::get(addr, "/slow?ms=120").await;
    assert_eq!(slow.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(120));

    let error = http::get(addr, "/error/503").await;
    assert_eq!(error.status, 503);
    let teapot = http::get(addr, "/error/418").await;
    assert_eq!(teapot.status, 418);

    let data = http::get(addr, "/data/12345").await;
    assert_eq!(data.status, 200);
    assert_eq!(data.body.len(), 12345);
    assert_eq!(
        data.header("content-type"),
        Some("application/octet-stream")
    );

    for bad in [
        "/slow?ms=abc",
        "/slow?ms=60001",
        "/error/200",
        "/error/abc",
        "/error/999",
        "/data/-1",
        "/data/4000001",
    ] {
        let response = http::get(addr, bad).await;
        assert_eq!(response.status, 400, "{bad}: {}", response.text());
        assert!(!response.text().is_empty());
    }
    assert_eq!(http::get(addr, "/nope").await.status, 404);
}
