//! The node's metrics on its heartbeat stream: a node in this process
//! heartbeats to a recording `Registry` in this process, which keeps every
//! sample the node sends; `Work` and `WorkStream` calls, some failing, show
//! up in the samples' counts, codes and latency histograms. Then the same
//! through a real control plane's `Metrics.GetNodeMetrics`.
//!
//! Real time throughout: a sample's interval and CPU share are measured on
//! the real clock, once a second.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use farm_api::v1::{
    DeregisterRequest, DeregisterResponse, GetNodeMetricsRequest, HeartbeatRequest,
    HeartbeatResponse, NodeSample, NodeState, RegisterRequest, RegisterResponse, WorkRequest,
    registry_server::{Registry, RegistryServer},
};
use farm_node::NodeConfig;
use farm_testkit::{Farm, Node, eventually};
use futures::Stream;
use hdrhistogram::{Histogram, serialization::Deserializer};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, Streaming, transport::server::TcpIncoming};

/// A control plane that only accepts nodes and keeps the samples their
/// heartbeats carry.
#[derive(Debug, Clone, Default)]
struct Recording {
    samples: Arc<Mutex<Vec<NodeSample>>>,
}

#[tonic::async_trait]
impl Registry for Recording {
    async fn register(
        &self,
        _: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        Ok(Response::new(RegisterResponse {
            node_id: "node-1".into(),
            secret: "secret".into(),
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 500,
            reattached: false,
        }))
    }

