//! `farm.v1.Metrics` and `GET /metrics` over a real socket: samples sent on
//! real heartbeat streams come back as the aggregates they add up to, a
//! node's history is its last sixty samples, `WatchMetrics` keeps its
//! interval (measured on tokio's paused clock, which its timer runs on),
//! bad input gets a clear status, and the Prometheus text parses (and
//! passes `promtool check metrics` where it is installed).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use farm_api::v1::{
    DeregisterRequest, FarmMetrics, GetFarmHistoryRequest, GetFarmMetricsRequest,
    GetNodeMetricsRequest, HeartbeatRequest, HeartbeatResponse, NodeSample, PutConfigRequest,
    RegisterRequest, WatchMetricsRequest, WorkRequest, workload_client::WorkloadClient,
};
use farm_testkit::{
    Farm, api::lazy_channel, eventually, eventually_every, grpc_web, http, ready_if, skip,
};
use hdrhistogram::{
    Histogram,
    serialization::{Serializer, V2Serializer},
};
use prost_types::{Struct, Value, value::Kind};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Code, Streaming};

/// A node driven by the test: registered, with its heartbeat stream open.
/// A task keeps it healthy with plain heartbeats; [`TestNode::report`]
/// sends one carrying a sample and waits for its acknowledgement.
struct TestNode {
    id: String,
    secret: String,
    outbound: mpsc::Sender<HeartbeatRequest>,
    acks: mpsc::Receiver<HeartbeatResponse>,
    seq: u64,
    keepalive: JoinHandle<()>,
}

impl TestNode {
    async fn start(farm: &Farm, name: &str, group: &str) -> Self {
        let registered = farm
            .registry()
            .register(RegisterRequest {
                name: name.into(),
                address: "127.0.0.1:7000".into(),
                group: group.into(),
                ..Default::default()
            })
            .await
            .expect("register")
            .into_inner();
        let (outbound, rx) = mpsc::channel(64);
        outbound
            .send(HeartbeatRequest {
                node_id: registered.node_id.clone(),
                secret: registered.secret.clone(),
                seq: 1,
                serving: true,
                ..Default::default()
            })
            .await
            .expect("first heartbeat");
        let mut inbound: Streaming<HeartbeatResponse> = farm
            .registry()
            .heartbeat(ReceiverStream::new(rx))
            .await
            .expect("heartbeat stream")
            .into_inner();
        let (ack_tx, mut acks) = mpsc::channel(256);
        tokio::spawn(async move {
            while let Some(Ok(ack)) = inbound.next().await {
                if ack_tx.send(ack).await.is_err() {
                    break;
                }
            }
        });
        // Plain heartbeats (seq 0) keep the node healthy between reports.
        let beat = outbound.clone();
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let plain = HeartbeatRequest {
                    seq: 0,
                    serving: true,
                    ..Default::default()
                };
                if beat.send(plain).await.is_err() {
                    break;
                }
            }
        });
        let mut node = Self {
            id: registered.node_id,
            secret: registered.secret,
            outbound,
            acks: mpsc::channel(1).1,
            seq: 1,
            keepalive,
        };
        wait_ack(&mut acks, 1).await;
        node.acks = acks;
        node
    }

    /// Sends `sample` with a heartbeat and waits until it is acknowledged.
    async fn report(&mut self, sample: NodeSample) {
        self.seq += 1;
        self.outbound
            .send(HeartbeatRequest {
                seq: self.seq,
                serving: true,
                metrics: Some(sample),
                ..Default::default()
            })
            .await
            .expect("heartbeat");
        wait_ack(&mut self.acks, self.seq).await;
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

async fn wait_ack(acks: &mut mpsc::Receiver<HeartbeatResponse>, seq: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ack = tokio::time::timeout_at(deadline, acks.recv())
            .await
            .unwrap_or_else(|_| panic!("no acknowledgement of heartbeat {seq} within 10 s"))
            .expect("stream open");
        if ack.ack_seq == seq {
            return;
        }
    }
}

fn histogram(values: &[u64]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for v in values {
        h.record(*v).expect("record");
    }
    h
}

fn serialized(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .expect("serialize");
    out
}

/// A sample with known figures.
fn sample(cpu: f64, memory: u64, requests: u64, errors: u64, latencies: &[u64]) -> NodeSample {
    NodeSample {
        at: Some(SystemTime::now().into()),
        cpu_percent: cpu,
        cpu_limit: 0.5,
        memory_used_bytes: memory,
        memory_limit_bytes: 128 << 20,
        rss_bytes: memory / 2,
        disk_used_bytes: 1 << 30,
        disk_total_bytes: 10 << 30,
        net_rx_bytes: 1000,
        net_tx_bytes: 2000,
        net_rx_bytes_per_second: 100.0,
        net_tx_bytes_per_second: 200.0,
        requests,
        errors_by_code: if errors > 0 {
            HashMap::from([(13, errors)])
        } else {
            HashMap::new()
        },
        requests_per_second: requests as f64 / 10.0,
        latency_histogram: serialized(&histogram(latencies)),
        interval_ms: 1000,
    }
}

