//! Configuration pushes, measured on a real farm:
//!
//! - 100 changes of the global configuration on a farm of 50 process
//!   nodes, each timed from `PutConfig` acknowledged to every node having
//!   applied it and reported so (seen on a `Discovery.Watch` stream, which
//!   carries each node's `config_version`); p50, p99 and max;
//! - `PutConfig` throughput (16 writers, every write on disk before it is
//!   acknowledged) with no watcher, with 100 `WatchConfig` streams, with the
//!   50 nodes following every version, and with both.
//!
//! Everything runs on 127.0.0.1 and stops itself.
//! Run with `cargo build --release && cargo bench -p control-plane --bench config_push`;
//! `FARM_BENCH_PARTS=p` runs the propagation alone, `t` the throughput
//! alone (default `pt`), for instance under a profiler;
//! `FARM_BENCH_NODES` (50) and `FARM_BENCH_CHANGES` (100) size the
//! propagation.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use farm_api::v1::{PutConfigRequest, WatchConfigRequest};
use farm_testkit::{
    Api, ControlPlaneProcess, binary, env_or,
    process::{cpu_seconds, node_processes},
};
use prost_types::{Struct, Value, value::Kind};
use tokio_stream::StreamExt;

const NODES: usize = 50;
const CHANGES: usize = 100;
const WRITES: usize = 2000;
const WRITERS: usize = 16;
const WATCHERS: usize = 100;
const LIMIT: Duration = Duration::from_secs(60);

/// A control plane of `nodes` process nodes (none: no runtime) on a data
/// folder of its own, healthy; stopped with SIGTERM when dropped.
async fn start_farm(dir: &tempfile::TempDir, nodes: usize) -> ControlPlaneProcess {
    let size = u32::try_from(nodes).expect("a farm's size");
    let farm = ControlPlaneProcess::measured(dir.path(), size)
        .start()
        .await;
    farm.wait_healthy(nodes, LIMIT).await;
    farm
}

fn delay(n: usize) -> Struct {
    let workload = Struct {
        fields: BTreeMap::from([(
            "delay_ms".to_owned(),
            Value {
                kind: Some(Kind::NumberValue((n % 2) as f64)),
            },
        )]),
    };
    Struct {
        fields: BTreeMap::from([
            (
                "workload".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(workload)),
                },
            ),
            (
                "change".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(n as f64)),
                },
            ),
        ]),
    }
}

fn put(n: usize) -> PutConfigRequest {
    PutConfigRequest {
        scope: "global".into(),
        data: Some(delay(n)),
        expected_version: 0,
        merge: false,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Puts per second with `WRITERS` concurrent writers.
async fn throughput(api: &Api) -> f64 {
    let started = Instant::now();
    let per_writer = WRITES / WRITERS;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut client = api.config();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    client
                        .put_config(put(w * per_writer + i))
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    (per_writer * WRITERS) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    binary("farm-node");
    let parts: String = env_or("FARM_BENCH_PARTS", "pt".to_owned());
    if parts.contains('p') {
        propagation().await;
    }
    if parts.contains('t') {
        throughput_table().await;
    }
}

/// [`CHANGES`] changes, one after another, each timed from its
/// acknowledgement to the first and to the last of the nodes applying it.
async fn propagation() {
    let nodes_wanted = env_or("FARM_BENCH_NODES", NODES).max(1);
    let changes = env_or("FARM_BENCH_CHANGES", CHANGES).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = start_farm(&dir, nodes_wanted).await;
    let mut config = farm.config();
    let mut watch = farm.watch().await;
    // Each node's reported version, from the snapshot then every event.
    let mut applied: HashMap<String, u64> = HashMap::new();
    // CPU of the control plane and of the nodes, over the changes.
    let nodes = node_processes(dir.path());
    let node_cpu = || -> f64 {
        nodes
            .iter()
            .map(|pid| cpu_seconds(u32::try_from(*pid).expect("a pid")))
            .sum()
    };
    let cpu_before = (cpu_seconds(farm.id()), node_cpu());
    let mut ack_to_first = Vec::with_capacity(changes);
    let mut ack_to_all = Vec::with_capacity(changes);
    let mut put_latency = Vec::with_capacity(changes);
    for n in 0..changes {
        let sent = Instant::now();
        let version = config
            .put_config(put(n))
            .await
            .expect("put")
            .into_inner()
            .version;
        let acked = Instant::now();
        put_latency.push(acked - sent);
        let mut first = None;
        while applied.len() < nodes_wanted || applied.values().any(|v| *v < version) {
            let event = tokio::time::timeout(LIMIT, watch.next())
                .await
                .expect("nodes apply within the limit")
                .expect("watch open")
                .expect("event");
            if let Some(node) = event.node {
                if node.config_version >= version && first.is_none() {
                    first = Some(acked.elapsed());
                }
                applied.insert(node.id, node.config_version);
            }
        }
        ack_to_all.push(acked.elapsed());
        ack_to_first.push(first.unwrap_or_default());
        // Changes one after another, not piled up.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = (
        cpu_seconds(farm.id()) - cpu_before.0,
        node_cpu() - cpu_before.1,
    );
    ack_to_first.sort();
    ack_to_all.sort();
    put_latency.sort();
    println!("{changes} changes of the global configuration, {nodes_wanted} process nodes\n");
    println!("{:<44} {:>8} {:>8} {:>8}", "", "p50 ms", "p99 ms", "max ms");
    println!(
        "{:<44} {:>8.2} {:>8.2} {:>8.2}",
        "PutConfig round trip (acknowledged on disk)",
        ms(percentile(&put_latency, 50.0)),
        ms(percentile(&put_latency, 99.0)),
        ms(*put_latency.last().expect("samples")),
    );
    for (what, samples) in [
        ("acknowledged -> applied on the first node", &ack_to_first),
        ("acknowledged -> applied on every node", &ack_to_all),
    ] {
        println!(
            "{:<44} {:>8.2} {:>8.2} {:>8.2}",
            what,
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 99.0)),
            ms(*samples.last().expect("samples")),
        );
    }
    println!(
        "CPU per change (ticks of 10 ms, summed over the {changes}): control plane {:.2} ms, the {} nodes {:.2} ms",
        cpu.0 * 1e3 / changes as f64,
        nodes.len(),
        cpu.1 * 1e3 / changes as f64,
    );
}