    type HeartbeatStream =
        Pin<Box<dyn Stream<Item = Result<HeartbeatResponse, Status>> + Send + 'static>>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let mut beats = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let samples = self.samples.clone();
        tokio::spawn(async move {
            while let Ok(Some(beat)) = beats.message().await {
                if let Some(sample) = beat.metrics {
                    samples.lock().expect("samples").push(sample);
                }
                let ack = HeartbeatResponse {
                    ack_seq: beat.seq,
                    heartbeat_interval_ms: 100,
                    ..Default::default()
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn deregister(
        &self,
        _: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        Ok(Response::new(DeregisterResponse {}))
    }
}

async fn start_recording() -> (Recording, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let recording = Recording::default();
    let server = tonic::transport::Server::builder()
        .add_service(RegistryServer::new(recording.clone()))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    (recording, addr)
}

fn decode(bytes: &[u8]) -> Histogram<u64> {
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .expect("a V2 histogram")
}

#[tokio::test]
async fn heartbeats_carry_request_and_resource_metrics() {
    let (recording, registry) = start_recording().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let mut config = NodeConfig::new(format!("http://{registry}"), "metered");
    config.cache_dir = Some(cache.path().to_owned());
    let node = Node::start(config).await;
    let mut client = node.workload();

    // Unary: five successes (one slow), three UNAVAILABLE, two NOT_FOUND.
    for i in 0..5 {
        client
            .work(WorkRequest {
                id: i,
                delay_ms: if i == 0 { 30 } else { 0 },
                ..Default::default()
            })
            .await
            .expect("Work");
    }
    for (code, times) in [(Code::Unavailable, 3), (Code::NotFound, 2)] {
        for _ in 0..times {
            let status = client
                .work(WorkRequest {
                    fail_code: code as u32,
                    ..Default::default()
                })
                .await
                .expect_err("asked to fail");
            assert_eq!(status.code(), code);
        }
    }
    // Streamed: four requests, two failing in-band with FAILED_PRECONDITION.
    let requests = (0..4).map(|i| WorkRequest {
        id: 100 + i,
        fail_code: if i % 2 == 0 {
            Code::FailedPrecondition as u32
        } else {
            0
        },
        ..Default::default()
    });
    let mut answers = client
        .work_stream(tokio_stream::iter(requests))
        .await
        .expect("WorkStream")
        .into_inner();
    let mut in_band = 0;
    while let Some(answer) = answers.next().await {
        if answer.expect("answer").code == Code::FailedPrecondition as u32 {
            in_band += 1;
        }
    }
    assert_eq!(in_band, 2);

    // The samples sent since the node started add up to every request.
    let expected_errors = HashMap::from([
        (Code::Unavailable as u32, 3),
        (Code::NotFound as u32, 2),
        (Code::FailedPrecondition as u32, 2),
    ]);
    let samples = eventually(
        "samples of 14 requests",
        Duration::from_secs(10),
        || async {
            let samples = recording.samples.lock().expect("samples").clone();
            let merged = samples
                .iter()
                .filter(|s| !s.latency_histogram.is_empty())
                .map(|s| decode(&s.latency_histogram))
                .fold(0, |n, h| n + h.len());
            if merged == 14 && samples.last().is_some_and(|s| s.requests == 14) {
                Ok(samples)
            } else {
                Err(format!("{merged} requests so far: {samples:#?}"))
            }
        },
    )
    .await;

    let latest = samples.last().expect("a sample");
    assert_eq!(latest.errors_by_code, expected_errors);
    // Each sample is sent once: no two share a time.
    let mut times: Vec<_> = samples.iter().map(|s| s.at).collect();
    times.dedup();
    assert_eq!(times.len(), samples.len(), "a sample was sent twice");

    let mut merged = farm_node::latency::new_histogram();
    for sample in samples.iter().filter(|s| !s.latency_histogram.is_empty()) {
        merged
            .add(decode(&sample.latency_histogram))
            .expect("merge");
    }
    assert_eq!(merged.len(), 14);
    assert!(
        merged.max() >= 30_000,
        "the 30 ms request is in the histogram: max {} µs",
        merged.max()
    );

    // Resources: plausible figures for this test process.
    assert!(latest.rss_bytes > 1 << 20, "rss {}", latest.rss_bytes);
    assert!(latest.rss_bytes < 4 << 30, "rss {}", latest.rss_bytes);
    assert!(latest.memory_used_bytes > 0);
    assert!(latest.memory_limit_bytes >= latest.memory_used_bytes);
    assert!(latest.cpu_limit > 0.0);
    assert!((0.0..=100.0).contains(&latest.cpu_percent));
    assert!(latest.disk_total_bytes > 0);
    assert!(latest.disk_used_bytes <= latest.disk_total_bytes);
    assert!(latest.at.is_some());
    // Every sample after the first covers about a second.
    for sample in samples.iter().skip(1) {
        assert!(
            (500..=5_000).contains(&sample.interval_ms),
            "interval {} ms",
            sample.interval_ms
        );
    }

    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_control_plane_keeps_the_samples() {
    let cp = Farm::start(0, &[]).await;
    let cache = tempfile::tempdir().expect("temp dir");
    let mut config = NodeConfig::new(cp.url(), "sampled");
    config.cache_dir = Some(cache.path().to_owned());
    let node = Node::start(config).await;
    let id = cp
        .wait_state("sampled", NodeState::Healthy, Duration::from_secs(15))
        .await
        .id;

    let mut client = node.workload();
    for i in 0..3 {
        client
            .work(WorkRequest {
                id: i,
                ..Default::default()
            })
            .await
            .expect("Work");
    }
    for _ in 0..2 {
        client
            .work(WorkRequest {
                fail_code: Code::Aborted as u32,
                ..Default::default()
            })
            .await
            .expect_err("asked to fail");
    }

    let (latest, history) = eventually(
        "a sample of 5 requests",
        Duration::from_secs(10),
        || async {
            let response = cp
                .metrics()
                .get_node_metrics(GetNodeMetricsRequest {
                    node_id: id.clone(),
                })
                .await
                .expect("GetNodeMetrics")
                .into_inner();
            match response.node.and_then(|n| n.sample) {
                Some(latest) if latest.requests == 5 => Ok((latest, response.history)),
                _ => Err(response.history.last().cloned()),
            }
        },
    )
    .await;
    assert_eq!(
        latest.errors_by_code,
        HashMap::from([(Code::Aborted as u32, 2)])
    );
    // The history holds every sample since the node started (fewer than
    // 60): their histograms add up to the five requests.
    let recorded: u64 = history
        .iter()
        .filter(|s| !s.latency_histogram.is_empty())
        .map(|s| decode(&s.latency_histogram).len())
        .sum();
    assert_eq!(recorded, 5);
    assert!(latest.rss_bytes > 1 << 20, "rss {}", latest.rss_bytes);
    assert!(latest.memory_limit_bytes > 0);

    node.stop().await.expect("clean stop");
    cp.stop().await;
}