async fn farm_metrics(farm: &Farm, group: &str, include_nodes: bool) -> FarmMetrics {
    farm.metrics()
        .get_farm_metrics(GetFarmMetricsRequest {
            group: group.into(),
            include_nodes,
            ..Default::default()
        })
        .await
        .expect("GetFarmMetrics")
        .into_inner()
}

#[track_caller]
fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{what}: {actual} != {expected}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn farm_metrics_add_up_the_nodes_samples() {
    let farm = Farm::start(0, &[]).await;
    let mut a = TestNode::start(&farm, "a", "web").await;
    let mut b = TestNode::start(&farm, "b", "web").await;
    let mut c = TestNode::start(&farm, "c", "db").await;
    // Before any sample: registered and healthy, none reporting.
    let empty = farm_metrics(&farm, "", false).await;
    assert_eq!(
        (empty.nodes, empty.healthy_nodes, empty.reporting_nodes),
        (3, 3, 0)
    );

    let latencies_a: Vec<u64> = (1..=100).map(|i| i * 10).collect();
    let latencies_b: Vec<u64> = (1..=300).map(|i| i * 100).collect();
    let latencies_c = vec![50_000, 60_000];
    a.report(sample(10.0, 100 << 20, 1000, 10, &latencies_a))
        .await;
    b.report(sample(30.0, 50 << 20, 3000, 0, &latencies_b))
        .await;
    c.report(sample(80.0, 20 << 20, 500, 5, &latencies_c)).await;

    let farm_now = farm_metrics(&farm, "", true).await;
    assert_eq!(farm_now.nodes, 3);
    assert_eq!(farm_now.healthy_nodes, 3);
    assert_eq!(farm_now.reporting_nodes, 3);
    close(farm_now.cpu_percent_avg, 40.0, "cpu average");
    close(farm_now.cpu_percent_max, 80.0, "cpu max");
    assert_eq!(farm_now.memory_used_bytes, 170 << 20);
    assert_eq!(farm_now.memory_limit_bytes, 3 * (128 << 20));
    close(farm_now.net_rx_bytes_per_second, 300.0, "rx");
    close(farm_now.net_tx_bytes_per_second, 600.0, "tx");
    close(farm_now.requests_per_second, 450.0, "rps");
    assert_eq!(farm_now.requests, 4500);
    assert_eq!(farm_now.errors, 15);
    // One sample each: the interval is the whole life so far.
    close(farm_now.error_rate, 15.0 / 4500.0, "error rate");
    let at = farm_now.at.expect("at");
    let at = SystemTime::try_from(at).expect("timestamp");
    assert!(
        SystemTime::now()
            .duration_since(at)
            .is_ok_and(|d| d < Duration::from_secs(5))
    );

    // The merged latency is exactly the three histograms added.
    let mut merged = histogram(&latencies_a);
    merged.add(histogram(&latencies_b)).expect("add");
    merged.add(histogram(&latencies_c)).expect("add");
    let latency = farm_now.latency.expect("latency");
    assert_eq!(latency.count, 402);
    close(latency.p50_us, merged.value_at_quantile(0.5) as f64, "p50");
    close(latency.p90_us, merged.value_at_quantile(0.9) as f64, "p90");
    close(latency.p99_us, merged.value_at_quantile(0.99) as f64, "p99");
    close(
        latency.p999_us,
        merged.value_at_quantile(0.999) as f64,
        "p99.9",
    );
    close(latency.max_us, merged.max() as f64, "max");
    assert!(latency.max_us >= 60_000.0 && latency.max_us < 60_100.0);

    // Every node listed with its own figures.
    assert_eq!(farm_now.node_metrics.len(), 3);
    let by_name: BTreeMap<_, _> = farm_now
        .node_metrics
        .iter()
        .map(|n| (n.name.as_str(), n))
        .collect();
    let node_a = by_name["a"];
    assert_eq!(node_a.node_id, a.id);
    assert_eq!(node_a.group, "web");
    let sample_a = node_a.sample.as_ref().expect("sample");
    assert_eq!(sample_a.memory_used_bytes, 100 << 20);
    assert_eq!(sample_a.errors_by_code.get(&13), Some(&10));
    let latency_a = node_a.latency.expect("latency");
    assert_eq!(latency_a.count, 100);
    close(
        latency_a.p50_us,
        histogram(&latencies_a).value_at_quantile(0.5) as f64,
        "node p50",
    );

    // A group's aggregate holds its members only.
    let web = farm_metrics(&farm, "web", false).await;
    assert_eq!((web.nodes, web.reporting_nodes), (2, 2));
    close(web.cpu_percent_avg, 20.0, "web cpu average");
    assert_eq!(web.requests, 4000);
    assert_eq!(web.latency.expect("latency").count, 400);
    assert!(web.node_metrics.is_empty(), "not asked for");

    // The next samples: the error rate covers the latest interval only.
    a.report(sample(10.0, 100 << 20, 1100, 30, &[100])).await;
    b.report(sample(30.0, 50 << 20, 3100, 0, &[100])).await;
    c.report(sample(80.0, 20 << 20, 600, 5, &[100])).await;
    let later = farm_metrics(&farm, "", false).await;
    close(later.error_rate, 20.0 / 300.0, "interval error rate");
    assert_eq!(later.latency.expect("latency").count, 3);

    let err = farm
        .metrics()
        .get_farm_metrics(GetFarmMetricsRequest {
            group: "nowhere".into(),
            include_nodes: false,
            ..Default::default()
        })
        .await
        .expect_err("unknown group");
    assert_eq!(err.code(), Code::NotFound);

    // A deregistered node's samples go with it.
    farm.registry()
        .deregister(DeregisterRequest {
            node_id: c.id.clone(),
            secret: c.secret.clone(),
        })
        .await
        .expect("deregister");
    let after = farm_metrics(&farm, "", false).await;
    assert_eq!((after.nodes, after.reporting_nodes), (2, 2));
    assert_eq!(after.requests, 4200);
}