/// `PutConfig` throughput in the four settings, as a table.
async fn throughput_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let farm = start_farm(&dir, NODES).await;
    // Throughput: on the 50-node farm (its nodes following every version),
    // then with 100 WatchConfig streams as well; then on a farm of no nodes,
    // alone and with the watchers.
    let nodes_only = throughput(&farm).await;
    let (nodes_and_watchers, delivered_a) = with_watchers(&farm).await;
    drop(farm);
    let bare_dir = tempfile::tempdir().expect("tempdir");
    let bare = start_farm(&bare_dir, 0).await;
    let alone = throughput(&bare).await;
    let (watchers_only, delivered_b) = with_watchers(&bare).await;
    drop(bare);

    println!(
        "\nPutConfig throughput, {WRITERS} writers, {WRITES} writes, each on disk before its acknowledgement"
    );
    let row = |what: &str, rate: f64| {
        println!("  {what:<40} {rate:>8.0} puts/s  {:>5.2}x", rate / alone);
    };
    row("no watchers", alone);
    row(&format!("{WATCHERS} WatchConfig streams"), watchers_only);
    row(&format!("{NODES} nodes"), nodes_only);
    row(
        &format!("{NODES} nodes + {WATCHERS} WatchConfig streams"),
        nodes_and_watchers,
    );
    println!(
        "  versions reached the watchers: {} of {}",
        delivered_a + delivered_b,
        2 * WRITES * WATCHERS
    );
}

/// Throughput while `WATCHERS` streams follow every version, and how many
/// versions reached them.
async fn with_watchers(api: &Api) -> (f64, usize) {
    let current = api
        .config()
        .get_config(farm_api::v1::GetConfigRequest {
            scope: "global".into(),
        })
        .await
        .expect("GetConfig")
        .into_inner()
        .version;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut stream = api
            .config()
            .watch_config(WatchConfigRequest {
                scope: "global".into(),
                from_version: current,
                ..Default::default()
            })
            .await
            .expect("WatchConfig")
            .into_inner();
        watchers.push(tokio::spawn(async move {
            let mut seen = 0usize;
            while seen < WRITES {
                match stream.next().await {
                    Some(Ok(_)) => seen += 1,
                    _ => break,
                }
            }
            seen
        }));
    }
    let rate = throughput(api).await;
    // Every watcher receives every version (one bounded wait for all).
    let counts =
        tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(watchers)).await;
    let delivered = counts
        .map(|all| all.into_iter().map(|c| c.unwrap_or(0)).sum())
        .unwrap_or(0);
    (rate, delivered)
}