#[tokio::test(flavor = "multi_thread")]
async fn node_metrics_keep_the_last_sixty_samples() {
    let farm = Farm::start(0, &[]).await;
    let mut node = TestNode::start(&farm, "history", "").await;
    let never = TestNode::start(&farm, "silent", "").await;
    for i in 1..=65u64 {
        node.report(sample(i as f64, i, i * 10, 0, &[i])).await;
    }
    let response = farm
        .metrics()
        .get_node_metrics(GetNodeMetricsRequest {
            node_id: node.id.clone(),
        })
        .await
        .expect("GetNodeMetrics")
        .into_inner();
    let history: Vec<u64> = response
        .history
        .iter()
        .map(|s| s.memory_used_bytes)
        .collect();
    assert_eq!(history, (6..=65).collect::<Vec<_>>(), "oldest first");
    let latest = response.node.expect("node");
    assert_eq!(latest.node_id, node.id);
    assert_eq!(latest.name, "history");
    assert_eq!(latest.group, "default");
    let sample = latest.sample.expect("sample");
    assert_eq!(sample.memory_used_bytes, 65);
    assert_eq!(sample.requests, 650);
    assert!(!sample.latency_histogram.is_empty(), "the bytes come back");
    let latency = latest.latency.expect("latency");
    assert_eq!(latency.count, 1);
    close(latency.max_us, 65.0, "max");

    // A node that never reported: no sample, no history.
    let silent = farm
        .metrics()
        .get_node_metrics(GetNodeMetricsRequest {
            node_id: never.id.clone(),
        })
        .await
        .expect("GetNodeMetrics")
        .into_inner();
    assert!(silent.node.expect("node").sample.is_none());
    assert!(silent.history.is_empty());

    for (node_id, code) in [
        ("", Code::InvalidArgument),
        ("not an id", Code::InvalidArgument),
        ("n999999", Code::NotFound),
        ("no-such-node", Code::NotFound),
    ] {
        let err = farm
            .metrics()
            .get_node_metrics(GetNodeMetricsRequest {
                node_id: node_id.into(),
            })
            .await
            .expect_err(node_id);
        assert_eq!(err.code(), code, "{node_id:?}: {}", err.message());
    }
}

/// Paused time: the stream's interval is a tokio timer of the control
/// plane in this process, so the snapshots arrive exactly on it.
#[tokio::test(start_paused = true)]
async fn watch_metrics_sends_one_snapshot_per_interval() {
    let farm = Farm::start(0, &[]).await;
    let mut node = TestNode::start(&farm, "watched", "").await;
    node.report(sample(25.0, 1 << 20, 10, 0, &[100])).await;

    let started = Instant::now();
    let mut stream = farm
        .metrics()
        .watch_metrics(WatchMetricsRequest {
            group: String::new(),
            interval_ms: 200,
            include_nodes: true,
            ..Default::default()
        })
        .await
        .expect("WatchMetrics")
        .into_inner();
    let mut snapshots = Vec::new();
    let mut arrivals = Vec::new();
    while snapshots.len() < 6 {
        let snapshot = next_snapshot(&mut stream).await;
        snapshots.push(snapshot);
        arrivals.push(started.elapsed());
    }
    // The first at once, then one every 200 ms.
    let every_200_ms: Vec<Duration> = (0..6).map(|i| Duration::from_millis(200 * i)).collect();
    assert_eq!(arrivals, every_200_ms);
    let times: Vec<SystemTime> = snapshots
        .iter()
        .map(|s| SystemTime::try_from(s.at.expect("at")).expect("timestamp"))
        .collect();
    assert!(times.is_sorted(), "taken in order: {times:?}");
    for snapshot in &snapshots {
        assert_eq!((snapshot.nodes, snapshot.reporting_nodes), (1, 1));
        close(snapshot.cpu_percent_avg, 25.0, "cpu");
        assert_eq!(snapshot.node_metrics.len(), 1);
    }
    drop(stream);

    for (interval_ms, group, code) in [
        (50, "", Code::InvalidArgument),
        (99, "", Code::InvalidArgument),
        (60_001, "", Code::InvalidArgument),
        (1000, "nowhere", Code::NotFound),
    ] {
        let err = farm
            .metrics()
            .watch_metrics(WatchMetricsRequest {
                group: group.into(),
                interval_ms,
                include_nodes: false,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(
            err.code(),
            code,
            "{interval_ms} {group:?}: {}",
            err.message()
        );
    }

    // 0 means the default of one second.
    let mut stream = farm
        .metrics()
        .watch_metrics(WatchMetricsRequest::default())
        .await
        .expect("WatchMetrics")
        .into_inner();
    let started = Instant::now();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a snapshot")
            .expect("open")
            .expect("snapshot");
    }
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// Twenty dashboards watching the same feed get the very same snapshots
/// (one computed per interval for all of them, so their `at` agree), and
/// the compact loads list every node that reported, with its figures.
#[tokio::test(start_paused = true)]
async fn twenty_watchers_share_snapshots_and_loads_list_every_node() {
    let farm = Farm::start(0, &[]).await;
    let mut nodes = Vec::new();
    for i in 0..12u64 {
        let mut node = TestNode::start(&farm, &format!("grid-{i:02}"), "").await;
        node.report(sample(i as f64 * 5.0, (i + 1) << 20, i * 10, 0, &[100]))
            .await;
        nodes.push(node);
    }
    // One more that never reports: it has no load to list.
    let silent = TestNode::start(&farm, "silent", "").await;

    let request = WatchMetricsRequest {
        interval_ms: 200,
        include_loads: true,
        ..Default::default()
    };
    let mut streams = Vec::new();
    for _ in 0..20 {
        let stream = farm
            .metrics()
            .watch_metrics(request.clone())
            .await
            .expect("WatchMetrics")
            .into_inner();
        streams.push(stream);
    }
    let seen = futures::future::join_all(streams.iter_mut().map(|stream| async move {
        let mut snapshots = Vec::new();
        for _ in 0..4 {
            let snapshot = next_snapshot(stream).await;
            snapshots.push(snapshot);
        }
        snapshots
    }))
    .await;
    let times = |snapshots: &[FarmMetrics]| -> Vec<SystemTime> {
        snapshots
            .iter()
            .map(|s| SystemTime::try_from(s.at.expect("at")).expect("timestamp"))
            .collect()
    };
    let first = times(&seen[0]);
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "four distinct snapshots, in order: {first:?}"
    );
    for (i, snapshots) in seen.iter().enumerate() {
        assert_eq!(times(snapshots), first, "watcher {i} got other snapshots");
        assert_eq!(snapshots, &seen[0], "watcher {i} got other figures");
    }

    let snapshot = &seen[0][3];
    assert_eq!((snapshot.nodes, snapshot.reporting_nodes), (13, 12));
    assert!(snapshot.node_metrics.is_empty(), "loads only, as asked");
    let loads = snapshot.loads.as_ref().expect("loads, as asked");
    let mut ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    ids.sort_by_key(|id| id.trim_start_matches('n').parse::<u64>().expect("an id"));
    assert_eq!(loads.node_ids, ids, "every reporting node, by id");
    assert!(!loads.node_ids.contains(&silent.id));
    for column in [
        loads.cpu_percent.len(),
        loads.memory_used_bytes.len(),
        loads.memory_limit_bytes.len(),
        loads.requests_per_second.len(),
    ] {
        assert_eq!(column, ids.len(), "every column has a value per node");
    }
    for (i, node) in nodes.iter().enumerate() {
        let at = loads
            .node_ids
            .iter()
            .position(|id| *id == node.id)
            .expect("listed");
        assert_eq!(loads.cpu_percent[at], i as f32 * 5.0, "{}", node.id);
        assert_eq!(loads.memory_used_bytes[at], ((i as u64 + 1) << 20) as f64);
        assert_eq!(loads.memory_limit_bytes[at], (128u64 << 20) as f64);
        assert_eq!(loads.requests_per_second[at], i as f32);
    }
    drop(streams);

    // Without the flag, no loads; the feed of other detail is another one.
    let mut plain = farm
        .metrics()
        .watch_metrics(WatchMetricsRequest {
            interval_ms: 200,
            ..Default::default()
        })
        .await
        .expect("WatchMetrics")
        .into_inner();
    let snapshot = plain.next().await.expect("open").expect("snapshot");
    assert_eq!(snapshot.loads, None);
    assert_eq!(snapshot.reporting_nodes, 12);
}

/// A dashboard reloaded finds its feed still running: a stream opened after
/// the last one ended starts from that feed's latest snapshot (at a 60 s
/// interval, the very one the first stream got), not from one computed for
/// it; a stream of another interval gets a feed, and a snapshot, of its own.
#[tokio::test]
async fn a_reopened_watch_metrics_stream_starts_from_the_lingering_feed() {
    let farm = Farm::start(0, &[]).await;
    let mut node = TestNode::start(&farm, "reloaded", "").await;
    node.report(sample(10.0, 1 << 20, 10, 0, &[100])).await;
    let open = |interval_ms| {
        let farm = &farm;
        async move {
            farm.metrics()
                .watch_metrics(WatchMetricsRequest {
                    interval_ms,
                    include_loads: true,
                    ..Default::default()
                })
                .await
                .expect("WatchMetrics")
                .into_inner()
        }
    };
    let at = |snapshot: &FarmMetrics| SystemTime::try_from(snapshot.at.expect("at")).expect("at");

    let mut first = open(60_000).await;
    let before = next_snapshot(&mut first).await;
    drop(first);
    // The control plane has seen the stream end once the call's duration
    // (a stream's lifetime) is recorded.
    eventually(
        "the first stream's end recorded",
        Duration::from_secs(10),
        || async {
            let body = http::get(farm.addr, "/metrics").await.text();
            let ended = parse(&body).find(
                "farm_control_plane_rpc_duration_seconds_count",
                &[("method", "farm.v1.Metrics/WatchMetrics")],
            );
            ready_if(ended == Some(1.0), ()).map_err(|_| ended)
        },
    )
    .await;
    let mut again = open(60_000).await;
    let after = next_snapshot(&mut again).await;
    assert_eq!(at(&after), at(&before), "the lingering feed's snapshot");
    assert_eq!(after, before);

    let mut other = open(59_000).await;
    let fresh = next_snapshot(&mut other).await;
    assert!(at(&fresh) > at(&before), "a new feed computes its own");
}

/// `GetFarmHistory`: the farm's figures, a point every five heartbeat
/// intervals (1 s at the tests' 200 ms), oldest first, with what the nodes
/// reported.
#[tokio::test(flavor = "multi_thread")]
async fn farm_history_keeps_a_point_every_five_heartbeats() {
    let farm = Farm::start(0, &[]).await;
    let mut node = TestNode::start(&farm, "recorded", "").await;
    let history = || async {
        farm.metrics()
            .get_farm_history(GetFarmHistoryRequest::default())
            .await
            .expect("GetFarmHistory")
            .into_inner()
            .points
    };
    // The node reports between looks, so each point has a sample to take.
    let node = tokio::sync::Mutex::new(&mut node);
    let points = eventually_every(
        "three points with the node's sample",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            node.lock()
                .await
                .report(sample(40.0, 64 << 20, 10, 0, &[100]))
                .await;
            let points = history().await;
            let recorded = points
                .iter()
                .filter(|p| p.reporting_nodes == 1 && p.cpu_percent_avg == 40.0)
                .count();
            ready_if(recorded >= 3, points)
        },
    )
    .await;
    let times: Vec<SystemTime> = points
        .iter()
        .map(|p| SystemTime::try_from(p.at.expect("at")).expect("at"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {times:?}"
    );
    let last = points.last().expect("a point");
    assert_eq!((last.nodes, last.reporting_nodes), (1, 1));
    assert_eq!(last.memory_used_bytes, 64 << 20);
    assert!(
        last.node_metrics.is_empty() && last.loads.is_none(),
        "no per-node detail"
    );
}

/// One sample line of the text format.
#[derive(Debug, Clone)]
struct Line {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: families' types and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Line>,
}

impl Exposition {
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    #[track_caller]
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }
}

/// Parses the Prometheus text format strictly: every family's HELP and
/// TYPE come before its samples, a family's samples are together, every
/// sample is `name{labels} value` with escaped label values, and every
/// name is the farm's or the process's.
fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    let mut helped = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut finished: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(&at);
            assert!(!help.trim().is_empty(), "empty help, {at}");
            assert!(
                helped.insert(name.to_owned(), ()).is_none(),
                "HELP twice, {at}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(&at);
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{at}"
            );
            assert!(helped.contains_key(name), "TYPE before HELP, {at}");
            assert!(
                out.types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice, {at}"
            );
            if let Some(previous) = current.replace(name.to_owned()) {
                finished.push(previous);
            }
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment, {at}");
        if line.is_empty() {
            continue;
        }
        let sample = parse_sample(line).unwrap_or_else(|e| panic!("{e}, {at}"));
        assert!(
            sample.name.starts_with("farm_") || sample.name.starts_with("process_"),
            "foreign name, {at}"
        );
        let family = current.as_deref().expect("a sample before any TYPE");
        let kind = &out.types[family];
        let belongs = sample.name == family
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample.name == format!("{family}{s}")))
            || (kind == "summary"
                && ["_sum", "_count"]
                    .iter()
                    .any(|s| sample.name == format!("{family}{s}")));
        assert!(belongs, "sample outside its family {family}, {at}");
        assert!(!finished.contains(&sample.name), "family split, {at}");
        if kind == "counter" {
            assert!(sample.name.ends_with("_total"), "{at}");
            assert!(sample.value >= 0.0, "negative counter, {at}");
        }
        out.samples.push(sample);
    }
    out
}

fn parse_sample(line: &str) -> Result<Line, String> {
    let name_end = line.find(['{', ' ']).ok_or_else(|| "no value".to_owned())?;
    let name = &line[..name_end];
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if name.is_empty() || !valid_name {
        return Err(format!("bad name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            // A label name, `=`, a quoted value, then `,` or `}`.
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            let mut key_end = start;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    break;
                }
                if !(c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("bad label name at {c:?}"));
                }
            }
            let key = &inner[start..key_end];
            if key.is_empty() {
                return Err("empty label name".into());
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated value")?.1 {
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    '"' => break,
                    '\n' => return Err("raw line feed in value".into()),
                    c => value.push(c),
                }
            }
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            match chars.next().ok_or("unterminated labels")? {
                (_, ',') => {}
                (i, '}') => {
                    rest = &inner[i + 1..];
                    break;
                }
                (_, c) => return Err(format!("unexpected {c:?} after a label")),
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Line {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[test]
fn the_test_parser_refuses_malformed_text() {
    for bad in [
        "farm_x 1\n",                                            // no TYPE
        "# HELP farm_x x\n# TYPE farm_x gauge\nfarm_x{a=b} 1\n", // unquoted
        "# HELP farm_x x\n# TYPE farm_x gauge\nfarm_x{a=\"b\\q\"} 1\n",
        "# HELP farm_x x\n# TYPE farm_x gauge\nfarm_x one\n",
        "# HELP other_x x\n# TYPE other_x gauge\nother_x 1\n",
        "# HELP farm_x x\n# TYPE farm_x counter\nfarm_x 1\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
    let good = parse(
        "# HELP farm_x_total x\n# TYPE farm_x_total counter\nfarm_x_total{a=\"q\\\"\\\\\\n\",b=\"\"} 1e3\n",
    );
    assert_eq!(
        good.get("farm_x_total", &[("a", "q\"\\\n"), ("b", "")]),
        1000.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_text_has_nodes_farm_and_control_plane() {
    let farm = Farm::start(0, &[]).await;
    let mut nodes = Vec::new();
    for (i, name) in ["p1", "p2", "p3"].into_iter().enumerate() {
        let mut node = TestNode::start(&farm, name, "").await;
        let i = i as u64 + 1;
        node.report(sample(10.0 * i as f64, i << 20, 100 * i, i, &[1000 * i]))
            .await;
        nodes.push(node);
    }
    // A configuration change is pushed down all three streams.
    let workload = Struct {
        fields: [(
            "delay_ms".to_owned(),
            Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        )]
        .into(),
    };
    farm.config()
        .put_config(PutConfigRequest {
            scope: "global".into(),
            data: Some(Struct {
                fields: [(
                    "workload".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(workload)),
                    },
                )]
                .into(),
            }),
            expected_version: 0,
            merge: false,
        })
        .await
        .expect("PutConfig");
    farm_metrics(&farm, "", false).await;
    let _ = farm
        .metrics()
        .get_node_metrics(GetNodeMetricsRequest {
            node_id: "n424242".into(),
        })
        .await
        .expect_err("unknown node");

    // Counters settle (pushes are counted as they are sent).
    let (response, parsed) = eventually(
        "three configuration pushes counted",
        Duration::from_secs(10),
        || async {
            let response = http::get(farm.addr, "/metrics").await;
            let parsed = parse(&response.text());
            match parsed.find("farm_control_plane_config_pushes_total", &[]) {
                Some(3.0) => Ok((response, parsed)),
                pushes => Err(pushes),
            }
        },
    )
    .await;
    assert_eq!(response.status, 200, "{response}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|c| c.contains("text/plain; version=0.0.4")),
        "{response}"
    );

    // The nodes, labelled.
    for (i, node) in nodes.iter().enumerate() {
        let labels = [
            ("node_id", node.id.as_str()),
            ("name", ["p1", "p2", "p3"][i]),
            ("group", "default"),
        ];
        let i = i as f64 + 1.0;
        assert_eq!(parsed.get("farm_node_cpu_percent", &labels), 10.0 * i);
        assert_eq!(
            parsed.get("farm_node_memory_used_bytes", &labels),
            i * 1048576.0
        );
        assert_eq!(parsed.get("farm_node_requests_total", &labels), 100.0 * i);
        assert_eq!(parsed.get("farm_node_healthy", &labels), 1.0);
        let mut with_code = labels.to_vec();
        with_code.push(("code", "13"));
        assert_eq!(parsed.get("farm_node_request_errors_total", &with_code), i);
    }
    // The farm.
    assert_eq!(parsed.get("farm_nodes", &[]), 3.0);
    assert_eq!(parsed.get("farm_nodes_healthy", &[]), 3.0);
    assert_eq!(parsed.get("farm_nodes_reporting", &[]), 3.0);
    assert_eq!(parsed.get("farm_cpu_max_percent", &[]), 30.0);
    assert_eq!(parsed.get("farm_memory_used_bytes", &[]), 6.0 * 1048576.0);
    assert_eq!(parsed.get("farm_requests_total", &[]), 600.0);
    assert_eq!(parsed.get("farm_request_errors_total", &[]), 6.0);
    assert_eq!(parsed.get("farm_request_latency_seconds_count", &[]), 3.0);
    assert_eq!(parsed.types["farm_request_latency_seconds"], "summary");
    let p50 = parsed.get("farm_request_latency_seconds", &[("quantile", "0.5")]);
    assert!((0.0019..=0.0021).contains(&p50), "p50 {p50}");
    // The control plane.
    assert!(
        parsed.get(
            "farm_control_plane_rpc_total",
            &[("method", "farm.v1.Metrics/GetFarmMetrics"), ("code", "OK")]
        ) >= 1.0
    );
    assert_eq!(
        parsed.get(
            "farm_control_plane_rpc_total",
            &[
                ("method", "farm.v1.Metrics/GetNodeMetrics"),
                ("code", "NOT_FOUND")
            ]
        ),
        1.0
    );
    assert_eq!(
        parsed.get(
            "farm_control_plane_rpc_total",
            &[("method", "farm.v1.Registry/Register"), ("code", "OK")]
        ),
        3.0
    );
    assert_eq!(
        parsed.types["farm_control_plane_rpc_duration_seconds"],
        "histogram"
    );
    assert_eq!(
        parsed.get(
            "farm_control_plane_rpc_duration_seconds_bucket",
            &[("method", "farm.v1.Registry/Register"), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(parsed.get("farm_control_plane_heartbeat_streams", &[]), 3.0);
    assert_eq!(
        parsed.get("farm_control_plane_registrations_total", &[("kind", "new")]),
        3.0
    );
    assert_eq!(
        parsed.get("farm_control_plane_config_pushes_total", &[]),
        3.0
    );
    assert!(parsed.get("farm_control_plane_samples_total", &[]) >= 3.0);
    // The process.
    assert!(parsed.get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(parsed.get("process_cpu_seconds_total", &[]) > 0.0);
    assert!(parsed.get("process_open_fds", &[]) > 0.0);
    let start = parsed.get("process_start_time_seconds", &[]);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(start <= now + 1.0 && start > now - 24.0 * 3600.0, "{start}");

    // A closed stream leaves the gauge.
    drop(nodes.pop());
    eventually(
        "the stream gauge to fall to 2",
        Duration::from_secs(10),
        || async {
            let body = http::get(farm.addr, "/metrics").await.text();
            let streams = parse(&body).get("farm_control_plane_heartbeat_streams", &[]);
            ready_if(streams == 2.0, ()).map_err(|_| streams)
        },
    )
    .await;
}

/// What a farm of real nodes exposes, requests and errors included, passes
/// `promtool check metrics` (Debian's `prometheus` package has promtool;
/// `scripts/test` installs it and sets `FARM_REQUIRE_PROMTOOL=1`).
#[tokio::test(flavor = "multi_thread")]
async fn promtool_check_metrics_passes() {
    if !skip::installed("promtool") {
        skip::skip(
            "FARM_REQUIRE_PROMTOOL",
            "promtool_check_metrics_passes",
            "promtool is not installed",
        );
        return;
    }
    let farm = Farm::start(2, &[]).await;
    let nodes = farm.wait_healthy(2, Duration::from_secs(20)).await;
    let mut workload = WorkloadClient::new(lazy_channel(&format!("http://{}", nodes[0].address)));
    for fail_code in [0, 13] {
        let _ = workload
            .work(WorkRequest {
                fail_code,
                ..Default::default()
            })
            .await;
    }
    let body = eventually(
        "both nodes reporting, one error",
        Duration::from_secs(20),
        || async {
            let now = farm_metrics(&farm, "", false).await;
            let body = http::get(farm.addr, "/metrics").await.text();
            ready_if(now.reporting_nodes == 2 && now.errors >= 1, body)
        },
    )
    .await;
    promtool(&body);
}

/// Runs `promtool check metrics` on `text`.
fn promtool(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn real_nodes_report_their_samples() {
    let farm = Farm::start(3, &[]).await;
    farm.wait_healthy(3, Duration::from_secs(20)).await;
    let reported = eventually("all 3 nodes reporting", Duration::from_secs(20), || async {
        let now = farm_metrics(&farm, "", true).await;
        ready_if(now.reporting_nodes == 3, now)
    })
    .await;
    assert_eq!(reported.nodes, 3);
    assert!(reported.memory_used_bytes > 0);
    for node in &reported.node_metrics {
        let sample = node.sample.as_ref().expect("sample");
        assert!(sample.memory_used_bytes > 0, "{node:?}");
        assert!(sample.at.is_some(), "{node:?}");
    }

    // Requests served by the nodes show in the farm's figures: 10 that
    // take 2 ms on each node, and 5 failures on one.
    let nodes = farm.nodes().await;
    for (i, node) in nodes.iter().enumerate() {
        let mut workload = WorkloadClient::new(lazy_channel(&format!("http://{}", node.address)));
        for id in 0..10 {
            workload
                .work(WorkRequest {
                    id,
                    delay_ms: 2,
                    ..Default::default()
                })
                .await
                .expect("Work");
        }
        if i == 0 {
            for id in 0..5 {
                let err = workload
                    .work(WorkRequest {
                        id,
                        fail_code: 13,
                        ..Default::default()
                    })
                    .await
                    .expect_err("asked to fail");
                assert_eq!(err.code(), Code::Internal);
            }
        }
    }
    let served = eventually(
        "35 requests and 5 errors counted",
        Duration::from_secs(20),
        || async {
            let now = farm_metrics(&farm, "", false).await;
            ready_if(now.requests >= 35 && now.errors >= 5, now)
        },
    )
    .await;
    assert_eq!((served.requests, served.errors), (35, 5), "{served:#?}");
    // The samples that first hold the requests hold their latencies too.
    let latency = served.latency.expect("latency");
    assert!(latency.count >= 1, "{served:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_reads_metrics_and_nobody_else() {
    let (admin, node, viewer) = (
        "admin-metrics-token",
        "node-metrics-token",
        "viewer-metrics-token",
    );
    let farm = Farm::start(
        0,
        &[
            "--admin-token",
            admin,
            "--node-token",
            node,
            "--viewer-token",
            viewer,
        ],
    )
    .await;
    for (token, allowed) in [
        (Some(admin), true),
        (Some(node), true),
        (Some(viewer), true),
        (Some("not-a-token"), false),
        (None, false),
    ] {
        let mut client = farm.with_token(token).metrics();
        let farm_call = client
            .get_farm_metrics(GetFarmMetricsRequest::default())
            .await
            .map(drop);
        let node_call = client
            .get_node_metrics(GetNodeMetricsRequest {
                node_id: "n999999".into(),
            })
            .await
            .map(drop);
        let watch_call = client
            .watch_metrics(WatchMetricsRequest::default())
            .await
            .map(drop);
        let history_call = client
            .get_farm_history(GetFarmHistoryRequest::default())
            .await
            .map(drop);
        for (method, result) in [
            ("GetFarmMetrics", farm_call),
            ("GetNodeMetrics", node_call),
            ("WatchMetrics", watch_call),
            ("GetFarmHistory", history_call),
        ] {
            match (allowed, result) {
                (true, Ok(())) => {}
                (true, Err(status)) => assert_eq!(
                    status.code(),
                    Code::NotFound,
                    "{method} with {token:?}: {}",
                    status.message()
                ),
                (false, Ok(())) => panic!("{method} answered {token:?}"),
                (false, Err(status)) => {
                    assert_eq!(status.code(), Code::Unauthenticated, "{method} {token:?}")
                }
            }
        }
    }
    // Scrapers need no token: the text holds no secret.
    let response = http::get(farm.addr, "/metrics").await;
    assert_eq!(response.status, 200, "{response}");
}

/// The dashboard's feed: WatchMetrics through gRPC-Web over HTTP/1.1
/// arrives snapshot by snapshot, not held back until the stream ends.
#[tokio::test(flavor = "multi_thread")]
async fn watch_metrics_streams_over_grpc_web() {
    use prost::Message;
    let farm = Farm::start(0, &[]).await;
    let mut node = TestNode::start(&farm, "web-watched", "").await;
    node.report(sample(12.0, 1 << 20, 10, 0, &[100])).await;

    let message = WatchMetricsRequest {
        interval_ms: 100,
        ..Default::default()
    }
    .encode_to_vec();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = grpc_web::call(farm.addr, "/farm.v1.Metrics/WatchMetrics", &message)
        .host("localhost")
        .open()
        .await;
    assert_eq!(stream.status, 200, "{:?}", stream.headers);
    let mut received = Vec::new();
    let snapshots = loop {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("3 snapshots within 10 s");
        let Some(chunk) = chunk else {
            panic!("the stream ended: {}", String::from_utf8_lossy(&received));
        };
        received.extend_from_slice(&chunk);
        let messages = grpc_web::messages(&received);
        if messages.len() >= 3 {
            break messages;
        }
    };
    for bytes in &snapshots {
        let snapshot = FarmMetrics::decode(bytes.as_slice()).expect("FarmMetrics");
        assert_eq!((snapshot.nodes, snapshot.reporting_nodes), (1, 1));
        close(snapshot.cpu_percent_avg, 12.0, "cpu");
    }
}

/// The next snapshot of a `WatchMetrics` stream, within 5 s.
async fn next_snapshot(
    stream: &mut tonic::Streaming<farm_api::v1::FarmMetrics>,
) -> farm_api::v1::FarmMetrics {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a snapshot within 5 s")
        .expect("stream open")
        .expect("snapshot")
}
